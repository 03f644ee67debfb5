//! The Redis store: presence, offline buffers and the registry of delivery
//! topics.
//!
//! | key | type | content |
//! |---|---|---|
//! | `<prefix>presence:<client>` | string, TTL PRESENCE_TTL | the node serving the client |
//! | `<prefix>inbox:<client>` | list, TTL OFFLINE_BUFFER_TTL, at most OFFLINE_BUFFER_MAX | message frames kept for the client |
//! | `<prefix>nodes` | sorted set | nodes whose delivery topic may hold records, scored by their last start (ms) |
//! | `<prefix>forward:<node>` | string, TTL FORWARD_CLAIM_TTL | the node forwarding `<node>`'s topic now |
//! | `<prefix>dead:<node>` | string | when `<node>` was first found without a heartbeat (ms) |
//!
//! The consumer position of each delivery topic is not here: it is the
//! committed offset of the node's consumer group on the broker
//! ([`crate::kafka`]).
//!
//! Buffering and connecting are one script each, so a message is either
//! buffered before the recipient connects (and handed to it on connect) or
//! finds the recipient's presence (and is relayed to its node): never lost
//! in between. The rules are those of [`crate::core::presence`]; every
//! script goes through the workspace's one runner, [`Script::run`].

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use rtc_heartbeat::KeyLayout;
use rtc_redis::Script;

use crate::core::presence::ttl_ms;
use crate::store::{BufferLimits, Lookup, PresenceStore, Registry, StoreError};

/// KEYS: presence, inbox. ARGV: node, ttl ms. Claims the client and takes its
/// buffered frames.
const CONNECT: Script = Script::new(
    "
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local frames = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return frames",
);

/// KEYS: presence, inbox. ARGV: this node, frame, max, ttl ms. Returns the
/// node serving the client when it is another node; else buffers the frame.
const ROUTE: Script = Script::new(
    "
local node = redis.call('GET', KEYS[1])
if node and node ~= ARGV[1] then return node end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return false",
);

/// KEYS: inbox. ARGV: frame, max, ttl ms.
const BUFFER: Script = Script::new(
    "
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1",
);

/// KEYS: presence, inbox. ARGV: node, ttl ms. Refreshes the claim unless
/// another node has taken the client over (0), and takes the frames
/// buffered for the client meanwhile (an array, maybe empty).
const REFRESH: Script = Script::new(
    "
local node = redis.call('GET', KEYS[1])
if node and node ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local frames = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return frames",
);

/// KEYS: presence. ARGV: node. Releases the claim if it is still ours.
const LEAVE: Script = Script::new(
    "
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
);

/// KEYS: claim. ARGV: node, ttl ms. Extends the claim if it is still ours.
const RENEW: Script = Script::new(
    "
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0",
);

/// KEYS: dead marker. ARGV: now ms. Sets it unless set; returns it.
const DEAD_SINCE: Script = Script::new(
    "
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])",
);

/// The relay's Redis state, for one node.
#[derive(Debug, Clone)]
pub struct RedisStore {
    client: Client,
    prefix: String,
    node: String,
    presence_ttl: Duration,
    limits: BufferLimits,
    heartbeats: KeyLayout,
}

fn ms(d: Duration) -> String {
    ttl_ms(d).to_string()
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Value::String(s) => Some(s.to_string()),
        _ => None,
    }
}

fn texts(value: Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.into_iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

impl RedisStore {
    /// State for `node` under `prefix`; heartbeat liveness entries are read
    /// under `heartbeats`.
    pub fn new(
        client: Client,
        prefix: impl Into<String>,
        node: impl Into<String>,
        presence_ttl: Duration,
        limits: BufferLimits,
        heartbeats: KeyLayout,
    ) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            node: node.into(),
            presence_ttl,
            limits,
            heartbeats,
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn presence(&self, client: &str) -> String {
        format!("{}presence:{client}", self.prefix)
    }

    fn inbox(&self, client: &str) -> String {
        format!("{}inbox:{client}", self.prefix)
    }

    fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    fn claim(&self, node: &str) -> String {
        format!("{}forward:{node}", self.prefix)
    }

    fn dead(&self, node: &str) -> String {
        format!("{}dead:{node}", self.prefix)
    }

    async fn command(&self, name: &'static str, args: Vec<Value>) -> Result<Value, StoreError> {
        Ok(self
            .client
            .custom(
                CustomCommand::new_static(name, ClusterHash::FirstKey, false),
                args,
            )
            .await?)
    }

    /// Waits until Redis answers, or `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.client.ping::<Value>(None)).await,
            Ok(Ok(_))
        )
    }
}

impl PresenceStore for RedisStore {
    async fn connect(&self, client: &str) -> Result<Vec<String>, StoreError> {
        let reply = CONNECT
            .run(
                &self.client,
                vec![self.presence(client), self.inbox(client)],
                vec![self.node.clone(), ms(self.presence_ttl)],
            )
            .await?;
        Ok(texts(reply))
    }

    async fn route(&self, client: &str, frame: &str) -> Result<Lookup, StoreError> {
        let reply = ROUTE
            .run(
                &self.client,
                vec![self.presence(client), self.inbox(client)],
                vec![
                    self.node.clone(),
                    frame.to_owned(),
                    self.limits.max.to_string(),
                    ms(self.limits.ttl),
                ],
            )
            .await?;
        Ok(text(reply).map_or(Lookup::Buffered, Lookup::Node))
    }

    async fn buffer(&self, client: &str, frame: &str) -> Result<(), StoreError> {
        BUFFER
            .run(
                &self.client,
                vec![self.inbox(client)],
                vec![
                    frame.to_owned(),
                    self.limits.max.to_string(),
                    ms(self.limits.ttl),
                ],
            )
            .await?;
        Ok(())
    }

    async fn refresh(&self, client: &str) -> Result<Option<Vec<String>>, StoreError> {
        let reply = REFRESH
            .run(
                &self.client,
                vec![self.presence(client), self.inbox(client)],
                vec![self.node.clone(), ms(self.presence_ttl)],
            )
            .await?;
        Ok(match reply {
            Value::Integer(0) => None,
            frames => Some(texts(frames)),
        })
    }

    async fn leave(&self, client: &str) -> Result<(), StoreError> {
        LEAVE
            .run(
                &self.client,
                vec![self.presence(client)],
                vec![self.node.clone()],
            )
            .await?;
        Ok(())
    }
}

impl Registry for RedisStore {
    async fn register(&self, now_ms: u64) -> Result<(), StoreError> {
        self.command(
            "ZADD",
            vec![
                self.nodes().into(),
                now_ms.to_string().into(),
                self.node.clone().into(),
            ],
        )
        .await?;
        self.command("DEL", vec![self.dead(&self.node).into()])
            .await?;
        Ok(())
    }

    async fn registered(&self) -> Result<Vec<String>, StoreError> {
        let reply = self
            .command("ZRANGE", vec![self.nodes().into(), "0".into(), "-1".into()])
            .await?;
        Ok(texts(reply))
    }

    async fn is_live(&self, node: &str) -> Result<bool, StoreError> {
        let reply = self
            .command("EXISTS", vec![self.heartbeats.live(node).into()])
            .await?;
        Ok(matches!(reply, Value::Integer(n) if n > 0))
    }

    async fn claim_forward(&self, node: &str, ttl: Duration) -> Result<bool, StoreError> {
        let reply = self
            .command(
                "SET",
                vec![
                    self.claim(node).into(),
                    self.node.clone().into(),
                    "NX".into(),
                    "PX".into(),
                    ms(ttl).into(),
                ],
            )
            .await?;
        Ok(!matches!(reply, Value::Null))
    }

    async fn renew_forward(&self, node: &str, ttl: Duration) -> Result<bool, StoreError> {
        let reply = RENEW
            .run(
                &self.client,
                vec![self.claim(node)],
                vec![self.node.clone(), ms(ttl)],
            )
            .await?;
        Ok(matches!(reply, Value::Integer(1)))
    }

    async fn release_forward(&self, node: &str) -> Result<(), StoreError> {
        LEAVE
            .run(
                &self.client,
                vec![self.claim(node)],
                vec![self.node.clone()],
            )
            .await?;
        Ok(())
    }

    async fn dead_since(&self, node: &str, now_ms: u64) -> Result<u64, StoreError> {
        let reply = DEAD_SINCE
            .run(
                &self.client,
                vec![self.dead(node)],
                vec![now_ms.to_string()],
            )
            .await?;
        Ok(text(reply).and_then(|t| t.parse().ok()).unwrap_or(now_ms))
    }

    async fn retire(&self, node: &str) -> Result<(), StoreError> {
        self.command("ZREM", vec![self.nodes().into(), node.into()])
            .await?;
        self.command("DEL", vec![self.dead(node).into()]).await?;
        Ok(())
    }
}
