//! The whole flow end to end on the local stack (`deploy/local/stack up`),
//! with the demo's own pieces and the local overlay's short windows: two
//! load-balancer pods and the socket workload on the node agents, a spike
//! of WebSocket load then calm.
//!
//! - Spike: one scale-out, of the size the policy gives a critical
//!   overload, written through `/scale`; the new pods become Ready.
//! - The leading load-balancer pod is deleted during the spike: the other
//!   replica leads, resumes the saved state and does not scale out again.
//! - Calm: a scale-in, the pod removed is the one the load-balancer chose
//!   (Deployment) or the top ordinal (StatefulSet), and its log shows its
//!   drain finished before the kubelet's SIGTERM.
//! - The load generator counts every message: none lost.
//!
//! The runs share the overlay's namespace, so they run one after the
//! other.

mod common;

use std::time::Duration;

use common::{Result, Run, check_nothing_lost, run};
use rtc_demo::Outcome;
use rtc_demo::record::{DecisionEntry, Entry, PodChange};

/// A spike after a short warm-up, then calm long enough for the first
/// scale-in (30 s of low load, then a tick).
const PROFILE: &str = r#"{"phases": [
  {"name": "warm-up", "kind": "ramp", "duration": "10s", "connections": 120, "messages_per_sec": 60},
  {"name": "spike", "kind": "spike", "duration": "30s", "connections": 600, "messages_per_sec": 600},
  {"name": "calm", "kind": "calm", "duration": "55s", "connections": 60, "messages_per_sec": 10}
]}"#;

fn scaled<'a>(entries: &'a [Entry], action: &'a str) -> impl Iterator<Item = &'a DecisionEntry> {
    entries.iter().filter_map(move |e| match e {
        // The fleet starts at one pod (the manifest leaves replicas to the
        // load-balancer), which scales it to the minimum first.
        Entry::Decision(d)
            if d.outcome == "scaled" && d.action == action && d.reason != "below-min" =>
        {
            Some(d)
        }
        _ => None,
    })
}

/// The spike's one scale-out: critical, of the policy's base step for that
/// urgency (nothing recent before it), written and served by Ready pods.
fn check_scale_out(entries: &[Entry]) -> Result<DecisionEntry> {
    let outs: Vec<&DecisionEntry> = scaled(entries, "scale_out").collect();
    assert_eq!(outs.len(), 1, "one scale-out for the spike: {outs:?}");
    let out = outs[0].clone();
    let policy = rtc_decision::Policy::default();
    assert_eq!(out.urgency, "critical", "{out:?}");
    let step = out.step.ok_or("a scale-out without its step")?;
    assert_eq!(
        (step.base, step.consecutive),
        (policy.step.base_critical, 0),
        "{out:?}"
    );
    assert_eq!(out.to - out.from, step.step.min(8 - out.from), "{out:?}");
    let ready_at = entries.iter().find_map(|e| match e {
        Entry::Sample(s)
            if s.at_ms >= out.at_ms && s.ready >= Some(i32::try_from(out.to).unwrap_or(0)) =>
        {
            Some(s.at_ms)
        }
        _ => None,
    });
    assert!(ready_at.is_some(), "{} Ready replicas never seen", out.to);
    Ok(out)
}

/// The first scale-in, and the pod that went after it (its deletion, then
/// its drain in its log).
fn check_scale_in(outcome: &Outcome, entries: &[Entry]) -> Result<(DecisionEntry, String)> {
    let first = scaled(entries, "scale_in")
        .next()
        .ok_or("no scale-in in the calm")?
        .clone();
    let removed = entries
        .iter()
        .find_map(|e| match e {
            Entry::Pod(p) if p.change == PodChange::Deleting && p.at_ms >= first.at_ms => {
                Some(p.pod.clone())
            }
            _ => None,
        })
        .ok_or("no pod deleted after the scale-in")?;
    assert!(
        outcome.story.drained_first.contains(&removed),
        "{removed} did not drain before its SIGTERM: {:?}",
        entries
            .iter()
            .filter(|e| matches!(e, Entry::Drain(_)))
            .collect::<Vec<_>>()
    );
    Ok((first, removed))
}

#[test]
fn a_deployment_scales_out_on_the_spike_survives_its_leader_and_scales_in_the_chosen_pod() -> Result
{
    let (outcome, entries) = run(Run {
        profile: PROFILE,
        kill_leader_at: Some(Duration::from_secs(28)),
        ..Run::default()
    })?;
    let out = check_scale_out(&entries)?;
    let (deleted_leader, took) = outcome
        .story
        .leader_deleted
        .clone()
        .ok_or("the leader was not deleted")?;
    assert!(
        took.is_some(),
        "no other replica led after {deleted_leader} was deleted"
    );
    let deleted_at = entries
        .iter()
        .find_map(|e| match e {
            Entry::LeaderDeleted(l) => Some(l.at_ms),
            _ => None,
        })
        .ok_or("no deletion recorded")?;
    assert!(
        out.at_ms < deleted_at,
        "the scale-out came before the leader went"
    );
    assert!(
        scaled(&entries, "scale_out").all(|d| d.at_ms < deleted_at),
        "the new leader stepped again on the same spike"
    );
    let (scale_in, removed) = check_scale_in(&outcome, &entries)?;
    assert_ne!(
        scale_in.by, deleted_leader,
        "the scale-in is the new leader's"
    );
    assert_eq!(
        scale_in.victim.as_deref(),
        Some(removed.as_str()),
        "the ReplicaSet controller removed the pod the load-balancer chose"
    );
    assert!(outcome.story.reaction_ms.is_some(), "{:?}", outcome.story);
    check_nothing_lost(&outcome);
    Ok(())
}

#[test]
fn a_statefulset_scales_out_on_the_spike_and_in_from_its_top_ordinal() -> Result {
    let (outcome, entries) = run(Run {
        profile: PROFILE,
        statefulset: true,
        ..Run::default()
    })?;
    let out = check_scale_out(&entries)?;
    let (scale_in, removed) = check_scale_in(&outcome, &entries)?;
    assert_eq!(scale_in.from, out.to);
    assert_eq!(
        removed,
        format!("socket-{}", scale_in.to),
        "the top ordinal goes"
    );
    check_nothing_lost(&outcome);
    Ok(())
}
