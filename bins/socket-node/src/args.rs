//! Command line and environment, read once into [`RawSettings`] and
//! validated by `rtc-socket`.

use std::time::UNIX_EPOCH;

use clap::Args;
use rtc_socket::RawSettings;
use rtc_telemetry::LogFormat;
use rtc_time::WallClock;

/// The socket node's settings. Each flag can also be set through the
/// environment key shown.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// This node's id (the pod name); defaults to HOSTNAME.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub(crate) node_id: Option<String>,

    /// Address of the public WebSocket port.
    #[arg(long, env = "PUBLIC_ADDR", default_value = "0.0.0.0:8000")]
    pub(crate) public_addr: String,

    /// Address of the admin port (/drain, /healthz, /readyz, /metrics).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub(crate) admin_addr: String,

    /// Bearer token that `POST /shed` (a rebalance) must carry; unset, sheds
    /// are refused. Give the load-balancer the same one (SOCKET_ADMIN_TOKEN).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,

    /// Redis for presence, offline buffers and heartbeats.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,

    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub(crate) kafka_bootstrap: String,

    /// Key prefix of presence entries, offline buffers and positions.
    #[arg(long, env = "RELAY_PREFIX", default_value = "rtc:relay:")]
    pub(crate) relay_prefix: String,

    /// Key prefix of heartbeats (must match the load-balancer's).
    #[arg(long, env = "HEARTBEAT_PREFIX", default_value = "rtc:hb:")]
    pub(crate) heartbeat_prefix: String,

    /// Delivery topics are named this prefix followed by the node id.
    #[arg(long, env = "DELIVERY_TOPIC_PREFIX", default_value = "rtc.deliver.")]
    pub(crate) topic_prefix: String,

    /// Time between heartbeats, with a unit: 5s, 1500ms, 1m.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "5s")]
    pub(crate) heartbeat_interval: String,

    /// A node silent for this long is gone, ms (or with a unit); must exceed the interval.
    #[arg(long, env = "STALE_AFTER_MS", default_value = "15000")]
    pub(crate) stale_after_ms: String,

    /// Say in each heartbeat which limit CPU and memory are each a fraction
    /// of when only one has a limit (true or false). Turn on only once every
    /// load-balancer is of a version that reads `cpu_of` and `mem_of`: older
    /// ones refuse such heartbeats.
    #[arg(long, env = "HEARTBEAT_LIMIT_PER_RESOURCE", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) heartbeat_limit_per_resource: bool,

    /// Lifetime of a client's presence entry, ms (or with a unit); renewed every third.
    #[arg(long, env = "PRESENCE_TTL_MS", default_value = "30000")]
    pub(crate) presence_ttl_ms: String,

    /// Connections this node holds at most.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 50_000)]
    pub(crate) max_connections: usize,

    /// Largest text frame accepted, bytes.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub(crate) max_frame_bytes: usize,

    /// Messages per second one connection may send, sustained.
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 100)]
    pub(crate) rate_per_sec: u32,

    /// Messages one connection may send in a burst.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 200)]
    pub(crate) rate_burst: u32,

    /// Frames queued per connection before it counts as too slow.
    #[arg(long, env = "SEND_QUEUE", default_value_t = 256)]
    pub(crate) send_queue: usize,

    /// Messages kept per offline client.
    #[arg(long, env = "OFFLINE_BUFFER_MAX", default_value_t = 1_000)]
    pub(crate) buffer_max: usize,

    /// How long an offline client's messages are kept, ms (or with a unit: 5s, 1m).
    #[arg(long, env = "OFFLINE_BUFFER_TTL_MS", default_value = "86400000")]
    pub(crate) buffer_ttl_ms: String,

    /// Seconds in the messages/s and p95 latency windows.
    #[arg(long, env = "METRICS_WINDOW_SECS", default_value = "10")]
    pub(crate) window_secs: String,

    /// Longest a drain may take, with a unit: 5m, 300s.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "5m")]
    pub(crate) drain_timeout: String,

    /// Wait after failing readiness before moving clients, ms (or with a unit: 5s, 1m).
    #[arg(long, env = "DRAIN_ENDPOINT_DELAY_MS", default_value = "5000")]
    pub(crate) drain_endpoint_delay_ms: String,

    /// Reconnect batches are at least this far apart, ms (or with a unit: 5s, 1m).
    #[arg(long, env = "DRAIN_BATCH_INTERVAL_MS", default_value = "1000")]
    pub(crate) drain_batch_interval_ms: String,

    /// Largest retry_after told to a client, ms (or with a unit: 5s, 1m).
    #[arg(long, env = "DRAIN_MAX_RETRY_AFTER_MS", default_value = "10000")]
    pub(crate) drain_max_retry_after_ms: String,

    /// After the last client left, how long to keep reading the delivery
    /// topic before the final hand-off, ms (or with a unit: 5s, 1m).
    #[arg(long, env = "DRAIN_HANDOFF_GRACE_MS", default_value = "1000")]
    pub(crate) drain_handoff_grace_ms: String,

    /// The consumer commits its position to the broker at most this often, ms (or with a unit: 5s, 1m).
    #[arg(long, env = "OFFSET_COMMIT_INTERVAL_MS", default_value = "1000")]
    pub(crate) offset_commit_interval_ms: String,

    /// Time between scans for nodes that are gone, ms (or with a unit: 5s, 1m).
    #[arg(long, env = "FORWARD_SCAN_INTERVAL_MS", default_value = "5000")]
    pub(crate) forward_scan_interval_ms: String,

    /// Lifetime of a claim on a gone node's topic, ms (or with a unit); renewed while forwarding.
    #[arg(long, env = "FORWARD_CLAIM_TTL_MS", default_value = "30000")]
    pub(crate) forward_claim_ttl_ms: String,

    /// A gone node whose topic is read to the end leaves the registry after
    /// this long, ms (or with a unit); more than PRESENCE_TTL_MS.
    #[arg(long, env = "FORWARD_RETIRE_AFTER_MS", default_value = "600000")]
    pub(crate) forward_retire_after_ms: String,

    /// How long a batch of records for another node's delivery topic waits
    /// for more after its first, ms (or with a unit); 0 to 1s.
    #[arg(long, env = "PRODUCE_LINGER_MS", default_value = "5")]
    pub(crate) produce_linger_ms: String,

    /// Records per produce to another node's delivery topic at most.
    #[arg(long, env = "PRODUCE_BATCH_RECORDS", default_value_t = 1_000)]
    pub(crate) produce_batch_records: usize,

    /// Bytes (keys and values) per produce at most.
    #[arg(long, env = "PRODUCE_BATCH_BYTES", default_value_t = 1_048_576)]
    pub(crate) produce_batch_bytes: usize,

    /// How long a fetch of this node's delivery topic waits when it has no
    /// new records, ms (or with a unit).
    #[arg(long, env = "FETCH_MAX_WAIT_MS", default_value = "20")]
    pub(crate) fetch_max_wait_ms: String,

    /// Bytes one fetch of this node's delivery topic reads at most.
    #[arg(long, env = "FETCH_MAX_BYTES", default_value_t = 1_048_576)]
    pub(crate) fetch_max_bytes: usize,

    /// How long the node the store named for a recipient is used for its
    /// next messages without asking again, ms (or with a unit); 0 asks for
    /// every message. Less than FORWARD_RETIRE_AFTER_MS minus PRESENCE_TTL_MS.
    #[arg(long, env = "ROUTE_CACHE_MS", default_value = "1000")]
    pub(crate) route_cache_ms: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub(crate) log_format: LogFormat,
}

impl NodeArgs {
    /// The settings as given, with `hostname` (HOSTNAME) as the fallback
    /// node id and this start's boot id and drain seed, taken from `clock`.
    pub(crate) fn raw(&self, hostname: Option<String>, clock: &dyn WallClock) -> RawSettings {
        let now = clock.now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let pid = std::process::id();
        RawSettings {
            node_id: self.node_id.clone(),
            public_addr: self.public_addr.clone(),
            admin_addr: self.admin_addr.clone(),
            admin_token: self.admin_token.clone(),
            redis_url: self.redis_url.clone(),
            kafka_bootstrap: self.kafka_bootstrap.clone(),
            relay_prefix: self.relay_prefix.clone(),
            heartbeat_prefix: self.heartbeat_prefix.clone(),
            topic_prefix: self.topic_prefix.clone(),
            heartbeat_interval: self.heartbeat_interval.clone(),
            stale_after_ms: self.stale_after_ms.clone(),
            heartbeat_limit_per_resource: self.heartbeat_limit_per_resource,
            presence_ttl_ms: self.presence_ttl_ms.clone(),
            max_connections: self.max_connections,
            max_frame_bytes: self.max_frame_bytes,
            rate_per_sec: self.rate_per_sec,
            rate_burst: self.rate_burst,
            send_queue: self.send_queue,
            buffer_max: self.buffer_max,
            buffer_ttl_ms: self.buffer_ttl_ms.clone(),
            window_secs: self.window_secs.clone(),
            drain_timeout: self.drain_timeout.clone(),
            drain_endpoint_delay_ms: self.drain_endpoint_delay_ms.clone(),
            drain_batch_interval_ms: self.drain_batch_interval_ms.clone(),
            drain_max_retry_after_ms: self.drain_max_retry_after_ms.clone(),
            drain_handoff_grace_ms: self.drain_handoff_grace_ms.clone(),
            offset_commit_interval_ms: self.offset_commit_interval_ms.clone(),
            forward_scan_interval_ms: self.forward_scan_interval_ms.clone(),
            forward_claim_ttl_ms: self.forward_claim_ttl_ms.clone(),
            forward_retire_after_ms: self.forward_retire_after_ms.clone(),
            produce_linger_ms: self.produce_linger_ms.clone(),
            produce_batch_records: self.produce_batch_records,
            produce_batch_bytes: self.produce_batch_bytes,
            fetch_max_wait_ms: self.fetch_max_wait_ms.clone(),
            fetch_max_bytes: self.fetch_max_bytes,
            route_cache_ms: self.route_cache_ms.clone(),
            hostname,
            boot_id: format!("{}-{pid}", now.as_millis()),
            drain_seed: u64::from(pid) ^ u64::from(now.subsec_nanos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use rtc_socket::Settings;
    use rtc_time::{ManualClock, SystemClock};
    use std::time::Duration;

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
        Ok(cli.node.raw(None, &SystemClock).validate()?)
    }

    #[test]
    fn defaults_are_valid() {
        let s = settings(&[]).expect("defaults");
        assert_eq!(s.node_id, "socket-0");
        assert_eq!(s.drain.timeout, Duration::from_secs(300));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(s.limits.presence_refresh, Duration::from_secs(10));
        // Heartbeats every load-balancer version accepts, until asked.
        assert!(!s.heartbeat_limit_per_resource);
    }

    #[test]
    fn per_resource_limits_in_heartbeats_are_switched_on_by_a_flag() -> anyhow::Result<()> {
        let on = settings(&["--heartbeat-limit-per-resource", "true"])?;
        assert!(on.heartbeat_limit_per_resource);
        let off = settings(&["--heartbeat-limit-per-resource", "false"])?;
        assert!(!off.heartbeat_limit_per_resource);
        assert!(settings(&["--heartbeat-limit-per-resource", "maybe"]).is_err());
        Ok(())
    }

    #[test]
    fn the_node_id_falls_back_to_hostname_and_the_boot_id_names_the_start() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["x", "--node-id", " "])?;
        let clock = ManualClock::new(1_700_000_000_123);
        let s = cli.node.raw(Some("pod-7".to_owned()), &clock).validate()?;
        assert_eq!(s.node_id, "pod-7");
        let err = cli.node.raw(None, &clock).validate().err();
        assert_eq!(err.map(|e| e.key), Some("POD_NAME"));
        assert_eq!(s.boot_id, format!("1700000000123-{}", std::process::id()));
        Ok(())
    }

    #[test]
    fn every_duration_takes_a_unit_and_ms_keys_take_bare_milliseconds() -> anyhow::Result<()> {
        let bare = settings(&["--stale-after-ms", "20000", "--window-secs", "30"])?;
        let units = settings(&["--stale-after-ms", "20s", "--window-secs", "30s"])?;
        assert_eq!(bare.stale_after, Duration::from_secs(20));
        assert_eq!(units.stale_after, Duration::from_secs(20));
        assert_eq!((bare.window_secs, units.window_secs), (30, 30));
        let s = settings(&["--drain-timeout", "1m30s", "--forward-claim-ttl-ms", "1m"])?;
        assert_eq!(s.drain.timeout, Duration::from_secs(90));
        assert_eq!(s.forward.claim_ttl, Duration::from_secs(60));
        Ok(())
    }

    #[test]
    fn batching_has_sane_defaults_and_takes_its_keys() -> anyhow::Result<()> {
        let d = settings(&[])?;
        assert_eq!(d.batch, rtc_relay::BatchBounds::DEFAULT);
        assert_eq!(d.fetch_wait, Duration::from_millis(20));
        assert_eq!(d.fetch_max_bytes, 1_048_576);
        assert_eq!(d.route_cache, Duration::from_secs(1));
        assert_eq!(
            settings(&["--route-cache-ms", "0"])?.route_cache,
            Duration::ZERO
        );
        let s = settings(&[
            "--produce-linger-ms",
            "0",
            "--produce-batch-records",
            "50",
            "--produce-batch-bytes",
            "65536",
            "--fetch-max-wait-ms",
            "20ms",
            "--fetch-max-bytes",
            "4096",
        ])?;
        assert_eq!(s.batch.linger, Duration::ZERO);
        assert_eq!((s.batch.max_records, s.batch.max_bytes), (50, 65_536));
        assert_eq!(
            (s.fetch_wait, s.fetch_max_bytes),
            (Duration::from_millis(20), 4_096)
        );
        Ok(())
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        for (args, key) in [
            (vec!["--drain-timeout", "300"], "DRAIN_TIMEOUT"),
            (vec!["--drain-timeout", "0s"], "DRAIN_TIMEOUT"),
            (vec!["--heartbeat-interval", "soon"], "HEARTBEAT_INTERVAL"),
            (vec!["--stale-after-ms", "1000"], "STALE_AFTER_MS"),
            (vec!["--admin-addr", "nowhere"], "ADMIN_ADDR"),
            (vec!["--admin-token", "too-short"], "ADMIN_TOKEN"),
            (
                vec!["--admin-token", "sixteen chars or more"],
                "ADMIN_TOKEN",
            ),
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
            (vec!["--window-secs", "1500ms"], "METRICS_WINDOW_SECS"),
            (vec!["--stale-after-ms", "soon"], "STALE_AFTER_MS"),
            (
                vec!["--drain-batch-interval-ms", "0"],
                "DRAIN_BATCH_INTERVAL_MS",
            ),
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
            (vec!["--produce-linger-ms", "2s"], "PRODUCE_LINGER_MS"),
            (vec!["--produce-linger-ms", "soon"], "PRODUCE_LINGER_MS"),
            (
                vec!["--produce-batch-records", "0"],
                "PRODUCE_BATCH_RECORDS",
            ),
            (
                vec!["--produce-batch-records", "100001"],
                "PRODUCE_BATCH_RECORDS",
            ),
            (vec!["--produce-batch-bytes", "100"], "PRODUCE_BATCH_BYTES"),
            (vec!["--fetch-max-wait-ms", "0"], "FETCH_MAX_WAIT_MS"),
            (vec!["--fetch-max-wait-ms", "1m"], "FETCH_MAX_WAIT_MS"),
            (vec!["--fetch-max-bytes", "10"], "FETCH_MAX_BYTES"),
            (vec!["--route-cache-ms", "soon"], "ROUTE_CACHE_MS"),
            (
                vec![
                    "--route-cache-ms",
                    "10m",
                    "--presence-ttl-ms",
                    "30s",
                    "--forward-retire-after-ms",
                    "10m",
                ],
                "ROUTE_CACHE_MS",
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
