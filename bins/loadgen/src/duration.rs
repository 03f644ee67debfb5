//! Durations in flags and profiles, written the workspace's one way
//! (`500ms`, `10s`, `1m30s`; see [`rtc_time::parse_duration`]). A profile
//! always names the unit.

use std::time::Duration;

pub use rtc_time::DurationError;

/// Parses `text` as a sum of `<integer><unit>` parts (units `ms`, `s`, `m`,
/// `h`); a bare number is refused.
///
/// # Errors
///
/// [`DurationError`] when the text is empty, has no unit or an unknown one,
/// or overflows.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    rtc_time::parse_duration(text, rtc_time::Bare::Refused)
}
