//! Load profiles: a list of phases, each with a kind, a duration, the number
//! of connections wanted at its end and a message rate. Read from JSON
//! (`--profile FILE`) or built from flags for a single phase, and validated
//! once, so the rest of the generator works on values that make sense.
//!
//! ```json
//! {"phases": [
//!   {"name": "warm-up", "kind": "ramp",   "duration": "10s", "connections": 200, "messages_per_sec": 100},
//!   {"name": "hold",    "kind": "steady", "duration": "30s", "connections": 200, "messages_per_sec_per_connection": 0.5},
//!   {"name": "burst",   "kind": "spike",  "duration": "5s",  "connections": 400, "messages_per_sec": 800},
//!   {"name": "quiet",   "kind": "calm",   "duration": "10s", "connections": 50,  "messages_per_sec": 10}
//! ]}
//! ```

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::duration::parse_duration;

/// Most connections one phase may ask for.
pub const MAX_CONNECTIONS: u32 = 100_000;
/// Highest message rate one phase may ask for, overall or per connection.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Longest phase.
pub const MAX_PHASE: Duration = Duration::from_secs(24 * 3600);
/// Most phases in a profile.
pub const MAX_PHASES: usize = 1000;

/// How the connection count moves during a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseKind {
    /// The connection count is the phase's from its start.
    Steady,
    /// The connection count moves linearly from the previous phase's (0 for
    /// the first phase) to this phase's over the phase.
    Ramp,
    /// Like `steady`, named for a sudden rise in connections or rate.
    Spike,
    /// Like `steady`, named for a quiet period after load.
    Calm,
}

impl PhaseKind {
    const ALLOWED: &'static str = "steady, ramp, spike, calm";

    fn parse(text: &str) -> Option<Self> {
        match text {
            "steady" => Some(Self::Steady),
            "ramp" => Some(Self::Ramp),
            "spike" => Some(Self::Spike),
            "calm" => Some(Self::Calm),
            _ => None,
        }
    }
}

impl fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Steady => "steady",
            Self::Ramp => "ramp",
            Self::Spike => "spike",
            Self::Calm => "calm",
        })
    }
}

/// A phase's message rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    /// Messages per second over all connections.
    Overall(f64),
    /// Messages per second for each open connection.
    PerConnection(f64),
}

/// One validated phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// Shown in progress and the summary.
    pub name: String,
    /// How connections move during the phase.
    pub kind: PhaseKind,
    /// How long the phase lasts (more than zero).
    #[serde(serialize_with = "as_millis")]
    pub duration: Duration,
    /// Connections wanted at the end of the phase (1 to [`MAX_CONNECTIONS`]).
    pub connections: u32,
    /// Messages sent during the phase.
    pub rate: Rate,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// A validated load profile: at least one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// The phases, run in order.
    pub phases: Vec<Phase>,
}

/// A profile that was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// The text is not JSON.
    #[error("profile is not valid JSON: {0}")]
    Syntax(String),
    /// A field is missing, of the wrong type or out of range.
    #[error("profile field {field}: {problem}")]
    Field {
        /// Where the field is, e.g. `phases[1].connections`.
        field: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

impl ProfileError {
    fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A short, bounded label for metrics and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Syntax(_) => "syntax",
            Self::Field { .. } => "field",
        }
    }
}

impl Profile {
    /// Reads and validates a JSON profile.
    ///
    /// # Errors
    ///
    /// [`ProfileError::Syntax`] for text that is not JSON,
    /// [`ProfileError::Field`] naming the first field that is missing,
    /// unknown, of the wrong type or out of range.
    pub fn from_json(text: &str) -> Result<Self, ProfileError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ProfileError::Syntax(e.to_string()))?;
        let root = value
            .as_object()
            .ok_or_else(|| ProfileError::field("(root)", "must be an object with \"phases\""))?;
        only_known(root, "", &["phases"])?;
        let phases = root
            .get("phases")
            .ok_or_else(|| ProfileError::field("phases", "is required: a list of phases"))?
            .as_array()
            .ok_or_else(|| ProfileError::field("phases", "must be a list of phases"))?;
        if phases.is_empty() || phases.len() > MAX_PHASES {
            return Err(ProfileError::field(
                "phases",
                format!("must hold 1 to {MAX_PHASES} phases, has {}", phases.len()),
            ));
        }
        let phases = phases
            .iter()
            .enumerate()
            .map(|(i, p)| phase(&format!("phases[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { phases })
    }

    /// A profile of one phase, as given by flags; validated like a file's.
    ///
    /// # Errors
    ///
    /// [`ProfileError::Field`] naming the flag's field when a value is out of
    /// range.
    pub fn single(
        kind: PhaseKind,
        duration: Duration,
        connections: u32,
        rate: Rate,
    ) -> Result<Self, ProfileError> {
        let phase = Phase {
            name: kind.to_string(),
            kind,
            duration,
            connections,
            rate,
        };
        check_phase("phase", &phase)?;
        Ok(Self {
            phases: vec![phase],
        })
    }

    /// The sum of the phases' durations.
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// The most connections any phase asks for.
    #[must_use]
    pub fn peak_connections(&self) -> u32 {
        self.phases.iter().map(|p| p.connections).max().unwrap_or(0)
    }
}

fn only_known(object: &Map<String, Value>, at: &str, known: &[&str]) -> Result<(), ProfileError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(ProfileError::field(
            format!("{at}{unknown}"),
            format!("is not a known field; allowed: {}", known.join(", ")),
        )),
    }
}

const PHASE_FIELDS: &[&str] = &[
    "name",
    "kind",
    "duration",
    "connections",
    "messages_per_sec",
    "messages_per_sec_per_connection",
];

fn phase(at: &str, value: &Value) -> Result<Phase, ProfileError> {
    let object = value
        .as_object()
        .ok_or_else(|| ProfileError::field(at, "must be an object"))?;
    only_known(object, &format!("{at}."), PHASE_FIELDS)?;
    let field = |name: &str| format!("{at}.{name}");
    let required = |name: &str, what: &str| {
        object
            .get(name)
            .ok_or_else(|| ProfileError::field(field(name), format!("is required: {what}")))
    };
    let name = required("name", "a non-empty string")?
        .as_str()
        .ok_or_else(|| ProfileError::field(field("name"), "must be a string"))?
        .to_owned();
    let kind_text = required("kind", PhaseKind::ALLOWED)?
        .as_str()
        .ok_or_else(|| {
            ProfileError::field(
                field("kind"),
                format!("must be a string, one of {}", PhaseKind::ALLOWED),
            )
        })?;
    let kind = PhaseKind::parse(kind_text).ok_or_else(|| {
        ProfileError::field(
            field("kind"),
            format!("{kind_text:?} is not one of {}", PhaseKind::ALLOWED),
        )
    })?;
    let duration_text = required("duration", "a duration such as \"10s\" or \"500ms\"")?
        .as_str()
        .ok_or_else(|| {
            ProfileError::field(
                field("duration"),
                "must be a string such as \"10s\", \"500ms\" or \"1m30s\"",
            )
        })?;
    let duration = parse_duration(duration_text)
        .map_err(|e| ProfileError::field(field("duration"), e.to_string()))?;
    let connections_value = required("connections", "a whole number")?;
    let connections = connections_value
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| {
            ProfileError::field(
                field("connections"),
                format!(
                    "must be a whole number from 1 to {MAX_CONNECTIONS}, got {connections_value}"
                ),
            )
        })?;
    let number = |name: &str| -> Result<Option<f64>, ProfileError> {
        object
            .get(name)
            .map(|v| {
                v.as_f64().ok_or_else(|| {
                    ProfileError::field(field(name), format!("must be a number, got {v}"))
                })
            })
            .transpose()
    };
    let rate = match (
        number("messages_per_sec")?,
        number("messages_per_sec_per_connection")?,
    ) {
        (Some(r), None) => Rate::Overall(r),
        (None, Some(r)) => Rate::PerConnection(r),
        _ => {
            return Err(ProfileError::field(
                field("messages_per_sec"),
                "give exactly one of messages_per_sec and messages_per_sec_per_connection",
            ));
        }
    };
    let phase = Phase {
        name,
        kind,
        duration,
        connections,
        rate,
    };
    check_phase(at, &phase)?;
    Ok(phase)
}

fn check_phase(at: &str, phase: &Phase) -> Result<(), ProfileError> {
    let field = |name: &str| format!("{at}.{name}");
    if phase.name.is_empty() || phase.name.chars().count() > 64 {
        return Err(ProfileError::field(
            field("name"),
            "must be 1 to 64 characters",
        ));
    }
    if phase.duration.is_zero() || phase.duration > MAX_PHASE {
        return Err(ProfileError::field(
            field("duration"),
            format!(
                "must be more than 0 and at most 24h, got {}ms",
                phase.duration.as_millis()
            ),
        ));
    }
    if !(1..=MAX_CONNECTIONS).contains(&phase.connections) {
        return Err(ProfileError::field(
            field("connections"),
            format!(
                "must be a whole number from 1 to {MAX_CONNECTIONS}, got {}",
                phase.connections
            ),
        ));
    }
    let (name, rate) = match phase.rate {
        Rate::Overall(r) => ("messages_per_sec", r),
        Rate::PerConnection(r) => ("messages_per_sec_per_connection", r),
    };
    if !rate.is_finite() || !(0.0..=MAX_RATE).contains(&rate) {
        return Err(ProfileError::field(
            field(name),
            format!("must be a number from 0 to {MAX_RATE}, got {rate}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"phases": [
        {"name": "warm-up", "kind": "ramp", "duration": "10s", "connections": 200, "messages_per_sec": 100},
        {"name": "hold", "kind": "steady", "duration": "1m", "connections": 200, "messages_per_sec_per_connection": 0.5}
    ]}"#;

    fn refusal(text: &str) -> (String, String) {
        match Profile::from_json(text) {
            Err(ProfileError::Field { field, problem }) => (field, problem),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_good_profile_is_read() {
        let profile = Profile::from_json(GOOD).expect("valid");
        assert_eq!(profile.phases.len(), 2);
        assert_eq!(profile.phases[0].kind, PhaseKind::Ramp);
        assert_eq!(profile.phases[1].rate, Rate::PerConnection(0.5));
        assert_eq!(profile.duration(), Duration::from_secs(70));
        assert_eq!(profile.peak_connections(), 200);
    }

    #[test]
    fn refusals_name_the_field_and_what_is_allowed() {
        let (field, problem) = refusal(&GOOD.replace("\"ramp\"", "\"wave\""));
        assert_eq!(field, "phases[0].kind");
        assert!(problem.contains("steady, ramp, spike, calm"), "{problem}");

        let (field, problem) =
            refusal(&GOOD.replace("200, \"messages_per_sec\"", "-3, \"messages_per_sec\""));
        assert_eq!(field, "phases[0].connections");
        assert!(problem.contains("1 to 100000"), "{problem}");

        let (field, _) = refusal(&GOOD.replace("\"1m\"", "\"forever\""));
        assert_eq!(field, "phases[1].duration");

        let (field, problem) =
            refusal(&GOOD.replace("\"name\": \"hold\",", "\"name\": \"hold\", \"colour\": 1,"));
        assert_eq!(field, "phases[1].colour");
        assert!(
            problem.contains("messages_per_sec_per_connection"),
            "{problem}"
        );

        let (field, _) = refusal(r#"{"phases": []}"#);
        assert_eq!(field, "phases");

        let (field, problem) = refusal(
            r#"{"phases": [{"name": "x", "kind": "calm", "duration": "1s", "connections": 1}]}"#,
        );
        assert_eq!(field, "phases[0].messages_per_sec");
        assert!(problem.contains("exactly one"), "{problem}");

        let (field, _) = refusal(&GOOD.replace("0.5", "-1"));
        assert_eq!(field, "phases[1].messages_per_sec_per_connection");
    }

    #[test]
    fn the_bundled_profile_is_valid() {
        let text = include_str!("../profiles/spike-then-calm.json");
        let profile = Profile::from_json(text).expect("bundled profile");
        assert_eq!(profile.phases.len(), 4);
        assert_eq!(profile.peak_connections(), 600);
    }

    #[test]
    fn text_that_is_not_json_is_a_syntax_error() {
        assert!(matches!(
            Profile::from_json("phases: []"),
            Err(ProfileError::Syntax(_))
        ));
    }

    #[test]
    fn flags_are_validated_like_files() {
        assert!(
            Profile::single(
                PhaseKind::Steady,
                Duration::from_secs(10),
                10,
                Rate::Overall(5.0)
            )
            .is_ok()
        );
        assert!(
            Profile::single(PhaseKind::Steady, Duration::ZERO, 10, Rate::Overall(5.0)).is_err()
        );
        assert!(
            Profile::single(
                PhaseKind::Steady,
                Duration::from_secs(1),
                0,
                Rate::Overall(5.0)
            )
            .is_err()
        );
        assert!(
            Profile::single(
                PhaseKind::Steady,
                Duration::from_secs(1),
                1,
                Rate::Overall(f64::NAN)
            )
            .is_err()
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            prop_oneof![Just("steady".to_owned()), Just("10s".to_owned()), ".{0,8}"]
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let keys = prop_oneof![
                Just("phases".to_owned()),
                Just("name".to_owned()),
                Just("kind".to_owned()),
                Just("duration".to_owned()),
                Just("connections".to_owned()),
                Just("messages_per_sec".to_owned()),
                "[a-z]{1,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_is_read_or_refused_without_panicking(value in json_value()) {
            if let Ok(profile) = Profile::from_json(&value.to_string()) {
                prop_assert!(!profile.phases.is_empty());
                prop_assert!(profile.phases.iter().all(|p| p.connections >= 1 && !p.duration.is_zero()));
            }
        }

        #[test]
        fn any_text_is_read_or_refused_without_panicking(text in ".{0,64}") {
            let _ = Profile::from_json(&text);
        }
    }
}
