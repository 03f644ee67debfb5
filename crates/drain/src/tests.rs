//! The drain with paused tokio time: instants are exact.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Mutex;

pub(crate) fn config() -> DrainConfig {
    DrainConfig {
        endpoint_delay: Duration::from_secs(5),
        timeout: Duration::from_secs(65),
        tail: Some(Duration::from_secs(10)),
        min_batch_interval: Duration::from_secs(1),
        max_retry_after: Duration::from_secs(10),
        force_grace: Duration::from_secs(2),
        seed: 1,
    }
}

/// A well-behaved client: leaves when told, after recording when.
fn polite(drain: &Drain, log: Arc<Mutex<Vec<(Duration, Instruction)>>>, t0: Instant) {
    let mut conn = drain.register().expect("not draining");
    tokio::spawn(async move {
        let instruction = conn.instruction().await;
        log.lock().await.push((t0.elapsed(), instruction));
        drop(conn);
    });
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_at_once_and_new_connections_are_refused() {
    let drain = Drain::new(config());
    let ready = drain.ready();
    assert!(*ready.borrow());
    let wait = drain.start(async { FinishReport::default() });
    assert!(!*ready.borrow(), "readiness must flip before start returns");
    assert!(drain.is_draining());
    assert_eq!(drain.register().err(), Some(Draining));
    let summary = wait.wait().await;
    assert_eq!(summary.connections_at_start, 0);
    assert_eq!(summary.batches, 0);
}

#[tokio::test(start_paused = true)]
async fn batches_wait_for_the_endpoint_delay_and_spread_over_the_window() {
    let drain = Drain::new(config());
    let log = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    for _ in 0..100 {
        polite(&drain, Arc::clone(&log), t0);
    }
    assert_eq!(drain.active(), 100);
    let summary = drain.start(async { FinishReport::default() }).wait().await;
    let log = log.lock().await.clone();
    assert_eq!(log.len(), 100);
    // Window = 65 - 5 - 10 = 50 s; 51 batches, 1 s apart, from t = 5 s.
    assert_eq!(summary.batches, 51);
    assert_eq!(summary.told_to_reconnect, 100);
    assert_eq!(summary.forced, 0);
    let first = log.iter().map(|(t, _)| *t).min().expect("entries");
    let last = log.iter().map(|(t, _)| *t).max().expect("entries");
    assert_eq!(first, Duration::from_secs(5));
    assert_eq!(last, Duration::from_secs(55));
    for (_, instruction) in &log {
        match instruction {
            Instruction::Reconnect { retry_after } => {
                assert!(*retry_after <= Duration::from_secs(1));
            }
            Instruction::Close => panic!("nobody should be forced"),
            Instruction::Shed { .. } => panic!("a drain does not shed"),
        }
    }
    assert_eq!(summary.duration_ms, 55_000);
    assert_eq!(drain.active(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_second_start_waits_on_the_same_drain_and_finish_runs_once() {
    let drain = Drain::new(config());
    let runs = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    polite(&drain, Arc::clone(&log), Instant::now());
    let finish = |runs: Arc<AtomicUsize>| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        FinishReport {
            handed_off: 3,
            ..FinishReport::default()
        }
    };
    let first = drain.start(finish(Arc::clone(&runs)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = drain.start(finish(Arc::clone(&runs)));
    let (a, b) = tokio::join!(first.wait(), second.wait());
    assert_eq!(a, b);
    assert_eq!(a.finish.handed_off, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // After the drain, a third call returns the same summary at once.
    let third = drain.start(finish(Arc::clone(&runs))).wait().await;
    assert_eq!(third, a);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn finish_runs_only_after_the_last_connection_has_gone() {
    let drain = Drain::new(config());
    // A slow client: takes 3 s after the instruction to leave.
    let mut conn = drain.register().expect("not draining");
    let left_at = Arc::new(Mutex::new(None));
    let left = Arc::clone(&left_at);
    let t0 = Instant::now();
    tokio::spawn(async move {
        let _ = conn.instruction().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        *left.lock().await = Some(t0.elapsed());
        drop(conn);
    });
    let active = drain.active_watch();
    let summary = drain
        .start(async move {
            FinishReport {
                handed_off: u64::try_from(*active.borrow()).unwrap_or(u64::MAX),
                ..FinishReport::default()
            }
        })
        .wait()
        .await;
    assert_eq!(
        summary.finish.handed_off, 0,
        "finish saw no connection left"
    );
    assert_eq!(*left_at.lock().await, Some(Duration::from_secs(8)));
    assert_eq!(summary.duration_ms, 8_000);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_forces_stubborn_connections_and_then_gives_up() {
    let drain = Drain::new(config());
    // Ignores the reconnect request, obeys the forced close.
    let mut obeys_close = drain.register().expect("not draining");
    tokio::spawn(async move {
        while obeys_close.instruction().await != Instruction::Close {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(obeys_close);
    });
    // Ignores everything.
    let deaf = drain.register().expect("not draining");
    let t0 = Instant::now();
    let summary = drain.start(async { FinishReport::default() }).wait().await;
    assert_eq!(summary.connections_at_start, 2);
    assert_eq!(summary.forced, 2);
    assert_eq!(summary.abandoned, 1);
    assert_eq!(t0.elapsed(), Duration::from_secs(67), "deadline + grace");
    drop(deaf);
    assert_eq!(drain.active(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_instruction_waits_for_a_connection_that_was_busy_and_stays_until_replaced() {
    let drain = Drain::new(config());
    let mut conn = drain.register().expect("not draining");
    assert_eq!(conn.current(), None);
    // Nobody waits on the instruction while the drain sends it.
    let wait = drain.start(async { FinishReport::default() });
    let t0 = Instant::now();
    while conn.current().is_none() && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = conn.current().expect("told while not waiting");
    assert!(matches!(first, Instruction::Reconnect { .. }), "{first:?}");
    // Returned again until acted on, at once.
    let again = tokio::time::timeout(Duration::from_millis(1), conn.instruction()).await;
    assert_eq!(again.ok(), Some(first));
    // The deadline's close replaces it, and wakes a waiting reader.
    let waiter = tokio::spawn(async move {
        while conn.instruction().await != Instruction::Close {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(conn);
    });
    let summary = wait.wait().await;
    assert!(waiter.await.is_ok());
    assert_eq!(summary.forced, 1);
    assert_eq!(summary.abandoned, 0);
}

#[tokio::test(start_paused = true)]
async fn connections_that_leave_during_the_endpoint_delay_skip_the_batches() {
    let drain = Drain::new(config());
    let conn = drain.register().expect("not draining");
    let wait = drain.start(async { FinishReport::default() });
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(conn);
    let t0 = Instant::now();
    let summary = wait.wait().await;
    assert_eq!(summary.batches, 0);
    assert_eq!(summary.told_to_reconnect, 0);
    assert!(t0.elapsed() < Duration::from_millis(10));
}

#[test]
fn config_is_validated() {
    assert_eq!(DrainConfig::default().validate(), Ok(()));
    assert_eq!(
        DrainConfig::default().window(),
        Duration::from_secs(300 - 5 - 30)
    );
    let zero = DrainConfig {
        timeout: Duration::ZERO,
        ..DrainConfig::default()
    };
    assert_eq!(zero.validate().map_err(|e| e.label()), Err("zero_timeout"));
    let late = DrainConfig {
        endpoint_delay: Duration::from_secs(300),
        ..DrainConfig::default()
    };
    assert_eq!(
        late.validate().map_err(|e| e.label()),
        Err("delay_not_below_timeout")
    );
    let dense = DrainConfig {
        min_batch_interval: Duration::ZERO,
        ..DrainConfig::default()
    };
    assert!(dense.validate().is_err());
}
