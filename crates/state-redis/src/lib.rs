//! The decision core's [`State`] in Redis, so a new leader resumes where the
//! last one stopped, guarded by the leader's fencing token.
//!
//! [`StateStore`] is the Redis side of rtc-autoscaler's
//! [`StateRepo`]: one hash per key with the saving leader's `token` and the
//! `state` as JSON.
//!
//! What it promises:
//! - **Fenced and atomic.** A save is one Lua script that compares the
//!   stored token with the caller's and writes only when the caller's is
//!   not lower, so a deposed leader that is still running can never
//!   overwrite its successor's state.
//! - **Exact.** Tokens are compared as decimal strings, exact for every
//!   `u64` (Lua's numbers are doubles); the state round-trips bit for bit.
//! - **Nothing unreadable is used.** A value that is not JSON, too large,
//!   or of a newer [`STATE_VERSION`] is reported as
//!   [`StateError::Corrupt`] or [`StateError::UnknownVersion`], and the
//!   caller starts from an empty state instead.
//!
//! The client comes from the caller (the load-balancer shares the one it
//! reads heartbeats with); its command timeout bounds every call.
//!
//! # Example
//!
//! ```no_run
//! use rtc_decision::State;
//! use rtc_state_redis::StateStore;
//!
//! # async fn example(client: fred::clients::Client) -> Result<(), rtc_autoscaler::StateError> {
//! let store = StateStore::new(client, "rtc:lb:decision-state");
//! store.save(7, &State::default()).await?;
//! assert_eq!(store.load().await?.map(|s| s.token), Some(7));
//! # Ok(())
//! # }
//! ```

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use rtc_autoscaler::{StateError, StateRepo, StoredState};
use rtc_decision::{STATE_VERSION, State};
use rtc_redis::Script;
use std::future::Future;

/// Largest stored state read back; a real one is a few hundred bytes.
const MAX_STATE_BYTES: usize = 64 * 1024;

/// KEYS: the hash. ARGV: token (decimal, no leading zeros), state JSON.
/// Tokens are compared as decimal strings (length, then bytes), which is
/// exact for every u64, unlike Lua's doubles.
const SAVE: Script = Script::new(
    "
local cur = redis.call('HGET', KEYS[1], 'token')
if cur and (#cur > #ARGV[1] or (#cur == #ARGV[1] and cur > ARGV[1])) then
  return {0, cur}
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'state', ARGV[2])
return {1, ARGV[1]}",
);

/// Saves and loads the decision state under one Redis hash (`token`,
/// `state` as JSON).
#[derive(Debug, Clone)]
pub struct StateStore {
    client: Client,
    key: String,
}

impl StateStore {
    /// A store of the state under `key`.
    pub fn new(client: Client, key: impl Into<String>) -> Self {
        Self {
            client,
            key: key.into(),
        }
    }

    /// Saves `state` on behalf of the leader holding fencing token `token`
    /// (for example the Lease's transition count). Succeeds when no state
    /// is stored or the stored token is not higher; atomic in Redis.
    ///
    /// # Errors
    ///
    /// [`StateError::Fenced`] when a higher token has saved,
    /// [`StateError::Unavailable`] when Redis cannot be reached.
    pub async fn save(&self, token: u64, state: &State) -> Result<(), StateError> {
        let json = serde_json::to_string(state).map_err(|e| StateError::Corrupt(e.to_string()))?;
        let reply = SAVE
            .run(&self.client, [self.key.as_str()], [token.to_string(), json])
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = reply else {
            return Err(StateError::Corrupt(format!(
                "save answered {:?}",
                reply.kind()
            )));
        };
        match parts.as_slice() {
            [Value::Integer(1), _] => Ok(()),
            [Value::Integer(0), stored] => Err(StateError::Fenced {
                stored: text(stored).unwrap_or_default().chars().take(32).collect(),
                ours: token,
            }),
            _ => Err(StateError::Corrupt(
                "save answered an unexpected array".to_owned(),
            )),
        }
    }

    /// The stored state, if any.
    ///
    /// # Errors
    ///
    /// [`StateError::Corrupt`] or [`StateError::UnknownVersion`] when the
    /// stored value cannot be used (start from `State::default()` then),
    /// [`StateError::Unavailable`] when Redis cannot be reached.
    pub async fn load(&self) -> Result<Option<StoredState>, StateError> {
        let reply: Value = self
            .client
            .custom(
                CustomCommand::new_static("HMGET", ClusterHash::FirstKey, false),
                vec![self.key.as_str(), "token", "state"],
            )
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = reply else {
            return Err(StateError::Corrupt(format!(
                "HMGET answered {:?}",
                reply.kind()
            )));
        };
        let (token, state) = match parts.as_slice() {
            [Value::Null, Value::Null] => return Ok(None),
            [token, state] => (text(token), text(state)),
            _ => {
                return Err(StateError::Corrupt(
                    "HMGET answered an unexpected array".to_owned(),
                ));
            }
        };
        let token = token
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| StateError::Corrupt("token is not a number".to_owned()))?;
        let state = state.ok_or_else(|| StateError::Corrupt("state is missing".to_owned()))?;
        if state.len() > MAX_STATE_BYTES {
            return Err(StateError::Corrupt(format!(
                "state of {} bytes is too large",
                state.len()
            )));
        }
        let state: State =
            serde_json::from_str(&state).map_err(|e| StateError::Corrupt(e.to_string()))?;
        if state.version > STATE_VERSION {
            return Err(StateError::UnknownVersion {
                found: state.version,
            });
        }
        Ok(Some(StoredState { token, state }))
    }

    /// Deletes the stored state.
    ///
    /// # Errors
    ///
    /// [`StateError::Unavailable`] when Redis cannot be reached.
    pub async fn clear(&self) -> Result<(), StateError> {
        let _: Value = self
            .client
            .custom(
                CustomCommand::new_static("DEL", ClusterHash::FirstKey, false),
                vec![self.key.as_str()],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
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

/// A Redis failure, labelled `redis` in metrics.
fn unavailable(error: fred::error::Error) -> StateError {
    StateError::Unavailable {
        store: "redis",
        source: Box::new(error),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}
