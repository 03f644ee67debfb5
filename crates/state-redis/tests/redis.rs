//! The decision-state store against the local stack's Redis
//! (`deploy/local/stack up redis`).

use fred::interfaces::HashesInterface;
use rtc_autoscaler::StateError;
use rtc_decision::{STATE_VERSION, ScaleOutRecord, Snapshot, State, Urgency};
use rtc_state_redis::StateStore;

fn state(at_ms: u64) -> State {
    State {
        version: STATE_VERSION,
        last_scale_out: Some(ScaleOutRecord {
            at_ms,
            urgency: Urgency::High,
            snapshot: Snapshot {
                cpu: 0.1 + 0.2,
                mem: 1.0 / 3.0,
                mps: 12.345_678_9,
                conn: 1e-9,
                p95: 250.0,
            },
        }),
        last_scale_in_ms: Some(at_ms / 2),
        consecutive: 3,
        low_since_ms: None,
        low_seen_ms: None,
        replicas_seen: None,
        last_rebalance_ms: Some(at_ms + 7),
    }
}

#[tokio::test]
async fn decision_state_resumes_bit_for_bit_and_is_fenced() {
    let redis = rtc_testkit::redis().await.expect("the stack's redis");
    let store = StateStore::new(redis.client().clone(), redis.key("decision-state"));
    assert_eq!(store.load().await.expect("redis is up"), None);

    store.save(5, &state(1_000)).await.expect("first save");
    let stored = store.load().await.expect("redis is up").expect("saved");
    assert_eq!((stored.token, &stored.state), (5, &state(1_000)));

    // The same leader saves again; a newer one takes over.
    store.save(5, &state(2_000)).await.expect("same token");
    store
        .save(u64::MAX, &state(3_000))
        .await
        .expect("newer token");
    // The old leader, still running, is refused.
    let error = store.save(6, &state(4_000)).await.expect_err("fenced");
    assert!(
        matches!(&error, StateError::Fenced { ours: 6, .. }),
        "{error}"
    );
    assert_eq!(error.label(), "fenced");
    let stored = store.load().await.expect("redis is up").expect("saved");
    assert_eq!((stored.token, stored.state), (u64::MAX, state(3_000)));

    // A corrupt or future state is reported, not used.
    let client = redis.client();
    let key = redis.key("decision-state");
    let _: () = client
        .hset(&key, ("state", "{not json"))
        .await
        .expect("hset");
    assert_eq!(store.load().await.expect_err("corrupt").label(), "corrupt");
    let _: () = client
        .hset(&key, ("state", r#"{"version":99}"#))
        .await
        .expect("hset");
    assert_eq!(
        store.load().await.expect_err("future").label(),
        "unknown_version"
    );
    store.clear().await.expect("redis is up");
    assert_eq!(store.load().await.expect("redis is up"), None);
    redis.cleanup().await.expect("cleanup");
}
