//! The load-balancer process, assembled: every replica ingests socket-node
//! heartbeats from Redis and competes for the Kubernetes Lease; the holder
//! runs the autoscaling loop of `rtc-autoscaler`, which decides with
//! `rtc-decision` and writes through `rtc-workload`. The admin port
//! (`rtc-lb-admin`) serves /healthz, /readyz, /metrics and /decisions.
//!
//! What it promises: settings are validated once, before anything
//! connects ([`RawSettings::validate`]), with errors that name the key, the
//! value and what is allowed; [`run`] returns when its shutdown future
//! resolves, after the loop has stopped and the Lease has been released (or
//! the shutdown timeout has passed). It reads no environment and installs
//! no global state: the binary parses flags, starts telemetry and hands
//! over the Prometheus handle.
//!
//! A second scaler binary, or a test that wants the whole load-balancer
//! in-process, calls [`run`] with its own settings.

mod serve;
mod settings;
mod shed;

pub use serve::{StartError, run};
pub use settings::{PolicyInput, RawSettings, SettingError, Settings};
pub use shed::ShedSettings;
