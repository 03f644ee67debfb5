//! The run record: what the demo saw, as JSON lines, and the summary
//! computed from it. Pure: no I/O, no clock; times are milliseconds since
//! the Unix epoch (`at_ms`) as the observers read them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One line of the run record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// The fleet and the load, once a second.
    Sample(Sample),
    /// A decision of the leading load-balancer.
    Decision(DecisionEntry),
    /// A socket pod appeared, became Ready, began to be deleted, or was
    /// gone.
    Pod(PodEvent),
    /// A `/scale` write the API server accepted (from its audit log).
    Write(ScaleWrite),
    /// How a removed socket pod ended, from its log.
    Drain(DrainCheck),
    /// The demo deleted the leading load-balancer pod (`--kill-leader-at`).
    LeaderDeleted(LeaderDeleted),
}

/// The leading load-balancer pod was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderDeleted {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The pod.
    pub pod: String,
}

/// How a removed socket pod ended: its log (kept by the node agent) says
/// whether its drain started and finished before the kubelet's SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainCheck {
    /// When the pod was gone, ms since the Unix epoch.
    pub at_ms: u64,
    /// The pod.
    pub pod: String,
    /// The drain started and finished, in that order, before any SIGTERM.
    pub drained_first: bool,
    /// The drain's own summary line, or why there is none.
    pub detail: String,
}

/// Whether the log `text` of a socket container shows a drain that
/// started, then finished, before any signal; and the summary it logged.
pub fn drain_in_log(text: &str) -> (bool, String) {
    let started = text.find("drain started");
    let finished = text.find("drain finished");
    let signal = text.find("signal received");
    let ok = match (started, finished) {
        (Some(s), Some(f)) => s < f && signal.is_none_or(|g| f < g),
        _ => false,
    };
    let detail = text
        .lines()
        .find(|l| l.contains("drain finished"))
        .map_or_else(
            || "no \"drain finished\" in its log".to_owned(),
            |l| l.trim().to_owned(),
        );
    (ok, detail)
}

/// The fleet and the load at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The workload's `spec.replicas`.
    pub wanted: Option<i32>,
    /// Its Ready replicas.
    pub ready: Option<i32>,
    /// The load-balancer pod holding the Lease.
    pub leader: Option<String>,
    /// The load generator's figures.
    pub load: Load,
    /// The latest heartbeat of each socket pod.
    pub nodes: Vec<NodeFigures>,
}

/// The load generator's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// The profile's phase.
    pub phase: Option<String>,
    /// Connections the profile wants.
    pub wanted: u32,
    /// Connections open.
    pub open: u64,
    /// Messages sent so far.
    pub sent: u64,
    /// Messages received so far.
    pub received: u64,
}

/// One socket pod's latest heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFigures {
    /// The pod.
    pub pod: String,
    /// When the node sent the heartbeat, ms since the Unix epoch.
    pub sent_ms: u64,
    /// Active connections.
    pub conn: u64,
    /// CPU as a fraction of its limit.
    pub cpu: f64,
    /// Memory as a fraction of its limit.
    pub mem: f64,
    /// Delivered messages per second.
    pub mps: f64,
    /// p95 delivery latency, ms.
    pub p95_ms: f64,
    /// The node is draining.
    pub draining: bool,
}

/// A decision of the leader.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecisionEntry {
    /// When it was made, ms since the Unix epoch.
    pub at_ms: u64,
    /// The load-balancer pod that made it.
    pub by: String,
    /// `scale_out`, `scale_in`, `hold` or `rebalance`.
    pub action: String,
    /// Replicas before.
    pub from: u32,
    /// Replicas asked for.
    pub to: u32,
    /// The rule that decided.
    pub reason: String,
    /// The urgency.
    pub urgency: String,
    /// What the scaler did (`scaled`, `unchanged`, `conflict`, `none`, an
    /// error label).
    pub outcome: String,
    /// The pod chosen to go, on scale-in.
    pub victim: Option<String>,
    /// The first explanation line.
    pub explanation: String,
    /// How a scale-out step was sized: the base step of its urgency, the
    /// scale-outs in a row before it, and the step.
    pub step: Option<Step>,
    /// On rebalance, the nodes asked to shed and how many connections each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sheds: Vec<(String, u64)>,
}

/// How a scale-out step was sized (the decision core's `StepDetail`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Base step of the urgency.
    pub base: u32,
    /// Scale-outs in a row before it.
    pub consecutive: u32,
    /// The step, before clamping to the maximum replicas.
    pub step: u32,
}

/// What happened to a socket pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodChange {
    /// It was created.
    Created,
    /// Its Ready condition became True.
    Ready,
    /// Its deletion began (its drain starts in its preStop hook).
    Deleting,
    /// It no longer exists.
    Gone,
}

/// A pod event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    /// When it was seen, ms since the Unix epoch.
    pub at_ms: u64,
    /// The pod.
    pub pod: String,
    /// What happened.
    pub change: PodChange,
}

/// A `/scale` write the API server accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleWrite {
    /// When the API server received it, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who wrote it.
    pub user: String,
    /// The answer's code.
    pub code: u16,
}

/// Thresholds a heartbeat is "overloaded" by: the policy's scale-out
/// indicators (CPU or memory above the pressure thresholds, or connections
/// or messages per second above the capacity utilisation of a pod).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overload {
    /// CPU fraction.
    pub cpu: f64,
    /// Memory fraction.
    pub mem: f64,
    /// Connections per pod, when sized.
    pub conn: Option<f64>,
    /// Messages per second per pod, when sized.
    pub mps: Option<f64>,
}

impl Overload {
    /// Whether `n` is above any threshold.
    pub fn hit(&self, n: &NodeFigures) -> bool {
        n.cpu > self.cpu
            || n.mem > self.mem
            || self.conn.is_some_and(|c| n.conn as f64 > c)
            || self.mps.is_some_and(|m| n.mps > m)
    }
}

/// What the run showed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Story {
    /// Scale-outs the leader wrote, as `from -> to`.
    pub scale_outs: Vec<String>,
    /// Scale-ins the leader wrote, as `from -> to`.
    pub scale_ins: Vec<String>,
    /// The pods chosen to go, in order.
    pub victims: Vec<String>,
    /// The pods that were deleted (drained, then exited).
    pub drained: Vec<String>,
    /// Removed pods whose log shows the drain finished before the SIGTERM.
    pub drained_first: Vec<String>,
    /// Removed pods whose log does not.
    pub not_drained_first: Vec<String>,
    /// Most replicas asked for.
    pub peak_replicas: i32,
    /// Accepted `/scale` writes.
    pub scale_writes: usize,
    /// Load-balancer pods that led, in order.
    pub leaders: Vec<String>,
    /// The leader pod the demo deleted, and how long until another
    /// replica led (first sample naming another leader), ms.
    pub leader_deleted: Option<(String, Option<u64>)>,
    /// First overloaded heartbeat (sent) to the first accepted `/scale`
    /// write after it, ms.
    pub reaction_ms: Option<u64>,
    /// That write to the first new pod Ready after it, ms.
    pub write_to_ready_ms: Option<u64>,
    /// The leader's rebalances, each as `pod:connections` it asked to shed.
    pub rebalances: Vec<String>,
    /// The pods that reported before the first scale-out for load (the ones
    /// the spike's clients land on).
    pub first_pods: Vec<String>,
    /// Median of those pods' heartbeat p95 over the spike phase, ms.
    pub first_pods_spike_p95_ms: Option<f64>,
    /// Most minus fewest connections over the pods not draining, in the
    /// last sample of the spike phase.
    pub spike_end_spread: Option<u64>,
}

/// The story of `entries`: scale events, victims, drains, leaders and the
/// reaction time, measured from the first heartbeat `overload` calls
/// overloaded to the first `/scale` write the API server accepted after it,
/// then to the first socket pod created after that write becoming Ready.
pub fn story(entries: &[Entry], overload: &Overload) -> Story {
    let mut s = Story::default();
    let mut first_hot: Option<u64> = None;
    let mut writes = Vec::new();
    let mut created = BTreeMap::new();
    let mut ready = Vec::new();
    let mut seen_leaders = BTreeSet::new();
    let mut deleted_at = 0;
    let mut scaled_out = false;
    let mut first_pods = BTreeSet::new();
    let mut spike_p95 = Vec::new();
    for e in entries {
        match e {
            Entry::Sample(sample) => {
                if !scaled_out {
                    first_pods.extend(sample.nodes.iter().map(|n| n.pod.clone()));
                }
                if sample.load.phase.as_deref() == Some("spike") {
                    spike_p95.extend(
                        sample
                            .nodes
                            .iter()
                            .filter(|n| first_pods.contains(&n.pod))
                            .map(|n| n.p95_ms),
                    );
                    let conns = sample.nodes.iter().filter(|n| !n.draining).map(|n| n.conn);
                    s.spike_end_spread = conns
                        .clone()
                        .max()
                        .zip(conns.min())
                        .map(|(most, fewest)| most - fewest);
                }
                s.peak_replicas = s.peak_replicas.max(sample.wanted.unwrap_or(0));
                if let Some(l) = &sample.leader
                    && seen_leaders.insert(l.clone())
                {
                    s.leaders.push(l.clone());
                }
                if let (Some((gone, took @ None)), Some(l)) =
                    (&mut s.leader_deleted, &sample.leader)
                    && l != gone
                {
                    *took = Some(sample.at_ms.saturating_sub(deleted_at));
                }
                for n in &sample.nodes {
                    if !n.draining && overload.hit(n) {
                        first_hot = Some(first_hot.map_or(n.sent_ms, |t| t.min(n.sent_ms)));
                    }
                }
            }
            Entry::Decision(d) if d.action == "rebalance" && !d.sheds.is_empty() => {
                let sheds: Vec<String> = d
                    .sheds
                    .iter()
                    .map(|(pod, n)| format!("{pod}:{n}"))
                    .collect();
                s.rebalances.push(sheds.join(" "));
            }
            Entry::Decision(d) if d.outcome == "scaled" => {
                let step = format!("{} -> {}", d.from, d.to);
                match d.action.as_str() {
                    "scale_out" => {
                        scaled_out |= d.reason != "below-min";
                        s.scale_outs.push(step);
                    }
                    "scale_in" => {
                        s.scale_ins.push(step);
                        if let Some(v) = &d.victim {
                            s.victims.push(v.clone());
                        }
                    }
                    _ => {}
                }
            }
            Entry::Decision(_) => {}
            Entry::Pod(p) => match p.change {
                PodChange::Created => {
                    created.entry(p.pod.clone()).or_insert(p.at_ms);
                }
                PodChange::Ready => ready.push((p.pod.clone(), p.at_ms)),
                PodChange::Deleting => s.drained.push(p.pod.clone()),
                PodChange::Gone => {}
            },
            Entry::Write(w) => {
                s.scale_writes += 1;
                writes.push(w.at_ms);
            }
            Entry::Drain(d) if d.drained_first => s.drained_first.push(d.pod.clone()),
            Entry::Drain(d) => s.not_drained_first.push(d.pod.clone()),
            Entry::LeaderDeleted(l) => {
                deleted_at = l.at_ms;
                s.leader_deleted = Some((l.pod.clone(), None));
            }
        }
    }
    if let Some(hot) = first_hot
        && let Some(&write) = writes.iter().filter(|&&w| w >= hot).min()
    {
        s.reaction_ms = Some(write - hot);
        s.write_to_ready_ms = ready
            .iter()
            .filter(|(pod, at)| *at >= write && created.get(pod).is_some_and(|c| *c >= write))
            .map(|(_, at)| at - write)
            .min();
    }
    s.first_pods = first_pods.into_iter().collect();
    spike_p95.sort_by(f64::total_cmp);
    s.first_pods_spike_p95_ms = spike_p95.get(spike_p95.len() / 2).copied();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(pod: &str, sent_ms: u64, conn: u64, cpu: f64) -> NodeFigures {
        NodeFigures {
            pod: pod.into(),
            sent_ms,
            conn,
            cpu,
            ..NodeFigures::default()
        }
    }

    fn sample(at_ms: u64, wanted: i32, nodes: Vec<NodeFigures>) -> Entry {
        Entry::Sample(Sample {
            at_ms,
            wanted: Some(wanted),
            ready: Some(wanted),
            leader: Some("lb-a".into()),
            nodes,
            ..Sample::default()
        })
    }

    fn decision(at_ms: u64, action: &str, from: u32, to: u32, outcome: &str) -> Entry {
        Entry::Decision(DecisionEntry {
            at_ms,
            action: action.into(),
            from,
            to,
            outcome: outcome.into(),
            victim: (action == "scale_in").then(|| "socket-x".into()),
            ..DecisionEntry::default()
        })
    }

    fn pod(at_ms: u64, pod: &str, change: PodChange) -> Entry {
        Entry::Pod(PodEvent {
            at_ms,
            pod: pod.into(),
            change,
        })
    }

    const LIMITS: Overload = Overload {
        cpu: 0.5,
        mem: 0.8,
        conn: Some(100.0),
        mps: None,
    };

    fn spike(at_ms: u64, nodes: Vec<(&str, u64, f64)>) -> Entry {
        Entry::Sample(Sample {
            at_ms,
            load: Load {
                phase: Some("spike".into()),
                ..Load::default()
            },
            nodes: nodes
                .into_iter()
                .map(|(pod, conn, p95_ms)| NodeFigures {
                    pod: pod.into(),
                    conn,
                    p95_ms,
                    ..NodeFigures::default()
                })
                .collect(),
            ..Sample::default()
        })
    }

    #[test]
    fn the_story_follows_a_rebalance_on_the_pods_the_spike_landed_on() {
        let entries = vec![
            sample(
                1_000,
                2,
                vec![node("a", 900, 300, 0.4), node("b", 900, 300, 0.4)],
            ),
            decision(1_100, "scale_out", 2, 4, "scaled"),
            spike(
                2_000,
                vec![
                    ("a", 300, 400.0),
                    ("b", 300, 300.0),
                    ("c", 0, 1.0),
                    ("d", 0, 1.0),
                ],
            ),
            Entry::Decision(DecisionEntry {
                at_ms: 3_000,
                action: "rebalance".into(),
                from: 4,
                to: 4,
                outcome: "none".into(),
                sheds: vec![("a".into(), 75), ("b".into(), 75)],
                ..DecisionEntry::default()
            }),
            spike(
                4_000,
                vec![
                    ("a", 225, 200.0),
                    ("b", 225, 100.0),
                    ("c", 75, 1.0),
                    ("d", 75, 1.0),
                ],
            ),
            sample(
                5_000,
                4,
                vec![node("a", 4_900, 10, 0.1), node("c", 4_900, 500, 0.1)],
            ),
        ];
        let s = story(&entries, &LIMITS);
        assert_eq!(s.rebalances, ["a:75 b:75"]);
        assert_eq!(
            s.first_pods,
            ["a", "b"],
            "new pods c and d came after the scale-out"
        );
        // p95 of a and b over the spike: 100, 200, 300, 400.
        assert_eq!(s.first_pods_spike_p95_ms, Some(300.0));
        assert_eq!(
            s.spike_end_spread,
            Some(150),
            "the last spike sample, not the calm after it"
        );
    }

    #[test]
    fn the_story_counts_what_was_written_and_times_the_reaction() {
        let entries = vec![
            pod(0, "socket-a", PodChange::Created),
            sample(1_000, 2, vec![node("socket-a", 900, 50, 0.1)]),
            // Overloaded by connections, sent at 1 800, seen at 2 000.
            sample(2_000, 2, vec![node("socket-a", 1_800, 150, 0.1)]),
            decision(2_100, "scale_out", 2, 4, "scaled"),
            decision(2_150, "scale_out", 2, 4, "conflict"),
            Entry::Write(ScaleWrite {
                at_ms: 2_300,
                user: "lb".into(),
                code: 200,
            }),
            pod(2_400, "socket-c", PodChange::Created),
            pod(3_900, "socket-c", PodChange::Ready),
            sample(4_000, 4, vec![]),
            decision(9_000, "scale_in", 4, 3, "scaled"),
            decision(9_500, "hold", 3, 3, "none"),
            pod(9_600, "socket-x", PodChange::Deleting),
        ];
        let s = story(&entries, &LIMITS);
        assert_eq!(s.scale_outs, ["2 -> 4"]);
        assert_eq!(s.scale_ins, ["4 -> 3"]);
        assert_eq!(s.victims, ["socket-x"]);
        assert_eq!(s.drained, ["socket-x"]);
        assert_eq!(s.peak_replicas, 4);
        assert_eq!(s.leaders, ["lb-a"]);
        assert_eq!(s.reaction_ms, Some(500), "1 800 -> 2 300");
        assert_eq!(s.write_to_ready_ms, Some(1_600), "2 300 -> 3 900");
    }

    #[test]
    fn draining_nodes_and_writes_before_the_overload_do_not_count() {
        let mut draining = node("socket-a", 1_000, 500, 0.9);
        draining.draining = true;
        let entries = vec![
            Entry::Write(ScaleWrite {
                at_ms: 500,
                user: "lb".into(),
                code: 200,
            }),
            sample(1_000, 2, vec![draining]),
            sample(2_000, 2, vec![node("socket-b", 1_900, 10, 0.7)]),
        ];
        let s = story(&entries, &LIMITS);
        assert_eq!(s.reaction_ms, None, "no write after the overload");
        assert_eq!(s.scale_writes, 1);
    }

    #[test]
    fn a_drain_counts_when_it_finished_before_the_signal() {
        let good =
            "a\ndrain started\n INFO drain finished summary=Summary { told: 3 }\nsignal received\n";
        assert_eq!(
            drain_in_log(good),
            (
                true,
                "INFO drain finished summary=Summary { told: 3 }".to_owned()
            )
        );
        assert!(!drain_in_log("drain started\nsignal received\ndrain finished\n").0);
        assert!(!drain_in_log("signal received\n").0);
        assert!(
            drain_in_log("drain started\ndrain finished\n").0,
            "no signal at all"
        );
    }

    #[test]
    fn entries_read_back_as_json_lines() -> Result<(), serde_json::Error> {
        let entries = [
            sample(1, 2, vec![node("socket-a", 1, 2, 0.3)]),
            decision(2, "hold", 2, 2, "none"),
            pod(3, "p", PodChange::Gone),
        ];
        for e in entries {
            let line = serde_json::to_string(&e)?;
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Entry>(&line)?, e);
        }
        Ok(())
    }
}
