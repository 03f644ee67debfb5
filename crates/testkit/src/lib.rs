//! Test support for integration tests that talk to the local stack's real
//! servers: Redis, a Kafka-protocol broker, a Kubernetes API server and
//! toxiproxy, all on 127.0.0.1 and started by `deploy/local/stack up` (or
//! `just stack-up`).
//!
//! Every helper hands a test a ready client together with something of its
//! own, so tests run in parallel without seeing each other:
//!
//! - [`redis`]: a fred client and a unique key prefix ([`TestRedis`]);
//! - [`kafka`]: an rskafka client and a freshly created topic ([`TestKafka`]);
//! - [`kubernetes`]: a kube client and a freshly created namespace, deleted
//!   when dropped or by [`TestNamespace::cleanup`] ([`TestNamespace`]);
//! - [`toxiproxy()`]: a client for toxiproxy's API, whose
//!   [`Toxiproxy::proxy`](toxiproxy::Toxiproxy::proxy) makes a proxy of the
//!   test's own, deleted when dropped, to put network faults between a client
//!   and a server ([`mod@toxiproxy`]).
//!
//! [`audit`] reads the API server's audit log, to count the writes of a
//! test's namespace that reached the server, by user and answer.
//!
//! Where the servers are comes from [`Endpoints::from_env`]: `RTC_REDIS_URL`,
//! `RTC_KAFKA_BOOTSTRAP`, `KUBECONFIG`, `RTC_TOXIPROXY_URL` and
//! `RTC_AUDIT_LOG` when set (as printed by `deploy/local/stack env`), else the
//! stack's defaults. A server that does not answer fails the helper with an
//! [`Error::Unreachable`] that names the service and its address and says how
//! to start the stack, rather than with a timeout deep inside a client
//! library.
//!
//! ```no_run
//! # async fn example() -> Result<(), rtc_testkit::Error> {
//! let redis = rtc_testkit::redis().await?;
//! let key = redis.key("heartbeat");
//! assert!(key.starts_with(redis.prefix()));
//! # Ok(())
//! # }
//! ```

pub mod audit;
mod drop_cleanup;
mod endpoints;
mod error;
pub mod fixtures;
mod http;
mod kafka;
mod kubernetes;
pub mod manifests;
mod names;
mod redis;
pub mod toxiproxy;

pub use drop_cleanup::run_to_end;
pub use endpoints::Endpoints;
pub use error::{Error, Service};
pub use http::{http, http_with};
pub use kafka::TestKafka;
pub use kubernetes::TestNamespace;
pub use names::unique_name;
pub use redis::TestRedis;

/// Connects to the stack's Redis found by [`Endpoints::from_env`].
///
/// # Errors
///
/// [`Error::Unreachable`] when Redis does not answer, [`Error::BadAddress`]
/// when `RTC_REDIS_URL` is not a Redis URL.
pub async fn redis() -> Result<TestRedis, Error> {
    TestRedis::connect(&Endpoints::from_env()).await
}

/// Connects to the stack's broker found by [`Endpoints::from_env`] and creates
/// a topic of one partition for the caller.
///
/// # Errors
///
/// [`Error::Unreachable`] when the broker does not answer, [`Error::Kafka`]
/// when it refuses to create the topic.
pub async fn kafka() -> Result<TestKafka, Error> {
    TestKafka::connect(&Endpoints::from_env(), 1).await
}

/// Connects to the stack's Kubernetes API server found by
/// [`Endpoints::from_env`] and creates a namespace for the caller.
///
/// # Errors
///
/// [`Error::Kubeconfig`] when the kubeconfig cannot be read,
/// [`Error::NotLoopback`] when it names a server off this machine,
/// [`Error::Unreachable`] when the server does not answer, [`Error::Kube`]
/// when it refuses the namespace.
pub async fn kubernetes() -> Result<TestNamespace, Error> {
    TestNamespace::create(&Endpoints::from_env()).await
}

/// Connects to the stack's toxiproxy found by [`Endpoints::from_env`].
///
/// # Errors
///
/// [`Error::BadAddress`] when `RTC_TOXIPROXY_URL` is not `http://` on
/// loopback, [`Error::Unreachable`] when toxiproxy does not answer.
pub async fn toxiproxy() -> Result<toxiproxy::Toxiproxy, Error> {
    toxiproxy::Toxiproxy::connect(&Endpoints::from_env()).await
}
