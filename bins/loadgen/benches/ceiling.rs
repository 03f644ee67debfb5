//! The generator's own ceiling on this machine: how many connections and
//! messages per second one generator process drives against two socket pods
//! of deploy/k8s on the local stack (`just bench-loadgen`, about 3 minutes).
//!
//! Two series of steps, each a fresh run in the same namespace:
//! - connections: a ramp to N connections at 200 new connections a second,
//!   with 200 msg/s;
//! - messages: 200 connections, held 10 s, at R msg/s overall.
//!
//! Every step runs (the machine is shared and noisy: one slow step does not
//! end the series). A step holds when every connection wanted was open (the ramp's last
//! rounding aside), the schedule's messages were all sent, every one
//! arrived within the grace period, and p99 latency stayed under a second.
//! The generator's CPU time (user + system, from /proc/self/stat) is printed
//! beside each step, to tell its own limit from the socket pods'.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use rtc_loadgen::progress::Silent;
use rtc_loadgen::{Phase, PhaseKind, Profile, Rate, RunConfig, Summary};
use support::{Result, discovery, socket_pods};
use tokio::time::Instant;

/// Clock ticks per second of /proc/self/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
    (ticks(11) + ticks(12)) / USER_HZ
}

fn phase(name: &str, kind: PhaseKind, secs: u64, connections: u32, rate: f64) -> Phase {
    Phase {
        name: name.into(),
        kind,
        duration: Duration::from_secs(secs),
        connections,
        rate: Rate::Overall(rate),
    }
}

struct Step {
    label: String,
    summary: Summary,
    wall: Duration,
    cpu: f64,
    wanted_connections: u64,
    wanted_messages: u64,
}

impl Step {
    fn holds(&self) -> bool {
        let m = &self.summary.messages;
        self.summary.connections.peak_open + 2 >= self.wanted_connections
            && m.sent >= self.wanted_messages
            && m.received == m.sent
            && self.summary.latency.p99_ms < 1000.0
    }

    fn print(&self) {
        let s = &self.summary;
        let run = Duration::from_millis(s.run_ms).as_secs_f64();
        println!(
            "{:<22} peak_open {:>6}  sent {:>7} ({:>7.0}/s)  received {:>7}  lost {:>3}  dup {:>3}  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  generator CPU {:>4.0}% of a core  {}",
            self.label,
            s.connections.peak_open,
            s.messages.sent,
            s.messages.sent as f64 / run,
            s.messages.received,
            s.messages.lost,
            s.messages.duplicates,
            s.latency.p50_ms,
            s.latency.p99_ms,
            s.latency.max_ms,
            100.0 * self.cpu / self.wall.as_secs_f64(),
            if self.holds() {
                "holds"
            } else {
                "DOES NOT HOLD"
            },
        );
    }
}

async fn step(
    ns: &rtc_testkit::TestNamespace,
    label: String,
    phases: Vec<Phase>,
    wanted_connections: u64,
) -> Result<Step> {
    let profile = Profile { phases };
    let wanted_messages = rtc_loadgen::schedule::Schedule::new(&profile).total_messages();
    let mut config = RunConfig::new(support::run_id(), profile);
    config.grace = Duration::from_secs(10);
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let summary = rtc_loadgen::run(config, discovery(ns), &mut Silent).await?;
    let step = Step {
        label,
        summary,
        wall: wall.elapsed(),
        cpu: cpu_seconds() - cpu,
        wanted_connections,
        wanted_messages,
    };
    step.print();
    Ok(step)
}

fn main() -> Result {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (ns, pods) = socket_pods(2).await?;
        println!("two socket pods Ready: {:?}", pods.iter().map(support::address).collect::<Vec<_>>());
        let mut best_connections = 0;
        for n in [2_000u32, 4_000, 8_000] {
            let phases = vec![phase("ramp", PhaseKind::Ramp, u64::from(n / 200), n, 200.0)];
            let s = step(&ns, format!("{n} connections"), phases, u64::from(n)).await?;
            if s.holds() {
                best_connections = n;
            }
        }
        let mut best_rate = 0;
        for r in [500u32, 1_000, 2_000] {
            let phases = vec![phase("hold", PhaseKind::Steady, 10, 200, f64::from(r))];
            let s = step(&ns, format!("{r} msg/s"), phases, 200).await?;
            if s.holds() {
                best_rate = r;
            }
        }
        println!(
            "ceiling on this machine: {best_connections} connections held (at 200 msg/s), {best_rate} msg/s held (on 200 connections), against two socket pods"
        );
        ns.cleanup().await?;
        Ok(())
    })
}
