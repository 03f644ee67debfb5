//! The replay format: one JSON object per line in, one per line out, state
//! carried from line to line. This module holds the record types and the
//! stepping; reading and writing JSON is left to the caller, so the crate
//! itself needs no JSON library.

use crate::decision::{Action, Decision, Reason, Rebalance, Urgency};
use crate::engine::{Engine, State};
use crate::observation::{NodeSample, Observation};
use serde::{Deserialize, Serialize};

/// One input line:
/// `{"now_ms":0,"replicas":5,"nodes":[{"id":"socket-0","cpu":0.75,...}]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayInput {
    /// The tick's clock, in ms.
    pub now_ms: u64,
    /// Current spec replicas.
    pub replicas: u32,
    /// Latest heartbeat of every known node.
    pub nodes: Vec<NodeSample>,
}

/// One output line:
/// `{"action":"scale_out","delta":3,"from":5,"to":8,"urgency":"critical","reason":"resource-overload","victim":null}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayOutput {
    /// `scale_out`, `scale_in`, `hold` or `rebalance`.
    pub action: Action,
    /// `to - from`; 0 on hold.
    pub delta: i64,
    /// Replicas before.
    pub from: u32,
    /// Replicas wanted.
    pub to: u32,
    /// Urgency computed this tick, also on holds.
    pub urgency: Urgency,
    /// The reason code.
    pub reason: Reason,
    /// The node id to remove on scale-in, else null.
    pub victim: Option<String>,
    /// On rebalance, who sheds how many connections; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<Rebalance>,
}

impl From<&Decision> for ReplayOutput {
    fn from(d: &Decision) -> Self {
        Self {
            action: d.action,
            delta: d.delta(),
            from: d.from,
            to: d.to,
            urgency: d.urgency,
            reason: d.reason,
            victim: d.victim.clone(),
            rebalance: d.rebalance.clone(),
        }
    }
}

/// Steps an engine over replay inputs, carrying the state.
#[derive(Debug, Clone)]
pub struct Replayer {
    engine: Engine,
    state: State,
}

impl Replayer {
    /// Starts from an empty state.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            state: State::default(),
        }
    }

    /// Decides one line and carries the state on.
    pub fn step(&mut self, input: &ReplayInput) -> Decision {
        let obs = Observation {
            now_ms: input.now_ms,
            replicas: input.replicas,
            nodes: &input.nodes,
        };
        let (decision, next) = self.engine.decide(&self.state, &obs);
        self.state = next;
        decision
    }

    /// The state after the last step.
    pub fn state(&self) -> &State {
        &self.state
    }
}
