//! The check a leader makes right before every write.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::Leadership;

/// Proof of leadership at the moment of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The fencing token of this leadership. Later leaderships of the same
    /// Lease have greater tokens, so a token can be stored beside what is
    /// written and older writers refused.
    pub token: u64,
    /// How long this leader keeps acting without another renewal. The Lease
    /// itself lasts at least `lease_duration − renew_deadline` longer in
    /// everyone else's eyes.
    pub remaining: Duration,
}

/// Why a [`LeaderGuard`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotLeader {
    /// This candidate does not lead.
    #[error("not the leader (lease held by {})", holder.as_deref().unwrap_or("nobody"))]
    Follower {
        /// The holder as last seen, if any.
        holder: Option<String>,
    },
    /// This candidate leads, but with less time left than the caller needs.
    #[error("leading with {remaining:?} left, less than the safety margin {margin:?}")]
    TooLittleTime {
        /// The fencing token of the leadership.
        token: u64,
        /// Time left before this leader steps down.
        remaining: Duration,
        /// The margin asked for.
        margin: Duration,
    },
}

impl NotLeader {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Follower { .. } => "follower",
            Self::TooLittleTime { .. } => "too_little_time",
        }
    }
}

/// Answers "am I still leader, and for how long?" with the clock read at
/// the moment of the call.
///
/// Because it reads the clock itself, the guard refuses as soon as the
/// leader's renew deadline has passed, even when the election task is
/// stalled and has not published the step-down yet. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LeaderGuard {
    leadership: watch::Receiver<Leadership>,
}

impl LeaderGuard {
    pub(crate) fn new(leadership: watch::Receiver<Leadership>) -> Self {
        Self { leadership }
    }

    /// Call right before a write that only the leader may make: `Ok` with
    /// the fencing token if this candidate leads with at least `margin`
    /// (and more than zero) left. Pick `margin` at least as long as the
    /// write may take.
    ///
    /// # Errors
    ///
    /// [`NotLeader::Follower`] when not leading, [`NotLeader::TooLittleTime`]
    /// when leading with less than `margin` left.
    pub fn check(&self, margin: Duration) -> Result<Fence, NotLeader> {
        let now = Instant::now();
        match &*self.leadership.borrow() {
            Leadership::Leader { token, until } => {
                let remaining = until.saturating_duration_since(now);
                if remaining.is_zero() {
                    Err(NotLeader::Follower { holder: None })
                } else if remaining < margin {
                    Err(NotLeader::TooLittleTime {
                        token: *token,
                        remaining,
                        margin,
                    })
                } else {
                    Ok(Fence {
                        token: *token,
                        remaining,
                    })
                }
            }
            Leadership::Follower { holder } => Err(NotLeader::Follower {
                holder: holder.clone(),
            }),
        }
    }

    /// Whether this candidate leads right now (with any time left).
    pub fn is_leader(&self) -> bool {
        self.check(Duration::ZERO).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refuses_once_the_deadline_passes_without_a_step_down() {
        let until = Instant::now() + Duration::from_secs(2);
        let (_tx, rx) = watch::channel(Leadership::Leader { token: 7, until });
        let guard = LeaderGuard::new(rx);
        assert_eq!(
            guard.check(Duration::from_millis(500)),
            Ok(Fence {
                token: 7,
                remaining: Duration::from_secs(2)
            })
        );
        tokio::time::advance(Duration::from_millis(1_600)).await;
        assert!(matches!(
            guard.check(Duration::from_millis(500)),
            Err(NotLeader::TooLittleTime { token: 7, .. })
        ));
        assert!(guard.is_leader());
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(!guard.is_leader());
    }

    #[test]
    fn followers_are_refused_with_the_holder() {
        let (_tx, rx) = watch::channel(Leadership::Follower {
            holder: Some("b".into()),
        });
        let refusal = LeaderGuard::new(rx).check(Duration::ZERO);
        assert_eq!(
            refusal,
            Err(NotLeader::Follower {
                holder: Some("b".into())
            })
        );
        assert_eq!(
            refusal.err().map(|e| e.to_string()).unwrap_or_default(),
            "not the leader (lease held by b)"
        );
    }
}
