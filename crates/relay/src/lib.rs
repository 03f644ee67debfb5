//! The socket node's relay: where a message for a client goes, and the
//! state and transport it needs to get there.
//!
//! A client sends `{"to": "<client id>", "body": …}` to the node it is
//! connected to. The relay delivers to a recipient connected to this node
//! directly; to a recipient on another node through that node's delivery
//! topic on the bus, found through the recipient's presence in the store;
//! and keeps messages for an offline recipient in a bounded buffer with a
//! TTL, handed over when it connects. The wire protocol is in
//! `docs/socket-protocol.md`.
//!
//! # Layout
//!
//! - [`core`]: the sans-I/O core. Deterministic, no sockets, no clock (time
//!   is passed in), nothing async: the routing state machine, the presence
//!   and inbox rules, the reader's cursor, the wire protocol.
//! - [`store`] and [`bus`]: the two I/O boundaries as narrow traits
//!   ([`PresenceStore`], [`Registry`]; [`Bus`], [`Topic`]).
//! - [`redis`] and [`kafka`]: their real implementations, on fred and
//!   `rtc-kafka-wire` (produce, fetch and positions; rskafka lists and
//!   creates topics); [`batch`]: the produce batching of the Kafka bus.
//! - [`Relay`]: the driver of the core over a store and a bus, the local
//!   connection table, and this node's topic consumer; [`forward`]: the
//!   forwarder of topics of nodes that are gone.
//! - `memory` (feature `test-util`): in-memory doubles of both boundaries.
//!
//! # What it promises
//!
//! - **At least once.** A message accepted with an ack is delivered, relayed
//!   to a delivery topic, or buffered; a frame queued for a connection that
//!   closes is handed on, never dropped. Clients drop duplicates by id.
//! - **A node that dies loses nothing already in its topic.** Positions are
//!   committed under the group `rtc-node-<node>`; another node forwards the
//!   topic of a node whose heartbeat is gone from its committed offset
//!   ([`forward`]).
//! - **No race between buffering and connecting.** Both are single atomic
//!   store operations: a message finds either the recipient's presence or
//!   its buffer, and a connecting client takes its buffer as it claims
//!   presence.
//! - **A remembered route costs a hop, never a message.** A client's frame
//!   for a recipient on another node goes to the node the store named for
//!   it up to ROUTE_CACHE_MS before ([`core::routes`]); a node that finds
//!   the recipient gone hands the record on through the store.
//! - **Never skips a topic record.** A record is handed on (retrying while
//!   the store is down) before the position passes it.

pub mod batch;
pub mod bus;
pub mod core;
pub mod forward;
pub mod kafka;
#[cfg(feature = "test-util")]
pub mod memory;
pub mod redis;
mod relay;
pub mod store;

pub use batch::{BatchBounds, Receipt};
pub use bus::{Batch, Bus, BusError, Delivery, Topic};
pub use core::presence::BufferLimits;
pub use core::protocol::{self, Status};
pub use core::routing::Lookup;
pub use forward::{ForwardConfig, ForwardError, Pass};
pub use kafka::{DEFAULT_FETCH_MAX_BYTES, KafkaBus, KafkaTopic};
pub use redis::RedisStore;
pub use relay::{
    DEFAULT_FETCH_WAIT, DEFAULT_ROUTE_CACHE, Inbox, Kick, KickReason, Outbound, Publishing, Relay,
    RelayError, Routed, TryRecvError,
};
// The wall clock the relay takes (`Relay::with_wall_clock`).
pub use rtc_time::{ManualClock, SystemClock, WallClock};
pub use store::{PresenceStore, Registry, StoreError};
