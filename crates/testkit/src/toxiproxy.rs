//! A client for the local stack's toxiproxy: TCP proxies between a test and
//! a real server (Redis, the broker, the API server), with network faults
//! ("toxics") added and removed while the test runs.
//!
//! Each test creates proxies of its own, named by [`unique_name`] and
//! listening on a loopback port the system picks, and connects its client
//! to [`Proxy::listen`] instead of the server. A proxy is deleted when
//! dropped, or by [`Proxy::remove`], which also reports failures.
//!
//! The API is toxiproxy v2.5.0's (the release `deploy/local/build.sh`
//! pins): plain HTTP/1.1 with JSON bodies on 127.0.0.1.
//!
//! ```no_run
//! # async fn example() -> Result<(), rtc_testkit::Error> {
//! use std::time::Duration;
//! use rtc_testkit::toxiproxy::Toxic;
//!
//! let toxiproxy = rtc_testkit::toxiproxy().await?;
//! let proxy = toxiproxy.proxy("redis", "127.0.0.1:16379").await?;
//! let latency = proxy.add(&Toxic::latency(Duration::from_millis(200), Duration::ZERO)).await?;
//! // ... connect to proxy.listen(): every answer comes 200 ms late ...
//! proxy.remove_toxic(&latency).await?;
//! proxy.remove().await
//! # }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::NoAnswer;
use crate::{Endpoints, Error, Service, unique_name};

/// How long toxiproxy may take to answer a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for toxiproxy's HTTP API.
///
/// Cheap to clone; clones share one connection pool. Like every client of
/// this crate it belongs to the runtime it was first used in (one test).
#[derive(Clone)]
pub struct Toxiproxy {
    client: Client<HttpConnector, Full<Bytes>>,
    /// The API's base URL, without a trailing `/`.
    url: String,
}

impl std::fmt::Debug for Toxiproxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toxiproxy")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Toxiproxy {
    /// A client for the API at `endpoints.toxiproxy_url`, checked with
    /// `GET /version`.
    ///
    /// # Errors
    ///
    /// [`Error::BadAddress`] when the URL is not `http://` on loopback,
    /// [`Error::Unreachable`] when toxiproxy does not answer.
    pub async fn connect(endpoints: &Endpoints) -> Result<Self, Error> {
        let toxiproxy = Self::new(&endpoints.toxiproxy_url)?;
        toxiproxy.version().await?;
        Ok(toxiproxy)
    }

    /// A client for the API at `url`, without contacting it. Only `http://`
    /// URLs on loopback are accepted: the proxies a test makes are for the
    /// local stack only.
    ///
    /// # Errors
    ///
    /// [`Error::BadAddress`] for any other URL.
    pub fn new(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::BadAddress {
            service: Service::Toxiproxy,
            address: url.to_owned(),
            source: reason.into(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| bad("not a URL, e.g. http://127.0.0.1:18474"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("toxiproxy's API is plain http://"));
        }
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(bad("only toxiproxy on loopback is used by tests"));
        }
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// The API's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's version (`GET /version`), e.g. `2.5.0`.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] when toxiproxy does not answer,
    /// [`Error::Toxiproxy`] when it answers with an error.
    pub async fn version(&self) -> Result<String, Error> {
        let body = self
            .call(Method::GET, "/version", None, StatusCode::OK)
            .await?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }

    /// Creates an enabled proxy to `upstream` (`host:port`) listening on a
    /// free loopback port, named `rtc-<kind>-...` ([`unique_name`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] when toxiproxy does not answer,
    /// [`Error::Toxiproxy`] when it refuses the proxy.
    pub async fn proxy(&self, kind: &str, upstream: &str) -> Result<Proxy, Error> {
        let name = unique_name(kind);
        let body = json!({
            "name": name,
            "listen": "127.0.0.1:0",
            "upstream": upstream,
            "enabled": true,
        });
        let created: ProxyState = self
            .call_json(Method::POST, "/proxies", Some(body), StatusCode::CREATED)
            .await?;
        let listen = created.listen.parse().map_err(|_| Error::Toxiproxy {
            request: "POST /proxies".to_owned(),
            status: StatusCode::CREATED.as_u16(),
            message: format!("listen address {:?} is not host:port", created.listen),
        })?;
        Ok(Proxy {
            api: self.clone(),
            name: created.name,
            listen,
            upstream: created.upstream,
            removed: false,
        })
    }

    /// Sends a request and returns the body of an answer with status
    /// `expected`; any other answer is an [`Error::Toxiproxy`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> Result<Bytes, Error> {
        let what = format!("{method} {path}");
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| Error::Toxiproxy {
                request: what.clone(),
                status: 0,
                message: format!("not a valid request: {e}"),
            })?;
        let unreachable = |source: crate::error::BoxError| {
            Error::unreachable(Service::Toxiproxy, &self.url, source)
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unreachable(NoAnswer(REQUEST_TIMEOUT).into()))?
            .map_err(|e| unreachable(e.into()))?;
        let status = response.status();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| unreachable(NoAnswer(REQUEST_TIMEOUT).into()))?
            .map_err(|e| unreachable(e.into()))?
            .to_bytes();
        if status != expected {
            return Err(Error::Toxiproxy {
                request: what,
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        Ok(body)
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> Result<T, Error> {
        let what = format!("{method} {path}");
        let answer = self.call(method, path, body, expected).await?;
        serde_json::from_slice(&answer).map_err(|e| Error::Toxiproxy {
            request: what,
            status: expected.as_u16(),
            message: format!(
                "unexpected answer ({e}): {}",
                String::from_utf8_lossy(&answer)
            ),
        })
    }
}

/// toxiproxy's message in an error answer (`{"error": ..., "status": ...}`),
/// or the body as it is.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        error: String,
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// A proxy as toxiproxy describes it.
#[derive(Debug, Deserialize)]
struct ProxyState {
    name: String,
    listen: String,
    upstream: String,
}

/// A toxic as toxiproxy describes it.
#[derive(Debug, Deserialize)]
struct ToxicState {
    name: String,
}

/// A proxy of one test: connections to [`listen`](Self::listen) are
/// forwarded to [`upstream`](Self::upstream) through the proxy's toxics.
///
/// Deleted when dropped (its connections are closed), or earlier by
/// [`remove`](Self::remove).
#[derive(Debug)]
pub struct Proxy {
    api: Toxiproxy,
    name: String,
    listen: SocketAddr,
    upstream: String,
    removed: bool,
}

impl Proxy {
    /// The proxy's name in toxiproxy.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the test connects to instead of the upstream.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Where the proxy forwards connections (`host:port`).
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    fn path(&self) -> String {
        format!("/proxies/{}", path_segment(&self.name))
    }

    /// Adds `toxic` to the proxy; it applies to open connections and new
    /// ones alike. Returns the toxic's name, for
    /// [`remove_toxic`](Self::remove_toxic).
    ///
    /// # Errors
    ///
    /// [`Error::Toxiproxy`] when toxiproxy refuses it, e.g. with 409 when a
    /// toxic of that name is already there (give a second toxic of the same
    /// type and stream a name with [`Toxic::named`]).
    pub async fn add(&self, toxic: &Toxic) -> Result<String, Error> {
        let path = format!("{}/toxics", self.path());
        let added: ToxicState = self
            .api
            .call_json(Method::POST, &path, Some(toxic.to_json()), StatusCode::OK)
            .await?;
        Ok(added.name)
    }

    /// Removes the toxic `name`. Removing a `timeout` toxic closes the
    /// connections it held (toxiproxy's behaviour).
    ///
    /// # Errors
    ///
    /// [`Error::Toxiproxy`] when there is no such toxic.
    pub async fn remove_toxic(&self, name: &str) -> Result<(), Error> {
        let path = format!("{}/toxics/{}", self.path(), path_segment(name));
        self.api
            .call(Method::DELETE, &path, None, StatusCode::NO_CONTENT)
            .await
            .map(drop)
    }

    /// The names of the proxy's toxics, in the order they apply.
    ///
    /// # Errors
    ///
    /// [`Error::Toxiproxy`] when the proxy is gone.
    pub async fn toxics(&self) -> Result<Vec<String>, Error> {
        let path = format!("{}/toxics", self.path());
        let toxics: Vec<ToxicState> = self
            .api
            .call_json(Method::GET, &path, None, StatusCode::OK)
            .await?;
        Ok(toxics.into_iter().map(|t| t.name).collect())
    }

    /// Takes the proxy down: open connections are closed and new ones
    /// refused, as if the upstream's host went away.
    ///
    /// # Errors
    ///
    /// [`Error::Toxiproxy`] when the proxy is gone.
    pub async fn disable(&self) -> Result<(), Error> {
        self.set_enabled(false).await
    }

    /// Brings the proxy back on the same address after
    /// [`disable`](Self::disable).
    ///
    /// # Errors
    ///
    /// [`Error::Toxiproxy`] when the proxy is gone or its port was taken
    /// meanwhile.
    pub async fn enable(&self) -> Result<(), Error> {
        self.set_enabled(true).await
    }

    async fn set_enabled(&self, enabled: bool) -> Result<(), Error> {
        let body = json!({ "enabled": enabled });
        self.api
            .call(Method::POST, &self.path(), Some(body), StatusCode::OK)
            .await
            .map(drop)
    }

    /// Deletes the proxy now, closing its connections.
    ///
    /// # Errors
    ///
    /// [`Error::Toxiproxy`] when toxiproxy refuses; a proxy that is already
    /// gone is not an error.
    pub async fn remove(mut self) -> Result<(), Error> {
        self.removed = true;
        delete_proxy(&self.api, &self.name).await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let url = self.api.url.clone();
        let name = std::mem::take(&mut self.name);
        crate::run_to_end(move || async move {
            if let Ok(api) = Toxiproxy::new(&url) {
                let _ = delete_proxy(&api, &name).await;
            }
        });
    }
}

async fn delete_proxy(api: &Toxiproxy, name: &str) -> Result<(), Error> {
    let path = format!("/proxies/{}", path_segment(name));
    match api
        .call(Method::DELETE, &path, None, StatusCode::NO_CONTENT)
        .await
    {
        Ok(_) => Ok(()),
        Err(Error::Toxiproxy { status: 404, .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// `text` as one URL path segment: everything but unreserved characters
/// percent-encoded.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Which direction of a connection a toxic affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Client to server: the requests.
    Upstream,
    /// Server to client: the answers (toxiproxy's default).
    Downstream,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Downstream => "downstream",
        }
    }
}

/// What a toxic does to the data passing through.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ToxicKind {
    /// Delays every chunk by `latency` plus or minus up to `jitter`.
    Latency {
        /// The delay (whole milliseconds).
        latency: Duration,
        /// The spread around it (whole milliseconds).
        jitter: Duration,
    },
    /// Stops all data; closes the connection after `timeout`, or never when
    /// it is zero (the connection stalls until the toxic is removed, which
    /// closes it). The data sent meanwhile is dropped.
    Timeout {
        /// Until the connection is closed (whole milliseconds); zero: never.
        timeout: Duration,
    },
    /// Resets the connection (TCP RST) once data arrives, after `timeout`.
    ResetPeer {
        /// The delay before the reset (whole milliseconds); zero: at once.
        timeout: Duration,
    },
    /// Passes data at most at `rate_kb` kilobytes (1 000 bytes) per second.
    Bandwidth {
        /// The rate in kilobytes (1 000 bytes) per second.
        rate_kb: u64,
    },
    /// Cuts data into small chunks, with a delay between them.
    Slicer {
        /// Average chunk size in bytes.
        average_size: u64,
        /// How much a chunk's size varies, in bytes (less than the average).
        size_variation: u64,
        /// The delay between chunks (whole microseconds).
        delay: Duration,
    },
}

/// A toxic to add to a [`Proxy`]: its kind, the direction it affects, the
/// share of connections it applies to, and optionally a name.
///
/// ```
/// use std::time::Duration;
/// use rtc_testkit::toxiproxy::Toxic;
///
/// let stall = Toxic::timeout(Duration::ZERO).upstream();
/// assert_eq!(stall.name(), "timeout_upstream");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    kind: ToxicKind,
    stream: Stream,
    toxicity: f32,
    name: Option<String>,
}

impl Toxic {
    /// A toxic of `kind` on the answers ([`Stream::Downstream`]), for every
    /// connection, named by toxiproxy's rule (`<type>_<stream>`).
    pub fn new(kind: ToxicKind) -> Self {
        Self {
            kind,
            stream: Stream::Downstream,
            toxicity: 1.0,
            name: None,
        }
    }

    /// [`ToxicKind::Latency`].
    pub fn latency(latency: Duration, jitter: Duration) -> Self {
        Self::new(ToxicKind::Latency { latency, jitter })
    }

    /// [`ToxicKind::Timeout`]; `Duration::ZERO` stalls for ever.
    pub fn timeout(timeout: Duration) -> Self {
        Self::new(ToxicKind::Timeout { timeout })
    }

    /// [`ToxicKind::ResetPeer`].
    pub fn reset_peer(timeout: Duration) -> Self {
        Self::new(ToxicKind::ResetPeer { timeout })
    }

    /// [`ToxicKind::Bandwidth`].
    pub fn bandwidth(rate_kb: u64) -> Self {
        Self::new(ToxicKind::Bandwidth { rate_kb })
    }

    /// [`ToxicKind::Slicer`].
    pub fn slicer(average_size: u64, size_variation: u64, delay: Duration) -> Self {
        Self::new(ToxicKind::Slicer {
            average_size,
            size_variation,
            delay,
        })
    }

    /// Affects the requests (client to server) instead.
    #[must_use]
    pub fn upstream(mut self) -> Self {
        self.stream = Stream::Upstream;
        self
    }

    /// Affects the answers (server to client), the default.
    #[must_use]
    pub fn downstream(mut self) -> Self {
        self.stream = Stream::Downstream;
        self
    }

    /// Applies to each new connection with probability `toxicity` (0 to 1)
    /// instead of to all.
    #[must_use]
    pub fn toxicity(mut self, toxicity: f32) -> Self {
        self.toxicity = toxicity;
        self
    }

    /// Names the toxic (default: `<type>_<stream>`).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The kind of toxic.
    pub fn kind(&self) -> &ToxicKind {
        &self.kind
    }

    /// The direction it affects.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// The name toxiproxy gives it.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}_{}", self.type_name(), self.stream.as_str()))
    }

    fn type_name(&self) -> &'static str {
        match self.kind {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::Slicer { .. } => "slicer",
        }
    }

    /// The body of `POST /proxies/{proxy}/toxics`.
    fn to_json(&self) -> Value {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let attributes = match &self.kind {
            ToxicKind::Latency { latency, jitter } => {
                json!({ "latency": millis(*latency), "jitter": millis(*jitter) })
            }
            ToxicKind::Timeout { timeout } | ToxicKind::ResetPeer { timeout } => {
                json!({ "timeout": millis(*timeout) })
            }
            ToxicKind::Bandwidth { rate_kb } => json!({ "rate": rate_kb }),
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => json!({
                "average_size": average_size,
                "size_variation": size_variation,
                "delay": u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            }),
        };
        json!({
            "name": self.name(),
            "type": self.type_name(),
            "stream": self.stream.as_str(),
            "toxicity": self.toxicity,
            "attributes": attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toxics_serialize_as_toxiproxy_reads_them() {
        let latency = Toxic::latency(Duration::from_millis(250), Duration::from_millis(10));
        assert_eq!(
            latency.to_json(),
            json!({
                "name": "latency_downstream",
                "type": "latency",
                "stream": "downstream",
                "toxicity": 1.0,
                "attributes": { "latency": 250, "jitter": 10 },
            })
        );
        let stall = Toxic::timeout(Duration::ZERO).upstream().named("stall");
        assert_eq!(
            stall.to_json(),
            json!({
                "name": "stall",
                "type": "timeout",
                "stream": "upstream",
                "toxicity": 1.0,
                "attributes": { "timeout": 0 },
            })
        );
        let reset = Toxic::reset_peer(Duration::from_secs(1)).toxicity(0.5);
        assert_eq!(reset.to_json()["type"], "reset_peer");
        assert_eq!(reset.to_json()["attributes"], json!({ "timeout": 1000 }));
        assert_eq!(reset.to_json()["toxicity"], 0.5);
        assert_eq!(
            Toxic::bandwidth(64).to_json()["attributes"],
            json!({ "rate": 64 })
        );
        assert_eq!(
            Toxic::slicer(100, 20, Duration::from_micros(1500)).to_json()["attributes"],
            json!({ "average_size": 100, "size_variation": 20, "delay": 1500 })
        );
    }

    #[test]
    fn only_plain_http_on_loopback_is_accepted() {
        for url in [
            "http://127.0.0.1:18474",
            "http://localhost:18474/",
            "http://[::1]:18474",
        ] {
            assert!(Toxiproxy::new(url).is_ok(), "{url}");
        }
        for url in [
            "https://127.0.0.1:18474",
            "http://10.0.0.1:8474",
            "127.0.0.1:8474",
            "",
        ] {
            let error = Toxiproxy::new(url).expect_err(url);
            assert_eq!(error.label(), "bad_address", "{url}");
        }
        assert_eq!(
            Toxiproxy::new("http://127.0.0.1:18474/")
                .map(|t| t.url().to_owned())
                .ok(),
            Some("http://127.0.0.1:18474".to_owned())
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("rtc-redis-1-0-abcd"), "rtc-redis-1-0-abcd");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn error_answers_carry_toxiproxys_message() {
        assert_eq!(
            error_message(br#"{"error":"proxy not found","status":404}"#),
            "proxy not found"
        );
        assert_eq!(error_message(b"gone\n"), "gone");
    }
}
