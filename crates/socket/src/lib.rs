//! The socket node as a library: the public WebSocket port, the admin
//! routes, the drain wiring, the load sampler and the validated settings,
//! around the relay of `rtc-relay` on Redis and Kafka.
//!
//! Clients connect at `/ws?client_id=…` on the public port ([`ws`]) and
//! send `{"to": "<client id>", "body": …}`; the relay routes each message
//! (see `rtc-relay`). The node measures its own load through
//! `rtc-node-load` once a second, publishes it as heartbeats through
//! `rtc-heartbeat` and exports it on `/metrics`. `/drain` on the admin port
//! ([`admin`]) drains it through `rtc-drain`; see `docs/drain.md`.
//!
//! # What it promises
//!
//! - **The relay's promises** (at least once, nothing lost by a dead node
//!   already in its topic, no race between buffering and connecting).
//! - **Bad input never takes the node down.** Malformed frames get an error
//!   frame; binary frames, oversize frames, floods, bad ids and a full node
//!   get a close code that says why.
//! - **A drain loses nothing.** Clients are moved in batches; what is left
//!   in the delivery topic is handed on and the position committed before
//!   the node deregisters.
//! - **Settings are checked before anything connects** ([`config`]), with a
//!   message naming the key, the value and what is allowed.

pub mod admin;
pub mod config;
pub mod node;
pub mod ws;

pub use config::{ConfigError, RawSettings, Settings};
pub use node::{Node, NodeCore, StartError, start};

/// The relay as the node runs it: presence in Redis, delivery topics on a
/// Kafka-protocol broker.
pub type NodeRelay = rtc_relay::Relay<rtc_relay::RedisStore, rtc_relay::KafkaBus>;
