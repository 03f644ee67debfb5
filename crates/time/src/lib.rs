//! Time handed in from outside, so that code which needs the wall clock or
//! waits between retries can be tested without the real clock.
//!
//! - [`WallClock`]: the one wall-clock abstraction of the workspace.
//!   [`SystemClock`] reads the system clock, the one place the services do
//!   (`clippy.toml` bans `SystemTime::now` elsewhere); [`ManualClock`]
//!   moves only when told to, and [`SkewedClock`] is the system clock
//!   shifted, as on a node whose clock is wrong.
//! - [`Backoff`]: exponential delays between retries, doubling from `min`
//!   up to `max`.
//! - [`parse_duration`]: the one way durations are written in
//!   configuration, flags and profiles (`1500ms`, `15s`, `5m`; a bare
//!   number in the unit its key names).
//!
//! What it promises: no dependencies and no async. Monotonic time (ages,
//! intervals, deadlines) is not here: it comes from `tokio::time`, which
//! tests pause and advance; the wall clock is only for values that must
//! mean the same on every machine (timestamps written for other processes
//! and for people).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use rtc_time::{Backoff, ManualClock, WallClock};
//!
//! let clock = ManualClock::new(1_000);
//! clock.advance(500);
//! assert_eq!(clock.now_ms(), 1_500);
//!
//! let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
//! assert_eq!(backoff.delay(1), Duration::from_millis(100));
//! assert_eq!(backoff.delay(3), Duration::from_millis(400));
//! assert_eq!(backoff.delay(10), Duration::from_secs(1));
//! ```

mod backoff;
mod clock;
mod duration;

pub use backoff::Backoff;
pub use clock::{ManualClock, SkewedClock, SystemClock, WallClock};
pub use duration::{Bare, DurationError, format_duration, parse_duration};
