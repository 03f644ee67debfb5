//! The heartbeat record: what one socket node says about itself once per
//! interval, its wire form, and the validating decoder.

use serde::{Deserialize, Serialize};

/// The only schema version this build writes and the highest it reads.
///
/// Readers must be upgraded before writers: a record of a newer version is
/// rejected with [`DecodeError::UnknownVersion`], never half-read.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest node id accepted: a pod name is a DNS subdomain (253 bytes).
pub const MAX_NODE_ID_LEN: usize = 253;

/// Longest boot id accepted.
pub const MAX_BOOT_ID_LEN: usize = 64;

/// What the CPU and memory fractions are fractions of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// The container's cgroup limit: what the contract asks for.
    Cgroup,
    /// The host's capacity, because the container has no limit (or it could
    /// not be read). Readers may treat such values with suspicion.
    Host,
}

/// A node's load as it measures it; the publisher adds the identity,
/// sequence and timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// CPU use as a fraction of the limit named by `limit_source`.
    pub cpu: f64,
    /// Memory use as a fraction of the limit named by `limit_source`.
    pub mem: f64,
    /// What `cpu` and `mem` are fractions of.
    pub limit_source: LimitSource,
    /// Active WebSocket connections.
    pub conn: u64,
    /// Delivered messages per second over the node's sliding window.
    pub mps: f64,
    /// p95 end-to-end delivery latency in milliseconds.
    pub p95_ms: f64,
    /// Kafka consumer lag in records.
    pub lag_records: u64,
    /// Kafka consumer lag in milliseconds behind.
    pub lag_ms: f64,
    /// The node is draining and about to leave.
    pub draining: bool,
}

impl Load {
    /// An idle node whose fractions are of its cgroup limit.
    pub const IDLE: Self = Self {
        cpu: 0.0,
        mem: 0.0,
        limit_source: LimitSource::Cgroup,
        conn: 0,
        mps: 0.0,
        p95_ms: 0.0,
        lag_records: 0,
        lag_ms: 0.0,
        draining: false,
    };
}

/// One heartbeat, as written by a socket node and as accepted by a reader.
///
/// A value obtained from [`decode`] has passed every check listed on
/// [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Schema version; see [`SCHEMA_VERSION`].
    pub v: u32,
    /// Node id: the pod name.
    pub node: String,
    /// Changes on every process start, so a reader can tell a restart from a
    /// sequence gap.
    pub boot: String,
    /// Increases by one per heartbeat within one boot.
    pub seq: u64,
    /// When the node sent it, in milliseconds since the Unix epoch by the
    /// node's clock. Informational: readers age records by their own clock.
    pub sent_ms: u64,
    /// CPU use as a fraction of the limit named by `limit`.
    pub cpu: f64,
    /// Memory use as a fraction of the limit named by `limit`.
    pub mem: f64,
    /// What `cpu` and `mem` are fractions of.
    pub limit: LimitSource,
    /// Active connections.
    pub conn: u64,
    /// Delivered messages per second.
    pub mps: f64,
    /// p95 delivery latency, ms.
    pub p95_ms: f64,
    /// Kafka consumer lag, records.
    pub lag_records: u64,
    /// Kafka consumer lag, ms behind.
    pub lag_ms: f64,
    /// The node is draining.
    pub draining: bool,
}

impl Heartbeat {
    /// A record of the current schema version.
    pub fn new(node: &str, boot: &str, seq: u64, sent_ms: u64, load: &Load) -> Self {
        Self {
            v: SCHEMA_VERSION,
            node: node.to_owned(),
            boot: boot.to_owned(),
            seq,
            sent_ms,
            cpu: load.cpu,
            mem: load.mem,
            limit: load.limit_source,
            conn: load.conn,
            mps: load.mps,
            p95_ms: load.p95_ms,
            lag_records: load.lag_records,
            lag_ms: load.lag_ms,
            draining: load.draining,
        }
    }

    /// The load part of the record.
    pub fn load(&self) -> Load {
        Load {
            cpu: self.cpu,
            mem: self.mem,
            limit_source: self.limit,
            conn: self.conn,
            mps: self.mps,
            p95_ms: self.p95_ms,
            lag_records: self.lag_records,
            lag_ms: self.lag_ms,
            draining: self.draining,
        }
    }

    /// The record as the decision core's input, with the age the reader
    /// computed from its own clock.
    pub fn to_sample(&self, age_ms: u64) -> rtc_decision::NodeSample {
        // u64 -> f64 is exact below 2^53 connections, which is all of them.
        #[allow(clippy::cast_precision_loss)]
        let conn = self.conn as f64;
        rtc_decision::NodeSample {
            id: self.node.clone(),
            cpu: self.cpu,
            mem: self.mem,
            conn,
            mps: self.mps,
            p95_ms: self.p95_ms,
            lag_ms: self.lag_ms,
            age_ms,
            draining: self.draining,
        }
    }
}

/// The bounds [`decode`] enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Largest payload accepted, in bytes. A valid record is about 300.
    pub max_bytes: usize,
    /// How far `sent_ms` may lie ahead of the reader's clock before the
    /// record counts as clock-skewed.
    pub max_future_ms: u64,
    /// Largest CPU or memory fraction accepted. Anything above is a broken
    /// measurement, not load.
    pub max_fraction: f64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4096,
            max_future_ms: 30_000,
            max_fraction: 16.0,
        }
    }
}

/// Why a payload was not accepted as a heartbeat. Every variant is counted
/// under [`label`](Self::label) and the payload is dropped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is larger than [`DecodeLimits::max_bytes`].
    #[error("heartbeat payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the payload.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, not an object, or a field of the wrong type or range for
    /// its type (for example a negative count).
    #[error("heartbeat payload is not a valid record: {0}")]
    Malformed(String),
    /// A field the schema requires is absent or null.
    #[error("heartbeat field {0:?} is missing")]
    MissingField(&'static str),
    /// A schema version this reader does not know.
    #[error("heartbeat schema version {0} is unknown (this reader knows 1..={SCHEMA_VERSION})")]
    UnknownVersion(u64),
    /// A number that is negative, or above its bound.
    #[error("heartbeat field {field:?} has the invalid value {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: f64,
    },
    /// The node or boot id is empty, too long or has characters outside
    /// `[A-Za-z0-9._-]`.
    #[error("heartbeat field {field:?} is not a valid id: {value:?}")]
    InvalidId {
        /// The field.
        field: &'static str,
        /// The value found, cut to 64 characters.
        value: String,
    },
    /// `sent_ms` lies further ahead of the reader's clock than allowed.
    #[error("heartbeat sent {ahead_ms} ms in the future (allowed: {max_ms} ms)")]
    ClockSkew {
        /// How far ahead.
        ahead_ms: u64,
        /// The allowance.
        max_ms: u64,
    },
    /// The record names another node than the key it was stored under.
    #[error("heartbeat for node {found:?} stored under node {expected:?}")]
    NodeMismatch {
        /// The node the key belongs to.
        expected: String,
        /// The node the record names, cut to 64 characters.
        found: String,
    },
    /// Same boot, lower sequence than a record already accepted.
    #[error("heartbeat sequence went back from {last} to {found} within one boot")]
    SequenceRegressed {
        /// The last accepted sequence.
        last: u64,
        /// The sequence found.
        found: u64,
    },
}

impl DecodeError {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed",
            Self::MissingField(_) => "missing_field",
            Self::UnknownVersion(_) => "unknown_version",
            Self::InvalidValue { .. } => "invalid_value",
            Self::InvalidId { .. } => "invalid_id",
            Self::ClockSkew { .. } => "clock_skew",
            Self::NodeMismatch { .. } => "node_mismatch",
            Self::SequenceRegressed { .. } => "sequence_regressed",
        }
    }

    /// Every label [`label`](Self::label) can return, for pre-registering
    /// metrics and for tests.
    pub const LABELS: [&'static str; 9] = [
        "too_large",
        "malformed",
        "missing_field",
        "unknown_version",
        "invalid_value",
        "invalid_id",
        "clock_skew",
        "node_mismatch",
        "sequence_regressed",
    ];
}

/// Serializes a record. Infallible for any [`Heartbeat`]: it has no maps
/// with non-string keys and serde_json writes non-finite floats as `null`
/// (which [`decode`] then rejects).
pub fn encode(heartbeat: &Heartbeat) -> Vec<u8> {
    serde_json::to_vec(heartbeat).unwrap_or_default()
}

/// Only the version, read first so a record of another version is told
/// apart from a malformed one.
#[derive(Deserialize)]
struct Envelope {
    v: Option<serde_json::Value>,
}

/// Version 1 on the wire: every field optional so an absent one is named in
/// the error, unknown fields refused so a typo is not silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireV1 {
    #[allow(dead_code, reason = "checked through the envelope")]
    v: Option<u64>,
    node: Option<String>,
    boot: Option<String>,
    seq: Option<u64>,
    sent_ms: Option<u64>,
    cpu: Option<f64>,
    mem: Option<f64>,
    limit: Option<LimitSource>,
    conn: Option<u64>,
    mps: Option<f64>,
    p95_ms: Option<f64>,
    lag_records: Option<u64>,
    lag_ms: Option<f64>,
    draining: Option<bool>,
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::MissingField(field))
}

fn bounded(value: Option<f64>, field: &'static str, max: f64) -> Result<f64, DecodeError> {
    let value = required(value, field)?;
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(value)
    } else {
        Err(DecodeError::InvalidValue { field, value })
    }
}

fn cut(text: &str) -> String {
    text.chars().take(64).collect()
}

fn id(value: Option<String>, field: &'static str, max_len: usize) -> Result<String, DecodeError> {
    let value = required(value, field)?;
    let ok = !value.is_empty()
        && value.len() <= max_len
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(value)
    } else {
        Err(DecodeError::InvalidId {
            field,
            value: cut(&value),
        })
    }
}

/// Checks that `node` is usable as a node id (and so as part of a Redis key).
///
/// # Errors
///
/// [`DecodeError::InvalidId`] when it is empty, longer than
/// [`MAX_NODE_ID_LEN`] or has characters outside `[A-Za-z0-9._-]`.
pub fn validate_node_id(node: &str) -> Result<(), DecodeError> {
    id(Some(node.to_owned()), "node", MAX_NODE_ID_LEN).map(|_| ())
}

/// Checks that `boot` is usable as a boot id.
///
/// # Errors
///
/// [`DecodeError::InvalidId`] when it is empty, longer than
/// [`MAX_BOOT_ID_LEN`] or has characters outside `[A-Za-z0-9._-]`.
pub fn validate_boot_id(boot: &str) -> Result<(), DecodeError> {
    id(Some(boot.to_owned()), "boot", MAX_BOOT_ID_LEN).map(|_| ())
}

/// Decodes and validates one payload, judging `sent_ms` against the reader's
/// clock `now_ms` (milliseconds since the Unix epoch).
///
/// Never panics, whatever the bytes.
///
/// # Errors
///
/// Any [`DecodeError`] but [`DecodeError::NodeMismatch`] and
/// [`DecodeError::SequenceRegressed`], which need context only the ingestor
/// has.
pub fn decode(bytes: &[u8], now_ms: u64, limits: &DecodeLimits) -> Result<Heartbeat, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let malformed = |e: serde_json::Error| DecodeError::Malformed(e.to_string());
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(malformed)?;
    match envelope.v {
        None | Some(serde_json::Value::Null) => return Err(DecodeError::MissingField("v")),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(1) => {}
            Some(other) => return Err(DecodeError::UnknownVersion(other)),
            None => {
                return Err(DecodeError::Malformed(format!(
                    "version {n} is not a whole number"
                )));
            }
        },
        Some(_) => return Err(DecodeError::Malformed("version is not a number".to_owned())),
    }
    let wire: WireV1 = serde_json::from_slice(bytes).map_err(malformed)?;
    let max_fraction = limits.max_fraction;
    let heartbeat = Heartbeat {
        v: SCHEMA_VERSION,
        node: id(wire.node, "node", MAX_NODE_ID_LEN)?,
        boot: id(wire.boot, "boot", MAX_BOOT_ID_LEN)?,
        seq: required(wire.seq, "seq")?,
        sent_ms: required(wire.sent_ms, "sent_ms")?,
        cpu: bounded(wire.cpu, "cpu", max_fraction)?,
        mem: bounded(wire.mem, "mem", max_fraction)?,
        limit: required(wire.limit, "limit")?,
        conn: required(wire.conn, "conn")?,
        mps: bounded(wire.mps, "mps", f64::MAX)?,
        p95_ms: bounded(wire.p95_ms, "p95_ms", f64::MAX)?,
        lag_records: required(wire.lag_records, "lag_records")?,
        lag_ms: bounded(wire.lag_ms, "lag_ms", f64::MAX)?,
        draining: required(wire.draining, "draining")?,
    };
    let ahead_ms = heartbeat.sent_ms.saturating_sub(now_ms);
    if ahead_ms > limits.max_future_ms {
        return Err(DecodeError::ClockSkew {
            ahead_ms,
            max_ms: limits.max_future_ms,
        });
    }
    Ok(heartbeat)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn sample() -> Heartbeat {
        Heartbeat::new(
            "socket-0",
            "b00t",
            7,
            NOW,
            &Load {
                cpu: 0.5,
                mem: 0.25,
                conn: 900,
                mps: 40.5,
                p95_ms: 120.0,
                lag_records: 3,
                lag_ms: 15.0,
                ..Load::IDLE
            },
        )
    }

    fn with(field: &str, value: serde_json::Value) -> Vec<u8> {
        let mut json = serde_json::to_value(sample()).expect("record serializes");
        json[field] = value;
        serde_json::to_vec(&json).expect("value serializes")
    }

    fn without(field: &str) -> Vec<u8> {
        let mut json = serde_json::to_value(sample()).expect("record serializes");
        json.as_object_mut().expect("an object").remove(field);
        serde_json::to_vec(&json).expect("value serializes")
    }

    fn check(bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
        decode(bytes, NOW, &DecodeLimits::default())
    }

    #[test]
    fn a_valid_record_round_trips_and_stays_small() {
        let bytes = encode(&sample());
        assert!(bytes.len() < 300, "{} bytes", bytes.len());
        assert_eq!(check(&bytes), Ok(sample()));
    }

    #[test]
    fn every_field_is_required() {
        for field in [
            "v",
            "node",
            "boot",
            "seq",
            "sent_ms",
            "cpu",
            "mem",
            "limit",
            "conn",
            "mps",
            "p95_ms",
            "lag_records",
            "lag_ms",
            "draining",
        ] {
            let error = check(&without(field)).expect_err(field);
            assert_eq!(error, DecodeError::MissingField(field), "{field}");
            assert_eq!(
                check(&with(field, serde_json::Value::Null))
                    .expect_err(field)
                    .label(),
                "missing_field"
            );
        }
    }

    #[test]
    fn versions_other_than_one_are_unknown() {
        assert_eq!(
            check(&with("v", 2.into())),
            Err(DecodeError::UnknownVersion(2))
        );
        assert_eq!(
            check(&with("v", 0.into())),
            Err(DecodeError::UnknownVersion(0))
        );
        assert_eq!(
            check(&with("v", "1".into())).map_err(|e| e.label()),
            Err("malformed")
        );
        assert_eq!(
            check(&with("v", 1.5.into())).map_err(|e| e.label()),
            Err("malformed")
        );
    }

    #[test]
    fn negative_out_of_range_and_wrongly_typed_numbers_are_rejected() {
        let label = |bytes: Vec<u8>| check(&bytes).map_err(|e| e.label()).err();
        assert_eq!(label(with("cpu", (-0.1).into())), Some("invalid_value"));
        assert_eq!(label(with("mem", 17.0.into())), Some("invalid_value"));
        assert_eq!(label(with("p95_ms", (-1.0).into())), Some("invalid_value"));
        assert_eq!(label(with("conn", (-1).into())), Some("malformed"));
        assert_eq!(label(with("seq", 1.5.into())), Some("malformed"));
        assert_eq!(label(with("draining", 1.into())), Some("malformed"));
        assert_eq!(label(with("limit", "disk".into())), Some("malformed"));
        assert_eq!(label(with("extra", 1.into())), Some("malformed"));
        // JSON has no NaN or infinity; overflowing literals are refused by the parser.
        assert_eq!(label(br#"{"v":1,"cpu":1e999}"#.to_vec()), Some("malformed"));
        assert_eq!(label(br#"{"v":1,"cpu":NaN}"#.to_vec()), Some("malformed"));
    }

    #[test]
    fn non_finite_values_written_by_a_broken_node_are_rejected() {
        let mut broken = sample();
        broken.mps = f64::NAN;
        assert_eq!(
            check(&encode(&broken)),
            Err(DecodeError::MissingField("mps"))
        );
        broken.mps = f64::INFINITY;
        assert_eq!(
            check(&encode(&broken)),
            Err(DecodeError::MissingField("mps"))
        );
    }

    #[test]
    fn ids_are_checked() {
        let label = |bytes: Vec<u8>| check(&bytes).map_err(|e| e.label()).err();
        assert_eq!(label(with("node", "".into())), Some("invalid_id"));
        assert_eq!(label(with("node", "a b".into())), Some("invalid_id"));
        assert_eq!(label(with("node", "x:y".into())), Some("invalid_id"));
        assert_eq!(
            label(with("node", "n".repeat(254).into())),
            Some("invalid_id")
        );
        assert_eq!(
            label(with("boot", "b".repeat(65).into())),
            Some("invalid_id")
        );
        assert!(validate_node_id("socket-7.ns").is_ok());
        assert!(validate_node_id("").is_err());
    }

    #[test]
    fn oversized_and_garbage_payloads_are_rejected() {
        let big = vec![b' '; 5000];
        assert_eq!(
            check(&big),
            Err(DecodeError::TooLarge {
                len: 5000,
                max: 4096
            })
        );
        for garbage in [
            &b""[..],
            b"null",
            b"[]",
            b"\xff\xfe",
            b"{",
            b"{\"v\":1",
            b"42",
        ] {
            assert_eq!(
                check(garbage).map_err(|e| e.label()).err(),
                Some("malformed"),
                "{garbage:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
        let deep = format!("{{\"v\":1,\"node\":{deep}}}");
        let limits = DecodeLimits {
            max_bytes: 1 << 20,
            ..DecodeLimits::default()
        };
        assert!(decode(deep.as_bytes(), NOW, &limits).is_err());
    }

    #[test]
    fn records_from_the_future_beyond_the_allowance_are_skewed() {
        let limits = DecodeLimits {
            max_future_ms: 1_000,
            ..DecodeLimits::default()
        };
        let mut ahead = sample();
        ahead.sent_ms = NOW + 1_000;
        assert!(decode(&encode(&ahead), NOW, &limits).is_ok());
        ahead.sent_ms = NOW + 1_001;
        assert_eq!(
            decode(&encode(&ahead), NOW, &limits),
            Err(DecodeError::ClockSkew {
                ahead_ms: 1_001,
                max_ms: 1_000
            })
        );
        // Old records are fine here: readers age them by their own clock.
        ahead.sent_ms = 0;
        assert!(decode(&encode(&ahead), NOW, &limits).is_ok());
    }

    #[test]
    fn labels_are_listed() {
        let all = [
            DecodeError::TooLarge { len: 0, max: 0 },
            DecodeError::Malformed(String::new()),
            DecodeError::MissingField("v"),
            DecodeError::UnknownVersion(9),
            DecodeError::InvalidValue {
                field: "cpu",
                value: 0.0,
            },
            DecodeError::InvalidId {
                field: "node",
                value: String::new(),
            },
            DecodeError::ClockSkew {
                ahead_ms: 0,
                max_ms: 0,
            },
            DecodeError::NodeMismatch {
                expected: String::new(),
                found: String::new(),
            },
            DecodeError::SequenceRegressed { last: 0, found: 0 },
        ];
        let labels: Vec<_> = all.iter().map(DecodeError::label).collect();
        assert_eq!(labels, DecodeError::LABELS);
    }

    #[test]
    fn a_sample_carries_the_age_the_reader_computed() {
        let sample = sample().to_sample(1_234);
        assert_eq!(sample.id, "socket-0");
        assert_eq!(sample.age_ms, 1_234);
        assert!((sample.conn - 900.0).abs() < f64::EPSILON);
    }
}
