//! The reader's view of the fleet: pure bookkeeping, fed with what one poll
//! read from the store, with time passed in.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rtc_decision::{NodeSample, Observation};
use tokio::time::Instant;

use crate::record::{
    DecodeError, DecodeLimits, Heartbeat, LimitSource, Resource, decode, validate_node_id,
};

/// A heartbeat and when this reader first saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The record.
    pub heartbeat: Heartbeat,
    /// When this reader first read it, by the reader's monotonic clock.
    pub at: Instant,
}

/// One node as the reader knows it. Immutable; replaced on each change so
/// snapshots share it cheaply.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    /// The latest valid heartbeat.
    pub latest: Received,
    /// Recent valid heartbeats of the current boot, oldest first, the latest
    /// included; at most the configured history length.
    pub history: VecDeque<Received>,
}

impl NodeEntry {
    /// Age of the latest heartbeat at `now`, from the reader's own receive
    /// time: it keeps growing while nothing new arrives, connected or not.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.latest.at)
    }

    /// The latest heartbeat as decision input, aged at `now`.
    pub fn sample(&self, now: Instant) -> NodeSample {
        let age_ms = u64::try_from(self.age(now).as_millis()).unwrap_or(u64::MAX);
        self.latest.heartbeat.to_sample(age_ms)
    }
}

/// Why a node left the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepartReason {
    /// Its liveness entry expired: no heartbeat for STALE_AFTER.
    Expired,
    /// It was removed from the index: deregistered at the end of a drain,
    /// or lost with the store's data and not back within STALE_AFTER.
    Removed,
}

impl DepartReason {
    /// A short, fixed label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Removed => "removed",
        }
    }
}

/// A change in fleet membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetEvent {
    /// A node not in the view sent a valid heartbeat.
    Joined {
        /// The node.
        node: String,
        /// Its boot id.
        boot: String,
    },
    /// A known node came back with another boot id.
    Restarted {
        /// The node.
        node: String,
        /// The new boot id.
        boot: String,
    },
    /// A node left the view.
    Departed {
        /// The node.
        node: String,
        /// Why.
        reason: DepartReason,
    },
}

impl FleetEvent {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Joined { .. } => "joined",
            Self::Restarted { .. } => "restarted",
            Self::Departed { .. } => "departed",
        }
    }
}

/// A payload that was read but not accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The index entry it was found under, cut to 64 characters.
    pub node: String,
    /// Why it was rejected.
    pub error: DecodeError,
}

/// What one [`FleetView::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyReport {
    /// Membership changes, in node order.
    pub events: Vec<FleetEvent>,
    /// Payloads rejected for the first time (a bad payload that stays in
    /// the store is reported once, not once per poll).
    pub rejected: Vec<Rejection>,
    /// The store's epoch changed: its data was lost since the last poll.
    pub epoch_changed: bool,
    /// New heartbeats taken into the view (a sequence number not seen before).
    pub accepted: u64,
    /// Resources a node reports as fractions of the host, each reported
    /// the first time it is seen for that node and boot (again after the
    /// node has left the view and come back), not with every heartbeat.
    pub host_fractions: Vec<HostFractionSeen>,
}

/// A node seen, for the first time in its boot, with a fraction of the
/// host's capacity instead of its container's limit: the container has no
/// limit for that resource (or it could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFractionSeen {
    /// The node.
    pub node: String,
    /// Its boot id.
    pub boot: String,
    /// The resource without a limit.
    pub resource: Resource,
}

/// Fresh nodes whose latest heartbeat has a fraction of the host for a
/// resource, per resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostFractions {
    /// Nodes whose CPU fraction is of the host.
    pub cpu: usize,
    /// Nodes whose memory fraction is of the host.
    pub memory: usize,
}

impl HostFractions {
    /// The count for `resource`.
    pub fn get(&self, resource: Resource) -> usize {
        match resource {
            Resource::Cpu => self.cpu,
            Resource::Memory => self.memory,
        }
    }
}

/// Counts, among `nodes` whose latest heartbeat is no older than
/// `stale_after` at `now` (the decision core's notion of fresh), those
/// reporting each resource as a fraction of the host.
pub fn host_fractions<'a>(
    nodes: impl IntoIterator<Item = &'a NodeEntry>,
    now: Instant,
    stale_after: Duration,
) -> HostFractions {
    let mut counts = HostFractions::default();
    for node in nodes {
        if node.age(now) > stale_after {
            continue;
        }
        let heartbeat = &node.latest.heartbeat;
        counts.cpu += usize::from(heartbeat.cpu_of == LimitSource::Host);
        counts.memory += usize::from(heartbeat.mem_of == LimitSource::Host);
    }
    counts
}

/// What the store held at one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreRead {
    /// The store's epoch.
    pub epoch: String,
    /// Every index entry with its latest payload, `None` when the liveness
    /// entry has expired.
    pub entries: Vec<(String, Option<Vec<u8>>)>,
}

/// The latest valid heartbeat of every node, kept across polls.
#[derive(Debug, Clone)]
pub struct FleetView {
    nodes: BTreeMap<String, Arc<NodeEntry>>,
    /// node -> hash of the last rejected payload, to report it once.
    rejected_payloads: BTreeMap<String, u64>,
    /// node -> the payload last taken into the view: an unchanged payload
    /// (most of them, between two publishes) is not decoded again.
    accepted_payloads: BTreeMap<String, Vec<u8>>,
    rejected_total: BTreeMap<&'static str, u64>,
    /// node -> its boot and the resources already reported in
    /// [`ApplyReport::host_fractions`] for that boot.
    host_reported: BTreeMap<String, (String, BTreeSet<Resource>)>,
    epoch: Option<String>,
    grace_until: Option<Instant>,
    history_len: usize,
    grace: Duration,
}

impl FleetView {
    /// An empty view keeping `history_len` heartbeats per node, and keeping
    /// nodes for `grace` after the store lost its data (STALE_AFTER), so
    /// they can publish again before being declared gone.
    pub fn new(history_len: usize, grace: Duration) -> Self {
        Self {
            nodes: BTreeMap::new(),
            rejected_payloads: BTreeMap::new(),
            accepted_payloads: BTreeMap::new(),
            rejected_total: BTreeMap::new(),
            host_reported: BTreeMap::new(),
            epoch: None,
            grace_until: None,
            history_len: history_len.max(1),
            grace,
        }
    }

    /// Nodes in the view.
    pub fn nodes(&self) -> &BTreeMap<String, Arc<NodeEntry>> {
        &self.nodes
    }

    /// Rejected payloads so far, by [`DecodeError::label`].
    pub fn rejected_total(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected_total
    }

    /// Reports the resources `node`'s latest heartbeat has host fractions
    /// for, unless already reported for its boot.
    fn note_host_fractions(&mut self, node: &str, report: &mut ApplyReport) {
        let Some(entry) = self.nodes.get(node) else {
            return;
        };
        let heartbeat = &entry.latest.heartbeat;
        if self
            .host_reported
            .get(node)
            .is_none_or(|(boot, _)| *boot != heartbeat.boot)
        {
            let fresh = (heartbeat.boot.clone(), BTreeSet::new());
            self.host_reported.insert(node.to_owned(), fresh);
        }
        let Some((_, reported)) = self.host_reported.get_mut(node) else {
            return;
        };
        for resource in Resource::ALL {
            if heartbeat.source_of(resource) == LimitSource::Host && reported.insert(resource) {
                report.host_fractions.push(HostFractionSeen {
                    node: node.to_owned(),
                    boot: heartbeat.boot.clone(),
                    resource,
                });
            }
        }
    }

    fn forget(&mut self, node: &str) {
        self.rejected_payloads.remove(node);
        self.accepted_payloads.remove(node);
        self.host_reported.remove(node);
    }

    fn reject(&mut self, report: &mut ApplyReport, node: &str, payload: &[u8], error: DecodeError) {
        let mut hasher = DefaultHasher::new();
        payload.hash(&mut hasher);
        let hash = hasher.finish();
        if self.rejected_payloads.get(node) == Some(&hash) {
            return;
        }
        self.rejected_payloads.insert(node.to_owned(), hash);
        *self.rejected_total.entry(error.label()).or_insert(0) += 1;
        report.rejected.push(Rejection {
            node: node.chars().take(64).collect(),
            error,
        });
    }

    /// Folds one poll's read into the view. `now` is the reader's monotonic
    /// clock (receive times and ages), `now_ms` its wall clock (the
    /// decoder's skew check).
    pub fn apply(
        &mut self,
        read: StoreRead,
        now: Instant,
        now_ms: u64,
        limits: &DecodeLimits,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        if self.epoch.as_deref().is_some_and(|e| e != read.epoch) {
            report.epoch_changed = true;
            self.grace_until = Some(now + self.grace);
        }
        self.epoch = Some(read.epoch);
        let in_grace = self.grace_until.is_some_and(|until| now < until);

        let mut listed = BTreeSet::new();
        for (node, payload) in read.entries {
            if let Err(error) = validate_node_id(&node) {
                self.reject(&mut report, &node, node.as_bytes(), error);
                continue;
            }
            listed.insert(node.clone());
            let Some(payload) = payload else {
                if self.nodes.remove(&node).is_some() {
                    report.events.push(FleetEvent::Departed {
                        node: node.clone(),
                        reason: DepartReason::Expired,
                    });
                }
                self.forget(&node);
                continue;
            };
            if self.nodes.contains_key(&node) && self.accepted_payloads.get(&node) == Some(&payload)
            {
                continue;
            }
            match self.accept(&node, &payload, now, now_ms, limits) {
                Ok(Accepted::New(event)) => {
                    report.accepted += 1;
                    report.events.extend(event);
                    self.note_host_fractions(&node, &mut report);
                    self.accepted_payloads.insert(node, payload);
                }
                Ok(Accepted::Seen) => {
                    self.accepted_payloads.insert(node, payload);
                }
                Err(error) => self.reject(&mut report, &node, &payload, error),
            }
        }

        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|node| !listed.contains(*node))
            .cloned()
            .collect();
        if !in_grace {
            for node in gone {
                self.nodes.remove(&node);
                self.forget(&node);
                report.events.push(FleetEvent::Departed {
                    node,
                    reason: DepartReason::Removed,
                });
            }
        }
        report
    }

    fn accept(
        &mut self,
        node: &str,
        payload: &[u8],
        now: Instant,
        now_ms: u64,
        limits: &DecodeLimits,
    ) -> Result<Accepted, DecodeError> {
        let heartbeat = decode(payload, now_ms, limits)?;
        if heartbeat.node != node {
            return Err(DecodeError::NodeMismatch {
                expected: node.chars().take(64).collect(),
                found: heartbeat.node.chars().take(64).collect(),
            });
        }
        self.rejected_payloads.remove(node);
        let received = Received { heartbeat, at: now };
        let (entry, event) = match self.nodes.get(node) {
            None => {
                let event = FleetEvent::Joined {
                    node: node.to_owned(),
                    boot: received.heartbeat.boot.clone(),
                };
                (fresh(received), Some(event))
            }
            Some(known) if known.latest.heartbeat.boot != received.heartbeat.boot => {
                let event = FleetEvent::Restarted {
                    node: node.to_owned(),
                    boot: received.heartbeat.boot.clone(),
                };
                (fresh(received), Some(event))
            }
            Some(known) => {
                let last = known.latest.heartbeat.seq;
                let found = received.heartbeat.seq;
                if found == last {
                    // Already seen: its receive time, and so its age, stays.
                    return Ok(Accepted::Seen);
                }
                if found < last {
                    return Err(DecodeError::SequenceRegressed { last, found });
                }
                let mut history = known.history.clone();
                history.push_back(received.clone());
                while history.len() > self.history_len {
                    history.pop_front();
                }
                (
                    NodeEntry {
                        latest: received,
                        history,
                    },
                    None,
                )
            }
        };
        self.nodes.insert(node.to_owned(), Arc::new(entry));
        Ok(Accepted::New(event))
    }

    /// The view as it is now.
    pub fn snapshot(&self) -> FleetSnapshot {
        FleetSnapshot {
            nodes: self.nodes.values().cloned().collect(),
            rejected_total: self.rejected_total.clone(),
        }
    }
}

/// What folding one payload did.
enum Accepted {
    /// The same heartbeat as last time: nothing changed.
    Seen,
    /// A new heartbeat, with the fleet event it caused, if any.
    New(Option<FleetEvent>),
}

fn fresh(received: Received) -> NodeEntry {
    NodeEntry {
        history: VecDeque::from([received.clone()]),
        latest: received,
    }
}

/// Every known node's latest valid heartbeat, shared cheaply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    /// Nodes, ordered by id.
    pub nodes: Vec<Arc<NodeEntry>>,
    /// Rejected payloads so far, by [`DecodeError::label`].
    pub rejected_total: BTreeMap<&'static str, u64>,
}

impl FleetSnapshot {
    /// Decision input for every node, aged at `now` by the reader's clock.
    /// Ages keep growing while the reader cannot reach the store, so the
    /// decision core sees old data as stale, never as fresh.
    pub fn samples(&self, now: Instant) -> Vec<NodeSample> {
        self.nodes.iter().map(|n| n.sample(now)).collect()
    }

    /// The node `id`, if known.
    pub fn node(&self, id: &str) -> Option<&NodeEntry> {
        self.nodes
            .binary_search_by(|n| n.latest.heartbeat.node.as_str().cmp(id))
            .ok()
            .and_then(|i| self.nodes.get(i))
            .map(Arc::as_ref)
    }

    /// Total rejected payloads.
    pub fn rejected(&self) -> u64 {
        self.rejected_total.values().sum()
    }

    /// Fresh nodes (no older than `stale_after` at `now`) with host
    /// fractions, per resource; see [`host_fractions`].
    pub fn host_fractions(&self, now: Instant, stale_after: Duration) -> HostFractions {
        host_fractions(self.nodes.iter().map(Arc::as_ref), now, stale_after)
    }
}

/// One tick's decision input from samples produced by
/// [`FleetSnapshot::samples`].
pub fn observation(samples: &[NodeSample], now_ms: u64, replicas: u32) -> Observation<'_> {
    Observation {
        now_ms,
        replicas,
        nodes: samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Load, encode};

    const NOW_MS: u64 = 1_700_000_000_000;

    fn payload(node: &str, boot: &str, seq: u64) -> Option<Vec<u8>> {
        Some(encode(&Heartbeat::new(
            node,
            boot,
            seq,
            NOW_MS,
            &Load::IDLE,
        )))
    }

    fn read(epoch: &str, entries: &[(&str, Option<Vec<u8>>)]) -> StoreRead {
        StoreRead {
            epoch: epoch.to_owned(),
            entries: entries
                .iter()
                .map(|(n, p)| ((*n).to_owned(), p.clone()))
                .collect(),
        }
    }

    fn apply(view: &mut FleetView, read: StoreRead) -> ApplyReport {
        view.apply(read, Instant::now(), NOW_MS, &DecodeLimits::default())
    }

    fn joined(node: &str, boot: &str) -> FleetEvent {
        FleetEvent::Joined {
            node: node.into(),
            boot: boot.into(),
        }
    }

    fn departed(node: &str, reason: DepartReason) -> FleetEvent {
        FleetEvent::Departed {
            node: node.into(),
            reason,
        }
    }

    fn payload_of(
        node: &str,
        boot: &str,
        seq: u64,
        cpu_of: LimitSource,
        mem_of: LimitSource,
    ) -> Option<Vec<u8>> {
        let load = Load {
            cpu_of,
            mem_of,
            ..Load::IDLE
        };
        Some(encode(&Heartbeat::new(node, boot, seq, NOW_MS, &load)))
    }

    fn seen(node: &str, boot: &str, resource: Resource) -> HostFractionSeen {
        HostFractionSeen {
            node: node.into(),
            boot: boot.into(),
            resource,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn host_fractions_are_reported_once_per_node_boot_and_resource() {
        use LimitSource::{Cgroup, Host};
        let mut view = FleetView::new(3, Duration::from_secs(15));
        let r = apply(
            &mut view,
            read(
                "e1",
                &[
                    ("a", payload_of("a", "b1", 1, Cgroup, Host)),
                    ("b", payload_of("b", "b1", 1, Cgroup, Cgroup)),
                ],
            ),
        );
        assert_eq!(r.host_fractions, vec![seen("a", "b1", Resource::Memory)]);
        // The next heartbeats of the same boot: nothing new to say.
        let r = apply(
            &mut view,
            read(
                "e1",
                &[
                    ("a", payload_of("a", "b1", 2, Cgroup, Host)),
                    ("b", payload_of("b", "b1", 2, Cgroup, Cgroup)),
                ],
            ),
        );
        assert_eq!(r.accepted, 2);
        assert_eq!(r.host_fractions, vec![]);
        // The CPU limit gone within the boot: CPU is new.
        let r = apply(
            &mut view,
            read("e1", &[("a", payload_of("a", "b1", 3, Host, Host))]),
        );
        assert_eq!(r.host_fractions, vec![seen("a", "b1", Resource::Cpu)]);
        // A restart: both again, for the new boot.
        let r = apply(
            &mut view,
            read("e1", &[("a", payload_of("a", "b2", 1, Host, Host))]),
        );
        assert_eq!(
            r.host_fractions,
            vec![
                seen("a", "b2", Resource::Cpu),
                seen("a", "b2", Resource::Memory)
            ]
        );
        // Gone, then back with the same boot: first seen again.
        let _ = apply(&mut view, read("e1", &[("a", None)]));
        let r = apply(
            &mut view,
            read("e1", &[("a", payload_of("a", "b2", 5, Host, Host))]),
        );
        assert_eq!(r.host_fractions.len(), 2, "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_nodes_with_host_fractions_are_counted_per_resource() {
        use LimitSource::{Cgroup, Host};
        let stale_after = Duration::from_secs(15);
        let mut view = FleetView::new(3, stale_after);
        let _ = apply(
            &mut view,
            read(
                "e1",
                &[
                    ("a", payload_of("a", "b1", 1, Cgroup, Host)),
                    ("b", payload_of("b", "b1", 1, Host, Cgroup)),
                    ("c", payload_of("c", "b1", 1, Host, Host)),
                    ("d", payload_of("d", "b1", 1, Cgroup, Cgroup)),
                ],
            ),
        );
        let counts = view.snapshot().host_fractions(Instant::now(), stale_after);
        assert_eq!(counts, HostFractions { cpu: 2, memory: 2 });
        assert_eq!(
            (counts.get(Resource::Cpu), counts.get(Resource::Memory)),
            (2, 2)
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        // Only "c" heard from again; the others age past STALE_AFTER.
        let _ = apply(
            &mut view,
            read(
                "e1",
                &[
                    ("a", payload_of("a", "b1", 1, Cgroup, Host)),
                    ("b", payload_of("b", "b1", 1, Host, Cgroup)),
                    ("c", payload_of("c", "b1", 2, Host, Host)),
                    ("d", payload_of("d", "b1", 1, Cgroup, Cgroup)),
                ],
            ),
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        let now = Instant::now();
        assert_eq!(
            view.snapshot().host_fractions(now, stale_after),
            HostFractions { cpu: 1, memory: 1 }
        );
        assert_eq!(
            host_fractions(
                view.nodes().values().map(Arc::as_ref),
                now,
                Duration::from_secs(60)
            ),
            HostFractions { cpu: 2, memory: 2 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_payload_is_not_decoded_again() {
        let mut view = FleetView::new(3, Duration::from_secs(15));
        let r = apply(&mut view, read("e1", &[("a", payload("a", "b1", 1))]));
        assert_eq!(r.accepted, 1);
        // Limits under which this very payload would now be refused: it is
        // not looked at again, because its bytes did not change.
        let strict = DecodeLimits {
            max_bytes: 8,
            ..DecodeLimits::default()
        };
        let same = read("e1", &[("a", payload("a", "b1", 1))]);
        let r = view.apply(same, Instant::now(), NOW_MS, &strict);
        assert!(r.rejected.is_empty() && r.events.is_empty(), "{r:?}");
        // A new payload is decoded, and so refused under those limits.
        let next = read("e1", &[("a", payload("a", "b1", 2))]);
        let r = view.apply(next, Instant::now(), NOW_MS, &strict);
        assert_eq!(r.rejected.len(), 1, "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn joins_ages_and_departures() {
        let mut view = FleetView::new(3, Duration::from_secs(15));
        let r = apply(
            &mut view,
            read(
                "e1",
                &[("a", payload("a", "b1", 1)), ("b", payload("b", "b1", 1))],
            ),
        );
        assert_eq!(r.events, [joined("a", "b1"), joined("b", "b1")]);
        assert_eq!(r.accepted, 2);

        tokio::time::advance(Duration::from_secs(2)).await;
        // `a` unchanged: its age grows; `b` sent a new one: its age resets.
        let r = apply(
            &mut view,
            read(
                "e1",
                &[("a", payload("a", "b1", 1)), ("b", payload("b", "b1", 2))],
            ),
        );
        assert!(r.events.is_empty());
        assert_eq!(r.accepted, 1, "only b's heartbeat is new");
        let ages: Vec<u64> = view
            .snapshot()
            .samples(Instant::now())
            .iter()
            .map(|s| s.age_ms)
            .collect();
        assert_eq!(ages, [2_000, 0]);

        let r = apply(&mut view, read("e1", &[("a", None)]));
        assert_eq!(
            r.events,
            [
                departed("a", DepartReason::Expired),
                departed("b", DepartReason::Removed)
            ]
        );
        assert!(view.nodes().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn history_is_bounded_and_restarts_start_it_over() {
        let mut view = FleetView::new(3, Duration::from_secs(15));
        for seq in 1..=5 {
            apply(&mut view, read("e", &[("a", payload("a", "b1", seq))]));
        }
        let seqs = |view: &FleetView| -> Vec<u64> {
            view.nodes()["a"]
                .history
                .iter()
                .map(|r| r.heartbeat.seq)
                .collect()
        };
        assert_eq!(seqs(&view), [3, 4, 5]);
        let r = apply(&mut view, read("e", &[("a", payload("a", "b2", 1))]));
        assert_eq!(
            r.events,
            [FleetEvent::Restarted {
                node: "a".into(),
                boot: "b2".into()
            }]
        );
        assert_eq!(seqs(&view), [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_payloads_are_rejected_once_and_never_replace_good_data() {
        let mut view = FleetView::new(3, Duration::from_secs(15));
        apply(&mut view, read("e", &[("a", payload("a", "b1", 5))]));
        for _ in 0..3 {
            apply(&mut view, read("e", &[("a", Some(b"garbage".to_vec()))]));
        }
        let r = apply(&mut view, read("e", &[("a", payload("a", "b1", 4))]));
        assert_eq!(r.rejected[0].error.label(), "sequence_regressed");
        let r = apply(&mut view, read("e", &[("a", payload("x", "b1", 9))]));
        assert_eq!(r.rejected[0].error.label(), "node_mismatch");
        let r = apply(
            &mut view,
            read(
                "e",
                &[
                    ("bad key", payload("a", "b1", 9)),
                    ("a", payload("a", "b1", 5)),
                ],
            ),
        );
        assert_eq!(r.rejected[0].error.label(), "invalid_id");
        assert_eq!(view.nodes()["a"].latest.heartbeat.seq, 5);
        let snapshot = view.snapshot();
        assert_eq!(snapshot.rejected(), 4);
        assert_eq!(snapshot.rejected_total.get("malformed"), Some(&1));
        assert_eq!(snapshot.node("a").map(|n| n.latest.heartbeat.seq), Some(5));
        assert!(snapshot.node("b").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_store_keeps_nodes_aging_for_the_grace_period() {
        let mut view = FleetView::new(3, Duration::from_secs(15));
        apply(
            &mut view,
            read(
                "e1",
                &[("a", payload("a", "b1", 1)), ("b", payload("b", "b1", 1))],
            ),
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let r = apply(&mut view, read("e2", &[]));
        assert!(r.epoch_changed);
        assert!(r.events.is_empty());
        tokio::time::advance(Duration::from_secs(5)).await;
        let r = apply(&mut view, read("e2", &[("a", payload("a", "b1", 2))]));
        assert!(r.events.is_empty());
        let samples = view.snapshot().samples(Instant::now());
        assert_eq!(
            samples.iter().map(|s| s.age_ms).collect::<Vec<_>>(),
            [0, 6_000]
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let r = apply(&mut view, read("e2", &[("a", payload("a", "b1", 3))]));
        assert_eq!(r.events, [departed("b", DepartReason::Removed)]);
    }

    #[tokio::test(start_paused = true)]
    async fn snapshots_convert_into_an_observation() {
        let mut view = FleetView::new(3, Duration::from_secs(15));
        apply(&mut view, read("e", &[("a", payload("a", "b1", 1))]));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let samples = view.snapshot().samples(Instant::now());
        let obs = observation(&samples, 42, 1);
        assert_eq!((obs.now_ms, obs.replicas, obs.nodes.len()), (42, 1, 1));
        assert_eq!(obs.nodes[0].age_ms, 1_500);
    }
}
