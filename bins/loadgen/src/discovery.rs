//! Which socket pods take new connections: the Ready pods matching a label
//! selector, as a Service's endpoints would list them (condition
//! `Ready=True`, a pod IP, not being deleted). The filter is pure; the
//! Kubernetes listing, once a second, is the edge.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::target::{TargetError, check_loopback};

/// Where targets come from.
#[derive(Clone)]
pub enum Discovery {
    /// A fixed list (`--target`), already checked to be loopback.
    Static(Vec<SocketAddr>),
    /// The Ready pods of a label selector in a namespace.
    Kubernetes {
        /// A client of the API server.
        client: Client,
        /// The pods' namespace.
        namespace: String,
        /// A label selector, e.g. `app=socket`.
        selector: String,
        /// The pods' WebSocket port.
        port: u16,
    },
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(targets) => f.debug_tuple("Static").field(targets).finish(),
            Self::Kubernetes {
                namespace,
                selector,
                port,
                ..
            } => f
                .debug_struct("Kubernetes")
                .field("namespace", namespace)
                .field("selector", selector)
                .field("port", port)
                .finish_non_exhaustive(),
        }
    }
}

/// What discovery last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovered {
    /// Nothing listed yet.
    Pending,
    /// The Ready targets.
    Ready(Vec<SocketAddr>),
    /// A Ready pod off this machine: the run must stop.
    Refused(TargetError),
}

/// Whether a pod takes new connections, as an endpoints controller decides.
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The addresses of the Ready pods among `pods`, at `port`, sorted.
///
/// # Errors
///
/// [`TargetError::NotLoopback`] naming the first Ready pod whose IP is not
/// loopback; pods with an unreadable IP are skipped.
pub fn ready_addresses(pods: &[Pod], port: u16) -> Result<Vec<SocketAddr>, TargetError> {
    let mut addresses = Vec::new();
    for pod in pods.iter().filter(|p| is_ready(p)) {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        addresses.push(check_loopback(SocketAddr::new(ip, port))?);
    }
    addresses.sort_unstable();
    Ok(addresses)
}

/// How often the pods are listed.
pub const RELIST_EVERY: Duration = Duration::from_secs(1);

/// Starts discovery; the receiver always holds the latest view. The task
/// ends when every receiver is dropped.
pub fn start(discovery: Discovery) -> watch::Receiver<Discovered> {
    match discovery {
        Discovery::Static(targets) => {
            let (_tx, rx) = watch::channel(Discovered::Ready(targets));
            rx
        }
        Discovery::Kubernetes {
            client,
            namespace,
            selector,
            port,
        } => {
            let (tx, rx) = watch::channel(Discovered::Pending);
            let pods: Api<Pod> = Api::namespaced(client, &namespace);
            let params = ListParams::default().labels(&selector);
            tokio::spawn(async move {
                loop {
                    let listed = tokio::time::timeout(RELIST_EVERY * 10, pods.list(&params)).await;
                    match listed {
                        Ok(Ok(list)) => {
                            let view = match ready_addresses(&list.items, port) {
                                Ok(ready) => Discovered::Ready(ready),
                                Err(refused) => Discovered::Refused(refused),
                            };
                            tx.send_if_modified(|old| {
                                let changed = *old != view;
                                *old = view;
                                changed
                            });
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%error, %namespace, %selector, "listing socket pods failed; keeping the last view");
                        }
                        Err(_) => {
                            tracing::warn!(%namespace, %selector, "listing socket pods timed out; keeping the last view");
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(RELIST_EVERY) => {}
                        () = tx.closed() => return,
                    }
                }
            });
            rx
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
        let mut pod = Pod {
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_owned),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        if deleting {
            pod.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        pod
    }

    #[test]
    fn only_ready_pods_with_an_ip_that_are_not_being_deleted_take_connections() {
        let pods = [
            pod(Some("127.10.0.3"), true, false),
            pod(Some("127.10.0.2"), true, false),
            pod(Some("127.10.0.4"), false, false),
            pod(Some("127.10.0.5"), true, true),
            pod(None, true, false),
        ];
        assert_eq!(
            ready_addresses(&pods, 8000),
            Ok(vec![
                SocketAddr::from(([127, 10, 0, 2], 8000)),
                SocketAddr::from(([127, 10, 0, 3], 8000)),
            ])
        );
    }

    #[test]
    fn a_ready_pod_off_this_machine_is_refused() {
        let pods = [pod(Some("10.244.0.7"), true, false)];
        let err = ready_addresses(&pods, 8000).expect_err("not loopback");
        assert!(err.to_string().contains("10.244.0.7:8000"), "{err}");
        // Not Ready: never a target, so no refusal.
        assert_eq!(
            ready_addresses(&[pod(Some("10.244.0.7"), false, false)], 8000),
            Ok(vec![])
        );
    }
}
