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

/// What a CPU or memory fraction is a fraction of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// The container's cgroup limit: what the contract asks for.
    Cgroup,
    /// The host's capacity, because the container has no limit (or it could
    /// not be read). Readers may treat such values with suspicion.
    Host,
}

impl LimitSource {
    /// What the record-wide `limit` field says for a CPU source and a
    /// memory source: [`Cgroup`](Self::Cgroup) only when both are.
    pub fn both(cpu_of: Self, mem_of: Self) -> Self {
        if cpu_of == Self::Cgroup && mem_of == Self::Cgroup {
            Self::Cgroup
        } else {
            Self::Host
        }
    }
}

/// A resource whose use a heartbeat reports as a fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// CPU time.
    Cpu,
    /// Memory (the working set).
    Memory,
}

impl Resource {
    /// Both resources, in label order.
    pub const ALL: [Self; 2] = [Self::Cpu, Self::Memory];

    /// A short, fixed label for metrics and logs: `cpu` or `memory`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
        }
    }
}

/// A node's load as it measures it; the publisher adds the identity,
/// sequence and timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// CPU use as a fraction of the limit named by `cpu_of`.
    pub cpu: f64,
    /// Memory use as a fraction of the limit named by `mem_of`.
    pub mem: f64,
    /// What `cpu` is a fraction of.
    pub cpu_of: LimitSource,
    /// What `mem` is a fraction of.
    pub mem_of: LimitSource,
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
        cpu_of: LimitSource::Cgroup,
        mem_of: LimitSource::Cgroup,
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
/// [`DecodeError`]. Its wire form is written by [`encode`] or
/// [`encode_base`].
#[derive(Debug, Clone, PartialEq)]
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
    /// CPU use as a fraction of the limit named by `cpu_of`.
    pub cpu: f64,
    /// Memory use as a fraction of the limit named by `mem_of`.
    pub mem: f64,
    /// [`LimitSource::both`] of `cpu_of` and `mem_of`, kept for readers
    /// that know no per-resource source.
    pub limit: LimitSource,
    /// What `cpu` is a fraction of. Absent on the wire (records of writers
    /// that predate it, or written with [`encode_base`]): `limit`.
    pub cpu_of: LimitSource,
    /// What `mem` is a fraction of. Absent on the wire: `limit`.
    pub mem_of: LimitSource,
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
            limit: LimitSource::both(load.cpu_of, load.mem_of),
            cpu_of: load.cpu_of,
            mem_of: load.mem_of,
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
            cpu_of: self.cpu_of,
            mem_of: self.mem_of,
            conn: self.conn,
            mps: self.mps,
            p95_ms: self.p95_ms,
            lag_records: self.lag_records,
            lag_ms: self.lag_ms,
            draining: self.draining,
        }
    }

    /// What the fraction of `resource` is of.
    pub fn source_of(&self, resource: Resource) -> LimitSource {
        match resource {
            Resource::Cpu => self.cpu_of,
            Resource::Memory => self.mem_of,
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

/// Version 1 as written. `cpu_of` and `mem_of` are left out when they say
/// the same as `limit`, so the record of a node with both limits or none
/// is exactly what readers that predate them accept (they refuse unknown
/// fields).
#[derive(Serialize)]
struct WireOut<'a> {
    v: u32,
    node: &'a str,
    boot: &'a str,
    seq: u64,
    sent_ms: u64,
    cpu: f64,
    mem: f64,
    limit: LimitSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_of: Option<LimitSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mem_of: Option<LimitSource>,
    conn: u64,
    mps: f64,
    p95_ms: f64,
    lag_records: u64,
    lag_ms: f64,
    draining: bool,
}

fn wire_out(heartbeat: &Heartbeat, per_resource: bool) -> WireOut<'_> {
    let limit = LimitSource::both(heartbeat.cpu_of, heartbeat.mem_of);
    let differs = heartbeat.cpu_of != limit || heartbeat.mem_of != limit;
    let (cpu_of, mem_of) = if per_resource && differs {
        (Some(heartbeat.cpu_of), Some(heartbeat.mem_of))
    } else {
        (None, None)
    };
    WireOut {
        v: heartbeat.v,
        node: &heartbeat.node,
        boot: &heartbeat.boot,
        seq: heartbeat.seq,
        sent_ms: heartbeat.sent_ms,
        cpu: heartbeat.cpu,
        mem: heartbeat.mem,
        limit,
        cpu_of,
        mem_of,
        conn: heartbeat.conn,
        mps: heartbeat.mps,
        p95_ms: heartbeat.p95_ms,
        lag_records: heartbeat.lag_records,
        lag_ms: heartbeat.lag_ms,
        draining: heartbeat.draining,
    }
}

/// Serializes a record with its per-resource sources.
///
/// `cpu_of` and `mem_of` are written only when they differ from each other
/// (one limit set, the other not); otherwise `limit` says it all and the
/// record has only the fields every version-1 reader knows. A reader built
/// before `cpu_of` and `mem_of` existed refuses a record that has them
/// (unknown fields are refused); write such readers' records with
/// [`encode_base`].
///
/// Infallible for any [`Heartbeat`]: it has no maps with non-string keys
/// and serde_json writes non-finite floats as `null` (which [`decode`]
/// then rejects).
pub fn encode(heartbeat: &Heartbeat) -> Vec<u8> {
    serde_json::to_vec(&wire_out(heartbeat, true)).unwrap_or_default()
}

/// Serializes a record with only the fields every version-1 reader knows:
/// no `cpu_of` or `mem_of`, so a reader of any build accepts it. A node with
/// one limit but not the other reads as [`LimitSource::Host`] for both.
pub fn encode_base(heartbeat: &Heartbeat) -> Vec<u8> {
    serde_json::to_vec(&wire_out(heartbeat, false)).unwrap_or_default()
}

/// Only the version, read first so a record of another version is told
/// apart from a malformed one.
#[derive(Deserialize)]
struct Envelope {
    v: Option<serde_json::Value>,
}

/// Version 1 on the wire: every field optional so an absent one is named in
/// the error, unknown fields refused so a typo is not silently ignored.
/// `cpu_of` and `mem_of` may be absent: they default to `limit`.
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
    cpu_of: Option<LimitSource>,
    mem_of: Option<LimitSource>,
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
    let limit = required(wire.limit, "limit")?;
    let cpu_of = wire.cpu_of.unwrap_or(limit);
    let mem_of = wire.mem_of.unwrap_or(limit);
    if LimitSource::both(cpu_of, mem_of) != limit {
        return Err(DecodeError::Malformed(format!(
            "limit {limit:?} disagrees with cpu_of {cpu_of:?} and mem_of {mem_of:?}"
        )));
    }
    let heartbeat = Heartbeat {
        v: SCHEMA_VERSION,
        node: id(wire.node, "node", MAX_NODE_ID_LEN)?,
        boot: id(wire.boot, "boot", MAX_BOOT_ID_LEN)?,
        seq: required(wire.seq, "seq")?,
        sent_ms: required(wire.sent_ms, "sent_ms")?,
        cpu: bounded(wire.cpu, "cpu", max_fraction)?,
        mem: bounded(wire.mem, "mem", max_fraction)?,
        limit,
        cpu_of,
        mem_of,
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

    fn json(heartbeat: &Heartbeat) -> serde_json::Value {
        serde_json::from_slice(&encode(heartbeat)).expect("record is JSON")
    }

    fn with(field: &str, value: serde_json::Value) -> Vec<u8> {
        let mut json = json(&sample());
        json[field] = value;
        serde_json::to_vec(&json).expect("value serializes")
    }

    fn without(field: &str) -> Vec<u8> {
        let mut json = json(&sample());
        json.as_object_mut().expect("an object").remove(field);
        serde_json::to_vec(&json).expect("value serializes")
    }

    /// A node with a CPU limit and none for memory.
    fn mixed() -> Heartbeat {
        let load = Load {
            cpu_of: LimitSource::Cgroup,
            mem_of: LimitSource::Host,
            ..sample().load()
        };
        Heartbeat::new("socket-0", "b00t", 7, NOW, &load)
    }

    /// The fields of version 1 before `cpu_of` and `mem_of`, refusing
    /// others as readers of that schema do.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only whether it decodes matters")]
    struct OldReader {
        v: u64,
        node: String,
        boot: String,
        seq: u64,
        sent_ms: u64,
        cpu: f64,
        mem: f64,
        limit: LimitSource,
        conn: u64,
        mps: f64,
        p95_ms: f64,
        lag_records: u64,
        lag_ms: f64,
        draining: bool,
    }

    fn old_reader_accepts(bytes: &[u8]) -> bool {
        serde_json::from_slice::<OldReader>(bytes).is_ok()
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
    fn records_without_per_resource_sources_decode_with_both_equal_to_limit() {
        // As written before `cpu_of` and `mem_of` existed.
        for (limit, source) in [("cgroup", LimitSource::Cgroup), ("host", LimitSource::Host)] {
            let old = format!(
                r#"{{"v":1,"node":"socket-0","boot":"b00t","seq":7,"sent_ms":{NOW},"cpu":0.5,
                "mem":0.25,"limit":"{limit}","conn":900,"mps":40.5,"p95_ms":120.0,
                "lag_records":3,"lag_ms":15.0,"draining":false}}"#
            );
            let hb = check(old.as_bytes()).expect(limit);
            assert_eq!((hb.limit, hb.cpu_of, hb.mem_of), (source, source, source));
        }
    }

    #[test]
    fn per_resource_sources_round_trip() {
        for (cpu_of, mem_of) in [
            (LimitSource::Cgroup, LimitSource::Host),
            (LimitSource::Host, LimitSource::Cgroup),
            (LimitSource::Host, LimitSource::Host),
            (LimitSource::Cgroup, LimitSource::Cgroup),
        ] {
            let load = Load {
                cpu_of,
                mem_of,
                ..sample().load()
            };
            let hb = Heartbeat::new("socket-0", "b00t", 7, NOW, &load);
            assert_eq!(hb.limit, LimitSource::both(cpu_of, mem_of));
            assert_eq!(check(&encode(&hb)), Ok(hb.clone()), "{cpu_of:?} {mem_of:?}");
            assert_eq!((hb.load().cpu_of, hb.load().mem_of), (cpu_of, mem_of));
        }
        let hb = mixed();
        assert_eq!(hb.limit, LimitSource::Host);
        assert_eq!(hb.source_of(Resource::Cpu), LimitSource::Cgroup);
        assert_eq!(hb.source_of(Resource::Memory), LimitSource::Host);
        let json = json(&hb);
        assert_eq!(json["cpu_of"], "cgroup");
        assert_eq!(json["mem_of"], "host");
        assert_eq!(json["limit"], "host");
    }

    #[test]
    fn readers_of_the_old_schema_accept_what_they_can() {
        // Both limits or neither: `limit` says it all, nothing new is written.
        for hb in [
            sample(),
            Heartbeat {
                cpu_of: LimitSource::Host,
                mem_of: LimitSource::Host,
                limit: LimitSource::Host,
                ..sample()
            },
        ] {
            let json = json(&hb);
            assert!(json.get("cpu_of").is_none() && json.get("mem_of").is_none());
            assert!(old_reader_accepts(&encode(&hb)));
        }
        // One limit: the full form has fields the old reader refuses; the
        // base form is accepted, and reads as host for both here.
        assert!(!old_reader_accepts(&encode(&mixed())));
        assert!(old_reader_accepts(&encode_base(&mixed())));
        let base = check(&encode_base(&mixed())).expect("base form decodes");
        assert_eq!(
            (base.limit, base.cpu_of, base.mem_of),
            (LimitSource::Host, LimitSource::Host, LimitSource::Host)
        );
        assert_eq!(base.cpu, mixed().cpu);
    }

    #[test]
    fn sources_that_disagree_with_limit_are_rejected() {
        let label = |bytes: Vec<u8>| check(&bytes).map_err(|e| e.label()).err();
        // `sample` says cgroup for both.
        assert_eq!(label(with("cpu_of", "host".into())), Some("malformed"));
        assert_eq!(label(with("mem_of", "host".into())), Some("malformed"));
        assert_eq!(label(with("cpu_of", "cgroup".into())), None);
        assert_eq!(label(with("cpu_of", "disk".into())), Some("malformed"));
        let mut json = json(&mixed());
        json["limit"] = "cgroup".into();
        assert_eq!(
            label(serde_json::to_vec(&json).expect("json")),
            Some("malformed")
        );
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
