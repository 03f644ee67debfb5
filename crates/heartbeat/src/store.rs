//! The I/O boundary: a narrow [`HeartbeatStore`] trait and its Redis
//! implementation, whose scripts run through [`rtc_redis::Script`].

use std::future::Future;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use rtc_redis::Script;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis refused the command, or the connection failed or timed out.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// Redis answered with something this crate did not expect.
    #[error("unexpected redis reply to {command}: {detail}")]
    UnexpectedReply {
        /// The command.
        command: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
    /// The store is unavailable (test double only).
    #[error("store unavailable")]
    Unavailable,
}

impl StoreError {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Redis(e) => match e.kind() {
                fred::error::ErrorKind::Timeout => "timeout",
                fred::error::ErrorKind::IO | fred::error::ErrorKind::Canceled => "io",
                _ => "redis",
            },
            Self::UnexpectedReply { .. } => "unexpected_reply",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What a publish writes besides the liveness entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOptions {
    /// Lifetime of the liveness entry: STALE_AFTER.
    pub stale_after: Duration,
    /// Approximate length of the node's history stream.
    pub history_len: u64,
    /// How long the history stream outlives the node's last heartbeat.
    pub history_ttl: Duration,
}

/// Where heartbeats live. Node ids handed in have passed
/// [`validate_node_id`](crate::validate_node_id).
///
/// The Redis implementation is [`RedisStore`]; tests of code above this
/// trait can use `MemoryStore` (feature `test-util`).
pub trait HeartbeatStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `payload` as `node`'s latest heartbeat with a liveness lifetime
    /// of `options.stale_after`, marks the node as seen, and appends the
    /// payload to its bounded history; all at once.
    fn publish(
        &self,
        node: &str,
        payload: &[u8],
        options: &PublishOptions,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes `node`'s liveness entry and its index entry at once. The
    /// history is left to expire.
    fn deregister(&self, node: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The store's epoch: `candidate` if the store had none (it is new,
    /// flushed or restarted empty), else the one it has. A change of epoch
    /// between two reads means everything read before may be gone.
    fn epoch(&self, candidate: &str) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Every node id in the index, live or expired but not yet pruned.
    fn node_ids(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// The latest payload of each node in `nodes`, `None` where the
    /// liveness entry has expired or was removed.
    fn latest(
        &self,
        nodes: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, StoreError>> + Send;

    /// Drops index entries of nodes not seen for `idle_for` (by the store's
    /// clock); returns how many.
    fn prune(&self, idle_for: Duration) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Up to `count` of `node`'s most recent payloads from its history,
    /// newest first.
    fn history(
        &self,
        node: &str,
        count: u64,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send;
}

/// Key names under one prefix.
///
/// All keys of a fleet share the prefix. In Redis Cluster the publish and
/// deregister scripts touch several keys, so put a hash tag in the prefix
/// (for example `{rtc-hb}:`) to keep them in one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl Default for KeyLayout {
    fn default() -> Self {
        Self::new("rtc:hb:")
    }
}

impl KeyLayout {
    /// Keys under `prefix` (used as is; end it with a separator).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Sorted set: node id -> last publish time (ms, Redis clock).
    pub fn index(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// String with a TTL of STALE_AFTER: the node's latest heartbeat.
    pub fn live(&self, node: &str) -> String {
        format!("{}live:{node}", self.prefix)
    }

    /// Stream, capped near the history length: the node's recent heartbeats.
    pub fn history(&self, node: &str) -> String {
        format!("{}hist:{node}", self.prefix)
    }

    /// String: a token that changes whenever the data set starts empty.
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
}

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Redis's clock in ms, read inside a script so all keys agree on it.
macro_rules! now_ms {
    () => {
        "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
    };
}

/// KEYS: live, index, history. ARGV: node, payload, stale_after ms,
/// history length, history ttl ms.
const PUBLISH: Script = Script::new(concat!(
    now_ms!(),
    "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'hb', ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return now"
));

/// KEYS: live, index. ARGV: node.
const DEREGISTER: Script = Script::new(
    "
redis.call('DEL', KEYS[1])
return redis.call('ZREM', KEYS[2], ARGV[1])",
);

/// KEYS: epoch. ARGV: candidate.
const EPOCH: Script = Script::new(
    "
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])",
);

/// KEYS: index. ARGV: idle ms.
const PRUNE: Script = Script::new(concat!(
    now_ms!(),
    "return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])))"
));

/// Keys per MGET, so one reply stays a few hundred kilobytes at most.
const MGET_CHUNK: usize = 500;

/// [`HeartbeatStore`] on Redis. See the crate docs for the layout.
#[derive(Debug, Clone)]
pub struct RedisStore {
    client: Client,
    keys: KeyLayout,
}

impl RedisStore {
    /// A store using `client` (see [`connect`](crate::connect)) and the keys
    /// of `keys`.
    pub fn new(client: Client, keys: KeyLayout) -> Self {
        Self { client, keys }
    }

    /// The key layout.
    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Bytes(b) => Some(b.to_vec()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Integer(i) => Some(i.to_string().into_bytes()),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        _ => None,
    }
}

fn unexpected(command: &'static str, value: &Value) -> StoreError {
    StoreError::UnexpectedReply {
        command,
        detail: format!("{:?}", value.kind()),
    }
}

impl HeartbeatStore for RedisStore {
    async fn publish(
        &self,
        node: &str,
        payload: &[u8],
        options: &PublishOptions,
    ) -> Result<(), StoreError> {
        let keys = vec![
            self.keys.live(node),
            self.keys.index(),
            self.keys.history(node),
        ];
        let args = vec![
            Value::from(node),
            Value::Bytes(payload.to_vec().into()),
            Value::from(millis_u64(options.stale_after).max(1).to_string()),
            Value::from(options.history_len.max(1).to_string()),
            Value::from(millis_u64(options.history_ttl).max(1).to_string()),
        ];
        PUBLISH.run(&self.client, keys, args).await?;
        Ok(())
    }

    async fn deregister(&self, node: &str) -> Result<(), StoreError> {
        let keys = vec![self.keys.live(node), self.keys.index()];
        DEREGISTER
            .run(&self.client, keys, vec![Value::from(node)])
            .await?;
        Ok(())
    }

    async fn epoch(&self, candidate: &str) -> Result<String, StoreError> {
        let reply = EPOCH
            .run(
                &self.client,
                vec![self.keys.epoch()],
                vec![Value::from(candidate)],
            )
            .await?;
        match bytes_of(reply.clone()).map(String::from_utf8) {
            Some(Ok(epoch)) => Ok(epoch),
            _ => Err(unexpected("EPOCH", &reply)),
        }
    }

    async fn node_ids(&self) -> Result<Vec<String>, StoreError> {
        let reply: Value = self
            .client
            .custom(
                CustomCommand::new_static("ZRANGE", ClusterHash::FirstKey, false),
                vec![self.keys.index(), "0".to_owned(), "-1".to_owned()],
            )
            .await?;
        match reply {
            Value::Array(items) => Ok(items
                .into_iter()
                .filter_map(bytes_of)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect()),
            Value::Null => Ok(Vec::new()),
            other => Err(unexpected("ZRANGE", &other)),
        }
    }

    async fn latest(&self, nodes: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out = Vec::with_capacity(nodes.len());
        for chunk in nodes.chunks(MGET_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|n| self.keys.live(n)).collect();
            let reply: Value = self
                .client
                .custom(
                    CustomCommand::new_static("MGET", ClusterHash::FirstKey, false),
                    keys,
                )
                .await?;
            match reply {
                Value::Array(items) if items.len() == chunk.len() => {
                    out.extend(items.into_iter().map(bytes_of));
                }
                other => return Err(unexpected("MGET", &other)),
            }
        }
        Ok(out)
    }

    async fn prune(&self, idle_for: Duration) -> Result<u64, StoreError> {
        let reply = PRUNE
            .run(
                &self.client,
                vec![self.keys.index()],
                vec![Value::from(millis_u64(idle_for).to_string())],
            )
            .await?;
        match reply {
            Value::Integer(n) => Ok(u64::try_from(n).unwrap_or(0)),
            other => Err(unexpected("ZREMRANGEBYSCORE", &other)),
        }
    }

    async fn history(&self, node: &str, count: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let reply: Value = self
            .client
            .custom(
                CustomCommand::new_static("XREVRANGE", ClusterHash::FirstKey, false),
                vec![
                    self.keys.history(node),
                    "+".to_owned(),
                    "-".to_owned(),
                    "COUNT".to_owned(),
                    count.to_string(),
                ],
            )
            .await?;
        let Value::Array(entries) = reply else {
            return match reply {
                Value::Null => Ok(Vec::new()),
                other => Err(unexpected("XREVRANGE", &other)),
            };
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            // [id, [field, value, ...]]; only the `hb` field is ours.
            let Value::Array(mut parts) = entry else {
                continue;
            };
            let Some(Value::Array(fields)) = parts.pop() else {
                continue;
            };
            let mut fields = fields.into_iter();
            while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
                if bytes_of(field).as_deref() == Some(b"hb".as_slice()) {
                    out.extend(bytes_of(value));
                }
            }
        }
        Ok(out)
    }
}
