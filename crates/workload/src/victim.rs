//! Which pod goes on scale-in: the deletion costs to write on a Deployment's
//! pods, and a prediction of the pod each controller removes. Pure code.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::api::{PodState, WorkloadKind};

/// The annotation a ReplicaSet reads to rank pods for removal, lowest first.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The cost given to the chosen victim: below every other pod's cost, since
/// every other pod gets its active connections (at least 0).
pub const VICTIM_COST: i32 = -1;

/// The cost of a pod with no load report: the scaler knows nothing about it,
/// and missing data is never read as zero load, so it is kept.
pub const UNKNOWN_LOAD_COST: i32 = i32::MAX;

/// What a scale-in by one will remove, and what the scaler did to make it so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleInPlan {
    /// The workload's kind.
    pub kind: WorkloadKind,
    /// The pod the caller chose.
    pub chosen: String,
    /// The pod the controller is expected to remove: drain and log this one.
    pub victim: String,
    /// Why `victim` is not `chosen`, when it is not.
    pub overridden: Option<Override>,
    /// The deletion cost now on each active pod (Deployment only).
    pub costs: BTreeMap<String, i32>,
    /// How many pods needed a new annotation (Deployment only).
    pub patched: usize,
}

/// Why the controller removes another pod than the chosen one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// A StatefulSet always removes its highest ordinal; deletion cost is ignored.
    TopOrdinal,
    /// The ReplicaSet removes a pod not yet scheduled to a node before any other.
    Unscheduled,
    /// The ReplicaSet removes a pod in an earlier phase (Pending, Unknown) first.
    EarlierPhase,
    /// The ReplicaSet removes a pod that is not ready before a ready one.
    NotReady,
    /// Another pod has a lower (or equal) deletion cost, e.g. one that
    /// appeared after the costs were written.
    LowerCost,
}

impl Override {
    /// Says why, for log lines.
    pub fn describe(self) -> &'static str {
        match self {
            Self::TopOrdinal => "a StatefulSet always removes its highest ordinal",
            Self::Unscheduled => "the ReplicaSet removes unscheduled pods first",
            Self::EarlierPhase => "the ReplicaSet removes pending pods first",
            Self::NotReady => "the ReplicaSet removes not-ready pods first",
            Self::LowerCost => "another pod has a lower deletion cost",
        }
    }
}

/// The deletion cost for every active pod: the chosen victim
/// [`VICTIM_COST`], every other pod its active connections (capped at
/// `i32::MAX`), or [`UNKNOWN_LOAD_COST`] when it has no load report.
/// Terminating pods are left out: the ReplicaSet no longer counts them.
///
/// `None` when `victim` is not an active pod.
pub fn deletion_costs(
    pods: &[PodState],
    victim: &str,
    loads: &BTreeMap<String, u64>,
) -> Option<BTreeMap<String, i32>> {
    let active = || pods.iter().filter(|p| !p.terminating);
    if !active().any(|p| p.name == victim) {
        return None;
    }
    Some(
        active()
            .map(|pod| {
                let cost = if pod.name == victim {
                    VICTIM_COST
                } else {
                    loads.get(&pod.name).map_or(UNKNOWN_LOAD_COST, |&load| {
                        i32::try_from(load).unwrap_or(i32::MAX)
                    })
                };
                (pod.name.clone(), cost)
            })
            .collect(),
    )
}

/// The pod a ReplicaSet removes first when scaled down by one, as far as
/// the first four of its ranking rules tell, given each pod's `cost`
/// (the annotation as written when `None`).
///
/// The ReplicaSet controller (`ActivePodsWithRanks` in
/// `pkg/controller/controller_utils.go`) sorts active pods and deletes from
/// the front:
/// 1. unscheduled before scheduled;
/// 2. `Pending` before `Unknown` before `Running`;
/// 3. not ready before ready;
/// 4. lower `pod-deletion-cost` before higher (unset or invalid is 0);
/// 5. then pods doubled up on a node, shorter ready time, more restarts and
///    newer pods, which this function does not see: among pods equal on the
///    first four it answers the first by name.
///
/// Returns the pod and, when it is not `chosen`, the rule that put it first.
pub fn replica_set_victim<'a>(
    pods: &'a [PodState],
    costs: &BTreeMap<String, i32>,
    chosen: &str,
) -> Option<(&'a str, Option<Override>)> {
    let cost = |pod: &PodState| {
        costs.get(&pod.name).copied().unwrap_or_else(|| {
            pod.deletion_cost
                .as_deref()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        })
    };
    let key = |pod: &PodState| {
        (
            pod.node_name.is_some(),
            phase_rank(pod),
            pod.ready,
            cost(pod),
        )
    };
    let first = pods.iter().filter(|p| !p.terminating).min_by(|a, b| {
        key(a)
            .cmp(&key(b))
            .then_with(|| match (a.name == chosen, b.name == chosen) {
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                _ => a.name.cmp(&b.name),
            })
    })?;
    if first.name == chosen {
        return Some((&first.name, None));
    }
    let why = pods
        .iter()
        .find(|p| p.name == chosen)
        .map_or(Override::LowerCost, |mine| {
            if first.node_name.is_none() && mine.node_name.is_some() {
                Override::Unscheduled
            } else if phase_rank(first) < phase_rank(mine) {
                Override::EarlierPhase
            } else if !first.ready && mine.ready {
                Override::NotReady
            } else {
                Override::LowerCost
            }
        });
    Some((&first.name, Some(why)))
}

/// The pod a StatefulSet of `spec_replicas` removes when scaled down by
/// one: always the highest ordinal, whatever the deletion costs say.
pub fn stateful_set_victim(name: &str, spec_replicas: u32) -> Option<String> {
    spec_replicas
        .checked_sub(1)
        .map(|top| format!("{name}-{top}"))
}

fn phase_rank(pod: &PodState) -> u8 {
    // podPhaseToOrdinal: any phase not listed ranks with Pending.
    match pod.phase.as_deref() {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodState {
        PodState {
            name: name.to_owned(),
            node_name: Some("node-a".to_owned()),
            phase: Some("Running".to_owned()),
            ready: true,
            ..PodState::default()
        }
    }

    fn loads(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
        entries.iter().map(|(n, l)| ((*n).to_owned(), *l)).collect()
    }

    #[test]
    fn victim_gets_the_lowest_cost_and_others_their_load() {
        let pods = [pod("a"), pod("b"), pod("c")];
        let costs = deletion_costs(&pods, "b", &loads(&[("a", 30), ("b", 10), ("c", 0)]))
            .expect("b is active");
        assert_eq!(costs.get("b"), Some(&VICTIM_COST));
        assert_eq!(costs.get("a"), Some(&30));
        assert_eq!(costs.get("c"), Some(&0));
        assert!(costs.values().filter(|&&c| c <= VICTIM_COST).count() == 1);
        assert_eq!(replica_set_victim(&pods, &costs, "b"), Some(("b", None)));
    }

    #[test]
    fn pods_without_a_report_are_kept_and_terminating_pods_skipped() {
        let mut gone = pod("d");
        gone.terminating = true;
        let pods = [pod("a"), pod("b"), gone];
        let costs = deletion_costs(&pods, "a", &loads(&[("a", u64::MAX)])).expect("a is active");
        assert_eq!(costs.get("b"), Some(&UNKNOWN_LOAD_COST));
        assert_eq!(costs.get("a"), Some(&VICTIM_COST));
        assert!(!costs.contains_key("d"));
        assert_eq!(deletion_costs(&pods, "d", &loads(&[])), None);
        assert_eq!(deletion_costs(&pods, "zz", &loads(&[])), None);
    }

    #[test]
    fn replica_set_ranking_puts_unscheduled_pending_and_not_ready_before_cost() {
        let chosen = "a";
        let costs: BTreeMap<String, i32> = [("a".to_owned(), -1), ("b".to_owned(), 500)].into();

        let mut unscheduled = pod("b");
        unscheduled.node_name = None;
        unscheduled.phase = Some("Pending".to_owned());
        let pods = [pod("a"), unscheduled];
        assert_eq!(
            replica_set_victim(&pods, &costs, chosen),
            Some(("b", Some(Override::Unscheduled)))
        );

        let mut pending = pod("b");
        pending.phase = Some("Pending".to_owned());
        let pods = [pod("a"), pending];
        assert_eq!(
            replica_set_victim(&pods, &costs, chosen),
            Some(("b", Some(Override::EarlierPhase)))
        );

        let mut not_ready = pod("b");
        not_ready.ready = false;
        let pods = [pod("a"), not_ready];
        assert_eq!(
            replica_set_victim(&pods, &costs, chosen),
            Some(("b", Some(Override::NotReady)))
        );
    }

    #[test]
    fn unset_cost_reads_as_zero() {
        let mut b = pod("b");
        b.deletion_cost = Some("-5".to_owned());
        let pods = [pod("a"), b];
        assert_eq!(
            replica_set_victim(&pods, &BTreeMap::new(), "a"),
            Some(("b", Some(Override::LowerCost)))
        );
    }

    #[test]
    fn stateful_set_removes_the_top_ordinal() {
        assert_eq!(
            stateful_set_victim("socket", 5).as_deref(),
            Some("socket-4")
        );
        assert_eq!(stateful_set_victim("socket", 0), None);
    }
}
