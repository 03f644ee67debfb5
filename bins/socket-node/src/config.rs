//! Command line and environment, validated once into [`Settings`].

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::Args;
use rtc_drain::DrainConfig;

use crate::forward::ForwardConfig;
use crate::node::Settings;
use crate::store::BufferLimits;
use crate::ws::Limits;
pub use rtc_telemetry::LogFormat;

/// The socket node's settings. Each flag can also be set through the
/// environment key shown.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id (the pod name); defaults to HOSTNAME.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub node_id: Option<String>,

    /// Address of the public WebSocket port.
    #[arg(long, env = "PUBLIC_ADDR", default_value = "0.0.0.0:8000")]
    pub public_addr: String,

    /// Address of the admin port (/drain, /healthz, /readyz, /metrics).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: String,

    /// Redis for presence, offline buffers and heartbeats.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,

    /// Key prefix of presence entries, offline buffers and positions.
    #[arg(long, env = "RELAY_PREFIX", default_value = "rtc:relay:")]
    pub relay_prefix: String,

    /// Key prefix of heartbeats (must match the load-balancer's).
    #[arg(long, env = "HEARTBEAT_PREFIX", default_value = "rtc:hb:")]
    pub heartbeat_prefix: String,

    /// Delivery topics are named this prefix followed by the node id.
    #[arg(long, env = "DELIVERY_TOPIC_PREFIX", default_value = "rtc.deliver.")]
    pub topic_prefix: String,

    /// Time between heartbeats, with a unit: 5s, 1500ms, 1m.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "5s")]
    pub heartbeat_interval: String,

    /// A node silent for this long is gone, ms; must exceed the interval.
    #[arg(long, env = "STALE_AFTER_MS", default_value_t = 15_000)]
    pub stale_after_ms: u64,

    /// Lifetime of a client's presence entry, ms; renewed every third.
    #[arg(long, env = "PRESENCE_TTL_MS", default_value_t = 30_000)]
    pub presence_ttl_ms: u64,

    /// Connections this node holds at most.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Largest text frame accepted, bytes.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,

    /// Messages per second one connection may send, sustained.
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 100)]
    pub rate_per_sec: u32,

    /// Messages one connection may send in a burst.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_burst: u32,

    /// Frames queued per connection before it counts as too slow.
    #[arg(long, env = "SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,

    /// Messages kept per offline client.
    #[arg(long, env = "OFFLINE_BUFFER_MAX", default_value_t = 1_000)]
    pub buffer_max: usize,

    /// How long an offline client's messages are kept, ms.
    #[arg(long, env = "OFFLINE_BUFFER_TTL_MS", default_value_t = 86_400_000)]
    pub buffer_ttl_ms: u64,

    /// Seconds in the messages/s and p95 latency windows.
    #[arg(long, env = "METRICS_WINDOW_SECS", default_value_t = 10)]
    pub window_secs: usize,

    /// Longest a drain may take, with a unit: 5m, 300s.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "5m")]
    pub drain_timeout: String,

    /// Wait after failing readiness before moving clients, ms.
    #[arg(long, env = "DRAIN_ENDPOINT_DELAY_MS", default_value_t = 5_000)]
    pub drain_endpoint_delay_ms: u64,

    /// Reconnect batches are at least this far apart, ms.
    #[arg(long, env = "DRAIN_BATCH_INTERVAL_MS", default_value_t = 1_000)]
    pub drain_batch_interval_ms: u64,

    /// Largest retry_after told to a client, ms.
    #[arg(long, env = "DRAIN_MAX_RETRY_AFTER_MS", default_value_t = 10_000)]
    pub drain_max_retry_after_ms: u64,

    /// After the last client left, how long to keep reading the delivery
    /// topic before the final hand-off, ms.
    #[arg(long, env = "DRAIN_HANDOFF_GRACE_MS", default_value_t = 1_000)]
    pub drain_handoff_grace_ms: u64,

    /// The consumer commits its position to the broker at most this often, ms.
    #[arg(long, env = "OFFSET_COMMIT_INTERVAL_MS", default_value_t = 1_000)]
    pub offset_commit_interval_ms: u64,

    /// Time between scans for nodes that are gone, ms.
    #[arg(long, env = "FORWARD_SCAN_INTERVAL_MS", default_value_t = 5_000)]
    pub forward_scan_interval_ms: u64,

    /// Lifetime of a claim on a gone node's topic, ms; renewed while forwarding.
    #[arg(long, env = "FORWARD_CLAIM_TTL_MS", default_value_t = 30_000)]
    pub forward_claim_ttl_ms: u64,

    /// A gone node whose topic is read to the end leaves the registry after
    /// this long, ms; more than PRESENCE_TTL_MS.
    #[arg(long, env = "FORWARD_RETIRE_AFTER_MS", default_value_t = 600_000)]
    pub forward_retire_after_ms: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// Parses `<n>ms`, `<n>s`, `<n>m` or `<n>h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

fn duration(key: &str, value: &str) -> anyhow::Result<Duration> {
    match parse_duration(value) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => bail!(
            "bad setting {key}: value {value:?} is not allowed; allowed: a positive duration with a unit, e.g. 300s, 5m, 1500ms"
        ),
    }
}

fn positive(key: &str, value: u64) -> anyhow::Result<u64> {
    if value == 0 {
        bail!("bad setting {key}: value 0 is not allowed; allowed: 1 or more");
    }
    Ok(value)
}

fn addr(key: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value.parse().map_err(|e| {
        anyhow::anyhow!(
            "bad setting {key}: value {value:?} is not allowed ({e}); allowed: IP:PORT, e.g. 0.0.0.0:8080"
        )
    })
}

fn boot_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms}-{}", std::process::id())
}

impl NodeArgs {
    /// Validates everything, before anything connects.
    ///
    /// # Errors
    ///
    /// A message naming the key, the value and what is allowed.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let node_id = match &self.node_id {
            Some(id) if !id.trim().is_empty() => id.clone(),
            _ => std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "bad setting POD_NAME: it is unset and so is HOSTNAME; allowed: this node's unique name (the pod name)"
                )
            })?,
        };
        if rtc_heartbeat::validate_node_id(&node_id).is_err() {
            bail!(
                "bad setting POD_NAME: value {node_id:?} is not allowed; allowed: 1 to 253 characters from [A-Za-z0-9._-]"
            );
        }
        let kafka: Vec<String> = self
            .kafka_bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if kafka.is_empty() || kafka.iter().any(|s| !s.contains(':')) {
            bail!(
                "bad setting KAFKA_BOOTSTRAP: value {:?} is not allowed; allowed: comma-separated HOST:PORT entries",
                self.kafka_bootstrap
            );
        }
        let topic_ok = !self.topic_prefix.is_empty()
            && self.topic_prefix.len() + node_id.len() <= 249
            && self
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !topic_ok {
            bail!(
                "bad setting DELIVERY_TOPIC_PREFIX: value {:?} is not allowed; allowed: characters from [A-Za-z0-9._-], at most 249 with the node id",
                self.topic_prefix
            );
        }
        let heartbeat_interval = duration("HEARTBEAT_INTERVAL", &self.heartbeat_interval)?;
        let stale_after = Duration::from_millis(positive("STALE_AFTER_MS", self.stale_after_ms)?);
        if stale_after <= heartbeat_interval {
            bail!(
                "bad setting STALE_AFTER_MS: value {} is not allowed; allowed: more than HEARTBEAT_INTERVAL ({heartbeat_interval:?})",
                self.stale_after_ms
            );
        }
        let presence_ttl_ms = positive("PRESENCE_TTL_MS", self.presence_ttl_ms)?;
        if presence_ttl_ms < 300 {
            bail!(
                "bad setting PRESENCE_TTL_MS: value {presence_ttl_ms} is not allowed; allowed: 300 or more"
            );
        }
        let max_connections =
            usize::try_from(positive("MAX_CONNECTIONS", self.max_connections as u64)?)
                .unwrap_or(usize::MAX);
        let max_frame_bytes = self.max_frame_bytes;
        if !(256..=16 * 1024 * 1024).contains(&max_frame_bytes) {
            bail!(
                "bad setting MAX_FRAME_BYTES: value {max_frame_bytes} is not allowed; allowed: 256 to 16777216"
            );
        }
        positive("RATE_LIMIT_PER_SEC", u64::from(self.rate_per_sec))?;
        positive("RATE_LIMIT_BURST", u64::from(self.rate_burst))?;
        positive("SEND_QUEUE", self.send_queue as u64)?;
        positive("OFFLINE_BUFFER_MAX", self.buffer_max as u64)?;
        positive("OFFLINE_BUFFER_TTL_MS", self.buffer_ttl_ms)?;
        if !(1..=3600).contains(&self.window_secs) {
            bail!(
                "bad setting METRICS_WINDOW_SECS: value {} is not allowed; allowed: 1 to 3600",
                self.window_secs
            );
        }
        let drain = DrainConfig {
            endpoint_delay: Duration::from_millis(self.drain_endpoint_delay_ms),
            timeout: duration("DRAIN_TIMEOUT", &self.drain_timeout)?,
            tail: None,
            min_batch_interval: Duration::from_millis(positive(
                "DRAIN_BATCH_INTERVAL_MS",
                self.drain_batch_interval_ms,
            )?),
            max_retry_after: Duration::from_millis(self.drain_max_retry_after_ms),
            force_grace: Duration::from_secs(2),
            seed: u64::from(std::process::id())
                ^ SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_nanos().into())
                    .unwrap_or(0),
        };
        drain.validate().map_err(|e| {
            anyhow::anyhow!(
                "bad setting DRAIN_TIMEOUT / DRAIN_ENDPOINT_DELAY_MS ({} / {}): {e}; allowed: an endpoint delay below the timeout",
                self.drain_timeout,
                self.drain_endpoint_delay_ms
            )
        })?;
        let presence_ttl = Duration::from_millis(presence_ttl_ms);
        let offset_commit_interval = Duration::from_millis(positive(
            "OFFSET_COMMIT_INTERVAL_MS",
            self.offset_commit_interval_ms,
        )?);
        let scan_interval = Duration::from_millis(positive(
            "FORWARD_SCAN_INTERVAL_MS",
            self.forward_scan_interval_ms,
        )?);
        let claim_ttl = Duration::from_millis(self.forward_claim_ttl_ms);
        if self.forward_claim_ttl_ms < 1_000 {
            bail!(
                "bad setting FORWARD_CLAIM_TTL_MS: value {} is not allowed; allowed: 1000 or more",
                self.forward_claim_ttl_ms
            );
        }
        if self.forward_retire_after_ms <= presence_ttl_ms {
            bail!(
                "bad setting FORWARD_RETIRE_AFTER_MS: value {} is not allowed; allowed: more than PRESENCE_TTL_MS ({presence_ttl_ms})",
                self.forward_retire_after_ms
            );
        }
        Ok(Settings {
            node_id,
            boot_id: boot_id(),
            public_addr: addr("PUBLIC_ADDR", &self.public_addr)?,
            admin_addr: addr("ADMIN_ADDR", &self.admin_addr)?,
            redis_url: self.redis_url.clone(),
            kafka_bootstrap: kafka,
            relay_prefix: self.relay_prefix.clone(),
            heartbeat_prefix: self.heartbeat_prefix.clone(),
            topic_prefix: self.topic_prefix.clone(),
            heartbeat_interval,
            stale_after,
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
                ttl: Duration::from_millis(self.buffer_ttl_ms),
            },
            send_queue: self.send_queue,
            window_secs: self.window_secs,
            drain,
            handoff_grace: Duration::from_millis(self.drain_handoff_grace_ms),
            offset_commit_interval,
            forward: ForwardConfig {
                scan_interval,
                claim_ttl,
                retire_after: Duration::from_millis(self.forward_retire_after_ms),
                offset_timeout: Duration::from_secs(5),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let id: &[&str] = if args.contains(&"--node-id") {
            &[]
        } else {
            &["--node-id", "socket-0"]
        };
        let cli = Cli::try_parse_from(["x"].iter().chain(id).chain(args.iter()).copied())?;
        cli.node.settings()
    }

    #[test]
    fn defaults_are_valid() {
        let s = settings(&[]).expect("defaults");
        assert_eq!(s.node_id, "socket-0");
        assert_eq!(s.drain.timeout, Duration::from_secs(300));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(s.limits.presence_refresh, Duration::from_secs(10));
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("300"), None);
        assert_eq!(parse_duration("5 m"), None);
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        for (args, key) in [
            (vec!["--drain-timeout", "300"], "DRAIN_TIMEOUT"),
            (vec!["--drain-timeout", "0s"], "DRAIN_TIMEOUT"),
            (vec!["--heartbeat-interval", "soon"], "HEARTBEAT_INTERVAL"),
            (vec!["--stale-after-ms", "1000"], "STALE_AFTER_MS"),
            (vec!["--admin-addr", "nowhere"], "ADMIN_ADDR"),
            (vec!["--public-addr", "1.2.3.4"], "PUBLIC_ADDR"),
            (vec!["--kafka-bootstrap", "broker"], "KAFKA_BOOTSTRAP"),
            (vec!["--kafka-bootstrap", ""], "KAFKA_BOOTSTRAP"),
            (vec!["--max-frame-bytes", "10"], "MAX_FRAME_BYTES"),
            (vec!["--max-connections", "0"], "MAX_CONNECTIONS"),
            (vec!["--rate-per-sec", "0"], "RATE_LIMIT_PER_SEC"),
            (vec!["--presence-ttl-ms", "10"], "PRESENCE_TTL_MS"),
            (vec!["--node-id", "a b"], "POD_NAME"),
            (vec!["--topic-prefix", "a/b"], "DELIVERY_TOPIC_PREFIX"),
            (vec!["--window-secs", "0"], "METRICS_WINDOW_SECS"),
            (
                vec!["--offset-commit-interval-ms", "0"],
                "OFFSET_COMMIT_INTERVAL_MS",
            ),
            (
                vec!["--forward-scan-interval-ms", "0"],
                "FORWARD_SCAN_INTERVAL_MS",
            ),
            (vec!["--forward-claim-ttl-ms", "10"], "FORWARD_CLAIM_TTL_MS"),
            (
                vec!["--forward-retire-after-ms", "30000"],
                "FORWARD_RETIRE_AFTER_MS",
            ),
            (
                vec!["--drain-timeout", "5s", "--drain-endpoint-delay-ms", "5000"],
                "DRAIN_TIMEOUT",
            ),
        ] {
            let err = settings(&args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{args:?}: {err}");
            assert!(err.contains("allowed"), "{args:?}: {err}");
        }
    }
}
