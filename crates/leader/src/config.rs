//! Timing and identity of one candidate, checked once at start.

use std::time::Duration;

/// How long a holder's claim lasts, as written into the Lease (client-go's default).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps acting without a successful renewal (client-go's default).
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often candidates try to acquire and leaders renew (client-go's default).
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// client-go's jitter factor: the renew deadline must exceed this many retry periods.
const RETRY_FACTOR: f64 = 1.2;

/// What one candidate needs to take part in an election.
///
/// [`ElectionConfig::new`] gives client-go's defaults; [`validate`](Self::validate)
/// enforces `lease_duration > renew_deadline > 1.2 × retry_period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// This candidate's name in `spec.holderIdentity`, usually the pod name.
    /// Must be unique among the candidates.
    pub identity: String,
    /// How long others must see the Lease unchanged before they may take it.
    /// Written as `spec.leaseDurationSeconds`, so a whole number of seconds.
    pub lease_duration: Duration,
    /// How long after the last successful renewal was sent a leader gives
    /// up on its own. Shorter than `lease_duration`, so the leader has
    /// stopped acting before anyone else may take over.
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// client-go's defaults: lease 15 s, renew deadline 10 s, retry period 2 s.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Sets the three durations.
    #[must_use]
    pub fn with_timing(
        mut self,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = renew_deadline;
        self.retry_period = retry_period;
        self
    }

    /// Checks the identity and `lease_duration > renew_deadline > 1.2 × retry_period`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the value that is wrong and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.identity.trim().is_empty() {
            return Err(ConfigError::EmptyIdentity);
        }
        if self.retry_period.is_zero() {
            return Err(ConfigError::ZeroRetryPeriod);
        }
        let whole = self.lease_duration.subsec_nanos() == 0
            && self.lease_duration.as_secs() >= 1
            && i32::try_from(self.lease_duration.as_secs()).is_ok();
        if !whole {
            return Err(ConfigError::LeaseNotWholeSeconds(self.lease_duration));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(ConfigError::LeaseNotLongerThanDeadline {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
            });
        }
        if self.renew_deadline.as_secs_f64() <= RETRY_FACTOR * self.retry_period.as_secs_f64() {
            return Err(ConfigError::DeadlineTooShort {
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        Ok(())
    }
}

/// Why an [`ElectionConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The identity is empty or blank.
    #[error("identity is empty: every candidate needs a unique name")]
    EmptyIdentity,
    /// The retry period is zero.
    #[error("retry period is 0: it must be positive")]
    ZeroRetryPeriod,
    /// The lease duration is not a whole number of seconds in `1..=i32::MAX`.
    #[error("lease duration {0:?} is not a whole number of seconds of at least 1 s")]
    LeaseNotWholeSeconds(Duration),
    /// `lease_duration <= renew_deadline`.
    #[error(
        "lease duration {lease_duration:?} must be longer than the renew deadline {renew_deadline:?}"
    )]
    LeaseNotLongerThanDeadline {
        /// The lease duration given.
        lease_duration: Duration,
        /// The renew deadline given.
        renew_deadline: Duration,
    },
    /// `renew_deadline <= 1.2 × retry_period`.
    #[error(
        "renew deadline {renew_deadline:?} must be longer than 1.2 × the retry period {retry_period:?}"
    )]
    DeadlineTooShort {
        /// The renew deadline given.
        renew_deadline: Duration,
        /// The retry period given.
        retry_period: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(lease: u64, renew: u64, retry: u64) -> ElectionConfig {
        ElectionConfig::new("a").with_timing(
            Duration::from_millis(lease),
            Duration::from_millis(renew),
            Duration::from_millis(retry),
        )
    }

    #[test]
    fn defaults_are_client_go_and_valid() {
        let config = ElectionConfig::new("pod-0");
        assert_eq!(config.lease_duration, Duration::from_secs(15));
        assert_eq!(config.renew_deadline, Duration::from_secs(10));
        assert_eq!(config.retry_period, Duration::from_secs(2));
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(timing(3_000, 2_000, 500).validate(), Ok(()));
    }

    #[test]
    fn constraints_are_enforced() {
        assert_eq!(
            ElectionConfig::new(" ").validate(),
            Err(ConfigError::EmptyIdentity)
        );
        assert_eq!(
            timing(3_000, 2_000, 0).validate(),
            Err(ConfigError::ZeroRetryPeriod)
        );
        assert!(matches!(
            timing(2_500, 2_000, 500).validate(),
            Err(ConfigError::LeaseNotWholeSeconds(_))
        ));
        assert!(matches!(
            timing(0, 0, 500).validate(),
            Err(ConfigError::LeaseNotWholeSeconds(_))
        ));
        assert!(matches!(
            timing(2_000, 2_000, 500).validate(),
            Err(ConfigError::LeaseNotLongerThanDeadline { .. })
        ));
        // 1.2 × 500 ms = 600 ms: equal is refused, just above is fine.
        assert!(matches!(
            timing(3_000, 600, 500).validate(),
            Err(ConfigError::DeadlineTooShort { .. })
        ));
        assert_eq!(timing(3_000, 601, 500).validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_values() {
        let message = timing(2_000, 2_000, 500)
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("2s"), "{message}");
    }
}
