use std::env;
use std::path::{Path, PathBuf};

/// Where the local stack's servers listen.
///
/// Both constructors only describe addresses; nothing is contacted until a
/// helper such as [`TestRedis::connect`](crate::TestRedis::connect) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Redis URL, e.g. `redis://127.0.0.1:16379`.
    pub redis_url: String,
    /// Kafka bootstrap address as `host:port`, e.g. `127.0.0.1:19092`.
    pub kafka_bootstrap: String,
    /// Path of the kubeconfig that points at the Kubernetes API server.
    pub kubeconfig: PathBuf,
    /// toxiproxy's HTTP API, e.g. `http://127.0.0.1:18474`.
    pub toxiproxy_url: String,
    /// Path of the Kubernetes API server's audit log (JSON lines).
    pub audit_log: PathBuf,
}

impl Endpoints {
    /// The addresses `deploy/local/stack up` uses when no port is overridden:
    /// Redis on 127.0.0.1:16379, the broker on 127.0.0.1:19092, toxiproxy's
    /// API on 127.0.0.1:18474, and the kubeconfig and the API server's audit
    /// log the stack writes to `<repository>/target/stack/kubeconfig` and
    /// `<repository>/target/stack/audit.log`.
    pub fn stack_defaults() -> Self {
        let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let repository = repository.canonicalize().unwrap_or(repository);
        Self {
            redis_url: "redis://127.0.0.1:16379".to_owned(),
            kafka_bootstrap: "127.0.0.1:19092".to_owned(),
            kubeconfig: repository.join("target/stack/kubeconfig"),
            toxiproxy_url: "http://127.0.0.1:18474".to_owned(),
            audit_log: repository.join("target/stack/audit.log"),
        }
    }

    /// The stack's defaults, each replaced by its environment variable when
    /// that is set and not empty: `RTC_REDIS_URL`, `RTC_KAFKA_BOOTSTRAP`,
    /// `KUBECONFIG` (a single path), `RTC_TOXIPROXY_URL` and `RTC_AUDIT_LOG`,
    /// the names `deploy/local/stack env` prints.
    pub fn from_env() -> Self {
        let mut endpoints = Self::stack_defaults();
        if let Some(url) = non_empty_var("RTC_REDIS_URL") {
            endpoints.redis_url = url;
        }
        if let Some(bootstrap) = non_empty_var("RTC_KAFKA_BOOTSTRAP") {
            endpoints.kafka_bootstrap = bootstrap;
        }
        if let Some(path) = non_empty_var("KUBECONFIG") {
            endpoints.kubeconfig = PathBuf::from(path);
        }
        if let Some(url) = non_empty_var("RTC_TOXIPROXY_URL") {
            endpoints.toxiproxy_url = url;
        }
        if let Some(path) = non_empty_var("RTC_AUDIT_LOG") {
            endpoints.audit_log = PathBuf::from(path);
        }
        endpoints
    }
}

fn non_empty_var(key: &str) -> Option<String> {
    env::var(key).ok().filter(|value| !value.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_stack_ports_and_run_directory() {
        let defaults = Endpoints::stack_defaults();
        assert_eq!(defaults.redis_url, "redis://127.0.0.1:16379");
        assert_eq!(defaults.kafka_bootstrap, "127.0.0.1:19092");
        assert!(defaults.kubeconfig.ends_with("target/stack/kubeconfig"));
        assert_eq!(defaults.toxiproxy_url, "http://127.0.0.1:18474");
        assert!(defaults.audit_log.ends_with("target/stack/audit.log"));
    }
}
