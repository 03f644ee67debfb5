//! Heartbeat ingestion by one load-balancer from the local stack's Redis.
//!
//! A child process (this binary re-executed with `--role publisher`) runs
//! `--nodes` real publishers (`publisher::spawn`, default 10 000), started
//! evenly over one `--interval-ms` (5 s) so they publish about 2 000
//! heartbeats a second through a few shared Redis connections. Its CPU is
//! not counted.
//!
//! This process then measures, one after the other:
//!
//! 1. **The ingestor**: the real [`Ingestor`] spawned on its own thread
//!    (default poll interval), after a warm-up that waits until every node
//!    is in its view, for `--window-secs`. Reported: heartbeats ingested per
//!    second (sequence numbers newly observed), per-poll latency, the CPU of
//!    the ingestor's thread as a percentage of one core, and the process's
//!    resident memory.
//! 2. **Departures**: a few publishers are stopped (silence, the entry
//!    expires) and a few deregistered; the time until the ingestor reports
//!    each one departed, against STALE_AFTER + one tick and one tick + one poll
//!    (a tick is the poll interval plus a poll: the loop sleeps after each).
//! 3. **The baseline**: a bare reader on its own thread doing the same Redis
//!    reads each poll (epoch, index, every liveness entry in MGETs of 500),
//!    with no decoding or bookkeeping, for `--baseline-secs`. The ingestor's
//!    costs are quoted as ratios to it.
//!
//! Keys live under `rtc-bench-<pid>:` and are deleted at the end. Only a
//! Redis on 127.0.0.1 is accepted.
//!
//! Run: `eval "$(deploy/local/stack env)"; cargo bench -p rtc-heartbeat --bench ingest`
//! (add `-- --help` for the flags).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::{ClusterHash, CustomCommand};
use rtc_heartbeat::{
    DepartReason, FleetEvent, FleetSnapshot, HeartbeatStore, Ingestor, IngestorConfig, KeyLayout,
    LimitSource, Load, PublishOptions, PublisherConfig, RedisOptions, RedisStore, StoreError,
    SystemClock, WallClock, connect, publisher,
};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// Clock ticks per second of `/proc/*/stat` CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Measure (the default).
    Bench,
    /// Run the simulated nodes (started by the bench itself).
    Publisher,
}

/// Heartbeat ingestion benchmark against the local Redis.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// Simulated socket nodes.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Each node's heartbeat interval, ms (HEARTBEAT_INTERVAL).
    #[arg(long, default_value_t = 5_000)]
    interval_ms: u64,
    /// STALE_AFTER, ms: the liveness entry's lifetime.
    #[arg(long, default_value_t = 15_000)]
    stale_after_ms: u64,
    /// The ingestor's poll interval, ms.
    #[arg(long, default_value_t = 1_000)]
    poll_ms: u64,
    /// Measured window of the ingestor, after its warm-up, s.
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// Measured window of the baseline reader, s.
    #[arg(long, default_value_t = 30)]
    baseline_secs: u64,
    /// Nodes silenced (stopped without deregistering) in the departure test.
    #[arg(long, default_value_t = 5)]
    silence: usize,
    /// Nodes deregistered in the departure test.
    #[arg(long, default_value_t = 5)]
    deregister: usize,
    /// Redis connections shared by the simulated nodes.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Redis URL; only 127.0.0.1 is accepted.
    #[arg(long, env = "RTC_REDIS_URL", default_value = "redis://127.0.0.1:16379")]
    redis_url: String,
    #[arg(long, value_enum, default_value_t = Role::Bench, hide = true)]
    role: Role,
    /// Key prefix (set by the bench for its publisher).
    #[arg(long, hide = true)]
    prefix: Option<String>,
    /// The publisher exits after this long whatever happens.
    #[arg(long, default_value_t = 600, hide = true)]
    deadline_secs: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    fn stale_after(&self) -> Duration {
        Duration::from_millis(self.stale_after_ms)
    }
    fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_local(&args.redis_url)?;
    if args.nodes == 0 || args.connections == 0 || args.poll_ms == 0 || args.interval_ms == 0 {
        bail!("--nodes, --connections, --poll-ms and --interval-ms must be positive");
    }
    if args.silence + args.deregister > args.nodes {
        bail!("--silence + --deregister exceeds --nodes");
    }
    match args.role {
        Role::Publisher => run_publisher(&args),
        Role::Bench => run_bench(&args),
    }
}

/// Refuses any Redis but the one on 127.0.0.1.
fn check_local(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("redis://")
        .context("the Redis URL must start with redis://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = host_port.split(':').next().unwrap_or_default();
    if host != "127.0.0.1" {
        bail!("refusing Redis at {host:?}: this benchmark only targets 127.0.0.1");
    }
    Ok(())
}

fn node_id(i: usize) -> String {
    format!("bench-node-{i:05}")
}

/// Node indices of the departure test: silenced first, then deregistered,
/// spread over the fleet.
fn departing(args: &Args) -> (Vec<String>, Vec<String>) {
    let total = args.silence + args.deregister;
    let ids: Vec<String> = (0..total)
        .map(|k| node_id((k * args.nodes / total.max(1) + 7) % args.nodes))
        .collect();
    let (silence, deregister) = ids.split_at(args.silence);
    (silence.to_vec(), deregister.to_vec())
}

fn busy_load() -> Load {
    Load {
        cpu: 0.42,
        mem: 0.61,
        cpu_of: LimitSource::Cgroup,
        mem_of: LimitSource::Cgroup,
        conn: 1_234,
        mps: 56.5,
        p95_ms: 88.0,
        lag_records: 7,
        lag_ms: 12.5,
        draining: false,
    }
}

// ---------------------------------------------------------------------------
// Publisher role (child process)
// ---------------------------------------------------------------------------

fn run_publisher(args: &Args) -> anyhow::Result<()> {
    let prefix = args.prefix.clone().context("--prefix is required")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
        // The bench went away: stop.
        let _ = lines_tx.send("quit".to_owned());
    });
    runtime.block_on(async move {
        let mut stores = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            let client = connect(&RedisOptions::new(args.redis_url.clone()))?;
            let store = RedisStore::new(client, KeyLayout::new(prefix.clone()));
            store
                .node_ids()
                .await
                .context("publisher cannot reach Redis")?;
            stores.push(store);
        }
        let (_load, load_rx) = watch::channel(busy_load());
        let boot = format!("boot-{}", std::process::id());
        let start = Instant::now();
        let deadline = start + Duration::from_secs(args.deadline_secs);
        let spread = args.interval().as_nanos();
        let nodes = u128::try_from(args.nodes)?;
        let mut handles = HashMap::with_capacity(args.nodes);
        for i in 0..args.nodes {
            // Start times spread evenly over one interval.
            let offset = spread * u128::try_from(i)? / nodes;
            tokio::time::sleep_until(start + Duration::from_nanos(u64::try_from(offset)?)).await;
            let id = node_id(i);
            let config = PublisherConfig {
                interval: args.interval(),
                stale_after: args.stale_after(),
                ..PublisherConfig::new(id.clone(), boot.clone())
            };
            let store = stores[i % stores.len()].clone();
            let handle = publisher::spawn(config, store, SystemClock, load_rx.clone())?;
            handles.insert(id, handle);
        }
        println!("ready");
        loop {
            let line = tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                line = lines.recv() => line.unwrap_or_else(|| "quit".to_owned()),
            };
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("stop"), Some(node)) => {
                    if let Some(handle) = handles.remove(node) {
                        handle.stop().await;
                        println!("stopped {node} {}", SystemClock.now_ms());
                    }
                }
                (Some("deregister"), Some(node)) => {
                    if let Some(handle) = handles.remove(node) {
                        let at = SystemClock.now_ms();
                        let result = handle.deregister().await;
                        println!("deregistered {node} {at} {}", result.is_ok());
                    }
                }
                _ => break,
            }
        }
        // Dropping the handles stops every publisher.
        drop(handles);
        anyhow::Ok(())
    })
}

// ---------------------------------------------------------------------------
// Measured readers (each on its own named thread)
// ---------------------------------------------------------------------------

/// When the current poll started and when its reads ended, stamped by the
/// store wrapper so the real ingestor loop can be timed from outside.
#[derive(Debug)]
struct Marks {
    base: Instant,
    start_ns: AtomicU64,
    read_end_ns: AtomicU64,
}

impl Marks {
    fn stamp(&self, slot: &AtomicU64) {
        let ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        slot.store(ns, Ordering::Relaxed);
    }
    fn at(&self, slot: &AtomicU64) -> Instant {
        self.base + Duration::from_nanos(slot.load(Ordering::Relaxed))
    }
}

/// [`RedisStore`] with the start of each poll (the epoch read) and the end
/// of its reads (the last MGET) stamped.
#[derive(Debug, Clone)]
struct TimedStore {
    inner: RedisStore,
    marks: Arc<Marks>,
}

impl HeartbeatStore for TimedStore {
    async fn publish(
        &self,
        node: &str,
        payload: &[u8],
        options: &PublishOptions,
    ) -> Result<(), StoreError> {
        self.inner.publish(node, payload, options).await
    }
    async fn deregister(&self, node: &str) -> Result<(), StoreError> {
        self.inner.deregister(node).await
    }
    async fn epoch(&self, candidate: &str) -> Result<String, StoreError> {
        self.marks.stamp(&self.marks.start_ns);
        self.inner.epoch(candidate).await
    }
    async fn node_ids(&self) -> Result<Vec<String>, StoreError> {
        self.inner.node_ids().await
    }
    async fn latest(&self, nodes: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let result = self.inner.latest(nodes).await;
        self.marks.stamp(&self.marks.read_end_ns);
        result
    }
    async fn prune(&self, idle_for: Duration) -> Result<u64, StoreError> {
        self.inner.prune(idle_for).await
    }
    async fn history(&self, node: &str, count: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.history(node, count).await
    }
}

/// One completed poll.
#[derive(Debug)]
struct Poll {
    start: Instant,
    read_end: Instant,
    end: Instant,
    /// Nodes in the view (ingestor) or live entries read (baseline).
    nodes: usize,
    /// Nodes whose sequence number advanced since the previous poll.
    new_heartbeats: u64,
    /// Sum of those advances (more than `new_heartbeats` if one was missed).
    seq_advance: u64,
    /// `sent_ms` of the latest heartbeat of each tracked node in the view.
    tracked: Vec<(String, u64)>,
    /// Heartbeats kept in the view's per-node histories, all nodes together.
    history: usize,
}

#[derive(Debug)]
enum Msg {
    Poll(Poll),
    Departed {
        node: String,
        reason: DepartReason,
        at_ms: u64,
    },
    Child(String),
    Failed(String),
}

/// A measured thread and the switch that stops it.
#[derive(Debug)]
struct Reader {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Reader {
    fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// Runs `body` on a current-thread runtime on a new thread named `name`
/// (its blocking threads too), so its CPU can be read per thread.
fn spawn_reader<F, Fut>(name: &str, tx: mpsc::Sender<Msg>, body: F) -> anyhow::Result<Reader>
where
    F: FnOnce(watch::Receiver<bool>, mpsc::Sender<Msg>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (stop, stop_rx) = watch::channel(false);
    let blocking_name = format!("{name}-blocking");
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(blocking_name)
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(body(stop_rx, tx.clone())));
            if let Err(error) = result {
                let _ = tx.send(Msg::Failed(format!("{error:#}")));
            }
        })?;
    Ok(Reader { stop, thread })
}

/// Counts, between two snapshots, the nodes whose sequence advanced.
fn advances(before: &FleetSnapshot, after: &FleetSnapshot) -> (u64, u64) {
    let (mut count, mut sum) = (0, 0);
    let mut old = before.nodes.iter().peekable();
    for entry in &after.nodes {
        let hb = &entry.latest.heartbeat;
        while old
            .peek()
            .is_some_and(|o| o.latest.heartbeat.node < hb.node)
        {
            old.next();
        }
        if let Some(o) = old.peek()
            && o.latest.heartbeat.node == hb.node
            && o.latest.heartbeat.boot == hb.boot
            && hb.seq > o.latest.heartbeat.seq
        {
            count += 1;
            sum += hb.seq - o.latest.heartbeat.seq;
        }
    }
    (count, sum)
}

fn start_ingestor(
    args: &Args,
    prefix: &str,
    tracked: Vec<String>,
    tx: mpsc::Sender<Msg>,
) -> anyhow::Result<Reader> {
    let url = args.redis_url.clone();
    let prefix = prefix.to_owned();
    let config = IngestorConfig {
        poll_interval: args.poll(),
        stale_after: args.stale_after(),
        ..IngestorConfig::default()
    };
    spawn_reader("ingestor", tx, move |mut stop, tx| async move {
        let marks = Arc::new(Marks {
            base: Instant::now(),
            start_ns: AtomicU64::new(0),
            read_end_ns: AtomicU64::new(0),
        });
        let store = TimedStore {
            inner: RedisStore::new(connect(&RedisOptions::new(url))?, KeyLayout::new(prefix)),
            marks: Arc::clone(&marks),
        };
        let fleet = Ingestor::new(store, SystemClock, config)?.spawn();
        let mut snapshots = fleet.snapshots();
        let mut events = fleet.events();
        let mut previous = fleet.snapshot();
        // This bookkeeping runs on the ingestor's thread, so its (small)
        // cost is counted as the ingestor's: an overestimate.
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let end = Instant::now();
                    let snapshot = Arc::clone(&snapshots.borrow_and_update());
                    let (new_heartbeats, seq_advance) = advances(&previous, &snapshot);
                    let tracked = tracked
                        .iter()
                        .filter_map(|id| {
                            snapshot
                                .node(id)
                                .map(|n| (id.clone(), n.latest.heartbeat.sent_ms))
                        })
                        .collect();
                    let poll = Poll {
                        start: marks.at(&marks.start_ns),
                        read_end: marks.at(&marks.read_end_ns),
                        end,
                        nodes: snapshot.nodes.len(),
                        history: snapshot.nodes.iter().map(|n| n.history.len()).sum(),
                        new_heartbeats,
                        seq_advance,
                        tracked,
                    };
                    previous = snapshot;
                    if tx.send(Msg::Poll(poll)).is_err() {
                        break;
                    }
                }
                event = events.recv() => match event {
                    Ok(FleetEvent::Departed { node, reason }) => {
                        let at_ms = SystemClock.now_ms();
                        let _ = tx.send(Msg::Departed { node, reason, at_ms });
                    }
                    // Joins at warm-up outnumber the channel: fine.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        drop(previous);
        fleet.shutdown().await;
        Ok(())
    })
}

/// The same reads as a poll of the ingestor, through the same store, with
/// nothing done with what is read.
fn start_baseline(args: &Args, prefix: &str, tx: mpsc::Sender<Msg>) -> anyhow::Result<Reader> {
    let url = args.redis_url.clone();
    let prefix = prefix.to_owned();
    let poll_interval = args.poll();
    spawn_reader("baseline", tx, move |mut stop, tx| async move {
        let store = RedisStore::new(connect(&RedisOptions::new(url))?, KeyLayout::new(prefix));
        let candidate = format!("baseline-{}", std::process::id());
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep_until(next) => {}
            }
            let start = Instant::now();
            let read = async {
                store.epoch(&candidate).await?;
                let ids = store.node_ids().await?;
                store.latest(&ids).await
            };
            let nodes = match read.await {
                Ok(payloads) => payloads.iter().filter(|p| p.is_some()).count(),
                Err(error) => {
                    tracing::warn!(%error, "baseline read failed");
                    next = Instant::now() + poll_interval;
                    continue;
                }
            };
            let end = Instant::now();
            let poll = Poll {
                start,
                read_end: end,
                end,
                nodes,
                new_heartbeats: 0,
                seq_advance: 0,
                tracked: Vec::new(),
                history: 0,
            };
            if tx.send(Msg::Poll(poll)).is_err() {
                break;
            }
            next = Instant::now() + poll_interval;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------

/// utime + stime, in ticks, from a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name (which may hold spaces) start at field
    // 3 (state); utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of this process's threads whose name starts with `prefix`.
fn thread_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| stat_ticks(&stat))
        .sum()
}

fn process_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_ticks(&s))
        .unwrap_or(0)
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    } else {
        sorted[mid]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// What one measured window gave.
#[derive(Debug, Default)]
struct Window {
    polls: usize,
    seconds: f64,
    heartbeats: u64,
    seq_advance: u64,
    nodes_min: usize,
    nodes_max: usize,
    poll_ms: Vec<f64>,
    read_ms: Vec<f64>,
    /// CPU % of one core over consecutive groups of polls (one publish
    /// interval each).
    cpu_groups: Vec<f64>,
    cpu_mean: f64,
    process_cpu_mean: f64,
    /// Mean per-node history length at the end.
    history_per_node: f64,
}

impl Window {
    fn rate(&self) -> f64 {
        self.heartbeats as f64 / self.seconds
    }
}

/// Collects polls for `length` from the next poll on, sampling the CPU of
/// the threads named `threads` at each. Other messages go to `other`.
fn measure(
    rx: &mpsc::Receiver<Msg>,
    threads: &str,
    length: Duration,
    group: usize,
    other: &mut dyn FnMut(Msg),
) -> anyhow::Result<Window> {
    let first = next_poll(rx, Duration::from_secs(30), other)?;
    let t0 = first.end;
    let (ticks0, process0) = (thread_ticks(threads), process_ticks());
    let mut window = Window {
        nodes_min: first.nodes,
        nodes_max: first.nodes,
        ..Window::default()
    };
    let mut samples = vec![(t0, ticks0)];
    let mut last_end = t0;
    while last_end.duration_since(t0) < length {
        let poll = next_poll(rx, Duration::from_secs(30), other)?;
        samples.push((poll.end, thread_ticks(threads)));
        window.polls += 1;
        window.heartbeats += poll.new_heartbeats;
        window.seq_advance += poll.seq_advance;
        window.nodes_min = window.nodes_min.min(poll.nodes);
        window.nodes_max = window.nodes_max.max(poll.nodes);
        window.poll_ms.push(ms(poll.end.duration_since(poll.start)));
        window
            .read_ms
            .push(ms(poll.read_end.duration_since(poll.start)));
        window.history_per_node = poll.history as f64 / poll.nodes.max(1) as f64;
        last_end = poll.end;
    }
    let elapsed = last_end.duration_since(t0).as_secs_f64();
    window.seconds = elapsed;
    let (ticks1, process1) = (thread_ticks(threads), process_ticks());
    let pct = |ticks: u64, secs: f64| ticks as f64 / TICKS_PER_SEC / secs * 100.0;
    window.cpu_mean = pct(ticks1.saturating_sub(ticks0), elapsed);
    window.process_cpu_mean = pct(process1.saturating_sub(process0), elapsed);
    // Whole groups of `group` polls (one publish interval each).
    for start in (0..samples.len()).step_by(group) {
        let (Some(from), Some(to)) = (samples.get(start), samples.get(start + group)) else {
            break;
        };
        let secs = to.0.duration_since(from.0).as_secs_f64();
        window
            .cpu_groups
            .push(pct(to.1.saturating_sub(from.1), secs));
    }
    Ok(window)
}

fn next_poll(
    rx: &mpsc::Receiver<Msg>,
    within: Duration,
    other: &mut dyn FnMut(Msg),
) -> anyhow::Result<Poll> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Msg::Poll(poll)) => return Ok(poll),
            Ok(Msg::Failed(error)) => bail!("reader failed: {error}"),
            Ok(msg) => other(msg),
            Err(_) => bail!("no successful poll within {within:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The bench
// ---------------------------------------------------------------------------

/// The publisher process; killed if still running when dropped.
#[derive(Debug)]
struct Publisher {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Publisher {
    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("publisher stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Asks the publisher to quit and waits for it (killing it after 10 s).
    fn finish(&mut self) {
        let _ = self.send("quit");
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_publisher(
    args: &Args,
    prefix: &str,
    deadline: Duration,
    tx: mpsc::Sender<Msg>,
) -> anyhow::Result<Publisher> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--role", "publisher", "--prefix", prefix])
        .args(["--nodes", &args.nodes.to_string()])
        .args(["--interval-ms", &args.interval_ms.to_string()])
        .args(["--stale-after-ms", &args.stale_after_ms.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .args(["--redis-url", &args.redis_url])
        .args(["--deadline-secs", &deadline.as_secs().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the publisher process")?;
    let stdout = child.stdout.take().context("publisher stdout")?;
    let stdin = child.stdin.take();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(Msg::Child(line)).is_err() {
                break;
            }
        }
    });
    Ok(Publisher { child, stdin })
}

/// Departure timings, ms.
#[derive(Debug, Default)]
struct Departures {
    /// Silenced: from the node's last heartbeat (`sent_ms`) to the poll that
    /// reported it departed.
    silenced_ms: Vec<f64>,
    silenced_wrong_reason: usize,
    /// Deregistered: from the start of the deregister call to the report.
    deregistered_ms: Vec<f64>,
    deregistered_wrong_reason: usize,
    missing: Vec<String>,
    /// Mean per-node history length at the end of the test.
    history_per_node: f64,
}

fn departure_test(
    args: &Args,
    publisher: &mut Publisher,
    rx: &mpsc::Receiver<Msg>,
    silence: &[String],
    deregister: &[String],
) -> anyhow::Result<Departures> {
    let mut last_sent: HashMap<String, u64> = HashMap::new();
    let mut deregister_at: HashMap<String, u64> = HashMap::new();
    let mut departed: HashMap<String, (u64, DepartReason)> = HashMap::new();
    let mut history_per_node = 0.0;
    for node in silence {
        publisher.send(&format!("stop {node}"))?;
    }
    for node in deregister {
        publisher.send(&format!("deregister {node}"))?;
    }
    let deadline = Instant::now() + args.stale_after() + args.interval() + 4 * args.poll();
    let expected = silence.len() + deregister.len();
    while departed.len() < expected || deregister_at.len() < deregister.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(Msg::Poll(poll)) => {
                history_per_node = poll.history as f64 / poll.nodes.max(1) as f64;
                last_sent.extend(poll.tracked);
            }
            Ok(Msg::Departed {
                node,
                reason,
                at_ms,
            }) => {
                departed.insert(node, (at_ms, reason));
            }
            Ok(Msg::Child(line)) => {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let ["deregistered", node, at, ok] = words[..] {
                    if ok != "true" {
                        bail!("deregistering {node} failed");
                    }
                    deregister_at.insert(node.to_owned(), at.parse()?);
                }
            }
            Ok(Msg::Failed(error)) => bail!("ingestor failed: {error}"),
            Err(_) => break,
        }
    }
    let mut result = Departures {
        history_per_node,
        ..Departures::default()
    };
    for node in silence {
        match (departed.get(node), last_sent.get(node)) {
            (Some(&(at, reason)), Some(&sent)) => {
                result.silenced_ms.push(at.saturating_sub(sent) as f64);
                if reason != DepartReason::Expired {
                    result.silenced_wrong_reason += 1;
                }
            }
            _ => result.missing.push(node.clone()),
        }
    }
    for node in deregister {
        match (departed.get(node), deregister_at.get(node)) {
            (Some(&(at, reason)), Some(&start)) => {
                result.deregistered_ms.push(at.saturating_sub(start) as f64);
                if reason != DepartReason::Removed {
                    result.deregistered_wrong_reason += 1;
                }
            }
            _ => result.missing.push(node.clone()),
        }
    }
    Ok(result)
}

/// Everything measured.
#[derive(Debug)]
struct Report {
    ingestor: Window,
    baseline: Window,
    departures: Departures,
    rss_before_mib: f64,
    rss_mib: f64,
    hwm_mib: f64,
    /// RSS after the departure test, histories fuller.
    rss_late_mib: f64,
    warmup_s: f64,
}

fn run_bench(args: &Args) -> anyhow::Result<()> {
    let prefix = format!("rtc-bench-{}:", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = runtime.block_on(async {
        let client = connect(&RedisOptions::new(args.redis_url.clone()))?;
        let store = RedisStore::new(client.clone(), KeyLayout::new(prefix.clone()));
        store.node_ids().await.with_context(|| {
            format!(
                "Redis at {} is not reachable: start it with `deploy/local/stack up redis`",
                args.redis_url
            )
        })?;
        anyhow::Ok(client)
    })?;

    let budget = args.interval() * 2
        + Duration::from_secs(args.window_secs + args.baseline_secs + 120)
        + args.stale_after();
    let (tx, rx) = mpsc::channel();
    eprintln!(
        "[ingest] {} nodes every {} ms under {prefix}; starting the publisher",
        args.nodes, args.interval_ms
    );
    let mut publisher = start_publisher(args, &prefix, budget, tx.clone())?;
    let result = measure_all(args, &prefix, &mut publisher, &rx, &tx);
    publisher.finish();
    let cleaned = runtime.block_on(cleanup(&client, &prefix, args.nodes));
    let report = result?;
    let deleted = cleaned?;
    print_report(args, &report, deleted);
    Ok(())
}

fn measure_all(
    args: &Args,
    prefix: &str,
    publisher: &mut Publisher,
    rx: &mpsc::Receiver<Msg>,
    tx: &mpsc::Sender<Msg>,
) -> anyhow::Result<Report> {
    let (silence, deregister) = departing(args);
    let group = usize::try_from((args.interval_ms / args.poll_ms).max(1))?;
    let mut ignore = |_msg: Msg| {};

    // 1. The ingestor.
    let rss_before_mib = status_mib("VmRSS");
    let started = Instant::now();
    let tracked: Vec<String> = silence.iter().chain(&deregister).cloned().collect();
    let ingestor = start_ingestor(args, prefix, tracked, tx.clone())?;
    let warmup_limit = args.interval() * 3 + Duration::from_secs(30);
    loop {
        let left = warmup_limit.saturating_sub(started.elapsed());
        let poll = next_poll(rx, left, &mut ignore)
            .with_context(|| format!("warm-up: not all {} nodes seen", args.nodes))?;
        if poll.nodes >= args.nodes {
            break;
        }
    }
    let warmup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "[ingest] all {} nodes seen after {warmup_s:.1} s; measuring the ingestor for {} s",
        args.nodes, args.window_secs
    );
    let window = measure(
        rx,
        "ingestor",
        Duration::from_secs(args.window_secs),
        group,
        &mut ignore,
    );
    let (rss_mib, hwm_mib) = (status_mib("VmRSS"), status_mib("VmHWM"));
    let window = match window {
        Ok(window) => window,
        Err(error) => {
            ingestor.finish();
            return Err(error);
        }
    };

    // 2. Departures, with the ingestor still running.
    eprintln!(
        "[ingest] departures: silencing {} and deregistering {} nodes",
        silence.len(),
        deregister.len()
    );
    let departures = departure_test(args, publisher, rx, &silence, &deregister);
    let rss_late_mib = status_mib("VmRSS");
    ingestor.finish();
    let departures = departures?;

    // 3. The baseline reader.
    eprintln!(
        "[ingest] measuring the baseline reader for {} s",
        args.baseline_secs
    );
    let baseline = start_baseline(args, prefix, tx.clone())?;
    // Its first poll connects; measure from the next one.
    let measured = next_poll(rx, Duration::from_secs(30), &mut ignore).and_then(|_| {
        measure(
            rx,
            "baseline",
            Duration::from_secs(args.baseline_secs),
            group,
            &mut ignore,
        )
    });
    baseline.finish();
    Ok(Report {
        ingestor: window,
        baseline: measured?,
        departures,
        rss_before_mib,
        rss_mib,
        hwm_mib,
        rss_late_mib,
        warmup_s,
    })
}

/// Deletes every key of the run: the ones it knows, then any left under the
/// prefix. Returns how many were deleted.
async fn cleanup(
    client: &fred::clients::Client,
    prefix: &str,
    nodes: usize,
) -> anyhow::Result<i64> {
    let keys = KeyLayout::new(prefix);
    let mut names = vec![keys.index(), keys.epoch()];
    for i in 0..nodes {
        let id = node_id(i);
        names.push(keys.live(&id));
        names.push(keys.history(&id));
    }
    let mut deleted = 0;
    for chunk in names.chunks(500) {
        deleted += client.unlink::<i64, _>(chunk.to_vec()).await?;
    }
    // The prefix is `rtc-bench-<pid>:`: no glob characters.
    let rest: Vec<String> = client
        .custom(
            CustomCommand::new_static("KEYS", ClusterHash::FirstKey, false),
            vec![format!("{prefix}*")],
        )
        .await?;
    if !rest.is_empty() {
        deleted += client.unlink::<i64, _>(rest).await?;
    }
    client.quit().await?;
    Ok(deleted)
}

fn print_report(args: &Args, r: &Report, deleted: i64) {
    let (i, b) = (&r.ingestor, &r.baseline);
    let offered = args.nodes as f64 / args.interval().as_secs_f64();
    let ratio = |a: f64, b: f64| format!("{:.2}×", a / b);
    let cpu_median = median(&i.cpu_groups);
    let base_cpu_median = median(&b.cpu_groups);
    // The loop sleeps `poll` after each poll ends: one tick is the poll
    // interval plus a poll.
    let tick_ms = ms(args.poll()) + median(&i.poll_ms);
    let stale_bound_ms = ms(args.stale_after()) + tick_ms;
    // A node removed just after a poll read its key is reported at the end
    // of the next poll: a tick plus a poll.
    let poll_bound_ms = tick_ms + median(&i.poll_ms);
    let d = &r.departures;
    println!();
    println!(
        "Heartbeat ingestion: {} nodes every {} ms (offered {offered:.0}/s), poll every {} ms, \
         STALE_AFTER {} ms, {} CPUs",
        args.nodes,
        args.interval_ms,
        args.poll_ms,
        args.stale_after_ms,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "ingestor window {:.1} s ({} polls, {}..{} nodes in view, warm-up {:.1} s); \
         baseline window {:.1} s ({} polls, {}..{} live entries read)",
        i.seconds,
        i.polls,
        i.nodes_min,
        i.nodes_max,
        r.warmup_s,
        b.seconds,
        b.polls,
        b.nodes_min,
        b.nodes_max
    );
    println!();
    println!("| measure | ingestor | baseline (reads only) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| heartbeats ingested/s | {:.0} ({:.1}% of offered; {} missed) | – | – |",
        i.rate(),
        i.rate() / offered * 100.0,
        i.seq_advance - i.heartbeats
    );
    println!(
        "| poll latency median | {:.1} ms | {:.1} ms | {} |",
        median(&i.poll_ms),
        median(&b.poll_ms),
        ratio(median(&i.poll_ms), median(&b.poll_ms))
    );
    println!(
        "| poll latency p95 | {:.1} ms | {:.1} ms | {} |",
        percentile(&i.poll_ms, 95.0),
        percentile(&b.poll_ms, 95.0),
        ratio(percentile(&i.poll_ms, 95.0), percentile(&b.poll_ms, 95.0))
    );
    println!(
        "| of which Redis reads, median | {:.1} ms | {:.1} ms | {} |",
        median(&i.read_ms),
        median(&b.read_ms),
        ratio(median(&i.read_ms), median(&b.read_ms))
    );
    println!(
        "| CPU % of one core, median of {} s groups | {:.1}% | {:.1}% | {} |",
        args.interval_ms / 1_000,
        cpu_median,
        base_cpu_median,
        ratio(cpu_median, base_cpu_median)
    );
    println!(
        "| CPU % of one core, window mean | {:.1}% | {:.1}% | {} |",
        i.cpu_mean,
        b.cpu_mean,
        ratio(i.cpu_mean, b.cpu_mean)
    );
    println!(
        "| whole bench process CPU %, window mean | {:.1}% | {:.1}% | – |",
        i.process_cpu_mean, b.process_cpu_mean
    );
    println!(
        "| RSS at window end (peak) | {:.1} MiB ({:.1} MiB): +{:.1} MiB over {:.1} MiB before the ingestor, {:.1} heartbeats of history per node | – | – |",
        r.rss_mib,
        r.hwm_mib,
        r.rss_mib - r.rss_before_mib,
        r.rss_before_mib,
        i.history_per_node
    );
    println!(
        "| RSS after the departure test | {:.1} MiB: +{:.1} MiB, {:.1} heartbeats of history per node | – | – |",
        r.rss_late_mib,
        r.rss_late_mib - r.rss_before_mib,
        d.history_per_node
    );
    println!();
    println!(
        "One tick = the poll interval plus the median poll ({tick_ms:.0} ms): polls start every interval, and a departure lands in the view when the poll that sees it ends."
    );
    println!("| departure | nodes | median | max | bound |");
    println!("|---|---|---|---|---|");
    println!(
        "| silenced: last heartbeat -> reported departed | {} | {:.0} ms | {:.0} ms | STALE_AFTER + one tick = {stale_bound_ms:.0} ms |",
        d.silenced_ms.len(),
        median(&d.silenced_ms),
        percentile(&d.silenced_ms, 100.0),
    );
    println!(
        "| deregistered: deregister call -> reported departed | {} | {:.0} ms | {:.0} ms | one tick + one poll = {poll_bound_ms:.0} ms |",
        d.deregistered_ms.len(),
        median(&d.deregistered_ms),
        percentile(&d.deregistered_ms, 100.0),
    );
    if !d.missing.is_empty() || d.silenced_wrong_reason + d.deregistered_wrong_reason > 0 {
        println!(
            "departure problems: not reported {:?}; silenced reported as removed: {}; deregistered reported as expired: {}",
            d.missing, d.silenced_wrong_reason, d.deregistered_wrong_reason
        );
    }
    println!();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let rate_ok = i.rate() >= offered * 0.98 && i.seq_advance == i.heartbeats;
    let silenced_max = percentile(&d.silenced_ms, 100.0);
    let dereg_max = percentile(&d.deregistered_ms, 100.0);
    let departures_ok = d.missing.is_empty()
        && d.silenced_wrong_reason + d.deregistered_wrong_reason == 0
        && silenced_max <= stale_bound_ms;
    let deregister_ok = d.deregistered_wrong_reason == 0 && dereg_max <= poll_bound_ms;
    println!(
        "goal {offered:.0} heartbeats/s sustained: {} ({:.0}/s)",
        met(rate_ok),
        i.rate()
    );
    println!(
        "goal under 10% of one core: {} (median {cpu_median:.1}%, mean {:.1}%)",
        met(cpu_median < 10.0 && i.cpu_mean < 10.0),
        i.cpu_mean
    );
    println!(
        "goal departure seen within STALE_AFTER + one tick: {} (silenced max {silenced_max:.0} ms of {stale_bound_ms:.0} ms)",
        met(departures_ok)
    );
    println!(
        "deregistration seen within one tick + one poll: {} (max {dereg_max:.0} ms of {poll_bound_ms:.0} ms)",
        if deregister_ok { "yes" } else { "no" }
    );
    println!("cleaned up {deleted} keys under the run's prefix");
}
