//! A container's environment and command line, built as the kubelet builds
//! them, from the pod and the ConfigMaps and Secrets it refers to.
//!
//! Order, later entries overriding earlier ones of the same name:
//! 1. `PATH` and `HOME` from the agent's own environment (a container image
//!    would bring these), and `POD_IP`;
//! 2. `envFrom`, each source in order (`configMapRef`, `secretRef`, with their
//!    `prefix`); keys that are not usable names (empty or with `=`) are
//!    skipped, as the kubelet skips them;
//! 3. `env`, each entry in order: `value` with `$(VAR)` expanded against the
//!    variables of steps 2 and 3 defined so far, or `valueFrom`.
//!
//! The command line is `command` followed by `args`, each with `$(VAR)`
//! expanded against the finished environment.
//!
//! Pods share this machine's network namespace, so a program binding the
//! wildcard address would take the port on every pod's address. Each
//! `0.0.0.0` in an environment value or argument therefore becomes the pod's
//! own address: for a pod with one interface that is the same thing.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, EnvVarSource, Pod, ResourceFieldSelector};

use crate::quantity::{Quantity, QuantityError};

/// Text that cannot become part of a container's environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A ConfigMap that is not optional does not exist.
    #[error("configmap {name:?} not found")]
    ConfigMapNotFound {
        /// The ConfigMap's name.
        name: String,
    },
    /// A key of a ConfigMap that is not optional does not exist.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        /// The pod's namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A Secret that is not optional does not exist.
    #[error("secret {name:?} not found")]
    SecretNotFound {
        /// The Secret's name.
        name: String,
    },
    /// A key of a Secret that is not optional does not exist.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        /// The pod's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A Secret value is bytes that are not UTF-8 text.
    #[error("key {key} in Secret {name} is not UTF-8 text")]
    SecretNotText {
        /// The Secret's name.
        name: String,
        /// The key.
        key: String,
    },
    /// A `fieldRef` names a field this agent does not provide.
    #[error("unsupported fieldRef {path:?} in env var {var}")]
    UnsupportedField {
        /// The variable.
        var: String,
        /// The field path.
        path: String,
    },
    /// A `resourceFieldRef` names a resource this agent does not provide.
    #[error("unsupported resourceFieldRef {resource:?} in env var {var}")]
    UnsupportedResource {
        /// The variable.
        var: String,
        /// The resource.
        resource: String,
    },
    /// A resource quantity in the pod is not a quantity.
    #[error("env var {var}: {source}")]
    Quantity {
        /// The variable.
        var: String,
        /// What is wrong with the quantity.
        source: QuantityError,
    },
    /// `valueFrom` names no source this agent knows.
    #[error("env var {var} has a valueFrom with no supported source")]
    NoSource {
        /// The variable.
        var: String,
    },
}

impl EnvError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ConfigMapNotFound { .. } => "configmap_not_found",
            Self::ConfigMapKeyNotFound { .. } => "configmap_key_not_found",
            Self::SecretNotFound { .. } => "secret_not_found",
            Self::SecretKeyNotFound { .. } => "secret_key_not_found",
            Self::SecretNotText { .. } => "secret_not_text",
            Self::UnsupportedField { .. } => "unsupported_field",
            Self::UnsupportedResource { .. } => "unsupported_resource",
            Self::Quantity { .. } => "quantity",
            Self::NoSource { .. } => "no_source",
        }
    }
}

/// Everything outside the container that its environment is made from.
#[derive(Debug, Clone, Copy)]
pub struct EnvContext<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The node's address.
    pub host_ip: Ipv4Addr,
    /// Variables every container starts with (`PATH`, `HOME`).
    pub base: &'a [(String, String)],
    /// The `data` of each referenced ConfigMap that exists, by name.
    pub config_maps: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// The `data` of each referenced Secret that exists, by name.
    pub secrets: &'a BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// The node's allocatable CPU, the value of an unset CPU limit.
    pub node_cpu: Quantity,
    /// The node's allocatable memory, the value of an unset memory limit.
    pub node_memory: Quantity,
}

/// The names of the ConfigMaps and Secrets a pod's containers read into
/// their environment: what to fetch before calling [`container_env`].
pub fn referenced_objects(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let containers = pod.spec.iter().flat_map(|spec| spec.containers.iter());
    for container in containers {
        for source in container.env_from.iter().flatten() {
            if let Some(name) = source.config_map_ref.as_ref().map(|r| &r.name) {
                config_maps.insert(name.clone());
            }
            if let Some(name) = source.secret_ref.as_ref().map(|r| &r.name) {
                secrets.insert(name.clone());
            }
        }
        for var in container.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            if let Some(key_ref) = &from.config_map_key_ref {
                config_maps.insert(key_ref.name.clone());
            }
            if let Some(key_ref) = &from.secret_key_ref {
                secrets.insert(key_ref.name.clone());
            }
        }
    }
    (config_maps, secrets)
}

/// An ordered set of variables: setting a name again replaces its value in
/// place, so the first definition decides the position.
#[derive(Debug, Default)]
struct Vars {
    order: Vec<(String, String)>,
    index: BTreeMap<String, usize>,
}

impl Vars {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&at) => {
                if let Some(slot) = self.order.get_mut(at) {
                    slot.1 = value;
                }
            }
            None => {
                self.index.insert(name.clone(), self.order.len());
                self.order.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        let at = *self.index.get(name)?;
        self.order.get(at).map(|(_, value)| value.as_str())
    }
}

/// The environment of `container`, in order, with `0.0.0.0` rewritten to the
/// pod's address.
///
/// # Errors
///
/// [`EnvError`] for a missing ConfigMap, Secret or key that is not optional,
/// and for a field or resource reference the agent does not provide; the
/// kubelet reports these as `CreateContainerConfigError`.
pub fn container_env(
    ctx: &EnvContext<'_>,
    container: &Container,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let mut all = Vars::default();
    for (name, value) in ctx.base {
        all.set(name.clone(), value.clone());
    }
    all.set("POD_IP".to_owned(), ctx.pod_ip.to_string());
    // Only what the pod itself defines is visible to $(VAR), as in the
    // kubelet, where the image's variables are unknown at this point.
    let mut defined = Vars::default();
    fn set(all: &mut Vars, defined: &mut Vars, name: String, value: String) {
        defined.set(name.clone(), value.clone());
        all.set(name, value);
    }

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or("");
        if let Some(map_ref) = &source.config_map_ref {
            match ctx.config_maps.get(&map_ref.name) {
                Some(data) => {
                    for (key, value) in data {
                        if usable_name(key) {
                            set(
                                &mut all,
                                &mut defined,
                                format!("{prefix}{key}"),
                                value.clone(),
                            );
                        }
                    }
                }
                None if map_ref.optional == Some(true) => {}
                None => {
                    return Err(EnvError::ConfigMapNotFound {
                        name: map_ref.name.clone(),
                    });
                }
            }
        }
        if let Some(secret_ref) = &source.secret_ref {
            match ctx.secrets.get(&secret_ref.name) {
                Some(data) => {
                    for (key, value) in data {
                        if usable_name(key) {
                            let value = text(&secret_ref.name, key, value)?;
                            set(&mut all, &mut defined, format!("{prefix}{key}"), value);
                        }
                    }
                }
                None if secret_ref.optional == Some(true) => {}
                None => {
                    return Err(EnvError::SecretNotFound {
                        name: secret_ref.name.clone(),
                    });
                }
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => value_from(ctx, container, &namespace, &var.name, from)?,
            (Some(value), None) => Some(expand(value, |name| defined.get(name))),
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            set(&mut all, &mut defined, var.name.clone(), value);
        }
    }

    Ok(all
        .order
        .into_iter()
        .map(|(name, value)| {
            let value = rewrite_wildcard(&value, ctx.pod_ip).into_owned();
            (name, value)
        })
        .collect())
}

/// `command` followed by `args`, `$(VAR)` expanded against `env` and
/// `0.0.0.0` rewritten to `pod_ip`: the arguments given to the image's
/// program.
pub fn command_line(
    container: &Container,
    env: &[(String, String)],
    pod_ip: Ipv4Addr,
) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(|arg| rewrite_wildcard(&expand(arg, lookup), pod_ip).into_owned())
        .collect()
}

fn usable_name(key: &str) -> bool {
    !key.is_empty() && !key.contains('=') && !key.contains('\0')
}

fn text(secret: &str, key: &str, value: &[u8]) -> Result<String, EnvError> {
    String::from_utf8(value.to_vec()).map_err(|_| EnvError::SecretNotText {
        name: secret.to_owned(),
        key: key.to_owned(),
    })
}

/// The value of one `valueFrom`; `None` when an optional source is missing.
fn value_from(
    ctx: &EnvContext<'_>,
    container: &Container,
    namespace: &str,
    var: &str,
    from: &EnvVarSource,
) -> Result<Option<String>, EnvError> {
    if let Some(field) = &from.field_ref {
        return field_value(ctx, var, &field.field_path).map(Some);
    }
    if let Some(key_ref) = &from.config_map_key_ref {
        let optional = key_ref.optional == Some(true);
        return match ctx.config_maps.get(&key_ref.name) {
            Some(data) => match data.get(&key_ref.key) {
                Some(value) => Ok(Some(value.clone())),
                None if optional => Ok(None),
                None => Err(EnvError::ConfigMapKeyNotFound {
                    namespace: namespace.to_owned(),
                    name: key_ref.name.clone(),
                    key: key_ref.key.clone(),
                }),
            },
            None if optional => Ok(None),
            None => Err(EnvError::ConfigMapNotFound {
                name: key_ref.name.clone(),
            }),
        };
    }
    if let Some(key_ref) = &from.secret_key_ref {
        let optional = key_ref.optional == Some(true);
        return match ctx.secrets.get(&key_ref.name) {
            Some(data) => match data.get(&key_ref.key) {
                Some(value) => text(&key_ref.name, &key_ref.key, value).map(Some),
                None if optional => Ok(None),
                None => Err(EnvError::SecretKeyNotFound {
                    namespace: namespace.to_owned(),
                    name: key_ref.name.clone(),
                    key: key_ref.key.clone(),
                }),
            },
            None if optional => Ok(None),
            None => Err(EnvError::SecretNotFound {
                name: key_ref.name.clone(),
            }),
        };
    }
    if let Some(resource) = &from.resource_field_ref {
        return resource_value(ctx, container, var, resource).map(Some);
    }
    Err(EnvError::NoSource {
        var: var.to_owned(),
    })
}

/// A downward-API field of the pod.
fn field_value(ctx: &EnvContext<'_>, var: &str, path: &str) -> Result<String, EnvError> {
    let meta = &ctx.pod.metadata;
    let spec = ctx.pod.spec.as_ref();
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .filter(|key| !key.contains('\''))
    };
    if let Some(key) = keyed("metadata.labels['") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(key) = keyed("metadata.annotations['") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
            .unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.to_string(),
        _ => {
            return Err(EnvError::UnsupportedField {
                var: var.to_owned(),
                path: path.to_owned(),
            });
        }
    })
}

/// A downward-API resource value: `ceil(quantity / divisor)`, with the
/// node's allocatable standing in for an unset limit, as in the kubelet.
fn resource_value(
    ctx: &EnvContext<'_>,
    this: &Container,
    var: &str,
    selector: &ResourceFieldSelector,
) -> Result<String, EnvError> {
    let quantity_error = |source| EnvError::Quantity {
        var: var.to_owned(),
        source,
    };
    let container = match selector.container_name.as_deref() {
        Some(name) if !name.is_empty() && name != this.name => ctx
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| c.name == name)
            .unwrap_or(this),
        _ => this,
    };
    let resources = container.resources.as_ref();
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .unwrap_or(("", selector.resource.as_str()));
    let list = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    let (fallback, is_cpu) = match (kind, resource) {
        ("limits", "cpu") => (ctx.node_cpu, true),
        ("limits", "memory") => (ctx.node_memory, false),
        ("requests", "cpu") => (Quantity::ZERO, true),
        ("requests", "memory") => (Quantity::ZERO, false),
        _ => {
            return Err(EnvError::UnsupportedResource {
                var: var.to_owned(),
                resource: selector.resource.clone(),
            });
        }
    };
    let value = match list.and_then(|l| l.get(resource)) {
        Some(q) => Quantity::parse(&q.0).map_err(quantity_error)?,
        None => fallback,
    };
    let divisor = match &selector.divisor {
        Some(d) => Quantity::parse(&d.0).map_err(quantity_error)?,
        None => Quantity::ONE,
    };
    // The kubelet divides CPU in millicores, so "1m" of a "250m" limit is 250.
    let result = if is_cpu {
        let divisor = divisor.millis_ceil().max(1);
        let millis = value.millis_ceil();
        (millis + divisor - 1).div_euclid(divisor)
    } else {
        value.div_ceil(divisor).unwrap_or(0)
    };
    Ok(result.to_string())
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value `lookup`
/// gives, or stays as written when there is none; `$$` is a literal `$`; a
/// `$` before anything else, and an unclosed `$(`, are kept as they are.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after[1..].find(')') {
                Some(close) => {
                    let name = &after[1..1 + close];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 2..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(other) => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The wildcard address every occurrence of which becomes the pod's.
const WILDCARD: &str = "0.0.0.0";

/// `input` with each `0.0.0.0` that stands alone as an address (not part of
/// a longer number such as `10.0.0.0`, and not a CIDR such as `0.0.0.0/0`)
/// replaced by `pod_ip`.
pub fn rewrite_wildcard(input: &str, pod_ip: Ipv4Addr) -> Cow<'_, str> {
    if !input.contains(WILDCARD) {
        return Cow::Borrowed(input);
    }
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len() + 8);
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = input[search..].find(WILDCARD) {
        let start = search + found;
        let end = start + WILDCARD.len();
        let before = start.checked_sub(1).and_then(|i| bytes.get(i)).copied();
        let after = bytes.get(end).copied();
        let after_next = bytes.get(end + 1).copied();
        let joined_before = before.is_some_and(|b| b.is_ascii_digit() || b == b'.');
        let joined_after = match after {
            Some(b) if b.is_ascii_digit() || b == b'/' => true,
            Some(b'.') => after_next.is_some_and(|b| b.is_ascii_digit()),
            _ => false,
        };
        if joined_before || joined_after {
            search = start + 1;
            continue;
        }
        out.push_str(&input[copied..start]);
        out.push_str(&pod_ip.to_string());
        copied = end;
        search = end;
    }
    if copied == 0 {
        return Cow::Borrowed(input);
    }
    out.push_str(&input[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, ObjectFieldSelector,
        PodSpec, ResourceRequirements, SecretEnvSource, SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;

    const POD_IP: Ipv4Addr = Ipv4Addr::new(127, 10, 0, 7);
    const HOST_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn lookup_in<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = [("A", "alpha"), ("B", "beta"), ("EMPTY", "")];
        let cases = [
            ("$(A)", "alpha"),
            ("x-$(A)-$(B)-y", "x-alpha-beta-y"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$alpha"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$A", "$A"),
            ("$(A", "$(A"),
            ("$(", "$("),
            ("$(EMPTY)x", "x"),
            ("$()", "$()"),
            ("$é", "$é"),
            ("no vars", "no vars"),
            ("$(A)$(A)", "alphaalpha"),
            ("$($(A))", "$($(A))"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup_in(&vars)), want, "{input:?}");
        }
    }

    #[test]
    fn wildcard_becomes_the_pod_address_only_where_it_is_an_address() {
        let cases = [
            ("0.0.0.0", "127.10.0.7"),
            ("--bind=0.0.0.0", "--bind=127.10.0.7"),
            ("0.0.0.0:8080", "127.10.0.7:8080"),
            ("http://0.0.0.0:80/x", "http://127.10.0.7:80/x"),
            ("0.0.0.0,0.0.0.0", "127.10.0.7,127.10.0.7"),
            ("10.0.0.0", "10.0.0.0"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("0.0.0.00", "0.0.0.00"),
            ("0.0.0.0.1", "0.0.0.0.1"),
            ("ends with 0.0.0.0.", "ends with 127.10.0.7."),
            ("127.0.0.1", "127.0.0.1"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(rewrite_wildcard(input, POD_IP), want, "{input:?}");
        }
        assert!(matches!(
            rewrite_wildcard("10.0.0.0", POD_IP),
            Cow::Borrowed(_)
        ));
    }

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("ns1".into()),
                uid: Some("uid-1".into()),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                annotations: Some([("note".to_owned(), "hi".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers,
                node_name: Some("rtc-node-0".into()),
                service_account_name: Some("default".into()),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn literal(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: path.into(),
                }),
                ..EnvVarSource::default()
            }),
        }
    }

    fn config_key(name: &str, map: &str, key: &str, optional: bool) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: map.into(),
                    key: key.into(),
                    optional: Some(optional),
                }),
                ..EnvVarSource::default()
            }),
        }
    }

    struct Fixture {
        base: Vec<(String, String)>,
        config_maps: BTreeMap<String, BTreeMap<String, String>>,
        secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                base: vec![
                    ("PATH".into(), "/usr/bin:/bin".into()),
                    ("HOME".into(), "/root".into()),
                ],
                config_maps: [(
                    "settings".to_owned(),
                    [
                        ("MODE".to_owned(), "fast".to_owned()),
                        ("LISTEN".to_owned(), "0.0.0.0:9000".to_owned()),
                        ("bad=key".to_owned(), "skipped".to_owned()),
                    ]
                    .into(),
                )]
                .into(),
                secrets: [(
                    "creds".to_owned(),
                    [
                        ("TOKEN".to_owned(), b"s3cret".to_vec()),
                        ("BINARY".to_owned(), vec![0xff, 0xfe]),
                    ]
                    .into(),
                )]
                .into(),
            }
        }

        fn env(&self, pod: &Pod, container: &Container) -> Result<Vec<(String, String)>, EnvError> {
            let ctx = EnvContext {
                pod,
                pod_ip: POD_IP,
                host_ip: HOST_IP,
                base: &self.base,
                config_maps: &self.config_maps,
                secrets: &self.secrets,
                node_cpu: Quantity::parse("2").expect("cpu"),
                node_memory: Quantity::parse("8Gi").expect("memory"),
            };
            container_env(&ctx, container)
        }
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn container(env: Vec<EnvVar>, env_from: Vec<EnvFromSource>) -> Container {
        Container {
            name: "main".into(),
            env: Some(env),
            env_from: Some(env_from),
            ..Container::default()
        }
    }

    #[test]
    fn base_then_env_from_then_env_with_later_entries_winning() {
        let fixture = Fixture::new();
        let c = container(
            vec![
                literal("MODE", "slow-$(MODE)"),
                literal("GREETING", "hello $(CFG_MODE) $(PATH)"),
                literal("HOME", "/work"),
            ],
            vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "settings".into(),
                        optional: None,
                    }),
                    prefix: None,
                    secret_ref: None,
                },
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "settings".into(),
                        optional: None,
                    }),
                    prefix: Some("CFG_".into()),
                    secret_ref: None,
                },
                EnvFromSource {
                    config_map_ref: None,
                    prefix: None,
                    secret_ref: Some(SecretEnvSource {
                        name: "missing".into(),
                        optional: Some(true),
                    }),
                },
            ],
        );
        let p = pod(vec![c.clone()]);
        let env = fixture.env(&p, &c).expect("env");
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "POD_IP",
                "LISTEN",
                "MODE",
                "CFG_LISTEN",
                "CFG_MODE",
                "GREETING"
            ]
        );
        assert_eq!(get(&env, "MODE"), Some("slow-fast"));
        // PATH comes from the agent, not the pod, so $(PATH) is not expanded.
        assert_eq!(get(&env, "GREETING"), Some("hello fast $(PATH)"));
        assert_eq!(get(&env, "HOME"), Some("/work"));
        assert_eq!(get(&env, "POD_IP"), Some("127.10.0.7"));
        assert_eq!(get(&env, "LISTEN"), Some("127.10.0.7:9000"));
    }

    #[test]
    fn field_refs_give_the_downward_api_values() {
        let fixture = Fixture::new();
        let c = container(
            vec![
                field("POD_NAME", "metadata.name"),
                field("NS", "metadata.namespace"),
                field("UID", "metadata.uid"),
                field("APP", "metadata.labels['app']"),
                field("NONE", "metadata.labels['nope']"),
                field("NOTE", "metadata.annotations['note']"),
                field("NODE", "spec.nodeName"),
                field("SA", "spec.serviceAccountName"),
                field("IP", "status.podIP"),
                field("HOST", "status.hostIP"),
            ],
            vec![],
        );
        let p = pod(vec![c.clone()]);
        let env = fixture.env(&p, &c).expect("env");
        for (name, want) in [
            ("POD_NAME", "web-0"),
            ("NS", "ns1"),
            ("UID", "uid-1"),
            ("APP", "web"),
            ("NONE", ""),
            ("NOTE", "hi"),
            ("NODE", "rtc-node-0"),
            ("SA", "default"),
            ("IP", "127.10.0.7"),
            ("HOST", "127.0.0.1"),
        ] {
            assert_eq!(get(&env, name), Some(want), "{name}");
        }
    }

    #[test]
    fn unknown_field_paths_are_refused() {
        let fixture = Fixture::new();
        let c = container(vec![field("X", "spec.hostname")], vec![]);
        let err = fixture
            .env(&pod(vec![c.clone()]), &c)
            .expect_err("unsupported");
        assert_eq!(err.label(), "unsupported_field");
        assert!(err.to_string().contains("spec.hostname"), "{err}");
    }

    #[test]
    fn missing_config_maps_and_keys_fail_unless_optional() {
        let fixture = Fixture::new();
        let cases = [
            (
                config_key("A", "nope", "k", false),
                Some("configmap \"nope\" not found"),
            ),
            (
                config_key("A", "settings", "nope", false),
                Some("couldn't find key nope in ConfigMap ns1/settings"),
            ),
            (config_key("A", "nope", "k", true), None),
            (config_key("A", "settings", "nope", true), None),
        ];
        for (var, want) in cases {
            let c = container(vec![var], vec![]);
            let result = fixture.env(&pod(vec![c.clone()]), &c);
            match want {
                Some(message) => assert_eq!(result.expect_err(message).to_string(), message),
                None => assert_eq!(get(&result.expect("optional"), "A"), None),
            }
        }
        let c = container(
            vec![],
            vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "absent".into(),
                    optional: Some(false),
                }),
                prefix: None,
                secret_ref: None,
            }],
        );
        let err = fixture.env(&pod(vec![c.clone()]), &c).expect_err("missing");
        assert_eq!(err.label(), "configmap_not_found");
    }

    #[test]
    fn secrets_are_read_as_text() {
        let fixture = Fixture::new();
        let secret_key = |key: &str| EnvVar {
            name: "S".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "creds".into(),
                    key: key.into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        };
        let c = container(vec![secret_key("TOKEN")], vec![]);
        let env = fixture.env(&pod(vec![c.clone()]), &c).expect("env");
        assert_eq!(get(&env, "S"), Some("s3cret"));
        let c = container(vec![secret_key("BINARY")], vec![]);
        let err = fixture.env(&pod(vec![c.clone()]), &c).expect_err("binary");
        assert_eq!(err.label(), "secret_not_text");
        let c = container(vec![secret_key("NOPE")], vec![]);
        let err = fixture
            .env(&pod(vec![c.clone()]), &c)
            .expect_err("missing key");
        assert_eq!(
            err.to_string(),
            "couldn't find key NOPE in Secret ns1/creds"
        );
    }

    #[test]
    fn resource_refs_divide_and_fall_back_to_the_node() {
        let fixture = Fixture::new();
        let resource = |name: &str, resource: &str, divisor: Option<&str>| EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: None,
                    divisor: divisor.map(|d| ApiQuantity(d.into())),
                    resource: resource.into(),
                }),
                ..EnvVarSource::default()
            }),
        };
        let mut c = container(
            vec![
                resource("CPU_LIMIT", "limits.cpu", None),
                resource("CPU_LIMIT_M", "limits.cpu", Some("1m")),
                resource("MEM_LIMIT_MI", "limits.memory", Some("1Mi")),
                resource("CPU_REQ", "requests.cpu", Some("1m")),
            ],
            vec![],
        );
        c.resources = Some(ResourceRequirements {
            limits: Some([("cpu".to_owned(), ApiQuantity("250m".into()))].into()),
            ..ResourceRequirements::default()
        });
        let env = fixture.env(&pod(vec![c.clone()]), &c).expect("env");
        assert_eq!(get(&env, "CPU_LIMIT"), Some("1"));
        assert_eq!(get(&env, "CPU_LIMIT_M"), Some("250"));
        assert_eq!(get(&env, "MEM_LIMIT_MI"), Some("8192"));
        assert_eq!(get(&env, "CPU_REQ"), Some("0"));
        let c = container(vec![resource("X", "limits.nvidia.com/gpu", None)], vec![]);
        let err = fixture
            .env(&pod(vec![c.clone()]), &c)
            .expect_err("unsupported");
        assert_eq!(err.label(), "unsupported_resource");
    }

    #[test]
    fn command_line_is_command_then_args_expanded_and_rewritten() {
        let c = Container {
            name: "main".into(),
            command: Some(vec!["-m".into(), "http.server".into()]),
            args: Some(vec![
                "$(PORT)".into(),
                "--bind".into(),
                "0.0.0.0".into(),
                "$(NOPE)".into(),
            ]),
            ..Container::default()
        };
        let env = vec![("PORT".to_owned(), "8080".to_owned())];
        assert_eq!(
            command_line(&c, &env, POD_IP),
            [
                "-m",
                "http.server",
                "8080",
                "--bind",
                "127.10.0.7",
                "$(NOPE)"
            ]
        );
        let bare = Container::default();
        assert!(command_line(&bare, &env, POD_IP).is_empty());
    }

    #[test]
    fn referenced_objects_are_collected_from_every_container() {
        let c1 = container(
            vec![config_key("A", "one", "k", false)],
            vec![EnvFromSource {
                config_map_ref: None,
                prefix: None,
                secret_ref: Some(SecretEnvSource {
                    name: "s1".into(),
                    optional: None,
                }),
            }],
        );
        let c2 = container(
            vec![],
            vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "two".into(),
                    optional: None,
                }),
                prefix: None,
                secret_ref: None,
            }],
        );
        let (maps, secrets) = referenced_objects(&pod(vec![c1, c2]));
        assert_eq!(maps.into_iter().collect::<Vec<_>>(), ["one", "two"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["s1"]);
    }

    proptest! {
        #[test]
        fn expansion_never_panics_and_leaves_dollar_free_text_alone(text in "\\PC{0,40}") {
            let expanded = expand(&text, |_| Some("v"));
            if !text.contains('$') {
                prop_assert_eq!(expanded, text);
            }
        }

        #[test]
        fn unknown_variables_expand_to_themselves(text in "[a-z$()]{0,30}") {
            // Only `$$` changes text when nothing is defined.
            let expanded = expand(&text, |_| None);
            if !text.contains("$$") {
                prop_assert_eq!(expanded, text);
            }
        }

        #[test]
        fn rewriting_never_panics_and_only_touches_wildcards(text in "[0-9./:a-z]{0,40}") {
            let rewritten = rewrite_wildcard(&text, POD_IP);
            if !text.contains(WILDCARD) {
                prop_assert_eq!(rewritten.as_ref(), text.as_str());
            }
            prop_assert_eq!(rewritten.replace("127.10.0.7", WILDCARD), text.replace("127.10.0.7", WILDCARD));
        }
    }
}
