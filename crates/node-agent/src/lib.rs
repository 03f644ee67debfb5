//! A local node agent, a tiny kubelet, for the project's local stack. It is
//! test and demo infrastructure, not something to run on a cluster.
//!
//! The local stack runs the real kube-apiserver, kube-controller-manager and
//! kube-scheduler on 127.0.0.1, but no container runtime. This agent fills
//! the node's part: it registers a Node, keeps its Lease and status fresh,
//! and runs the pods bound to it as local processes, so the real ReplicaSet
//! and StatefulSet controllers, the scheduler, readiness, preStop hooks and
//! graceful deletion can be exercised on one machine.
//!
//! What a pod gets:
//! - a program per container from the image map ([`image`]), with
//!   `command` followed by `args` as its arguments, and the environment the
//!   kubelet would build ([`env`](mod@env));
//! - its own loopback address (`PREFIX.2` .. `PREFIX.254`, [`ipam`]) as its
//!   pod IP;
//! - cgroups with its containers' CPU and memory limits, v1 or v2
//!   ([`cgroup`], [`limits`]);
//! - readiness, liveness and startup probes (HTTP GET, TCP, exec) with the
//!   kubelet's thresholds ([`probe`], [`check`]);
//! - restarts per `restartPolicy` with a short back-off ([`restart`]);
//! - its service account's credentials, a token bound to the pod through
//!   the TokenRequest API, as a kubeconfig named by `KUBECONFIG`
//!   ([`token`]);
//! - an honest status ([`status`]) and graceful deletion: preStop hooks,
//!   SIGTERM, SIGKILL at the end of the grace period, then the pod object
//!   deleted ([`pod`]).
//!
//! With a kubelet port, the node serves the kubelet's resource metrics
//! (`/metrics/resource`, [`kubelet_server`]) from the real CPU and memory
//! use of its pods ([`usage`], rendered by [`resource_metrics`]), which
//! metrics-server scrapes for `kubectl top` and the HorizontalPodAutoscaler.
//!
//! The one visible difference from a real kubelet: pods share the machine's
//! network namespace, so each `0.0.0.0` in a container's environment values
//! and arguments is rewritten to the pod's own address (for a pod with one
//! interface, binding every interface is binding its pod IP).
//!
//! The pure parts (quantities, the image map, environments, probe
//! thresholds, back-off, status and conditions, cgroup values, the Node and
//! Lease objects) read no clock and do no I/O; the agent, the pod workers,
//! processes, cgroup files and API calls sit at the edges.

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod check;
pub mod clock;
pub mod config;
pub mod env;
pub mod image;
pub mod ipam;
pub mod kubelet_server;
pub mod limits;
pub mod node;
pub mod pod;
pub mod probe;
pub mod process;
pub mod quantity;
pub mod resource_metrics;
pub mod restart;
pub mod status;
pub mod token;
pub mod usage;

pub use agent::{AgentError, run};
pub use config::{AgentArgs, AgentConfig, ConfigError};
