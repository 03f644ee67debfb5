use std::fmt;
use std::path::PathBuf;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What to tell a person whose test could not reach the stack.
const START_THE_STACK: &str =
    "start the local stack with `deploy/local/stack up` (or `just stack-up`)";

/// A server of the local stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Redis.
    Redis,
    /// The Kafka-protocol broker.
    Kafka,
    /// The Kubernetes API server.
    KubernetesApi,
    /// toxiproxy's HTTP API.
    Toxiproxy,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redis => "redis",
            Self::Kafka => "kafka broker",
            Self::KubernetesApi => "kubernetes api server",
            Self::Toxiproxy => "toxiproxy",
        })
    }
}

/// Why the test kit could not hand out a client.
// Debug shows the message, because tests surface it through `expect` and `?`.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server did not answer at its address (refused, timed out, or broke
    /// off the first request).
    #[error("{service} at {address} is unreachable: {}; {START_THE_STACK}", chain(.source.as_ref()))]
    Unreachable {
        /// The server that did not answer.
        service: Service,
        /// Where it was expected.
        address: String,
        /// What the client saw.
        source: BoxError,
    },

    /// An address from the environment cannot be used by the client.
    #[error("{service} address {address:?} is not usable: {source}")]
    BadAddress {
        /// The server the address is for.
        service: Service,
        /// The address as given.
        address: String,
        /// Why the client rejected it.
        source: BoxError,
    },

    /// The kubeconfig is missing or cannot be read.
    #[error(
        "cannot use the kubeconfig {path}: {source}; {START_THE_STACK}, which writes it, or point KUBECONFIG at one"
    )]
    Kubeconfig {
        /// The kubeconfig's path.
        path: PathBuf,
        /// Why it could not be used.
        source: BoxError,
    },

    /// The kubeconfig names an API server off this machine; tests only ever
    /// create and delete things on the local stack.
    #[error(
        "refusing the kubernetes api server {address} named by {path}: tests only talk to servers on loopback; point KUBECONFIG at the local stack's kubeconfig or unset it"
    )]
    NotLoopback {
        /// The server URL from the kubeconfig.
        address: String,
        /// The kubeconfig's path.
        path: PathBuf,
    },

    /// A new namespace got no `default` service account in time: the
    /// stack's controller-manager (its service-account controller) is not
    /// running.
    #[error(
        "namespace {namespace} got no default service account within {waited:?}: is the \
         controller-manager running? check with `deploy/local/stack status`, start with \
         `deploy/local/stack up`"
    )]
    NoServiceAccount {
        /// The test's namespace.
        namespace: String,
        /// How long the test waited.
        waited: std::time::Duration,
    },

    /// A workload's controller did not observe its latest spec in time: the
    /// stack's controller-manager is not running or is stuck.
    #[error(
        "the controller of {name} did not observe its latest spec within {waited:?}: is the \
         controller-manager running? check with `deploy/local/stack status`"
    )]
    NotObserved {
        /// The workload.
        name: String,
        /// How long the test waited.
        waited: std::time::Duration,
    },

    /// The pods of a workload did not all get Ready in time.
    #[error("not {count} Ready pods matching {selector} after {waited:?}: {seen}")]
    NotReady {
        /// The pods' label selector.
        selector: String,
        /// How many Ready pods were awaited.
        count: usize,
        /// How long the test waited.
        waited: std::time::Duration,
        /// Each pod seen last: name, phase, container state, ready.
        seen: String,
    },

    /// A manifest of deploy/k8s could not be used as a fixture.
    #[error("manifest {path}: {reason}")]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// toxiproxy answered a request with an error, or with something its
    /// API does not promise.
    #[error("toxiproxy: {request} answered {status}: {message}")]
    Toxiproxy {
        /// The request, e.g. `POST /proxies`.
        request: String,
        /// The HTTP status of the answer (0 when the request could not be
        /// built).
        status: u16,
        /// toxiproxy's own message, or what was wrong with the answer.
        message: String,
    },

    /// The API server's audit log cannot be read, or holds a complete line
    /// that is not an audit event.
    #[error(
        "cannot use the audit log {path}: {source}; the stack's API server writes it \
         (`deploy/local/stack up apiserver`), RTC_AUDIT_LOG names it (`deploy/local/stack env`)"
    )]
    AuditLog {
        /// The audit log's path.
        path: PathBuf,
        /// Why it could not be used.
        source: BoxError,
    },

    /// A Redis command failed on a working connection.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),

    /// A broker request failed on a working connection.
    #[error("kafka: {0}")]
    Kafka(#[from] rskafka::client::error::Error),

    /// A Kubernetes API request failed on a working connection.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::BadAddress { .. } => "bad_address",
            Self::Kubeconfig { .. } => "kubeconfig",
            Self::NotLoopback { .. } => "not_loopback",
            Self::NoServiceAccount { .. } => "no_service_account",
            Self::Manifest { .. } => "manifest",
            Self::NotObserved { .. } => "not_observed",
            Self::NotReady { .. } => "not_ready",
            Self::Toxiproxy { .. } => "toxiproxy",
            Self::AuditLog { .. } => "audit_log",
            Self::Redis(_) => "redis",
            Self::Kafka(_) => "kafka",
            Self::Kube(_) => "kube",
        }
    }

    pub(crate) fn unreachable(
        service: Service,
        address: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Unreachable {
            service,
            address: address.into(),
            source: source.into(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An error and its causes, joined: client libraries often wrap the telling
/// cause (refused, bad certificate) in a generic one ("client error").
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// A client that gave no answer within its time.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
pub(crate) struct NoAnswer(pub(crate) std::time::Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_names_service_address_and_the_way_out() {
        let error = Error::unreachable(
            Service::Kafka,
            "127.0.0.1:19092",
            NoAnswer(std::time::Duration::from_secs(5)),
        );
        let message = error.to_string();
        assert!(
            message.contains("kafka broker at 127.0.0.1:19092"),
            "{message}"
        );
        assert!(message.contains("deploy/local/stack up"), "{message}");
        assert!(message.contains("just stack-up"), "{message}");
        assert_eq!(format!("{error:?}"), message);
        assert_eq!(error.label(), "unreachable");
    }
}
