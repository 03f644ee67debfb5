//! Where the decision state is kept between leaders.

use rtc_decision::{STATE_VERSION, State};
use std::future::Future;
use std::sync::Arc;

/// A state as stored, with the token of the leader that saved it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    /// The saving leader's fencing token.
    pub token: u64,
    /// The decision state.
    pub state: State,
}

/// Why saving or loading the state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The store refused the command, or the connection failed or timed out.
    #[error("{store}: {source}")]
    Unavailable {
        /// The store's short name (`redis`), also the error's label.
        store: &'static str,
        /// What the store's client reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A newer leader (higher fencing token) has saved since: this process
    /// is no longer the leader and must not write.
    #[error("state is fenced: stored token {stored} is newer than ours ({ours})")]
    Fenced {
        /// The token found in the store.
        stored: String,
        /// The token offered.
        ours: u64,
    },
    /// The stored value is not a state this build can read.
    #[error("stored state is unreadable: {0}")]
    Corrupt(String),
    /// The stored state has a newer layout than this build knows.
    #[error("stored state version {found} is newer than this build's {STATE_VERSION}")]
    UnknownVersion {
        /// The stored version.
        found: u32,
    },
}

impl StateError {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unavailable { store, .. } => store,
            Self::Fenced { .. } => "fenced",
            Self::Corrupt(_) => "corrupt",
            Self::UnknownVersion { .. } => "unknown_version",
        }
    }
}

/// Saves and loads the decision state, fenced by the leader's token.
pub trait StateRepo: Send + Sync {
    /// The stored state, if any.
    fn load(&self) -> impl Future<Output = Result<Option<StoredState>, StateError>> + Send;
    /// Saves `state` for the leader holding `token`; refused with
    /// [`StateError::Fenced`] when a higher token has saved.
    fn save(
        &self,
        token: u64,
        state: &State,
    ) -> impl Future<Output = Result<(), StateError>> + Send;
}

impl<R: StateRepo + ?Sized> StateRepo for Arc<R> {
    fn load(&self) -> impl Future<Output = Result<Option<StoredState>, StateError>> + Send {
        R::load(self)
    }

    fn save(
        &self,
        token: u64,
        state: &State,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        R::save(self, token, state)
    }
}

/// An in-memory repository with the same fencing rule, for tests.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "the state is locked only in sync code, never across an .await"
)]
pub struct MemoryStateRepo {
    stored: std::sync::Mutex<Option<StoredState>>,
}

#[cfg(any(test, feature = "test-util"))]
impl MemoryStateRepo {
    /// What is stored now.
    pub fn stored(&self) -> Option<StoredState> {
        self.stored.lock().ok().and_then(|s| s.clone())
    }
}

#[cfg(any(test, feature = "test-util"))]
impl StateRepo for MemoryStateRepo {
    async fn load(&self) -> Result<Option<StoredState>, StateError> {
        Ok(self.stored())
    }

    async fn save(&self, token: u64, state: &State) -> Result<(), StateError> {
        let mut stored = self
            .stored
            .lock()
            .map_err(|_| StateError::Corrupt("memory state poisoned".to_owned()))?;
        if let Some(s) = stored.as_ref()
            && s.token > token
        {
            return Err(StateError::Fenced {
                stored: s.token.to_string(),
                ours: token,
            });
        }
        *stored = Some(StoredState {
            token,
            state: state.clone(),
        });
        Ok(())
    }
}
