//! Where the decision state is kept between leaders.

use rtc_decision::State;
use rtc_heartbeat::{StateError, StateStore, StoredState};
use std::future::Future;
use std::sync::Mutex;

/// Saves and loads the decision state, fenced by the leader's token.
pub trait StateRepo: Send + Sync {
    /// The stored state, if any.
    fn load(&self) -> impl Future<Output = Result<Option<StoredState>, StateError>> + Send;
    /// Saves `state` for the leader holding `token`; refused when a higher
    /// token has saved.
    fn save(
        &self,
        token: u64,
        state: &State,
    ) -> impl Future<Output = Result<(), StateError>> + Send;
}

impl StateRepo for StateStore {
    fn load(&self) -> impl Future<Output = Result<Option<StoredState>, StateError>> + Send {
        StateStore::load(self)
    }

    fn save(
        &self,
        token: u64,
        state: &State,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        StateStore::save(self, token, state)
    }
}

/// An in-memory repository with the same fencing rule, for tests and for a
/// single load-balancer without Redis.
#[derive(Debug, Default)]
pub struct MemoryStateRepo {
    stored: Mutex<Option<StoredState>>,
}

impl MemoryStateRepo {
    /// What is stored now.
    pub fn stored(&self) -> Option<StoredState> {
        self.stored.lock().ok().and_then(|s| s.clone())
    }
}

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
