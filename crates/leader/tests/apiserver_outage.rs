//! The API server goes away for longer than the renew deadline: the leader
//! steps down on its own, nobody leads while it is gone, and leadership
//! resumes when it is back.
//!
//! This stops the local stack's shared API server, so it lives in a test
//! binary of its own (no other test of this crate runs while the server is
//! down), restarts the server even when it fails, and keeps the outage short.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Candidate, LEASE, RENEW, Recorder, leader_among};
use tokio::time::{Instant, sleep};

fn apiserver(action: &str) -> bool {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new(root.join("deploy/local/services/apiserver.sh"))
        .arg(action)
        .current_dir(&root)
        .status()
        .is_ok_and(|status| status.success())
}

/// Starts the API server again when dropped, whatever happened.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if !apiserver("start") {
            eprintln!(
                "could not restart the API server: run deploy/local/services/apiserver.sh start"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_steps_down_while_the_api_server_is_gone_and_leadership_resumes()
-> Result<(), Box<dyn std::error::Error>> {
    let ns = rtc_testkit::kubernetes().await?;
    let a = Candidate::start(ns.client(), ns.name(), "outage", "lb-a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), LEASE).await,
        Some(0)
    );
    let b = Candidate::start(ns.client(), ns.name(), "outage", "lb-b");
    sleep(Duration::from_secs(1)).await;
    let recorder = Recorder::default();
    recorder.watch(&a);
    recorder.watch(&b);
    let recording = recorder.start();

    let restart = Restart;
    // Stopping takes a while (the server drains first) and the leader may
    // renew until the server is gone, so the bound is the end of the stop
    // plus one renew deadline.
    let began = Instant::now();
    let stop = tokio::task::spawn_blocking(|| apiserver("stop"));
    while a.guard.is_leader() {
        sleep(Duration::from_millis(5)).await;
    }
    let stepped_down = began.elapsed();
    assert!(stop.await?, "could not stop the API server");
    let stopping = began.elapsed();
    eprintln!(
        "leader stepped down {stepped_down:?} after the stop began; stopping took {stopping:?} (lease 3 s, renew deadline 2 s, retry 0.5 s)"
    );
    assert!(
        stepped_down <= stopping + RENEW,
        "stepped down after {stepped_down:?}"
    );
    // Down for longer than the renew deadline and the lease: nobody leads.
    sleep(LEASE).await;
    assert!(!a.guard.is_leader() && !b.guard.is_leader());

    tokio::task::spawn_blocking(move || drop(restart)).await?;
    let back = Instant::now();
    let guards = [a.guard.clone(), b.guard.clone()];
    assert!(
        leader_among(&guards, Duration::from_secs(30))
            .await
            .is_some(),
        "no leader after the API server came back"
    );
    eprintln!(
        "leadership resumed {:?} after the API server was back",
        back.elapsed()
    );
    recording.assert_single_leader().await;
    a.shut_down().await;
    b.shut_down().await;
    ns.cleanup().await?;
    Ok(())
}
