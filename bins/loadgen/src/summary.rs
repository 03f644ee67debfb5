//! The summary of a run, written as JSON at the end.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::frames::Reason;
use crate::ledger::{AckStatus, Latency, MessageCounts, Missing};
use crate::profile::Profile;

/// Connections over the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Connections {
    /// Connections that got their welcome, reconnections included.
    pub opened: u64,
    /// Most connections open at once.
    pub peak_open: u64,
    /// Welcomed connections by target address.
    pub opened_by_target: BTreeMap<String, u64>,
    /// Connections open at the end of the grace period, by target address.
    pub open_at_end_by_target: BTreeMap<String, u64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The run's id: the prefix of its client and message ids.
    pub run: String,
    /// The profile that ran.
    pub profile: Profile,
    /// How long the profile ran, in milliseconds.
    pub run_ms: u64,
    /// How long the generator then waited for outstanding messages.
    pub grace_used_ms: u64,
    /// Connections.
    pub connections: Connections,
    /// Messages.
    pub messages: MessageCounts,
    /// Ends of connections that were followed by a reconnect (or, for
    /// `replaced`, by giving up), by reason.
    pub reconnects: BTreeMap<Reason, u64>,
    /// `error` frames from the nodes, by code.
    pub refusals: BTreeMap<String, u64>,
    /// End-to-end latency.
    pub latency: Latency,
    /// End-to-end latency by the status of each message's first ack: the
    /// local path (`delivered`) apart from the broker's (`relayed`).
    pub latency_by_ack: BTreeMap<AckStatus, Latency>,
    /// End-to-end latency from the time the schedule made each message due
    /// to its first arrival: what [`Summary::latency`] leaves out, the time
    /// a message waited in its sender for the connection to take it (a node
    /// too slow to read, a client moving to another node), counts here.
    pub latency_from_schedule: Latency,
    /// The targets Ready when the run started.
    pub first_targets: Vec<String>,
    /// [`Summary::latency_from_schedule`] of the messages sent by clients
    /// first welcomed on one of [`Summary::first_targets`]: the clients of
    /// the pods that were there before any scale-out.
    pub latency_from_schedule_first_targets: Latency,
    /// Every message never received by its recipient, by id.
    pub never_received: Vec<Missing>,
}

impl Summary {
    /// Whether every message sent reached its recipient.
    #[must_use]
    pub fn all_received(&self) -> bool {
        self.messages.received == self.messages.sent
    }
}
