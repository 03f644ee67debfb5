//! What the generator should be doing at a given elapsed time: how many
//! connections should be open, and how many messages should have been sent
//! since the start. Pure: the caller passes the elapsed time in.
//!
//! The message count is the integral of the rate, so a driver that ticks at
//! any pace sends `messages_due(now) - sent_so_far` and keeps the rate exact
//! over time, whatever its tick jitter.

use std::time::Duration;

use crate::profile::{Phase, PhaseKind, Profile, Rate};

#[derive(Debug, Clone)]
struct Segment {
    start: Duration,
    length: Duration,
    from: f64,
    to: f64,
    ramp: bool,
    rate: Rate,
    /// Messages due by the segment's start.
    before: f64,
}

impl Segment {
    fn connections(&self, into: Duration) -> f64 {
        if self.ramp {
            let fraction = (into.as_secs_f64() / self.length.as_secs_f64()).clamp(0.0, 1.0);
            self.from + (self.to - self.from) * fraction
        } else {
            self.to
        }
    }

    /// Messages due between the segment's start and `into` after it.
    fn messages(&self, into: Duration) -> f64 {
        let into = into.min(self.length);
        let dt = into.as_secs_f64();
        match self.rate {
            Rate::Overall(r) => r * dt,
            Rate::PerConnection(r) if self.ramp => {
                let slope = (self.to - self.from) / self.length.as_secs_f64();
                r * (self.from * dt + slope * dt * dt / 2.0)
            }
            Rate::PerConnection(r) => r * self.to * dt,
        }
    }
}

/// The plan of a profile over time.
#[derive(Debug, Clone)]
pub struct Schedule {
    segments: Vec<Segment>,
    total: Duration,
    total_messages: f64,
}

impl Schedule {
    /// The schedule of a validated profile.
    #[must_use]
    pub fn new(profile: &Profile) -> Self {
        let mut segments = Vec::with_capacity(profile.phases.len());
        let mut start = Duration::ZERO;
        let mut previous = 0.0;
        let mut before = 0.0;
        for Phase {
            kind,
            duration,
            connections,
            rate,
            ..
        } in &profile.phases
        {
            let segment = Segment {
                start,
                length: *duration,
                from: previous,
                to: f64::from(*connections),
                ramp: *kind == PhaseKind::Ramp,
                rate: *rate,
                before,
            };
            before += segment.messages(segment.length);
            previous = segment.to;
            start += *duration;
            segments.push(segment);
        }
        Self {
            segments,
            total: start,
            total_messages: before,
        }
    }

    /// How long the whole profile runs.
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.total
    }

    /// The index of the phase running at `elapsed`; `None` once the profile
    /// is over.
    #[must_use]
    pub fn phase_at(&self, elapsed: Duration) -> Option<usize> {
        self.segments
            .iter()
            .position(|s| elapsed >= s.start && elapsed < s.start + s.length)
    }

    /// Connections that should be open at `elapsed`; those of the last phase
    /// once the profile is over.
    #[must_use]
    pub fn connections_at(&self, elapsed: Duration) -> u32 {
        let Some(segment) = self.segment(elapsed) else {
            return 0;
        };
        // Rounded, and bounded by the validated counts, so the cast is exact.
        segment
            .connections(elapsed.saturating_sub(segment.start))
            .round() as u32
    }

    /// Messages that should have been sent from the start to `elapsed`
    /// (non-decreasing in `elapsed`; constant after the end).
    #[must_use]
    pub fn messages_due(&self, elapsed: Duration) -> u64 {
        let due = match self.segment(elapsed) {
            None => 0.0,
            Some(s) if elapsed >= self.total => self.total_messages.max(s.before),
            Some(s) => s.before + s.messages(elapsed - s.start),
        };
        // Non-negative and finite: rates and durations are validated.
        due.floor() as u64
    }

    /// Messages the whole profile sends.
    #[must_use]
    pub fn total_messages(&self) -> u64 {
        self.messages_due(self.total)
    }

    fn segment(&self, elapsed: Duration) -> Option<&Segment> {
        self.segments
            .iter()
            .rev()
            .find(|s| elapsed >= s.start)
            .or(self.segments.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn phase(kind: PhaseKind, secs: u64, connections: u32, rate: Rate) -> Phase {
        Phase {
            name: kind.to_string(),
            kind,
            duration: Duration::from_secs(secs),
            connections,
            rate,
        }
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_ramp_interpolates_from_the_previous_phase_and_steps_jump() {
        let profile = Profile {
            phases: vec![
                phase(PhaseKind::Ramp, 10, 100, Rate::Overall(10.0)),
                phase(PhaseKind::Steady, 10, 100, Rate::PerConnection(1.0)),
                phase(PhaseKind::Spike, 5, 300, Rate::Overall(0.0)),
                phase(PhaseKind::Ramp, 10, 200, Rate::Overall(0.0)),
            ],
        };
        let schedule = Schedule::new(&profile);
        assert_eq!(schedule.duration(), Duration::from_secs(35));
        assert_eq!(schedule.connections_at(s(0.0)), 0);
        assert_eq!(schedule.connections_at(s(5.0)), 50);
        assert_eq!(schedule.connections_at(s(10.0)), 100);
        assert_eq!(schedule.connections_at(s(20.0)), 300);
        assert_eq!(schedule.connections_at(s(30.0)), 250);
        assert_eq!(schedule.connections_at(s(99.0)), 200);
        assert_eq!(schedule.phase_at(s(9.9)), Some(0));
        assert_eq!(schedule.phase_at(s(20.0)), Some(2));
        assert_eq!(schedule.phase_at(s(35.0)), None);
        assert_eq!(schedule.messages_due(s(5.0)), 50);
        assert_eq!(schedule.messages_due(s(10.0)), 100);
        assert_eq!(schedule.messages_due(s(15.0)), 600);
        assert_eq!(schedule.total_messages(), 1100);
    }

    #[test]
    fn a_per_connection_rate_on_a_ramp_is_integrated() {
        let profile = Profile {
            phases: vec![phase(PhaseKind::Ramp, 10, 100, Rate::PerConnection(2.0))],
        };
        // 2/s for each of 0 -> 100 connections over 10 s: 2 * 50 * 10.
        assert_eq!(Schedule::new(&profile).total_messages(), 1000);
    }

    fn phases() -> impl Strategy<Value = Vec<Phase>> {
        let kind = prop_oneof![
            Just(PhaseKind::Steady),
            Just(PhaseKind::Ramp),
            Just(PhaseKind::Spike),
            Just(PhaseKind::Calm)
        ];
        let rate = prop_oneof![
            (0.0f64..1000.0).prop_map(Rate::Overall),
            (0.0f64..10.0).prop_map(Rate::PerConnection)
        ];
        prop::collection::vec(
            (kind, 1u64..120_000, 1u32..5000, rate).prop_map(|(kind, ms, connections, rate)| {
                Phase {
                    name: "p".into(),
                    kind,
                    duration: Duration::from_millis(ms),
                    connections,
                    rate,
                }
            }),
            1..6,
        )
    }

    proptest! {
        #[test]
        fn messages_due_never_decreases_and_ends_at_the_total(
            phases in phases(),
            mut times in prop::collection::vec(0u64..700_000, 1..40),
        ) {
            let schedule = Schedule::new(&Profile { phases });
            times.sort_unstable();
            let mut last = 0;
            for ms in times {
                let due = schedule.messages_due(Duration::from_millis(ms));
                prop_assert!(due >= last, "{due} < {last} at {ms}ms");
                last = due;
            }
            prop_assert!(last <= schedule.total_messages());
            prop_assert_eq!(schedule.messages_due(schedule.duration() * 2), schedule.total_messages());
        }

        #[test]
        fn connections_stay_between_the_phases_bounds(
            phases in phases(),
            ms in 0u64..700_000,
        ) {
            let top = phases.iter().map(|p| p.connections).max().unwrap_or(0);
            let schedule = Schedule::new(&Profile { phases });
            prop_assert!(schedule.connections_at(Duration::from_millis(ms)) <= top);
        }
    }
}
