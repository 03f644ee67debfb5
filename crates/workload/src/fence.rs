//! The fence checked right before every write.

/// Says whether this process may still write, right before each write.
///
/// The load balancer's leader-election guard implements it: `check` answers
/// with the fencing token of the lease it holds (for logs and for comparing
/// claims), or an error when the lease is lost or about to expire. The scaler
/// calls it before every pod patch and before every /scale write, including
/// each retry, so a process that lost leadership while waiting stops writing.
pub trait Fence: Send + Sync {
    /// The current fencing token, or why writing is no longer allowed.
    ///
    /// # Errors
    ///
    /// A [`FenceError`] when this process must not write.
    fn check(&self) -> Result<u64, FenceError>;
}

impl<F: Fence + ?Sized> Fence for &F {
    fn check(&self) -> Result<u64, FenceError> {
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

/// A fence that always allows writes with token 0: for a single writer
/// without leader election (tools, tests, offline use).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysValid;

impl Fence for AlwaysValid {
    fn check(&self) -> Result<u64, FenceError> {
        Ok(0)
    }
}

/// A fence that always allows writes with a fixed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedToken(pub u64);

impl Fence for FixedToken {
    fn check(&self) -> Result<u64, FenceError> {
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trivial_fences_allow_writes() {
        assert_eq!(AlwaysValid.check(), Ok(0));
        assert_eq!(FixedToken(7).check(), Ok(7));
        let by_ref: &dyn Fence = &&FixedToken(9);
        assert_eq!(by_ref.check(), Ok(9));
    }
}
