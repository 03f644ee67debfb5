//! The fence checked right before every write, and the claim that makes
//! the API server enforce it.

use std::time::Duration;

/// The workload annotation in which a new leader records its fencing token
/// before its first scaling write. Writing it moves the workload's
/// resourceVersion, so every /scale write an earlier leader prepared (and
/// may still have in flight) fails its precondition with 409.
pub const FENCING_TOKEN_ANNOTATION: &str = "rtc-autoscale.io/fencing-token";

/// What a [`Fence`] grants: the token to write under and how long the grant
/// lasts. Every request made under it must end within `remaining`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// The fencing token of the lease held.
    pub token: u64,
    /// Time left before writing stops being allowed.
    pub remaining: Duration,
}

impl Permit {
    /// A permit without a time limit.
    pub const fn unbounded(token: u64) -> Self {
        Self {
            token,
            remaining: Duration::MAX,
        }
    }
}

/// Says whether this process may still write, right before each write.
///
/// The load balancer's leader-election guard implements it: `check` answers
/// with the fencing token of the lease it holds and the time left before the
/// lease could pass to another replica (less a safety margin), or an error
/// when the lease is lost or about to expire. The scaler calls it before
/// every pod patch and before every /scale write, including each retry, and
/// cuts each request off when the time left runs out, so a process that lost
/// leadership while waiting stops writing.
pub trait Fence: Send + Sync {
    /// The current permit, or why writing is no longer allowed.
    ///
    /// # Errors
    ///
    /// A [`FenceError`] when this process must not write.
    fn check(&self) -> Result<Permit, FenceError>;
}

impl<F: Fence + ?Sized> Fence for &F {
    fn check(&self) -> Result<Permit, FenceError> {
        (**self).check()
    }
}

/// Why a [`Fence`] refused a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not allowed to write: {reason}")]
pub struct FenceError {
    /// What the fence found, e.g. `lease held by lb-1` or `lease expires in 200ms`.
    pub reason: String,
}

impl FenceError {
    /// A refusal with the given reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// A fence that always allows writes with token 0 and no time limit: for a
/// single writer without leader election (tools, tests, offline use).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysValid;

impl Fence for AlwaysValid {
    fn check(&self) -> Result<Permit, FenceError> {
        Ok(Permit::unbounded(0))
    }
}

/// A fence that always allows writes with a fixed token and no time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedToken(pub u64);

impl Fence for FixedToken {
    fn check(&self) -> Result<Permit, FenceError> {
        Ok(Permit::unbounded(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trivial_fences_allow_writes() {
        assert_eq!(AlwaysValid.check().map(|p| p.token), Ok(0));
        assert_eq!(FixedToken(7).check(), Ok(Permit::unbounded(7)));
        let by_ref: &dyn Fence = &&FixedToken(9);
        assert_eq!(by_ref.check().map(|p| p.token), Ok(9));
    }
}
