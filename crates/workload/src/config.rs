//! The scaler's configuration, validated once at start.

use std::time::Duration;

use rtc_time::Backoff;

/// `SOCKET_MIN_REPLICAS` when the operator does not set it.
pub const DEFAULT_MIN_REPLICAS: u32 = 2;
/// `SOCKET_MAX_REPLICAS` when the operator does not set it.
pub const DEFAULT_MAX_REPLICAS: u32 = 50;

/// The largest replica count the Kubernetes API accepts (`int32`).
const API_MAX_REPLICAS: u32 = i32::MAX as u32;

/// What the scaler needs to know, checked once by [`ScalerConfig::new`].
///
/// The namespace is not here: it belongs to the [`WorkloadApi`] the scaler
/// talks through (`KUBERNETES_NAMESPACE`).
///
/// [`WorkloadApi`]: crate::WorkloadApi
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalerConfig {
    workload_name: String,
    min_replicas: u32,
    max_replicas: u32,
    /// How transient API failures are retried.
    pub retry: RetryPolicy,
    /// How long to wait for deletion-cost annotations to be visible before
    /// giving up on a scale-in.
    pub annotation_visibility_timeout: Duration,
}

impl ScalerConfig {
    /// Validates `SOCKET_WORKLOAD_NAME`, `SOCKET_MIN_REPLICAS` and
    /// `SOCKET_MAX_REPLICAS`, with the default retry policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key, the value and what is allowed when
    /// the name is not a valid object name, `min < 1`, `min > max`, or
    /// `max` exceeds what the API accepts.
    pub fn new(
        workload_name: impl Into<String>,
        min_replicas: u32,
        max_replicas: u32,
    ) -> Result<Self, ConfigError> {
        let workload_name = workload_name.into();
        if !is_dns_subdomain(&workload_name) {
            return Err(ConfigError::WorkloadName(workload_name));
        }
        if min_replicas < 1 {
            return Err(ConfigError::MinBelowOne(min_replicas));
        }
        if max_replicas > API_MAX_REPLICAS {
            return Err(ConfigError::MaxTooLarge(max_replicas));
        }
        if min_replicas > max_replicas {
            return Err(ConfigError::MinAboveMax {
                min: min_replicas,
                max: max_replicas,
            });
        }
        Ok(Self {
            workload_name,
            min_replicas,
            max_replicas,
            retry: RetryPolicy::default(),
            annotation_visibility_timeout: Duration::from_secs(10),
        })
    }

    /// [`ScalerConfig::new`] with the default bounds (2 and 50).
    ///
    /// # Errors
    ///
    /// [`ConfigError::WorkloadName`] when the name is not a valid object name.
    pub fn with_default_bounds(workload_name: impl Into<String>) -> Result<Self, ConfigError> {
        Self::new(workload_name, DEFAULT_MIN_REPLICAS, DEFAULT_MAX_REPLICAS)
    }

    /// `SOCKET_WORKLOAD_NAME`: the Deployment or StatefulSet to scale.
    pub fn workload_name(&self) -> &str {
        &self.workload_name
    }

    /// `SOCKET_MIN_REPLICAS`.
    pub fn min_replicas(&self) -> u32 {
        self.min_replicas
    }

    /// `SOCKET_MAX_REPLICAS`.
    pub fn max_replicas(&self) -> u32 {
        self.max_replicas
    }

    /// Brings `requested` into `[min, max]`, saying which bound applied.
    pub fn clamp(&self, requested: u32) -> (u32, Option<Clamped>) {
        if requested < self.min_replicas {
            let clamped = Clamped {
                requested,
                bound: Bound::Min,
                limit: self.min_replicas,
            };
            (self.min_replicas, Some(clamped))
        } else if requested > self.max_replicas {
            let clamped = Clamped {
                requested,
                bound: Bound::Max,
                limit: self.max_replicas,
            };
            (self.max_replicas, Some(clamped))
        } else {
            (requested, None)
        }
    }
}

/// A requested replica count that was brought into bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamped {
    /// What the caller asked for.
    pub requested: u32,
    /// Which bound applied.
    pub bound: Bound,
    /// The bound's value, which became the target.
    pub limit: u32,
}

impl std::fmt::Display for Clamped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requested {} replicas, clamped to {}={}",
            self.requested,
            self.bound.key(),
            self.limit
        )
    }
}

/// One of the two replica bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `SOCKET_MIN_REPLICAS`.
    Min,
    /// `SOCKET_MAX_REPLICAS`.
    Max,
}

impl Bound {
    /// The configuration key of this bound.
    pub fn key(self) -> &'static str {
        match self {
            Self::Min => "SOCKET_MIN_REPLICAS",
            Self::Max => "SOCKET_MAX_REPLICAS",
        }
    }
}

/// How transient API failures (timeouts, 5xx, 429, broken connections) are
/// retried: with `backoff` between attempts, for at most `max_attempts`
/// attempts in all. Each attempt is cut off after `request_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (at least 1).
    pub max_attempts: u32,
    /// The waits between attempts: 200 ms, doubling, at most 2 s.
    pub backoff: Backoff,
    /// How long one attempt may take before it counts as a timeout.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(2)),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A configuration value the scaler cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The workload name is not a Kubernetes object name.
    #[error(
        "SOCKET_WORKLOAD_NAME={0:?} is not allowed: it must be a Kubernetes object name \
         (lowercase letters, digits, '-' and '.', at most 253 characters)"
    )]
    WorkloadName(String),
    /// The lower bound is zero.
    #[error("SOCKET_MIN_REPLICAS={0} is not allowed: it must be at least 1")]
    MinBelowOne(u32),
    /// The upper bound is beyond what the API accepts.
    #[error("SOCKET_MAX_REPLICAS={0} is not allowed: it must be at most {API_MAX_REPLICAS}")]
    MaxTooLarge(u32),
    /// The bounds are the wrong way round.
    #[error(
        "SOCKET_MIN_REPLICAS={min} is not allowed with SOCKET_MAX_REPLICAS={max}: \
         the minimum must not exceed the maximum"
    )]
    MinAboveMax {
        /// `SOCKET_MIN_REPLICAS`.
        min: u32,
        /// `SOCKET_MAX_REPLICAS`.
        max: u32,
    },
}

fn is_dns_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-' || *b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_validated_once() {
        let config = ScalerConfig::with_default_bounds("socket").expect("valid");
        assert_eq!((config.min_replicas(), config.max_replicas()), (2, 50));
        assert_eq!(
            ScalerConfig::new("socket", 0, 5),
            Err(ConfigError::MinBelowOne(0))
        );
        assert_eq!(
            ScalerConfig::new("socket", 6, 5),
            Err(ConfigError::MinAboveMax { min: 6, max: 5 })
        );
        assert!(ScalerConfig::new("socket", 3, 3).is_ok());
        assert_eq!(
            ScalerConfig::new("socket", 1, u32::MAX),
            Err(ConfigError::MaxTooLarge(u32::MAX))
        );
        for bad in ["", "Socket", "-socket", "socket-", "so_cket"] {
            assert!(ScalerConfig::new(bad, 1, 2).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let message = ScalerConfig::new("socket", 6, 5)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("SOCKET_MIN_REPLICAS=6"), "{message}");
        assert!(message.contains("SOCKET_MAX_REPLICAS=5"), "{message}");
    }

    #[test]
    fn clamp_reports_the_bound() {
        let config = ScalerConfig::with_default_bounds("socket").expect("valid");
        assert_eq!(config.clamp(8), (8, None));
        let (target, clamped) = config.clamp(1);
        assert_eq!(target, 2);
        assert_eq!(clamped.map(|c| c.bound), Some(Bound::Min));
        let (target, clamped) = config.clamp(80);
        assert_eq!(target, 50);
        assert_eq!(
            clamped.map(|c| c.to_string()).as_deref(),
            Some("requested 80 replicas, clamped to SOCKET_MAX_REPLICAS=50")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let waits: Vec<u128> = (1..=6)
            .map(|n| policy.backoff.delay(n).as_millis())
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(policy.backoff.delay(64), policy.backoff.max);
    }
}
