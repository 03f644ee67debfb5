//! The node's settings, validated once at start into [`Settings`].
//!
//! The binary reads flags and the environment into [`RawSettings`] (plain
//! values, named after the flags); [`RawSettings::validate`] checks every
//! value before anything connects and names the key, the value and what is
//! allowed when one is wrong. Nothing here reads the environment or the
//! clock.

use std::net::SocketAddr;
use std::time::Duration;

use rtc_drain::DrainConfig;
use rtc_relay::{BatchBounds, BufferLimits, ForwardConfig};
use rtc_time::{Bare, format_duration, parse_duration};

use crate::ws::Limits;

/// A setting is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// The key at fault, e.g. `DRAIN_TIMEOUT`; also the metric label.
    pub key: &'static str,
    /// What is wrong: the key, the value and what is allowed.
    pub message: String,
}

impl ConfigError {
    fn new(key: &'static str, message: String) -> Self {
        Self { key, message }
    }
}

/// Everything a node needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Node id: the pod name.
    pub node_id: String,
    /// Differs on every start.
    pub boot_id: String,
    /// The WebSocket port.
    pub public_addr: SocketAddr,
    /// The admin port.
    pub admin_addr: SocketAddr,
    /// ADMIN_TOKEN: the bearer token `POST /shed` must carry; `None`
    /// refuses every shed.
    pub admin_token: Option<String>,
    /// Redis URL.
    pub redis_url: String,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: Vec<String>,
    /// Key prefix of presence, buffers and positions.
    pub relay_prefix: String,
    /// Key prefix of heartbeats.
    pub heartbeat_prefix: String,
    /// Delivery topics are `<prefix><node id>`.
    pub topic_prefix: String,
    /// HEARTBEAT_INTERVAL.
    pub heartbeat_interval: Duration,
    /// STALE_AFTER.
    pub stale_after: Duration,
    /// HEARTBEAT_LIMIT_PER_RESOURCE: heartbeats carry `cpu_of` and `mem_of`
    /// (see `rtc_heartbeat::PublisherConfig::per_resource_limits`).
    pub heartbeat_limit_per_resource: bool,
    /// Lifetime of a presence claim; renewed every third of it.
    pub presence_ttl: Duration,
    /// Connection limits.
    pub limits: Limits,
    /// Offline buffers.
    pub buffer: BufferLimits,
    /// Frames queued per connection before it counts as too slow.
    pub send_queue: usize,
    /// Seconds in the messages/s and p95 windows.
    pub window_secs: usize,
    /// The drain.
    pub drain: DrainConfig,
    /// After the last client has left, how long to keep reading the delivery
    /// topic for messages sent just before their recipient's presence moved.
    pub handoff_grace: Duration,
    /// OFFSET_COMMIT_INTERVAL: the consumer commits its position to the
    /// broker at most this often while it moves.
    pub offset_commit_interval: Duration,
    /// Deadline of each committed-offset request.
    pub offset_timeout: Duration,
    /// The forwarder of topics of nodes that are gone.
    pub forward: ForwardConfig,
    /// PRODUCE_LINGER_MS, PRODUCE_BATCH_RECORDS, PRODUCE_BATCH_BYTES: when a
    /// batch of records for another node's topic is produced.
    pub batch: BatchBounds,
    /// FETCH_MAX_WAIT_MS: how long the consumer's fetch waits when its
    /// topic has no new records.
    pub fetch_wait: Duration,
    /// FETCH_MAX_BYTES: bytes one fetch reads at most.
    pub fetch_max_bytes: i32,
    /// ROUTE_CACHE_MS: how long a node the store named for a recipient is
    /// used without asking again; zero asks for every message.
    pub route_cache: Duration,
}

/// The largest FETCH_MAX_WAIT_MS allowed.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// The range of FETCH_MAX_BYTES allowed.
pub const FETCH_BYTES: std::ops::RangeInclusive<usize> = 1_024..=64 * 1_048_576;

/// The settings as given, before validation; each field is named after its
/// flag.
#[derive(Debug, Clone)]
pub struct RawSettings {
    /// This node's id (the pod name); `None` or blank: `hostname`.
    pub node_id: Option<String>,
    /// Address of the public WebSocket port.
    pub public_addr: String,
    /// Address of the admin port (/drain, /shed, /healthz, /readyz, /metrics).
    pub admin_addr: String,
    /// Bearer token `POST /shed` must carry; `None` or blank: sheds are refused.
    pub admin_token: Option<String>,
    /// Redis for presence, offline buffers and heartbeats.
    pub redis_url: String,
    /// Kafka bootstrap servers, comma-separated.
    pub kafka_bootstrap: String,
    /// Key prefix of presence entries, offline buffers and positions.
    pub relay_prefix: String,
    /// Key prefix of heartbeats (must match the load-balancer's).
    pub heartbeat_prefix: String,
    /// Delivery topics are named this prefix followed by the node id.
    pub topic_prefix: String,
    /// Time between heartbeats, with a unit: 5s, 1500ms, 1m.
    ///
    /// Every duration here is text as the operator wrote it, read by
    /// [`rtc_time::parse_duration`]: a bare number in the unit the key
    /// names (`_MS`: milliseconds, `_SECS`: seconds), or any value with a
    /// unit.
    pub heartbeat_interval: String,
    /// A node silent for this long is gone, ms; must exceed the interval.
    pub stale_after_ms: String,
    /// Write which limit each of CPU and memory is a fraction of into the
    /// heartbeat when they differ; only once every load-balancer reads them.
    pub heartbeat_limit_per_resource: bool,
    /// Lifetime of a client's presence entry, ms; renewed every third.
    pub presence_ttl_ms: String,
    /// Connections this node holds at most.
    pub max_connections: usize,
    /// Largest text frame accepted, bytes.
    pub max_frame_bytes: usize,
    /// Messages per second one connection may send, sustained.
    pub rate_per_sec: u32,
    /// Messages one connection may send in a burst.
    pub rate_burst: u32,
    /// Frames queued per connection before it counts as too slow.
    pub send_queue: usize,
    /// Messages kept per offline client.
    pub buffer_max: usize,
    /// How long an offline client's messages are kept, ms.
    pub buffer_ttl_ms: String,
    /// Seconds in the messages/s and p95 latency windows.
    pub window_secs: String,
    /// Longest a drain may take, with a unit: 5m, 300s.
    pub drain_timeout: String,
    /// Wait after failing readiness before moving clients, ms.
    pub drain_endpoint_delay_ms: String,
    /// Reconnect batches are at least this far apart, ms.
    pub drain_batch_interval_ms: String,
    /// Largest retry_after told to a client, ms.
    pub drain_max_retry_after_ms: String,
    /// After the last client left, how long to keep reading the delivery
    /// topic before the final hand-off, ms.
    pub drain_handoff_grace_ms: String,
    /// The consumer commits its position to the broker at most this often, ms.
    pub offset_commit_interval_ms: String,
    /// Time between scans for nodes that are gone, ms.
    pub forward_scan_interval_ms: String,
    /// Lifetime of a claim on a gone node's topic, ms; renewed while forwarding.
    pub forward_claim_ttl_ms: String,
    /// A gone node whose topic is read to the end leaves the registry after
    /// this long, ms; more than PRESENCE_TTL_MS.
    pub forward_retire_after_ms: String,
    /// How long a batch for another node's topic waits for more records
    /// after its first, ms; 0 to 1 s.
    pub produce_linger_ms: String,
    /// Records per produce at most.
    pub produce_batch_records: usize,
    /// Bytes of keys and values per produce at most.
    pub produce_batch_bytes: usize,
    /// How long a fetch of this node's topic waits when there are no new
    /// records, ms.
    pub fetch_max_wait_ms: String,
    /// Bytes one fetch reads at most.
    pub fetch_max_bytes: usize,
    /// How long the node the store named for a recipient is used without
    /// asking again, ms; less than FORWARD_RETIRE_AFTER_MS minus
    /// PRESENCE_TTL_MS.
    pub route_cache_ms: String,
    /// HOSTNAME, the fallback for the node id.
    pub hostname: Option<String>,
    /// Differs on every start (from the caller's clock and process id).
    pub boot_id: String,
    /// Seed of the drain's jitter (the caller's randomness).
    pub drain_seed: u64,
}

fn duration(key: &'static str, value: &str, bare: Bare) -> Result<Duration, ConfigError> {
    parse_duration(value, bare).map_err(|e| ConfigError::new(key, e.refusal(key)))
}

/// A duration of at least `min`.
fn at_least(
    key: &'static str,
    value: &str,
    bare: Bare,
    min: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, value, bare)?;
    if d < min {
        return Err(ConfigError::new(
            key,
            format!(
                "bad setting {key}: value {value:?} is not allowed; allowed: {} or more",
                format_duration(min)
            ),
        ));
    }
    Ok(d)
}

/// ADMIN_TOKEN: blank means unset; otherwise 16 to 256 visible ASCII
/// characters, so it fits an `Authorization` header and is not guessable
/// by its length alone.
fn admin_token(value: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(token) = value.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if !(16..=256).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "ADMIN_TOKEN",
            format!(
                "bad setting ADMIN_TOKEN: a value of {} characters is not allowed; allowed: 16 to 256 visible ASCII characters (no spaces), or unset to refuse sheds",
                token.chars().count()
            ),
        ));
    }
    Ok(Some(token.to_owned()))
}

const MS: Bare = Bare::Millis;
const ONE_MS: Duration = Duration::from_millis(1);

fn positive(key: &'static str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(
            key,
            format!("bad setting {key}: value 0 is not allowed; allowed: 1 or more"),
        ));
    }
    Ok(value)
}

fn addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e| {
        ConfigError::new(key, format!(
            "bad setting {key}: value {value:?} is not allowed ({e}); allowed: IP:PORT, e.g. 0.0.0.0:8080"
        ))
    })
}

impl RawSettings {
    /// Validates everything, before anything connects.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the key, the value and what is allowed.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let node_id = match &self.node_id {
            Some(id) if !id.trim().is_empty() => id.clone(),
            _ => self.hostname.clone().filter(|h| !h.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    "POD_NAME",
                    "bad setting POD_NAME: it is unset and so is HOSTNAME; allowed: this node's unique name (the pod name)".to_owned(),
                )
            })?,
        };
        if rtc_heartbeat::validate_node_id(&node_id).is_err() {
            return Err(ConfigError::new(
                "POD_NAME",
                format!(
                    "bad setting POD_NAME: value {node_id:?} is not allowed; allowed: 1 to 253 characters from [A-Za-z0-9._-]"
                ),
            ));
        }
        let kafka: Vec<String> = self
            .kafka_bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if kafka.is_empty() || kafka.iter().any(|s| !s.contains(':')) {
            return Err(ConfigError::new(
                "KAFKA_BOOTSTRAP",
                format!(
                    "bad setting KAFKA_BOOTSTRAP: value {:?} is not allowed; allowed: comma-separated HOST:PORT entries",
                    self.kafka_bootstrap
                ),
            ));
        }
        let topic_ok = !self.topic_prefix.is_empty()
            && self.topic_prefix.len() + node_id.len() <= 249
            && self
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !topic_ok {
            return Err(ConfigError::new(
                "DELIVERY_TOPIC_PREFIX",
                format!(
                    "bad setting DELIVERY_TOPIC_PREFIX: value {:?} is not allowed; allowed: characters from [A-Za-z0-9._-], at most 249 with the node id",
                    self.topic_prefix
                ),
            ));
        }
        let heartbeat_interval = at_least(
            "HEARTBEAT_INTERVAL",
            &self.heartbeat_interval,
            Bare::Refused,
            ONE_MS,
        )?;
        let stale_after = duration("STALE_AFTER_MS", &self.stale_after_ms, MS)?;
        if stale_after <= heartbeat_interval {
            return Err(ConfigError::new(
                "STALE_AFTER_MS",
                format!(
                    "bad setting STALE_AFTER_MS: value {:?} is not allowed; allowed: more than HEARTBEAT_INTERVAL ({})",
                    self.stale_after_ms,
                    format_duration(heartbeat_interval)
                ),
            ));
        }
        let presence_ttl = at_least(
            "PRESENCE_TTL_MS",
            &self.presence_ttl_ms,
            MS,
            Duration::from_millis(300),
        )?;
        let max_connections =
            usize::try_from(positive("MAX_CONNECTIONS", self.max_connections as u64)?)
                .unwrap_or(usize::MAX);
        let max_frame_bytes = self.max_frame_bytes;
        if !(256..=16 * 1024 * 1024).contains(&max_frame_bytes) {
            return Err(ConfigError::new(
                "MAX_FRAME_BYTES",
                format!(
                    "bad setting MAX_FRAME_BYTES: value {max_frame_bytes} is not allowed; allowed: 256 to 16777216"
                ),
            ));
        }
        positive("RATE_LIMIT_PER_SEC", u64::from(self.rate_per_sec))?;
        positive("RATE_LIMIT_BURST", u64::from(self.rate_burst))?;
        positive("SEND_QUEUE", self.send_queue as u64)?;
        positive("OFFLINE_BUFFER_MAX", self.buffer_max as u64)?;
        let buffer_ttl = at_least("OFFLINE_BUFFER_TTL_MS", &self.buffer_ttl_ms, MS, ONE_MS)?;
        let window = duration("METRICS_WINDOW_SECS", &self.window_secs, Bare::Seconds)?;
        let window_secs = usize::try_from(window.as_secs()).unwrap_or(usize::MAX);
        if window.subsec_nanos() != 0 || !(1..=3600).contains(&window_secs) {
            return Err(ConfigError::new(
                "METRICS_WINDOW_SECS",
                format!(
                    "bad setting METRICS_WINDOW_SECS: value {:?} is not allowed; allowed: whole seconds from 1 to 3600 (1h)",
                    self.window_secs
                ),
            ));
        }
        let drain = DrainConfig {
            endpoint_delay: duration("DRAIN_ENDPOINT_DELAY_MS", &self.drain_endpoint_delay_ms, MS)?,
            timeout: at_least("DRAIN_TIMEOUT", &self.drain_timeout, Bare::Refused, ONE_MS)?,
            tail: None,
            min_batch_interval: at_least(
                "DRAIN_BATCH_INTERVAL_MS",
                &self.drain_batch_interval_ms,
                MS,
                ONE_MS,
            )?,
            max_retry_after: duration(
                "DRAIN_MAX_RETRY_AFTER_MS",
                &self.drain_max_retry_after_ms,
                MS,
            )?,
            force_grace: Duration::from_secs(2),
            seed: self.drain_seed,
        };
        drain.validate().map_err(|e| {
            ConfigError::new("DRAIN_TIMEOUT", format!(
                "bad setting DRAIN_TIMEOUT / DRAIN_ENDPOINT_DELAY_MS ({} / {}): {e}; allowed: an endpoint delay below the timeout",
                self.drain_timeout,
                self.drain_endpoint_delay_ms
            ))
        })?;
        let handoff_grace = duration("DRAIN_HANDOFF_GRACE_MS", &self.drain_handoff_grace_ms, MS)?;
        let offset_commit_interval = at_least(
            "OFFSET_COMMIT_INTERVAL_MS",
            &self.offset_commit_interval_ms,
            MS,
            ONE_MS,
        )?;
        let scan_interval = at_least(
            "FORWARD_SCAN_INTERVAL_MS",
            &self.forward_scan_interval_ms,
            MS,
            ONE_MS,
        )?;
        let claim_ttl = at_least(
            "FORWARD_CLAIM_TTL_MS",
            &self.forward_claim_ttl_ms,
            MS,
            Duration::from_secs(1),
        )?;
        let retire_after = duration("FORWARD_RETIRE_AFTER_MS", &self.forward_retire_after_ms, MS)?;
        if retire_after <= presence_ttl {
            return Err(ConfigError::new(
                "FORWARD_RETIRE_AFTER_MS",
                format!(
                    "bad setting FORWARD_RETIRE_AFTER_MS: value {:?} is not allowed; allowed: more than PRESENCE_TTL_MS ({})",
                    self.forward_retire_after_ms,
                    format_duration(presence_ttl)
                ),
            ));
        }
        let admin_token = admin_token(self.admin_token.as_deref())?;
        let linger = duration("PRODUCE_LINGER_MS", &self.produce_linger_ms, MS)?;
        if linger > BatchBounds::MAX_LINGER {
            return Err(ConfigError::new(
                "PRODUCE_LINGER_MS",
                format!(
                    "bad setting PRODUCE_LINGER_MS: value {:?} is not allowed; allowed: 0 to {}",
                    self.produce_linger_ms,
                    format_duration(BatchBounds::MAX_LINGER)
                ),
            ));
        }
        if !(1..=BatchBounds::MAX_RECORDS).contains(&self.produce_batch_records) {
            return Err(ConfigError::new(
                "PRODUCE_BATCH_RECORDS",
                format!(
                    "bad setting PRODUCE_BATCH_RECORDS: value {} is not allowed; allowed: 1 to {}",
                    self.produce_batch_records,
                    BatchBounds::MAX_RECORDS
                ),
            ));
        }
        if !BatchBounds::BYTES.contains(&self.produce_batch_bytes) {
            return Err(ConfigError::new(
                "PRODUCE_BATCH_BYTES",
                format!(
                    "bad setting PRODUCE_BATCH_BYTES: value {} is not allowed; allowed: {} to {}",
                    self.produce_batch_bytes,
                    BatchBounds::BYTES.start(),
                    BatchBounds::BYTES.end()
                ),
            ));
        }
        let fetch_wait = at_least("FETCH_MAX_WAIT_MS", &self.fetch_max_wait_ms, MS, ONE_MS)?;
        if fetch_wait > MAX_FETCH_WAIT {
            return Err(ConfigError::new(
                "FETCH_MAX_WAIT_MS",
                format!(
                    "bad setting FETCH_MAX_WAIT_MS: value {:?} is not allowed; allowed: 1ms to {}",
                    self.fetch_max_wait_ms,
                    format_duration(MAX_FETCH_WAIT)
                ),
            ));
        }
        if !FETCH_BYTES.contains(&self.fetch_max_bytes) {
            return Err(ConfigError::new(
                "FETCH_MAX_BYTES",
                format!(
                    "bad setting FETCH_MAX_BYTES: value {} is not allowed; allowed: {} to {}",
                    self.fetch_max_bytes,
                    FETCH_BYTES.start(),
                    FETCH_BYTES.end()
                ),
            ));
        }
        let route_cache = duration("ROUTE_CACHE_MS", &self.route_cache_ms, MS)?;
        let route_bound = retire_after.saturating_sub(presence_ttl);
        if route_cache >= route_bound {
            return Err(ConfigError::new(
                "ROUTE_CACHE_MS",
                format!(
                    "bad setting ROUTE_CACHE_MS: value {:?} is not allowed; allowed: 0 to less than FORWARD_RETIRE_AFTER_MS minus PRESENCE_TTL_MS ({}), so a remembered node's topic is still read",
                    self.route_cache_ms,
                    format_duration(route_bound)
                ),
            ));
        }
        Ok(Settings {
            node_id,
            boot_id: self.boot_id.clone(),
            public_addr: addr("PUBLIC_ADDR", &self.public_addr)?,
            admin_addr: addr("ADMIN_ADDR", &self.admin_addr)?,
            admin_token,
            redis_url: self.redis_url.clone(),
            kafka_bootstrap: kafka,
            relay_prefix: self.relay_prefix.clone(),
            heartbeat_prefix: self.heartbeat_prefix.clone(),
            topic_prefix: self.topic_prefix.clone(),
            heartbeat_interval,
            stale_after,
            heartbeat_limit_per_resource: self.heartbeat_limit_per_resource,
            presence_ttl,
            limits: Limits {
                max_connections,
                max_frame_bytes,
                rate_per_second: self.rate_per_sec,
                burst: self.rate_burst,
                presence_refresh: presence_ttl / 3,
            },
            buffer: BufferLimits {
                max: self.buffer_max,
                ttl: buffer_ttl,
            },
            send_queue: self.send_queue,
            window_secs,
            drain,
            handoff_grace,
            offset_commit_interval,
            forward: ForwardConfig {
                scan_interval,
                claim_ttl,
                retire_after,
            },
            offset_timeout: Duration::from_secs(5),
            batch: BatchBounds {
                linger,
                max_records: self.produce_batch_records,
                max_bytes: self.produce_batch_bytes,
            },
            fetch_wait,
            route_cache,
            fetch_max_bytes: i32::try_from(self.fetch_max_bytes).unwrap_or(i32::MAX),
        })
    }
}
