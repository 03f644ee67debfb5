//! The load-balancer's settings: the text the operator gave (flags and
//! environment, parsed by the binary) validated once into the typed
//! configurations the crates take. A bad value is refused with a message
//! naming the key, the value and what is allowed.

use crate::shed::ShedSettings;
use rtc_autoscaler::LoopConfig;
use rtc_decision::{Engine, Policy};
use rtc_heartbeat::IngestorConfig;
use rtc_leader::ElectionConfig;
use rtc_time::{Bare, format_duration, parse_duration};
use rtc_workload::ScalerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A setting that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SettingError {
    /// The key (or keys) at fault, as operators write them.
    pub key: String,
    /// The whole message: key, value and what is allowed.
    pub message: String,
}

impl SettingError {
    fn new(key: impl Into<String>, message: String) -> Self {
        Self {
            key: key.into(),
            message,
        }
    }
}

/// The settings as given. Durations are text in the workspace's one
/// grammar ([`rtc_time::parse_duration`]): a bare number in the unit the key
/// names (`TICK_INTERVAL_MS=5000`), or any value with a unit (`5s`).
#[derive(Debug, Clone)]
pub struct RawSettings {
    /// POD_NAME: this replica's identity in the Lease.
    pub identity: Option<String>,
    /// HOSTNAME, the fallback identity.
    pub hostname: Option<String>,
    /// KUBERNETES_NAMESPACE: of the workload and the Lease.
    pub namespace: String,
    /// SOCKET_WORKLOAD_NAME: the Deployment or StatefulSet scaled.
    pub workload: String,
    /// REDIS_URL: heartbeats and the decision state.
    pub redis_url: String,
    /// KAFKA_BOOTSTRAP: comma-separated brokers for scaling signals; empty
    /// disables them.
    pub kafka_bootstrap: String,
    /// HEARTBEAT_PREFIX: key prefix of the heartbeats.
    pub heartbeat_prefix: String,
    /// DECISION_STATE_KEY: Redis key of the stored decision state.
    pub state_key: String,
    /// LEASE_NAME: the Lease the replicas compete for.
    pub lease_name: String,
    /// TICK_INTERVAL_MS: time between two scaling ticks.
    pub tick_interval: String,
    /// LEASE_DURATION_MS.
    pub lease_duration: String,
    /// RENEW_DEADLINE_MS.
    pub renew_deadline: String,
    /// RETRY_PERIOD_MS.
    pub retry_period: String,
    /// LEADER_SAFETY_MARGIN_MS: lease time that must be left before a write.
    pub safety_margin: String,
    /// SHUTDOWN_TIMEOUT_MS.
    pub shutdown_timeout: String,
    /// ADMIN_ADDR: IP:PORT of the admin port.
    pub admin_addr: String,
    /// DECISION_HISTORY: decisions kept for /decisions.
    pub decision_history: usize,
    /// SOCKET_ADMIN_PORT: the socket pods' admin port, where sheds go.
    pub socket_admin_port: u16,
    /// SOCKET_ADMIN_TOKEN: the socket nodes' ADMIN_TOKEN; needed when
    /// rebalancing is on.
    pub socket_admin_token: Option<String>,
    /// REBALANCE_SHED_WINDOW_MS: the time each hot node spreads its moves over.
    pub shed_window: String,
    /// The decision policy's settings.
    pub policy: PolicyInput,
}

/// Decision-policy settings as given: a policy file (or the defaults), then
/// each key that is set.
#[derive(Debug, Clone, Default)]
pub struct PolicyInput {
    /// DECISION_POLICY_FILE: a JSON object with some or all policy fields.
    pub policy_file: Option<PathBuf>,
    /// SOCKET_MIN_REPLICAS.
    pub min_replicas: Option<u32>,
    /// SOCKET_MAX_REPLICAS.
    pub max_replicas: Option<u32>,
    /// MAX_SCALE_STEP.
    pub max_step: Option<u32>,
    /// SCALE_OUT_WINDOW_MS.
    pub scale_out_window: Option<String>,
    /// SCALE_IN_WINDOW_MS.
    pub scale_in_window: Option<String>,
    /// SCALE_IN_STABILIZATION_MS.
    pub scale_in_stabilization: Option<String>,
    /// SETTLE_MS.
    pub settle: Option<String>,
    /// STALE_AFTER_MS.
    pub stale_after: Option<String>,
    /// CONN_PER_POD.
    pub conn_per_pod: Option<f64>,
    /// MPS_PER_POD.
    pub mps_per_pod: Option<f64>,
    /// REBALANCE: switches the rebalance rule on or off.
    pub rebalance: Option<bool>,
    /// REBALANCE_WINDOW_MS: no rebalance within this long of the last one.
    pub rebalance_window: Option<String>,
}

/// Everything validated, before anything connects.
#[derive(Debug)]
pub struct Settings {
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Namespace of the workload and the Lease.
    pub namespace: String,
    /// Name of the workload scaled.
    pub workload: String,
    /// Redis URL.
    pub redis_url: String,
    /// Key prefix of the heartbeats.
    pub heartbeat_prefix: String,
    /// Redis key of the decision state.
    pub state_key: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// Decisions kept for /decisions.
    pub decision_history: usize,
    /// Admin port address.
    pub admin: SocketAddr,
    /// Kafka brokers; empty: no scaling signals.
    pub kafka: Vec<String>,
    /// Lease timing.
    pub election: ElectionConfig,
    /// Workload bounds.
    pub scaler: ScalerConfig,
    /// The decision engine with its validated policy.
    pub engine: Engine,
    /// Heartbeat ingestion.
    pub ingest: IngestorConfig,
    /// The leader's loop.
    pub looping: LoopConfig,
    /// Where rebalances' sheds go; `None` while the rule is off.
    pub shed: Option<ShedSettings>,
}

fn duration(key: &'static str, text: &str) -> Result<Duration, SettingError> {
    parse_duration(text, Bare::Millis).map_err(|e| SettingError::new(key, e.refusal(key)))
}

fn positive(key: &'static str, text: &str) -> Result<Duration, SettingError> {
    let d = duration(key, text)?;
    if d.is_zero() {
        return Err(SettingError::new(
            key,
            format!("bad setting {key}: value {text:?} is not allowed; allowed: more than 0"),
        ));
    }
    Ok(d)
}

impl RawSettings {
    /// Validates everything.
    ///
    /// # Errors
    ///
    /// [`SettingError`] naming the key, the value and what is allowed.
    pub fn validate(&self) -> Result<Settings, SettingError> {
        let policy = self.policy.policy()?;
        let identity = [&self.identity, &self.hostname]
            .into_iter()
            .flatten()
            .find(|id| !id.trim().is_empty())
            .cloned()
            .ok_or_else(|| SettingError::new("POD_NAME", "bad setting POD_NAME: it is unset and so is HOSTNAME; allowed: this replica's unique name (the pod name)".to_owned()))?;
        let admin: SocketAddr = self.admin_addr.parse().map_err(|e| {
            SettingError::new(
                "ADMIN_ADDR",
                format!(
                    "bad setting ADMIN_ADDR: value {:?} is not allowed ({e}); allowed: IP:PORT, e.g. 0.0.0.0:8080",
                    self.admin_addr
                ),
            )
        })?;
        let tick_interval = positive("TICK_INTERVAL_MS", &self.tick_interval)?;
        let retry_period = positive("RETRY_PERIOD_MS", &self.retry_period)?;
        let lease_duration = duration("LEASE_DURATION_MS", &self.lease_duration)?;
        let renew_deadline = duration("RENEW_DEADLINE_MS", &self.renew_deadline)?;
        let kafka = rtc_signal_kafka::parse_bootstrap(&self.kafka_bootstrap).map_err(|e| {
            SettingError::new(
                "KAFKA_BOOTSTRAP",
                format!("bad setting KAFKA_BOOTSTRAP: {e}"),
            )
        })?;
        let election = ElectionConfig::new(identity.clone()).with_timing(
            lease_duration,
            renew_deadline,
            retry_period,
        );
        election.validate().map_err(|e| {
            SettingError::new(
                "LEASE_DURATION_MS / RENEW_DEADLINE_MS / RETRY_PERIOD_MS",
                format!(
                    "bad setting LEASE_DURATION_MS / RENEW_DEADLINE_MS / RETRY_PERIOD_MS ({} / {} / {}): {e}",
                    format_duration(lease_duration),
                    format_duration(renew_deadline),
                    format_duration(retry_period)
                ),
            )
        })?;
        let scaler = ScalerConfig::new(
            self.workload.clone(),
            policy.min_replicas,
            policy.max_replicas,
        )
        .map_err(|e| SettingError::new("SOCKET_WORKLOAD_NAME", e.to_string()))?;
        let ingest = IngestorConfig {
            stale_after: Duration::from_millis(u64::try_from(policy.stale_after_ms).unwrap_or(0)),
            ..IngestorConfig::default()
        };
        ingest.validate().map_err(|e| {
            SettingError::new("STALE_AFTER_MS", format!("bad heartbeat setting: {e}"))
        })?;
        let looping = LoopConfig {
            tick_interval,
            safety_margin: duration("LEADER_SAFETY_MARGIN_MS", &self.safety_margin)?,
            shutdown_timeout: duration("SHUTDOWN_TIMEOUT_MS", &self.shutdown_timeout)?,
        };
        looping.validate_against(&election).map_err(|e| {
            SettingError::new(
                "LEADER_SAFETY_MARGIN_MS / RENEW_DEADLINE_MS / RETRY_PERIOD_MS",
                format!(
                    "bad setting LEADER_SAFETY_MARGIN_MS / RENEW_DEADLINE_MS / RETRY_PERIOD_MS ({} / {} / {}): {e}",
                    format_duration(looping.safety_margin),
                    format_duration(renew_deadline),
                    format_duration(retry_period)
                ),
            )
        })?;
        let gap = Duration::from_millis(u64::try_from(policy.max_observation_gap_ms).unwrap_or(0));
        if tick_interval >= gap {
            return Err(SettingError::new(
                "TICK_INTERVAL_MS",
                format!(
                    "bad setting TICK_INTERVAL_MS: value {:?} is not allowed; allowed: less than the policy's max_observation_gap_ms ({}), or every tick would restart the scale-in clock",
                    self.tick_interval,
                    format_duration(gap)
                ),
            ));
        }
        let shed = self.shed(&policy)?;
        let engine = Engine::new(policy).map_err(|e| SettingError::new("policy", e.to_string()))?;
        Ok(Settings {
            identity,
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            redis_url: self.redis_url.clone(),
            heartbeat_prefix: self.heartbeat_prefix.clone(),
            state_key: self.state_key.clone(),
            lease_name: self.lease_name.clone(),
            decision_history: self.decision_history,
            admin,
            kafka,
            election,
            scaler,
            engine,
            ingest,
            looping,
            shed,
        })
    }

    /// The shed settings, when the rebalance rule is on.
    fn shed(&self, policy: &Policy) -> Result<Option<ShedSettings>, SettingError> {
        if !policy.rebalance.enabled {
            return Ok(None);
        }
        let token = self
            .socket_admin_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                SettingError::new(
                    "SOCKET_ADMIN_TOKEN",
                    "bad setting SOCKET_ADMIN_TOKEN: it is unset, but rebalancing is on (REBALANCE or the policy's rebalance.enabled); allowed: the ADMIN_TOKEN the socket nodes are started with, or rebalancing off".to_owned(),
                )
            })?;
        let window = duration("REBALANCE_SHED_WINDOW_MS", &self.shed_window)?;
        let rule_window =
            Duration::from_millis(u64::try_from(policy.rebalance.window_ms).unwrap_or(0));
        if window > rule_window {
            return Err(SettingError::new(
                "REBALANCE_SHED_WINDOW_MS",
                format!(
                    "bad setting REBALANCE_SHED_WINDOW_MS: value {:?} is not allowed; allowed: at most the policy's rebalance.window_ms ({}), so that no client moves twice within it",
                    self.shed_window,
                    format_duration(rule_window)
                ),
            ));
        }
        if self.socket_admin_port == 0 {
            return Err(SettingError::new(
                "SOCKET_ADMIN_PORT",
                "bad setting SOCKET_ADMIN_PORT: value 0 is not allowed; allowed: 1 to 65535"
                    .to_owned(),
            ));
        }
        Ok(Some(ShedSettings {
            port: self.socket_admin_port,
            token: token.into(),
            window,
        }))
    }
}

/// Where each policy field comes from, for error messages.
const SOURCES: &[(&str, &str)] = &[
    ("min_replicas", "SOCKET_MIN_REPLICAS"),
    ("max_replicas", "SOCKET_MAX_REPLICAS"),
    ("max_step", "MAX_SCALE_STEP"),
    ("scale_out_window_ms", "SCALE_OUT_WINDOW_MS"),
    ("scale_in_window_ms", "SCALE_IN_WINDOW_MS"),
    ("scale_in_stabilization_ms", "SCALE_IN_STABILIZATION_MS"),
    ("settle_ms", "SETTLE_MS"),
    ("stale_after_ms", "STALE_AFTER_MS"),
    ("conn_capacity", "CONN_PER_POD"),
    ("mps_capacity", "MPS_PER_POD"),
    ("rebalance.enabled", "REBALANCE"),
    ("rebalance.window_ms", "REBALANCE_WINDOW_MS"),
];

/// A policy window in milliseconds, as the policy stores it.
fn window(key: &'static str, text: Option<&String>) -> Result<Option<i64>, SettingError> {
    text.map(|t| duration(key, t).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        .transpose()
}

impl PolicyInput {
    /// The decision policy: the file's fields (or the defaults), then each
    /// key that is set, validated.
    ///
    /// # Errors
    ///
    /// [`SettingError`] when the file cannot be read or parsed, or a value
    /// is out of range.
    pub fn policy(&self) -> Result<Policy, SettingError> {
        let mut p = match &self.policy_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    SettingError::new(
                        "DECISION_POLICY_FILE",
                        format!(
                            "bad setting DECISION_POLICY_FILE: cannot read {}: {e}",
                            path.display()
                        ),
                    )
                })?;
                serde_json::from_str::<Policy>(&text).map_err(|e| SettingError::new(
                    "DECISION_POLICY_FILE",
                    format!(
                        "bad setting DECISION_POLICY_FILE: {} is not a valid policy ({e}); allowed: a JSON object with fields of the decision policy (docs/decision-policy.md)",
                        path.display()
                    ),
                ))?
            }
            None => Policy::default(),
        };
        p.min_replicas = self.min_replicas.unwrap_or(p.min_replicas);
        p.max_replicas = self.max_replicas.unwrap_or(p.max_replicas);
        p.max_step = self.max_step.unwrap_or(p.max_step);
        let windows = [
            (
                "SCALE_OUT_WINDOW_MS",
                &self.scale_out_window,
                &mut p.scale_out_window_ms,
            ),
            (
                "SCALE_IN_WINDOW_MS",
                &self.scale_in_window,
                &mut p.scale_in_window_ms,
            ),
            (
                "SCALE_IN_STABILIZATION_MS",
                &self.scale_in_stabilization,
                &mut p.scale_in_stabilization_ms,
            ),
            ("SETTLE_MS", &self.settle, &mut p.settle_ms),
            ("STALE_AFTER_MS", &self.stale_after, &mut p.stale_after_ms),
            (
                "REBALANCE_WINDOW_MS",
                &self.rebalance_window,
                &mut p.rebalance.window_ms,
            ),
        ];
        for (key, text, field) in windows {
            if let Some(ms) = window(key, text.as_ref())? {
                *field = ms;
            }
        }
        p.conn_capacity = self.conn_per_pod.or(p.conn_capacity);
        p.mps_capacity = self.mps_per_pod.or(p.mps_capacity);
        p.rebalance.enabled = self.rebalance.unwrap_or(p.rebalance.enabled);
        p.validate().map_err(|e| {
            let source = SOURCES
                .iter()
                .find(|(field, _)| *field == e.field)
                .map(|(_, key)| (*key).to_owned())
                .or_else(|| {
                    self.policy_file
                        .as_ref()
                        .map(|f| format!("field `{}` of {}", e.field, f.display()))
                })
                .unwrap_or_else(|| format!("policy field `{}`", e.field));
            SettingError::new(
                source.clone(),
                format!(
                    "bad decision policy setting {source}: value {} is not allowed; allowed: {}",
                    e.value, e.allowed
                ),
            )
        })?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawSettings {
        RawSettings {
            identity: Some("lb-0".to_owned()),
            hostname: None,
            namespace: "rtc".to_owned(),
            workload: "socket".to_owned(),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            kafka_bootstrap: String::new(),
            heartbeat_prefix: "rtc:hb:".to_owned(),
            state_key: "rtc:lb:decision-state".to_owned(),
            lease_name: "rtc-load-balancer".to_owned(),
            tick_interval: "5000".to_owned(),
            lease_duration: "15s".to_owned(),
            renew_deadline: "10000".to_owned(),
            retry_period: "2s".to_owned(),
            safety_margin: "2000".to_owned(),
            shutdown_timeout: "10s".to_owned(),
            admin_addr: "127.0.0.1:0".to_owned(),
            decision_history: 10,
            socket_admin_port: 8080,
            socket_admin_token: None,
            shed_window: "20s".to_owned(),
            policy: PolicyInput::default(),
        }
    }

    #[test]
    fn rebalancing_needs_the_nodes_token_and_a_shed_window_within_the_rule_window() {
        let s = raw().validate().expect("valid");
        assert!(s.shed.is_none(), "off by default");
        let mut r = raw();
        r.policy.rebalance = Some(true);
        let e = r.validate().expect_err("no token");
        assert_eq!(e.key, "SOCKET_ADMIN_TOKEN");
        assert!(e.message.contains("ADMIN_TOKEN the socket nodes"), "{e}");
        r.socket_admin_token = Some("0123456789abcdef".to_owned());
        let shed = r.validate().expect("valid").shed.expect("on");
        assert_eq!((shed.port, shed.window), (8080, Duration::from_secs(20)));
        assert_eq!(&*shed.token, "0123456789abcdef");
        r.policy.rebalance_window = Some("10s".to_owned());
        r.shed_window = "11s".to_owned();
        let e = r.validate().expect_err("longer than the rule window");
        assert!(e.message.contains("(10s)"), "{e}");
        r.policy.rebalance_window = None;
        r.shed_window = "61s".to_owned();
        let e = r.validate().expect_err("longer than the rule window");
        assert_eq!(e.key, "REBALANCE_SHED_WINDOW_MS");
        assert!(
            e.message
                .contains("at most the policy's rebalance.window_ms (1m)"),
            "{e}"
        );
        r.shed_window = "soon".to_owned();
        assert_eq!(
            r.validate().expect_err("bad").key,
            "REBALANCE_SHED_WINDOW_MS"
        );
        r.shed_window = "5s".to_owned();
        r.socket_admin_port = 0;
        assert_eq!(r.validate().expect_err("bad").key, "SOCKET_ADMIN_PORT");
    }

    #[test]
    fn durations_take_bare_milliseconds_or_a_unit() {
        let s = raw().validate().expect("valid");
        assert_eq!(s.election.lease_duration, Duration::from_secs(15));
        assert_eq!(s.election.renew_deadline, Duration::from_secs(10));
        assert_eq!(s.looping.tick_interval, Duration::from_secs(5));
        assert_eq!(s.looping.shutdown_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_safety_margin_that_leaves_no_time_to_write_names_the_keys() {
        let mut r = raw();
        r.safety_margin = "8s".to_owned();
        let err = r.validate().expect_err("8 s >= 10 s - 2 s");
        assert!(err.message.contains("LEADER_SAFETY_MARGIN_MS"), "{err}");
        assert!(err.message.contains("RENEW_DEADLINE_MS"), "{err}");
        assert!(err.message.contains("8s / 10s / 2s"), "{err}");
    }

    #[test]
    fn a_tick_interval_at_the_observation_gap_is_refused() {
        let mut r = raw();
        r.tick_interval = "15s".to_owned();
        let err = r.validate().expect_err("15 s tick, 15 s gap bound");
        assert_eq!(err.key, "TICK_INTERVAL_MS");
        assert!(
            err.message.contains("max_observation_gap_ms (15s)"),
            "{err}"
        );
    }

    #[test]
    fn the_identity_falls_back_to_hostname() {
        let mut r = raw();
        r.identity = Some(" ".to_owned());
        r.hostname = Some("lb-7".to_owned());
        assert_eq!(r.validate().map(|s| s.identity), Ok("lb-7".to_owned()));
        r.hostname = None;
        assert_eq!(
            r.validate().err().map(|e| e.key),
            Some("POD_NAME".to_owned())
        );
    }

    #[test]
    fn policy_windows_accept_units() {
        let input = PolicyInput {
            scale_out_window: Some("2m".to_owned()),
            settle: Some("45000".to_owned()),
            ..PolicyInput::default()
        };
        let p = input.policy().expect("valid");
        assert_eq!((p.scale_out_window_ms, p.settle_ms), (120_000, 45_000));
    }

    #[test]
    fn a_policy_file_field_out_of_range_names_the_file() {
        let dir = std::env::temp_dir().join(format!("rtc-balancer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("policy.json");
        std::fs::write(&file, r#"{"max_valid_fraction": -1.0}"#).expect("write");
        let input = PolicyInput {
            policy_file: Some(file.clone()),
            ..PolicyInput::default()
        };
        let err = input.policy().expect_err("max_valid_fraction out of range");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.message.contains("policy.json"), "{err}");
        assert!(err.message.contains("allowed"), "{err}");
    }
}
