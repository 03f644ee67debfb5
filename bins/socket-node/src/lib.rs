//! The socket node: a WebSocket relay whose load feeds the autoscaler.
//!
//! Clients connect at `/ws?client_id=…` on the public port and send
//! `{"to": "<client id>", "body": …}`. The node delivers to a recipient
//! connected to it directly; to a recipient on another node through that
//! node's delivery topic on the Kafka-protocol broker, found through the
//! recipient's presence entry in Redis; and keeps messages for an offline
//! recipient in a bounded buffer with a TTL, handed over when it connects.
//! Every message carries an id and its send time. The wire protocol is in
//! `docs/socket-protocol.md`.
//!
//! The node measures its own load (CPU and memory against its cgroup
//! limits, connections, delivered messages per second, p95 end-to-end
//! latency, delivery-topic lag), publishes it as heartbeats through
//! `rtc-heartbeat`, and exports it on `/metrics`. `/drain` on the admin port
//! (or SIGTERM) drains it through `rtc-drain`; see `docs/drain.md`.
//!
//! # What it promises
//!
//! - **At least once.** A message accepted with an ack is delivered, relayed
//!   to a delivery topic, or buffered; a frame queued for a connection that
//!   closes is handed on, never dropped. Clients drop duplicates by id.
//! - **A node that dies loses nothing already in its topic.** Positions are
//!   committed to the broker under the group `rtc-node-<node>`
//!   ([`offsets`]); another node forwards the topic of a node whose
//!   heartbeat is gone from its committed offset ([`forward`]).
//! - **No race between buffering and connecting.** Both are single Redis
//!   scripts: a message finds either the recipient's presence or its
//!   buffer, and a connecting client takes its buffer as it claims presence.
//! - **Bad input never takes the node down.** Malformed frames get an error
//!   frame; binary frames, oversize frames, floods, bad ids and a full node
//!   get a close code that says why.

pub mod admin;
pub mod bus;
pub mod config;
pub mod forward;
pub mod node;
pub mod offsets;
pub mod protocol;
pub mod relay;
pub mod resources;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod ws;

pub use config::{LogFormat, NodeArgs};
pub use node::{Node, NodeCore, Settings, start};
