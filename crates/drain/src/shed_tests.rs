//! Sheds with paused tokio time.

use super::*;
use crate::tests::config;
use tokio::sync::Mutex;

type Log = Arc<Mutex<Vec<(u64, Duration, Instruction)>>>;

/// Registers `n` clients that leave when told, recording their id, when and
/// what they were told.
fn clients(drain: &Drain, n: usize, log: &Log, t0: Instant) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let mut conn = drain.register().expect("not draining");
            let id = conn.id();
            let log = Arc::clone(log);
            tokio::spawn(async move {
                let instruction = conn.instruction().await;
                log.lock().await.push((id, t0.elapsed(), instruction));
                drop(conn);
            });
            id
        })
        .collect()
}

fn order(connections: usize, window_s: u64) -> ShedOrder {
    ShedOrder {
        connections,
        window: Duration::from_secs(window_s),
    }
}

#[tokio::test(start_paused = true)]
async fn the_newest_connections_leave_over_the_window_and_the_node_stays_ready() {
    let drain = Drain::new(config());
    let log: Log = Arc::default();
    let t0 = Instant::now();
    let ids = clients(&drain, 40, &log, t0);
    let handle = drain.shed(order(15, 10)).expect("started");
    assert_eq!(handle.started().selected, 15);
    assert_eq!(handle.started().open, 40);
    // Readiness and new connections are untouched while it runs.
    assert!(*drain.ready().borrow());
    let late = drain
        .register()
        .expect("a shed does not refuse connections");
    let summary = handle.wait().await;
    assert!(*drain.ready().borrow());
    assert_eq!(summary.told, 15);
    assert_eq!(summary.moved, 15);
    assert!(!summary.stopped_by_drain);
    // 40 + the late one, minus the 15 moved.
    assert_eq!(summary.open_after, 26);
    let log = log.lock().await.clone();
    let mut moved: Vec<u64> = log.iter().map(|(id, _, _)| *id).collect();
    moved.sort_unstable();
    assert_eq!(moved, ids[25..].to_vec(), "the 15 newest, and only they");
    assert!(
        log.iter()
            .all(|(_, _, i)| matches!(i, Instruction::Shed { retry_after } if *retry_after <= SHED_MAX_RETRY_AFTER))
    );
    let first = log.iter().map(|(_, t, _)| *t).min().expect("moved");
    let last = log.iter().map(|(_, t, _)| *t).max().expect("moved");
    assert_eq!(first, Duration::ZERO, "the first batch goes at once");
    assert_eq!(
        last,
        Duration::from_secs(10),
        "the last at the window's end"
    );
    drop(late);
}

#[tokio::test(start_paused = true)]
async fn asking_for_more_than_are_open_moves_what_there_is() {
    let drain = Drain::new(config());
    let log: Log = Arc::default();
    clients(&drain, 4, &log, Instant::now());
    let summary = drain.shed(order(50, 3)).expect("started").wait().await;
    assert_eq!(summary.started.asked, 50);
    assert_eq!(summary.started.selected, 4);
    assert_eq!(summary.moved, 4);
    assert_eq!(summary.open_after, 0);
}

#[tokio::test(start_paused = true)]
async fn one_shed_at_a_time_and_none_while_draining() {
    let drain = Drain::new(config());
    let log: Log = Arc::default();
    clients(&drain, 10, &log, Instant::now());
    let first = drain.shed(order(5, 20)).expect("started");
    assert_eq!(
        drain.shed(order(1, 1)).err(),
        Some(ShedRefused::Busy { selected: 5 })
    );
    first.wait().await;
    // Finished: the next one may start.
    drain.shed(order(1, 0)).expect("started").wait().await;
    drop(drain.start(async { FinishReport::default() }));
    assert_eq!(drain.shed(order(1, 1)).err(), Some(ShedRefused::Draining));
}

#[tokio::test(start_paused = true)]
async fn bad_orders_are_refused_saying_what_is_allowed() {
    let drain = Drain::new(config());
    assert_eq!(drain.shed(order(0, 1)).err(), Some(ShedRefused::Nothing));
    let long = drain.shed(order(1, 601)).expect_err("too long");
    assert_eq!(long.label(), "window_too_long");
    assert!(long.to_string().contains("at most 600s"), "{long}");
}

#[tokio::test(start_paused = true)]
async fn a_drain_during_a_shed_takes_over_and_no_further_batch_goes() {
    let drain = Drain::new(config());
    let log: Log = Arc::default();
    let t0 = Instant::now();
    clients(&drain, 30, &log, t0);
    // 10 batches over 9 s: one per second.
    let handle = drain.shed(order(10, 9)).expect("started");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let wait = drain.start(async { FinishReport::default() });
    let shed = handle.wait().await;
    assert!(shed.stopped_by_drain);
    assert_eq!(shed.told, 3, "batches at 0, 1 and 2 s");
    let summary = wait.wait().await;
    assert_eq!(summary.forced, 0);
    let log = log.lock().await.clone();
    assert_eq!(log.len(), 30, "everyone left");
    let shed_told = log
        .iter()
        .filter(|(_, _, i)| matches!(i, Instruction::Shed { .. }))
        .count();
    assert_eq!(shed_told, 3);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_ignores_the_shed_is_told_but_not_counted_moved() {
    let drain = Drain::new(config());
    let stubborn = drain.register().expect("registered");
    let summary = drain.shed(order(1, 0)).expect("started").wait().await;
    assert_eq!(summary.told, 1);
    assert_eq!(summary.moved, 0);
    assert_eq!(summary.open_after, 1);
    assert!(matches!(stubborn.current(), Some(Instruction::Shed { .. })));
}
