//! Presence, offline buffers and the registry of delivery topics in Redis.
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
//! ([`crate::offsets`]).
//!
//! Buffering and connecting are one script each, so a message is either
//! buffered before the recipient connects (and handed to it on connect) or
//! finds the recipient's presence (and is relayed to its node): never lost
//! in between.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};

/// KEYS: presence, inbox. ARGV: node, ttl ms. Claims the client and takes its
/// buffered frames.
const CONNECT: &str = "
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local frames = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return frames";

/// KEYS: presence, inbox. ARGV: this node, frame, max, ttl ms. Returns the
/// node serving the client when it is another node; else buffers the frame.
const ROUTE: &str = "
local node = redis.call('GET', KEYS[1])
if node and node ~= ARGV[1] then return node end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return false";

/// KEYS: inbox. ARGV: frame, max, ttl ms.
const BUFFER: &str = "
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1";

/// KEYS: presence. ARGV: node, ttl ms. Refreshes the claim unless another
/// node has taken the client over.
const REFRESH: &str = "
local node = redis.call('GET', KEYS[1])
if node and node ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1";

/// KEYS: presence. ARGV: node. Releases the claim if it is still ours.
const LEAVE: &str = "
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// KEYS: claim. ARGV: node, ttl ms. Extends the claim if it is still ours.
const RENEW: &str = "
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

/// KEYS: dead marker. ARGV: now ms. Sets it unless set; returns it.
const DEAD_SINCE: &str = "
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])";

/// A Redis command failed.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct StoreError(#[from] fred::error::Error);

/// Where a frame for a client not connected here should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The client is on this other node.
    Node(String),
    /// Nobody serves the client: the frame was buffered.
    Buffered,
}

/// Buffer limits.
#[derive(Debug, Clone, Copy)]
pub struct BufferLimits {
    /// Frames kept per client (the oldest are dropped).
    pub max: usize,
    /// How long a buffer outlives its last write.
    pub ttl: Duration,
}

/// The relay's Redis state.
#[derive(Debug, Clone)]
pub struct RelayStore {
    client: Client,
    prefix: String,
    node: String,
    presence_ttl: Duration,
    limits: BufferLimits,
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Value::String(s) => Some(s.to_string()),
        _ => None,
    }
}

impl RelayStore {
    /// State for `node` under `prefix`.
    pub fn new(
        client: Client,
        prefix: impl Into<String>,
        node: impl Into<String>,
        presence_ttl: Duration,
        limits: BufferLimits,
    ) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            node: node.into(),
            presence_ttl,
            limits,
        }
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

    async fn eval(
        &self,
        script: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        let mut all: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(script.into());
        all.push(Value::Integer(
            i64::try_from(keys.len()).unwrap_or(i64::MAX),
        ));
        all.extend(keys.into_iter().map(Value::from));
        all.extend(args.into_iter().map(Value::from));
        Ok(self
            .client
            .custom(
                CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false),
                all,
            )
            .await?)
    }

    /// Claims `client` for this node and takes the frames buffered for it.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn connect(&self, client: &str) -> Result<Vec<String>, StoreError> {
        let reply = self
            .eval(
                CONNECT,
                vec![self.presence(client), self.inbox(client)],
                vec![self.node.clone(), ms(self.presence_ttl)],
            )
            .await?;
        Ok(match reply {
            Value::Array(items) => items.into_iter().filter_map(text).collect(),
            _ => Vec::new(),
        })
    }

    /// Finds the node serving `client`, or buffers `frame` for it.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails (the frame is then not buffered).
    pub async fn route(&self, client: &str, frame: &str) -> Result<Route, StoreError> {
        let reply = self
            .eval(
                ROUTE,
                vec![self.presence(client), self.inbox(client)],
                vec![
                    self.node.clone(),
                    frame.to_owned(),
                    self.limits.max.to_string(),
                    ms(self.limits.ttl),
                ],
            )
            .await?;
        Ok(text(reply).map_or(Route::Buffered, Route::Node))
    }

    /// Buffers `frame` for `client` whatever its presence says (its node's
    /// topic could not be reached).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn buffer(&self, client: &str, frame: &str) -> Result<(), StoreError> {
        self.eval(
            BUFFER,
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

    /// Renews this node's claim on `client`; `false` when another node has
    /// taken it over.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn refresh(&self, client: &str) -> Result<bool, StoreError> {
        let reply = self
            .eval(
                REFRESH,
                vec![self.presence(client)],
                vec![self.node.clone(), ms(self.presence_ttl)],
            )
            .await?;
        Ok(matches!(reply, Value::Integer(1)))
    }

    /// Releases this node's claim on `client`, if it still holds it.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails (the claim then expires).
    pub async fn leave(&self, client: &str) -> Result<(), StoreError> {
        self.eval(LEAVE, vec![self.presence(client)], vec![self.node.clone()])
            .await?;
        Ok(())
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Adds this node to the registry of delivery topics, scored `now_ms`,
    /// and clears a dead mark left from an earlier life.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn register(&self, now_ms: u64) -> Result<(), StoreError> {
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

    /// Every registered node.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn registered(&self) -> Result<Vec<String>, StoreError> {
        let reply = self
            .command("ZRANGE", vec![self.nodes().into(), "0".into(), "-1".into()])
            .await?;
        Ok(match reply {
            Value::Array(items) => items.into_iter().filter_map(text).collect(),
            _ => Vec::new(),
        })
    }

    /// Whether `key` exists (a heartbeat's liveness entry).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let reply = self.command("EXISTS", vec![key.into()]).await?;
        Ok(matches!(reply, Value::Integer(n) if n > 0))
    }

    /// Claims the forwarding of `node`'s topic for `ttl`; `false` when
    /// another node holds the claim.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn claim_forward(&self, node: &str, ttl: Duration) -> Result<bool, StoreError> {
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

    /// Extends the claim on `node`'s topic; `false` when it is no longer
    /// ours.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn renew_forward(&self, node: &str, ttl: Duration) -> Result<bool, StoreError> {
        let reply = self
            .eval(
                RENEW,
                vec![self.claim(node)],
                vec![self.node.clone(), ms(ttl)],
            )
            .await?;
        Ok(matches!(reply, Value::Integer(1)))
    }

    /// Releases the claim on `node`'s topic if it is still ours.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails (the claim then expires).
    pub async fn release_forward(&self, node: &str) -> Result<(), StoreError> {
        self.eval(LEAVE, vec![self.claim(node)], vec![self.node.clone()])
            .await?;
        Ok(())
    }

    /// When `node` was first found dead (marking it `now_ms` if it was not).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn dead_since(&self, node: &str, now_ms: u64) -> Result<u64, StoreError> {
        let reply = self
            .eval(DEAD_SINCE, vec![self.dead(node)], vec![now_ms.to_string()])
            .await?;
        Ok(text(reply).and_then(|t| t.parse().ok()).unwrap_or(now_ms))
    }

    /// Removes `node` from the registry: its topic is read to the end and
    /// nothing routes to it any more.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis fails.
    pub async fn retire(&self, node: &str) -> Result<(), StoreError> {
        self.command("ZREM", vec![self.nodes().into(), node.into()])
            .await?;
        self.command("DEL", vec![self.dead(node).into()]).await?;
        Ok(())
    }

    /// Waits until Redis answers, or `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.client.ping::<Value>(None)).await,
            Ok(Ok(_))
        )
    }
}
