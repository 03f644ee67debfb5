//! Speed of the load-balancer binary on the local stack, with its default
//! timings (heartbeats every 5 s, a tick every 5 s):
//!
//! 1. reaction: the time from the first overloaded heartbeat written to
//!    Redis until the Deployment's spec.replicas changes, over several
//!    trials, next to a baseline measured in the same run: one bare /scale
//!    read-and-write round trip, the least any scaler must spend;
//! 2. cost: the load-balancer process's CPU (share of one core) and memory
//!    while 1 000 live nodes heartbeat every 5 s.
//!
//! Run with the stack up: `./dev bench-loop`, or
//! `cargo bench -p rtc-load-balancer --bench loop -- [--trials N] [--nodes N] [--window-s N]`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use std::time::Duration;
use tokio::time::Instant;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

const DEFAULTS: &[(&str, &str)] = &[
    ("TICK_INTERVAL_MS", "5000"),
    ("STALE_AFTER_MS", "15000"),
    ("LEASE_DURATION_MS", "15000"),
    ("RENEW_DEADLINE_MS", "10000"),
    ("RETRY_PERIOD_MS", "2000"),
    ("LEADER_SAFETY_MARGIN_MS", "2000"),
    ("RUST_LOG", "warn,rtc_autoscaler=info"),
];

async fn reaction(trial: u64) -> Result<(Duration, Duration)> {
    let ns = rtc_testkit::kubernetes().await?;
    let mut fleet = Fleet::with_timing(
        &prefix(&ns),
        Duration::from_secs(5),
        Duration::from_secs(15),
    )?;
    let identity = format!("lb-{trial}");
    let lb = start_balanced(
        &ns,
        Kind::Deployment,
        &mut fleet,
        &identity,
        DEFAULTS,
        Duration::from_secs(60),
    )
    .await?;
    // Start the overload at a random point of the heartbeat and tick cycles.
    tokio::time::sleep(Duration::from_millis(trial * 1_700 % 5_000)).await;
    let start = Instant::now();
    fleet.set_all(load(0.9, 900));
    let took = eventually(Duration::from_secs(40), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(8)).then(|| start.elapsed())
    })
    .await
    .ok_or_else(|| format!("no scale-out:\n{}", lb.log()))?;

    // Baseline: one bare read and write of the same /scale subresource.
    let api = ns.api::<Deployment>();
    let t = Instant::now();
    let scale = api.get_scale(NAME).await?;
    let replicas_now = scale.spec.and_then(|s| s.replicas).unwrap_or(8);
    let patch = serde_json::json!({ "spec": { "replicas": replicas_now } });
    api.patch_scale(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let baseline = t.elapsed();
    drop(lb);
    ns.cleanup().await?;
    Ok((took, baseline))
}

async fn cost(nodes: u64, window: Duration) -> Result<(f64, u64)> {
    let ns = rtc_testkit::kubernetes().await?;
    create_workload(
        &ns,
        Kind::Deployment,
        i32::try_from(nodes).unwrap_or(i32::MAX),
    )
    .await?;
    let mut fleet = Fleet::with_timing(
        &prefix(&ns),
        Duration::from_secs(5),
        Duration::from_secs(15),
    )?;
    let port = free_port()?;
    let admin = format!("127.0.0.1:{port}");
    let extra = [
        ("SOCKET_MAX_REPLICAS", "2000"),
        ("ADMIN_ADDR", admin.as_str()),
    ];
    let lb = Lb::start("lb-cost", &ns, &prefix(&ns), &[DEFAULTS, &extra].concat())?;
    for i in 0..nodes {
        fleet.add(&format!("socket-{i}"), load(0.4, 100))?;
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let pid = lb.child.id();
    let all = format!("rtc_lb_ring_nodes {nodes}");
    eventually(Duration::from_secs(60), || async {
        admin_get(port, "/metrics")
            .await
            .filter(|(_, body)| body.contains(&all))
    })
    .await
    .ok_or_else(|| format!("never saw all {nodes} nodes:\n{}", lb.log()))?;
    let before = cpu_ticks(pid).ok_or("no /proc stat")?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid).ok_or("no /proc stat")? - before;
    let share = used as f64 / 100.0 / t.elapsed().as_secs_f64();
    let rss = rss_kib(pid).unwrap_or(0);
    drop(lb);
    ns.cleanup().await?;
    Ok((share, rss))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result {
    let trials = arg("--trials", 5);
    let nodes = arg("--nodes", 1_000);
    let window = Duration::from_secs(arg("--window-s", 30));

    let mut reactions = Vec::new();
    let mut baselines = Vec::new();
    for trial in 0..trials {
        let (took, baseline) = reaction(trial).await?;
        println!("reaction trial {trial}: {took:.2?} (bare /scale round trip {baseline:.2?})");
        reactions.push(took);
        baselines.push(baseline);
    }
    let (r, b) = (median(reactions.clone()), median(baselines));
    println!(
        "reaction, first overloaded heartbeat to /scale write: median {r:.2?}, max {:.2?} over {trials} trials; bare /scale round trip median {b:.2?} (ratio {:.0}x)",
        reactions.iter().max().copied().unwrap_or_default(),
        r.as_secs_f64() / b.as_secs_f64().max(1e-9)
    );

    let (share, rss) = cost(nodes, window).await?;
    println!(
        "cost with {nodes} live nodes heartbeating every 5 s: load-balancer CPU {:.1}% of one core over {window:?}, RSS {:.1} MiB",
        share * 100.0,
        rss as f64 / 1024.0
    );
    Ok(())
}
