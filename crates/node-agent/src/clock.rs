//! The wall clock, read in this one place. Intervals and deadlines use
//! `tokio::time`; only timestamps written to the API come from here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

/// Now, to the second (the precision `Time` has on the wire, so a value
/// read back compares equal to the one written).
#[allow(
    clippy::disallowed_methods,
    reason = "this is the one place the wall clock is read"
)]
pub fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Now, to the microsecond, for Lease renewals.
#[allow(
    clippy::disallowed_methods,
    reason = "this is the one place the wall clock is read"
)]
pub fn micro_now() -> MicroTime {
    let now = Timestamp::now();
    MicroTime(Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now))
}

/// Now, in milliseconds since the Unix epoch, for the timestamps of the
/// resource-metrics samples.
#[allow(
    clippy::disallowed_methods,
    reason = "this is the one place the wall clock is read"
)]
pub fn unix_ms() -> i64 {
    Timestamp::now().as_millisecond()
}
