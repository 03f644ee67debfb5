//! Rebalancing on the local stack: the spike's clients land on the two
//! pods there are, the fleet scales out, and the message rate of those same
//! clients stays high. The leader then asks the hot pods to shed toward the
//! mean (rebalancing switched on over the local overlay), the moved clients
//! reconnect to the new pods, the spread of connections falls within the
//! rule's bound, and no message is lost.

mod common;

use common::{Result, Run, check_nothing_lost, run};
use rtc_demo::record::Entry;

/// 600 clients arrive at once, then keep sending from the same
/// connections: nothing but a rebalance moves them.
const PROFILE: &str = r#"{"phases": [
  {"name": "warm-up", "kind": "ramp", "duration": "10s", "connections": 120, "messages_per_sec": 60},
  {"name": "spike", "kind": "spike", "duration": "50s", "connections": 600, "messages_per_sec": 300},
  {"name": "calm", "kind": "calm", "duration": "5s", "connections": 600, "messages_per_sec": 30}
]}"#;

#[test]
fn after_a_scale_out_the_hot_pods_shed_to_the_new_ones_and_nothing_is_lost() -> Result {
    let (outcome, entries) = run(Run {
        profile: PROFILE,
        settings: [("REBALANCE".to_owned(), "true".to_owned())].into(),
        ..Run::default()
    })?;
    let story = &outcome.story;
    assert!(!story.scale_outs.is_empty(), "{story:?}");
    assert!(!story.rebalances.is_empty(), "no rebalance: {story:?}");

    // Every shed was asked of a pod the spike landed on, above the mean.
    let policy = rtc_decision::Policy::default().rebalance;
    for e in &entries {
        let Entry::Decision(d) = e else { continue };
        for (pod, n) in &d.sheds {
            assert!(
                story.first_pods.contains(pod),
                "{pod} shed {n} but was not hot: {story:?}"
            );
        }
    }

    // The last sample of the spike: connections within the rule's bound.
    let last = entries
        .iter()
        .rev()
        .find_map(|e| match e {
            Entry::Sample(s) if s.load.phase.as_deref() == Some("spike") => Some(s),
            _ => None,
        })
        .ok_or("no spike sample")?;
    let conns: Vec<u64> = last
        .nodes
        .iter()
        .filter(|n| !n.draining)
        .map(|n| n.conn)
        .collect();
    let mean = conns.iter().sum::<u64>() as f64 / conns.len().max(1) as f64;
    let spread = story.spike_end_spread.ok_or("no spread")?;
    let bound = (policy.max_spread * mean).max(policy.min_spread_conns);
    assert!(
        spread as f64 <= bound,
        "spread {spread} over the bound {bound:.0} at the spike's end: {conns:?}"
    );
    // The new pods carry clients now.
    let new_pods: Vec<u64> = last
        .nodes
        .iter()
        .filter(|n| !story.first_pods.contains(&n.pod))
        .map(|n| n.conn)
        .collect();
    assert!(
        !new_pods.is_empty() && new_pods.iter().all(|c| *c > 0),
        "{new_pods:?}"
    );
    check_nothing_lost(&outcome);
    Ok(())
}
