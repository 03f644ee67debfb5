//! The Node object and its Lease, built as the kubelet registers and
//! heartbeats them.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};

/// The Kubernetes version the agent reports as its kubelet's.
pub const KUBELET_VERSION: &str = "v1.37.2";
/// The runtime the agent reports.
pub const RUNTIME_VERSION: &str = "rtc-node-agent://0.1.0";
/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a Lease holds without renewal, as the kubelet's default.
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// What the Node reports about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeIdentity {
    /// The Node's name.
    pub name: String,
    /// CPU capacity (`2`, `1500m`).
    pub cpu: String,
    /// Memory capacity (`8Gi`).
    pub memory: String,
    /// Pod capacity.
    pub max_pods: u32,
    /// Taints the Node is created with (as the kubelet's
    /// `--register-with-taints`).
    pub taints: Vec<Taint>,
    /// Facts about this machine.
    pub host: HostInfo,
    /// The kubelet port served on the `InternalIP`, advertised as
    /// `status.daemonEndpoints.kubeletEndpoint.Port` (0: none).
    pub kubelet_port: u16,
}

/// A taint that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaintError {
    /// The text is not `key[=value]:Effect`.
    #[error(
        "invalid taint {taint:?}: {reason}; expected key[=value]:Effect with Effect NoSchedule, PreferNoSchedule or NoExecute"
    )]
    Invalid {
        /// The taint as given.
        taint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Parses `key[=value]:Effect`.
///
/// # Errors
///
/// [`TaintError::Invalid`] for anything else.
pub fn parse_taint(text: &str) -> Result<Taint, TaintError> {
    let invalid = |reason| TaintError::Invalid {
        taint: text.to_owned(),
        reason,
    };
    let (pair, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| invalid("it has no ':Effect'"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(invalid("the effect is unknown"));
    }
    let (key, value) = match pair.split_once('=') {
        Some((key, value)) => (key, Some(value.to_owned())),
        None => (pair, None),
    };
    if key.is_empty() {
        return Err(invalid("the key is empty"));
    }
    Ok(Taint {
        key: key.to_owned(),
        value,
        effect: effect.to_owned(),
        time_added: None,
    })
}

/// Facts about the machine, read once at start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostInfo {
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os_image: String,
    /// Kubernetes' name for the CPU architecture (`amd64`, `arm64`).
    pub architecture: String,
}

/// Kubernetes' (Go's) name for a Rust `std::env::consts::ARCH`.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// `PRETTY_NAME` from the text of `/etc/os-release`.
pub fn os_image(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// The labels the kubelet sets on its Node (all allowed by NodeRestriction).
pub fn labels(identity: &NodeIdentity) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", identity.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", identity.host.architecture.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The Node to create.
pub fn node(identity: &NodeIdentity, now: &Time, ready_since: &Time) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(identity.name.clone()),
            labels: Some(labels(identity)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!identity.taints.is_empty()).then(|| identity.taints.clone()),
            ..NodeSpec::default()
        }),
        status: Some(status(identity, now, ready_since)),
    }
}

/// The Node status to report: resources, addresses, system facts and the
/// conditions, with `now` as every heartbeat time.
pub fn status(identity: &NodeIdentity, now: &Time, ready_since: &Time) -> NodeStatus {
    let resources: BTreeMap<String, ApiQuantity> = [
        ("cpu", identity.cpu.clone()),
        ("memory", identity.memory.clone()),
        ("pods", identity.max_pods.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ApiQuantity(v)))
    .collect();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(ready_since.clone()),
    };
    let host = &identity.host;
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: "127.0.0.1".to_owned(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: identity.name.clone(),
            },
        ]),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(identity.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            machine_id: host.machine_id.clone(),
            system_uuid: host.machine_id.clone(),
            boot_id: host.boot_id.clone(),
            kernel_version: host.kernel_version.clone(),
            os_image: host.os_image.clone(),
            container_runtime_version: RUNTIME_VERSION.to_owned(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            kube_proxy_version: String::new(),
            operating_system: "linux".to_owned(),
            architecture: host.architecture.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// The node's Lease, held by the node and owned by its Node object (so it
/// goes when the Node goes), renewed at `now`.
pub fn lease(node_name: &str, node_uid: &str, now: &MicroTime) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node_name.to_owned()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: node_name.to_owned(),
                uid: node_uid.to_owned(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node_name.to_owned()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(now.clone()),
            ..LeaseSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn identity() -> NodeIdentity {
        NodeIdentity {
            name: "rtc-node-0".into(),
            cpu: "2".into(),
            memory: "8Gi".into(),
            max_pods: 110,
            taints: Vec::new(),
            host: HostInfo {
                architecture: "amd64".into(),
                ..HostInfo::default()
            },
            kubelet_port: 17250,
        }
    }

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + s).expect("time"))
    }

    #[test]
    fn the_node_reports_what_the_kubelet_reports() {
        let n = node(&identity(), &at(10), &at(0));
        let labels = n.metadata.labels.expect("labels");
        assert_eq!(labels["kubernetes.io/hostname"], "rtc-node-0");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        let status = n.status.expect("status");
        let capacity = status.capacity.expect("capacity");
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(capacity["memory"].0, "8Gi");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(status.allocatable.expect("allocatable"), capacity);
        let info = status.node_info.expect("info");
        assert_eq!(info.kubelet_version, "v1.37.2");
        assert_eq!(info.container_runtime_version, "rtc-node-agent://0.1.0");
        assert_eq!(
            (info.operating_system.as_str(), info.architecture.as_str()),
            ("linux", "amd64")
        );
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port);
        assert_eq!(port, Some(17250), "metrics-server reads the port here");
        let addresses = status.addresses.expect("addresses");
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "127.0.0.1");
        assert_eq!(
            (addresses[1].type_.as_str(), addresses[1].address.as_str()),
            ("Hostname", "rtc-node-0")
        );
        let conditions = status.conditions.expect("conditions");
        let ready = conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("ready");
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(at(10)));
        assert_eq!(ready.last_transition_time, Some(at(0)));
        for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            let c = conditions
                .iter()
                .find(|c| c.type_ == pressure)
                .expect(pressure);
            assert_eq!(c.status, "False", "{pressure}");
        }
    }

    #[test]
    fn the_lease_is_held_by_and_owned_by_the_node() {
        let now = MicroTime(Timestamp::from_second(1_700_000_000).expect("time"));
        let l = lease("rtc-node-0", "uid-9", &now);
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        let owner = &l.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "rtc-node-0", "uid-9")
        );
        let spec = l.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("rtc-node-0"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(now));
    }

    #[test]
    fn taints_parse_like_the_kubelet_flag() {
        let t = parse_taint("rtc.test/node=n1:NoSchedule").expect("taint");
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("rtc.test/node", Some("n1"), "NoSchedule")
        );
        let t = parse_taint("dedicated:NoExecute").expect("taint");
        assert_eq!(
            (t.key.as_str(), t.value, t.effect.as_str()),
            ("dedicated", None, "NoExecute")
        );
        for bad in ["dedicated", "a=b:Sometimes", "=b:NoSchedule", ""] {
            let err = parse_taint(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let mut id = identity();
        id.taints = vec![parse_taint("a=b:NoSchedule").expect("taint")];
        let taints = node(&id, &at(0), &at(0))
            .spec
            .and_then(|s| s.taints)
            .expect("taints");
        assert_eq!(taints.len(), 1);
        assert!(
            node(&identity(), &at(0), &at(0))
                .spec
                .and_then(|s| s.taints)
                .is_none()
        );
    }

    #[test]
    fn host_facts_are_named_the_kubernetes_way() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("mips"), "mips");
        let release =
            "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nID=debian\n";
        assert_eq!(
            os_image(release).as_deref(),
            Some("Debian GNU/Linux 13 (trixie)")
        );
        assert_eq!(os_image("ID=x"), None);
    }
}
