//! A small Kafka-protocol client for the two things the relay needs and
//! rskafka does not give it: consumer-group offsets, and a Produce and Fetch
//! whose latency is the broker's, not the socket's.
//!
//! - [`OffsetClient`]: committed consumer positions in the broker's
//!   consumer-group offsets, so standard tools (kafka-exporter,
//!   `kafka-consumer-groups`) see the lag and whoever reads a partition
//!   next resumes from the committed offset. rskafka has no group APIs.
//! - [`RecordClient`]: Produce and Fetch of one topic partition. rskafka
//!   writes a request's 4-byte size and its body in two writes on a socket
//!   without `TCP_NODELAY`, so Nagle's algorithm holds the body until the
//!   broker acknowledges the size, and the broker delays that
//!   acknowledgement (40 ms on Linux): every produce and every fetch waited
//!   for it. Here each request is one write on a socket with `TCP_NODELAY`.
//!
//! Both speak the `kafka-protocol` crate's messages over one TCP connection
//! each, one request at a time.
//!
//! # What it promises
//!
//! - **Widely served versions.** Every request uses a version that both
//!   Kafka 4 and every broker since 0.11 serve.
//! - **Bounded.** Each request (and each connect) has a deadline, and a
//!   response larger than 16 MiB is refused rather than allocated.
//! - **Self-healing.** Any failure drops the connection, and the next call
//!   finds the coordinator (or the partition's leader) again; a "not
//!   coordinator" or "not leader" answer does too.
//! - **Typed errors.** Every failure is a [`WireError`] naming the request,
//!   the broker and the group or partition, with a short
//!   [`WireError::label`] for metrics.

use std::time::Duration;

use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

mod offsets;
mod records;

pub use kafka_protocol::ResponseError;
pub use offsets::OffsetClient;
pub use records::{Fetched, FetchedRecord, NewRecord, RecordClient};

/// A response larger than this is refused rather than allocated.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A request to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No bootstrap server was given.
    #[error("kafka: no bootstrap server to ask about {subject}")]
    NoBootstrap {
        /// The group or partition asked about.
        subject: String,
    },
    /// A broker could not be reached.
    #[error("kafka: cannot connect to the broker at {addr}: {source}")]
    Connect {
        /// The broker.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed mid-request.
    #[error("kafka: {api} to {addr} failed: {source}")]
    Io {
        /// The request.
        api: &'static str,
        /// The broker.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The broker did not answer in time.
    #[error("kafka: {api} to {addr} got no answer within {timeout:?}")]
    Timeout {
        /// The request.
        api: &'static str,
        /// The broker.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A request could not be encoded or a response not decoded.
    #[error("kafka: {api}: malformed exchange: {message}")]
    Codec {
        /// The request.
        api: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The broker answered with an error code.
    #[error("kafka: {api} for {subject} refused by the broker: {error} (code {code})")]
    Broker {
        /// The request.
        api: &'static str,
        /// The group or partition asked about.
        subject: String,
        /// The Kafka error code.
        code: i16,
        /// Its meaning.
        error: ResponseError,
    },
    /// The response did not mention the partition asked about.
    #[error("kafka: {api} for {subject}: the response has no entry for {topic}/{partition}")]
    Missing {
        /// The request.
        api: &'static str,
        /// The group or partition asked about.
        subject: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
}

impl WireError {
    /// Whether the broker answered that the group's coordinator is not
    /// ready or not there (a new cluster still making its offsets topic,
    /// one loading, or one moved): the next request looks it up again.
    pub fn coordinator_moved(&self) -> bool {
        matches!(self, Self::Broker { error, .. } if offsets::COORDINATOR_MOVED.contains(error))
    }

    /// A short label for the failure counter.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoBootstrap { .. } | Self::Connect { .. } => "connect",
            Self::Io { .. } => "io",
            Self::Timeout { .. } => "timeout",
            Self::Codec { .. } | Self::Missing { .. } => "protocol",
            Self::Broker { .. } => "broker",
        }
    }
}

#[derive(Debug)]
struct Conn {
    addr: String,
    stream: TcpStream,
    correlation: i32,
}

/// The connection to the one broker that serves a subject (a group's
/// coordinator, a partition's leader), found through a bootstrap server on
/// first use and again after any failure. One request at a time.
#[derive(Debug)]
struct Link {
    bootstrap: Vec<String>,
    client_id: String,
    subject: String,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
}

impl Link {
    fn new(bootstrap: Vec<String>, client_id: String, subject: String, timeout: Duration) -> Self {
        Self {
            bootstrap,
            client_id,
            subject,
            timeout,
            conn: Mutex::new(None),
        }
    }

    /// The broker's refusal of `api` with `code`, or `None` for no error.
    fn refusal(&self, api: &'static str, code: i16) -> Option<WireError> {
        ResponseError::try_from_code(code).map(|error| WireError::Broker {
            api,
            subject: self.subject.clone(),
            code,
            error,
        })
    }

    /// `Ok` for no error; else the refusal, after dropping the connection
    /// when the error is one of `moved` (the subject is served elsewhere
    /// now: the next call finds the broker again).
    async fn check(
        &self,
        api: &'static str,
        code: i16,
        moved: &[ResponseError],
    ) -> Result<(), WireError> {
        let Some(refusal) = self.refusal(api, code) else {
            return Ok(());
        };
        if let WireError::Broker { error, .. } = &refusal
            && moved.contains(error)
        {
            *self.conn.lock().await = None;
        }
        Err(refusal)
    }

    /// Sends `request` on the connection (found with `find` first when
    /// there is none) and reads its response within `timeout`; drops the
    /// connection on failure.
    async fn call<Q: Encodable, R: Decodable, F: Future<Output = Result<Conn, WireError>>>(
        &self,
        (key, api, version): (ApiKey, &'static str, i16),
        request: &Q,
        timeout: Duration,
        find: impl FnOnce() -> F,
    ) -> Result<R, WireError> {
        let mut guard = self.conn.lock().await;
        let mut conn = match guard.take() {
            Some(c) => c,
            None => find().await?,
        };
        let result = self
            .exchange(&mut conn, (key, api, version), request, timeout)
            .await;
        if result.is_ok() {
            *guard = Some(conn);
        }
        result
    }

    /// [`exchange`] as this link's client.
    async fn exchange<Q: Encodable, R: Decodable>(
        &self,
        conn: &mut Conn,
        (key, api, version): (ApiKey, &'static str, i16),
        request: &Q,
        timeout: Duration,
    ) -> Result<R, WireError> {
        exchange(conn, &self.client_id, key, api, version, request, timeout).await
    }

    /// Asks each bootstrap server in turn `request`, and connects to the
    /// address `target` reads from the first usable answer (or stays, when
    /// it is the same broker).
    async fn locate<Q: Encodable, R: Decodable>(
        &self,
        (key, api, version): (ApiKey, &'static str, i16),
        request: &Q,
        target: impl Fn(&R) -> Result<String, WireError>,
    ) -> Result<Conn, WireError> {
        let mut last = WireError::NoBootstrap {
            subject: self.subject.clone(),
        };
        for addr in &self.bootstrap {
            let found = async {
                let mut conn = connect(addr, self.timeout).await?;
                let response: R = self
                    .exchange(&mut conn, (key, api, version), request, self.timeout)
                    .await?;
                let target = target(&response)?;
                if target == conn.addr {
                    Ok(conn)
                } else {
                    connect(&target, self.timeout).await
                }
            };
            match found.await {
                Ok(conn) => return Ok(conn),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

async fn connect(addr: &str, timeout: Duration) -> Result<Conn, WireError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(WireError::Connect {
                addr: addr.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(WireError::Connect {
                addr: addr.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                ),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        addr: addr.to_owned(),
        stream,
        correlation: 0,
    })
}

/// One request and its response, framed as the Kafka protocol does: a
/// 4-byte big-endian size, the header, the body.
async fn exchange<Q: Encodable, R: Decodable>(
    conn: &mut Conn,
    client_id: &str,
    key: ApiKey,
    api: &'static str,
    version: i16,
    request: &Q,
    timeout: Duration,
) -> Result<R, WireError> {
    // kafka-protocol's codec errors are only ever displayed here, with their
    // causes (`{:#}`).
    fn codec<E: std::fmt::Display>(api: &'static str) -> impl Fn(E) -> WireError + Copy {
        move |e| WireError::Codec {
            api,
            message: format!("{e:#}"),
        }
    }
    let codec = codec(api);
    conn.correlation = conn.correlation.wrapping_add(1);
    let correlation = conn.correlation;
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let mut frame = vec![0u8; 4];
    header
        .encode(&mut frame, key.request_header_version(version))
        .map_err(codec)?;
    request.encode(&mut frame, version).map_err(codec)?;
    let size = u32::try_from(frame.len() - 4).map_err(|_| WireError::Codec {
        api,
        message: "request too large".to_owned(),
    })?;
    frame[..4].copy_from_slice(&size.to_be_bytes());

    let addr = conn.addr.clone();
    let io = |source| WireError::Io {
        api,
        addr: addr.clone(),
        source,
    };
    let body = tokio::time::timeout(timeout, async {
        conn.stream.write_all(&frame).await.map_err(io)?;
        let mut size = [0u8; 4];
        conn.stream.read_exact(&mut size).await.map_err(io)?;
        let size = u32::from_be_bytes(size) as usize;
        if size > MAX_RESPONSE_BYTES {
            return Err(WireError::Codec {
                api,
                message: format!("a response of {size} bytes"),
            });
        }
        let mut body = vec![0u8; size];
        conn.stream.read_exact(&mut body).await.map_err(io)?;
        Ok(body)
    })
    .await
    .map_err(|_| WireError::Timeout {
        api,
        addr: conn.addr.clone(),
        timeout,
    })??;
    let mut buf: &[u8] = &body;
    let header =
        ResponseHeader::decode(&mut buf, key.response_header_version(version)).map_err(codec)?;
    if header.correlation_id != correlation {
        return Err(WireError::Codec {
            api,
            message: format!(
                "correlation id {} in the response, {correlation} expected",
                header.correlation_id
            ),
        });
    }
    R::decode(&mut buf, version).map_err(codec)
}

/// A loopback port nobody listens on: bound, then closed.
#[cfg(test)]
fn closed_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "127.0.0.1:1".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broker_that_is_down_is_a_typed_error_naming_it() {
        let addr = closed_port();
        let client = OffsetClient::new(vec![addr.clone()], "t", "g", Duration::from_secs(1));
        let err = client.fetch("t", 0).await.err();
        assert!(
            matches!(&err, Some(WireError::Connect { addr: a, .. }) if *a == addr),
            "{err:?}"
        );
        assert_eq!(err.map(|e| e.label()), Some("connect"));
        let err = OffsetClient::new(vec![], "t", "g", Duration::from_secs(1))
            .commit("t", 0, 1)
            .await
            .err();
        assert!(
            matches!(err, Some(WireError::NoBootstrap { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn only_a_coordinator_answer_says_the_coordinator_moved() {
        let broker = |error| WireError::Broker {
            api: "OffsetFetch",
            subject: "group g".to_owned(),
            code: 0,
            error,
        };
        assert!(broker(ResponseError::CoordinatorNotAvailable).coordinator_moved());
        assert!(broker(ResponseError::CoordinatorLoadInProgress).coordinator_moved());
        assert!(broker(ResponseError::NotCoordinator).coordinator_moved());
        assert!(!broker(ResponseError::OffsetOutOfRange).coordinator_moved());
        assert!(
            !WireError::NoBootstrap {
                subject: "group g".to_owned()
            }
            .coordinator_moved()
        );
    }
}
