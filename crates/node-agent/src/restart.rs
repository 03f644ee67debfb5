//! Whether and when an exited container starts again.
//!
//! The kubelet waits 10 s after a crash, doubling to 5 minutes. This is a
//! test stack, where a crash loop should show within seconds, so the wait is
//! 1 s doubling to 10 s, and it starts again from 1 s once a run has lasted
//! twice the cap (20 s), as the kubelet forgets a back-off after twice its
//! maximum.

use std::time::Duration;

/// A pod's `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Restart whatever the exit status (the default).
    #[default]
    Always,
    /// Restart only after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The policy as the API writes it; unknown or missing is `Always`, the
    /// API server's default.
    pub fn from_spec(policy: Option<&str>) -> Self {
        match policy {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether a container that exited with `exit_code` runs again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// Restart delays of one container: doubling from `initial` to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    delays: rtc_time::Backoff,
    /// Restarts since the last run that lasted long enough to forget them.
    streak: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(10))
    }
}

impl Backoff {
    /// Delays from `initial`, doubling, up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            delays: rtc_time::Backoff::new(initial, max.max(initial)),
            streak: 0,
        }
    }

    /// The wait before starting again after a run that lasted `ran_for`.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.delays.max.saturating_mul(2) {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        self.delays.delay(self.streak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn policies_decide_by_exit_code() {
        assert!(RestartPolicy::Always.restarts(0));
        assert!(RestartPolicy::Always.restarts(1));
        assert!(!RestartPolicy::OnFailure.restarts(0));
        assert!(RestartPolicy::OnFailure.restarts(137));
        assert!(!RestartPolicy::Never.restarts(1));
    }

    #[test]
    fn missing_or_unknown_policy_is_always() {
        assert_eq!(RestartPolicy::from_spec(None), RestartPolicy::Always);
        assert_eq!(
            RestartPolicy::from_spec(Some("Sometimes")),
            RestartPolicy::Always
        );
        assert_eq!(
            RestartPolicy::from_spec(Some("OnFailure")),
            RestartPolicy::OnFailure
        );
        assert_eq!(
            RestartPolicy::from_spec(Some("Never")),
            RestartPolicy::Never
        );
    }

    #[test]
    fn delays_double_to_the_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..7).map(|_| backoff.next_delay(Duration::ZERO)).collect();
        assert_eq!(delays, [S, 2 * S, 4 * S, 8 * S, 10 * S, 10 * S, 10 * S]);
    }

    #[test]
    fn a_long_run_starts_the_delays_over() {
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.next_delay(S);
        }
        assert_eq!(backoff.next_delay(19 * S), 10 * S);
        assert_eq!(backoff.next_delay(20 * S), S);
        assert_eq!(backoff.next_delay(S), 2 * S);
    }

    proptest! {
        #[test]
        fn delays_stay_between_initial_and_max(runs in prop::collection::vec(0_u64..60, 0..200)) {
            let mut backoff = Backoff::default();
            for ran in runs {
                let delay = backoff.next_delay(Duration::from_secs(ran));
                prop_assert!(delay >= S && delay <= 10 * S);
            }
        }
    }
}
