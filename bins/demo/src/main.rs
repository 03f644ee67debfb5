//! The demo binary: flags, then [`rtc_demo::run`]. `./dev demo` starts the
//! stack and runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rtc_demo::{DemoConfig, Outcome, report};
use rtc_loadgen::Profile;
use rtc_loadgen::ledger::AckStatus;
use rtc_time::{SystemClock, WallClock};

/// The whole scaling flow live on the local stack: a socket fleet and two
/// load-balancers as pods, a spike of WebSocket load then calm, the
/// load-balancer scaling the fleet through Kubernetes, drains, and what it
/// all cost in lost messages (none).
#[derive(Debug, Parser)]
#[command(name = "demo", version, about, long_about = None)]
struct Cli {
    /// Run the socket workload as a StatefulSet instead of a Deployment.
    #[arg(long)]
    statefulset: bool,
    /// The load profile (JSON, see docs/loadgen.md).
    #[arg(long, default_value = "bins/demo/profiles/spike-then-calm.json")]
    profile: PathBuf,
    /// The kustomize overlay to install.
    #[arg(long, default_value = "deploy/k8s/overlays/local")]
    overlay: PathBuf,
    /// The overlay's namespace.
    #[arg(long, default_value = "rtc")]
    namespace: String,
    /// Where the run record, chart and summary go (default:
    /// target/demo/<time>-<workload kind>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Leave the fleet running at the end.
    #[arg(long)]
    keep: bool,
    /// Delete the leading load-balancer pod this long after the load starts
    /// (e.g. 60s), to show the other replica taking over.
    #[arg(long, value_parser = rtc_loadgen::duration::parse_duration)]
    kill_leader_at: Option<std::time::Duration>,
    /// The stack's Redis (`deploy/local/stack env`).
    #[arg(long, env = "RTC_REDIS_URL")]
    redis_url: Option<String>,
    /// The stack's broker.
    #[arg(long, env = "RTC_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// The API server's audit log.
    #[arg(long, env = "RTC_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// A key of the fleet's ConfigMap rtc-config to set over the overlay's,
    /// e.g. `--set REBALANCE=false`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = setting)]
    settings: Vec<(String, String)>,
    /// Run the profile twice, with rebalancing on then off (REBALANCE), and
    /// print the two side by side.
    #[arg(long, conflicts_with = "kill_leader_at")]
    compare_rebalance: bool,
}

/// `KEY=VALUE`, with an upper-case key as the binaries' settings are.
fn setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} has no `=`; allowed: KEY=VALUE, e.g. REBALANCE=false"))?;
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(format!(
            "key {key:?} is not allowed; allowed: upper-case letters, digits and `_`, e.g. REBALANCE"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Stack of the runtime's threads.
const STACK: usize = 32 << 20;

fn needed<T>(value: Option<T>, name: &str) -> anyhow::Result<T> {
    value.with_context(|| {
        format!(
            "{name} is not set: run `eval \"$(deploy/local/stack env)\"` first, or use `./dev demo`"
        )
    })
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(&cli.profile)
        .with_context(|| format!("reading the profile {}", cli.profile.display()))?;
    let profile = Profile::from_json(&text)
        .with_context(|| format!("the profile {}", cli.profile.display()))?;
    let kind = if cli.statefulset {
        "statefulset"
    } else {
        "deployment"
    };
    let out = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from("target/demo").join(format!("{}-{kind}", SystemClock.now_ms() / 1000))
    });
    let config = DemoConfig {
        overlay: cli.overlay.clone(),
        namespace: cli.namespace.clone(),
        statefulset: cli.statefulset,
        profile,
        out_dir: out,
        plain: cli.plain,
        redis_url: needed(cli.redis_url, "RTC_REDIS_URL")?,
        kafka_bootstrap: needed(cli.kafka_bootstrap, "RTC_KAFKA_BOOTSTRAP")?,
        audit_log: needed(cli.audit_log, "RTC_AUDIT_LOG")?,
        keep: cli.keep,
        kill_leader_at: cli.kill_leader_at,
        settings: cli.settings.into_iter().collect(),
        nodes_dir: std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .and_then(|k| k.parent().map(|d| d.join("nodes"))),
    };
    if !config.overlay.join("kustomization.yaml").exists() {
        anyhow::bail!(
            "{} has no kustomization.yaml: pass --overlay with a kustomize overlay of deploy/k8s",
            config.overlay.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(STACK)
        .build()
        .context("starting the async runtime")?;
    // The run's future is deep (the load generator, the watcher, kubectl);
    // it runs as a task on a worker with room for it.
    let once = |config: DemoConfig| -> anyhow::Result<Outcome> {
        let outcome = runtime.block_on(async {
            let interrupted = async {
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::spawn(rtc_demo::run(config, interrupted)).await
        })??;
        println!("{}", report(&outcome));
        Ok(outcome)
    };
    if !cli.compare_rebalance {
        return Ok(once(config)?.load.all_received());
    }
    let mut rows = Vec::new();
    for (label, value) in [("on", "true"), ("off", "false")] {
        let mut c = config.clone();
        c.settings.insert("REBALANCE".into(), value.into());
        c.out_dir = config.out_dir.join(format!("rebalance-{label}"));
        println!("[demo] rebalancing {label}");
        rows.push((label, once(c)?));
    }
    println!("{}", rebalance_table(&rows));
    Ok(rows.iter().all(|(_, o)| o.load.all_received()))
}

/// The two runs of `--compare-rebalance`, as a markdown table.
fn rebalance_table(rows: &[(&str, Outcome)]) -> String {
    let mut out = vec![
        "| rebalancing | peak replicas | rebalances | spread at the spike's end | p95 of the first pods over the spike (median of heartbeats) | messages lost | p95 of all messages (on one pod / through the broker) | p99 of all messages | p95 / p99 from the schedule, first pods' clients |".to_owned(),
        "|---|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    for (label, o) in rows {
        let s = &o.story;
        let m = &o.load.messages;
        out.push(format!(
            "| {label} | {} | {} | {} | {} | {} of {} | {:.0} ms ({} / {}) | {:.0} ms | {:.0} / {:.0} ms |",
            s.peak_replicas,
            s.rebalances.len(),
            s.spike_end_spread
                .map_or("n/a".to_owned(), |v| v.to_string()),
            s.first_pods_spike_p95_ms
                .map_or("n/a".to_owned(), |v| format!("{v:.0} ms")),
            m.lost,
            m.sent,
            o.load.latency.p95_ms,
            path_p95(o, AckStatus::Delivered),
            path_p95(o, AckStatus::Relayed),
            o.load.latency.p99_ms,
            o.load.latency_from_schedule_first_targets.p95_ms,
            o.load.latency_from_schedule_first_targets.p99_ms,
        ));
    }
    out.join("\n")
}

/// The p95 of the messages whose first ack had `status`, or `n/a`.
fn path_p95(o: &Outcome, status: AckStatus) -> String {
    o.load
        .latency_by_ack
        .get(&status)
        .map_or("n/a".to_owned(), |l| format!("{:.0} ms", l.p95_ms))
}

#[cfg(test)]
mod tests {
    use super::setting;
    use rtc_loadgen::Profile;
    use std::path::{Path, PathBuf};

    fn json_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("profiles directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                json_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "json") {
                found.push(path);
            }
        }
    }

    /// Every profile shipped under bins/demo/profiles, the comparison's
    /// included, is one the load generator accepts.
    #[test]
    fn every_bundled_profile_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut files = Vec::new();
        json_files(&dir, &mut files);
        assert!(
            files.len() >= 8,
            "only {} profiles in {}",
            files.len(),
            dir.display()
        );
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable profile");
            let profile =
                Profile::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(
                !profile.duration().is_zero(),
                "{} lasts no time",
                file.display()
            );
        }
    }

    #[test]
    fn settings_are_upper_case_keys_with_a_value() {
        assert_eq!(
            setting("REBALANCE=false"),
            Ok(("REBALANCE".to_owned(), "false".to_owned()))
        );
        assert_eq!(
            setting("DRAIN_TIMEOUT=1m=x"),
            Ok(("DRAIN_TIMEOUT".to_owned(), "1m=x".to_owned()))
        );
        assert!(
            setting("REBALANCE")
                .expect_err("no =")
                .contains("KEY=VALUE")
        );
        assert!(
            setting("rebalance=true")
                .expect_err("lower case")
                .contains("upper-case")
        );
        assert!(setting("=true").is_err());
    }
}
