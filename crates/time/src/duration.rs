//! The one way durations are written in configuration, flags and profiles.
//!
//! A duration is a sum of `<integer><unit>` parts, units `ms`, `s`, `m` and
//! `h`: `500ms`, `15s`, `5m`, `1m30s`. A bare integer is read in the unit
//! its key names (`STALE_AFTER_MS=15000` is 15 s, `METRICS_WINDOW_SECS=10`
//! is 10 s), so every key written before keeps its meaning; a key whose
//! name carries no unit (`DRAIN_TIMEOUT`) needs a unit in the value.

use std::fmt;
use std::time::Duration;

/// How a bare integer (no unit) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bare {
    /// Milliseconds: keys ending in `_MS`.
    Millis,
    /// Seconds: keys ending in `_SECS`.
    Seconds,
    /// Refused: keys whose name carries no unit.
    Refused,
}

impl Bare {
    fn allowed(self) -> &'static str {
        match self {
            Self::Millis => {
                "a whole number of milliseconds, or a duration with a unit (ms, s, m, h), e.g. 1500, 1500ms, 15s, 1m30s"
            }
            Self::Seconds => {
                "a whole number of seconds, or a duration with a unit (ms, s, m, h), e.g. 10, 10s, 1m"
            }
            Self::Refused => "a duration with a unit (ms, s, m, h), e.g. 500ms, 10s, 5m, 1m30s",
        }
    }
}

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    /// The text as given.
    pub text: String,
    /// How a bare number would have been read.
    pub bare: Bare,
}

impl DurationError {
    /// What is allowed, for messages that name the key themselves.
    pub fn allowed(&self) -> &'static str {
        self.bare.allowed()
    }

    /// The message a binary stops with when configuration key `key` held
    /// this text: the key, the value and what is allowed.
    pub fn refusal(&self, key: &str) -> String {
        format!(
            "bad setting {key}: value {:?} is not allowed; allowed: {}",
            self.text,
            self.allowed()
        )
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad duration {:?}: allowed: {}",
            self.text,
            self.bare.allowed()
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses `text` as a sum of `<integer><unit>` parts (units `ms`, `s`, `m`,
/// `h`), or as a bare integer read as `bare` says.
///
/// # Errors
///
/// [`DurationError`] when the text is empty, a part has no unit or an
/// unknown one (and bare numbers are refused), or the total overflows.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use rtc_time::{Bare, parse_duration};
///
/// assert_eq!(parse_duration("1m30s", Bare::Refused), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("1500", Bare::Millis), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("300", Bare::Refused).is_err());
/// ```
pub fn parse_duration(text: &str, bare: Bare) -> Result<Duration, DurationError> {
    let err = || DurationError {
        text: text.to_owned(),
        bare,
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    if rest.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = rest.parse().map_err(|_| err())?;
        return match bare {
            Bare::Millis => Ok(Duration::from_millis(n)),
            Bare::Seconds => Ok(Duration::from_secs(n)),
            Bare::Refused => Err(err()),
        };
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let (number, tail) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| err())?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(part).ok_or_else(err)?;
        rest = tail;
    }
    Ok(total)
}

/// Writes `d` the way [`parse_duration`] reads it back, in the largest unit
/// that keeps it exact (`5m`, `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0ms".to_owned();
    }
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums_are_read() {
        for bare in [Bare::Millis, Bare::Seconds, Bare::Refused] {
            assert_eq!(
                parse_duration("500ms", bare),
                Ok(Duration::from_millis(500))
            );
            assert_eq!(parse_duration("10s", bare), Ok(Duration::from_secs(10)));
            assert_eq!(parse_duration("1m30s", bare), Ok(Duration::from_secs(90)));
            assert_eq!(parse_duration(" 1h ", bare), Ok(Duration::from_secs(3600)));
        }
    }

    #[test]
    fn a_bare_number_is_read_in_the_unit_of_its_key() {
        assert_eq!(
            parse_duration("1500", Bare::Millis),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_duration("10", Bare::Seconds),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(parse_duration("0", Bare::Millis), Ok(Duration::ZERO));
        let err = parse_duration("300", Bare::Refused).expect_err("no unit");
        assert!(err.to_string().contains("with a unit"), "{err}");
        assert_eq!(
            err.refusal("DRAIN_TIMEOUT"),
            format!(
                "bad setting DRAIN_TIMEOUT: value \"300\" is not allowed; allowed: {}",
                err.allowed()
            )
        );
    }

    #[test]
    fn text_without_a_known_unit_is_refused() {
        for bad in [
            "",
            "s",
            "10x",
            "1.5s",
            "-1s",
            "-5",
            "10 s",
            "5m junk",
            "99999999999999999999s",
        ] {
            for bare in [Bare::Millis, Bare::Seconds, Bare::Refused] {
                let err = parse_duration(bad, bare).expect_err(bad);
                assert_eq!(err.text, bad);
                assert!(err.to_string().contains("allowed"), "{err}");
            }
        }
    }

    #[test]
    fn formatting_reads_back() {
        for ms in [
            0, 1, 999, 1_000, 1_500, 60_000, 90_000, 3_600_000, 86_400_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(
                parse_duration(&format_duration(d), Bare::Refused),
                Ok(d),
                "{ms}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_read_or_refused_without_panicking(text in ".{0,24}") {
            for bare in [Bare::Millis, Bare::Seconds, Bare::Refused] {
                let _ = parse_duration(&text, bare);
            }
        }

        #[test]
        fn milliseconds_round_trip(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(parse_duration(&format!("{ms}ms"), Bare::Refused), Ok(d));
            proptest::prop_assert_eq!(parse_duration(&ms.to_string(), Bare::Millis), Ok(d));
            proptest::prop_assert_eq!(parse_duration(&format_duration(d), Bare::Refused), Ok(d));
        }
    }
}
