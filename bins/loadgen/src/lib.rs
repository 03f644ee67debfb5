//! The load generator of the socket fleet (binary `loadgen`).
//!
//! It opens WebSocket clients to the Ready socket pods, found through the
//! Kubernetes API and spread like a Service spreads new connections, or to
//! fixed `--target`s; follows a phased load profile (connections and message
//! rates over time); and counts exactly what happened to every message: sent,
//! acked (by status), received, duplicated, lost, plus reconnects by reason
//! and end-to-end latency.
//!
//! What it promises:
//! - only loopback targets (127.0.0.0/8, ::1): anything else is refused
//!   before any connection ([`target::parse_target`],
//!   [`discovery::ready_addresses`]);
//! - every message carries the generator's own id and goes to one of the
//!   generator's own clients, so each arrival, duplicate and loss is known;
//! - messages not acked when a connection drops are sent again after the
//!   reconnect (at least once), to a Ready pod, with the same client id;
//! - latency is the recipient's read time minus the sender's write time on
//!   one monotonic clock of one process.
//!
//! The pure parts ([`profile`], [`schedule`], [`ledger`], [`target`],
//! [`traffic`], [`frames`]) take time and randomness from their callers; the
//! I/O ([`discovery`]'s listing, the clients, the driver in [`run()`]) sits at
//! the edges.

pub mod discovery;
pub mod duration;
pub mod frames;
pub mod ledger;
pub mod profile;
pub mod progress;
pub mod schedule;
pub mod summary;
pub mod target;
pub mod traffic;

mod client;
mod run;

pub use discovery::Discovery;
pub use profile::{Phase, PhaseKind, Profile, Rate};
pub use run::{RunConfig, RunError, run, run_until};
pub use summary::Summary;
