//! One run of the demo: install the fleet, drive the load, watch, record,
//! remove the fleet, summarise.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use rtc_loadgen::discovery::Discovery;
use rtc_loadgen::ledger::{AckStatus, Latency};
use rtc_loadgen::progress::{Progress, Snapshot};
use rtc_loadgen::{Profile, RunConfig};
use rtc_time::{SystemClock, WallClock};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chart;
use crate::fleet::{self, FleetError, Target};
use crate::observe::{ObserveError, Observer};
use crate::record::{self, Entry, Load, Overload, Story};
use crate::screen::Display;

/// What a run needs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The kustomize overlay to install.
    pub overlay: PathBuf,
    /// The overlay's namespace.
    pub namespace: String,
    /// Run the socket workload as a StatefulSet.
    pub statefulset: bool,
    /// The load.
    pub profile: Profile,
    /// Where the record, the chart and the summary go.
    pub out_dir: PathBuf,
    /// Plain lines even on a terminal.
    pub plain: bool,
    /// The stack's Redis.
    pub redis_url: String,
    /// The stack's broker.
    pub kafka_bootstrap: String,
    /// The API server's audit log.
    pub audit_log: PathBuf,
    /// Leave the fleet running at the end.
    pub keep: bool,
    /// Delete the leading load-balancer pod this long after the load
    /// starts, to show the other replica taking over.
    pub kill_leader_at: Option<Duration>,
    /// Keys of the ConfigMap rtc-config set over the overlay's.
    pub settings: std::collections::BTreeMap<String, String>,
    /// The stack's `nodes/` directory, where the node agents keep each
    /// pod's logs: removed pods' drains are checked there.
    pub nodes_dir: Option<PathBuf>,
}

/// A run that could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The API server does not answer.
    #[error(
        "the local stack's API server does not answer ({0}): start the stack with `deploy/local/stack up` and `eval \"$(deploy/local/stack env)\"`, or run `./dev demo`, which does both"
    )]
    NoStack(String),
    /// Installing or removing the fleet failed.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// Watching could not start.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// The fleet did not come up.
    #[error(
        "the fleet was not Ready within {seconds} s: {state}; see the pod logs under the stack's nodes/ directory (`deploy/local/stack status nodes`)"
    )]
    NotReady {
        /// How long the demo waited.
        seconds: u64,
        /// What it saw.
        state: String,
    },
    /// The load generator could not run.
    #[error("the load generator: {0}")]
    Load(#[from] rtc_loadgen::RunError),
    /// A file could not be written.
    #[error("writing {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// What a run leaves.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The story of the run.
    pub story: Story,
    /// The load generator's summary.
    pub load: rtc_loadgen::Summary,
    /// Wall time from the start to the end of the removal.
    pub wall_ms: u64,
    /// The run record (JSON lines).
    pub record: PathBuf,
    /// The chart (PNG), when it could be drawn.
    pub chart: Option<PathBuf>,
    /// Why the chart could not be drawn.
    pub chart_error: Option<String>,
    /// The summary (JSON).
    pub summary: PathBuf,
}

/// Forwards the load generator's progress to the watcher.
pub(crate) struct Forward(pub(crate) watch::Sender<Snapshot>);

impl Progress for Forward {
    fn update(&mut self, snapshot: &Snapshot) {
        let _ = self.0.send(snapshot.clone());
    }
}

pub(crate) fn load_of(s: &Snapshot) -> Load {
    Load {
        phase: s.phase.clone(),
        wanted: s.wanted,
        open: s.open,
        sent: s.sent,
        received: s.received,
    }
}

pub(crate) fn write_failed(path: &Path) -> impl Fn(std::io::Error) -> DemoError + '_ {
    move |e| DemoError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Waits until `load_balancers` load-balancer pods and at least two socket
/// pods are Ready.
pub(crate) async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    load_balancers: usize,
) -> Result<(), DemoError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let timeout = Duration::from_secs(180);
    let deadline = Instant::now() + timeout;
    let count = |pods: &[Pod]| {
        pods.iter()
            .filter(|p| rtc_loadgen::discovery::is_ready(p))
            .count()
    };
    loop {
        let lbs = api
            .list(&ListParams::default().labels("app=load-balancer"))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let sockets = api
            .list(&ListParams::default().labels("app=socket"))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let (l, s) = (count(&lbs), count(&sockets));
        if l >= load_balancers && s >= 2 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DemoError::NotReady {
                seconds: timeout.as_secs(),
                state: format!(
                    "{l} of {load_balancers} load-balancer pods and {s} of 2 socket pods Ready"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What counts as an overloaded heartbeat: a pod whose own figures are
/// above the thresholds of the policy's fleet rules (average CPU or memory
/// over `overload_cpu`/`overload_mem`, connection or throughput utilisation
/// over `capacity_util` of `CONN_PER_POD`/`MPS_PER_POD` from the
/// ConfigMap), so that a fleet of such pods scales out critically.
pub fn overload_of(docs: &[serde_json::Value]) -> Overload {
    let urgency = rtc_decision::Policy::default().urgency;
    let data = docs
        .iter()
        .find(|d| fleet::is(d, "ConfigMap", "rtc-config"))
        .map(|d| d["data"].clone())
        .unwrap_or_default();
    let per_pod = |key: &str| {
        data[key]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v * urgency.capacity_util)
    };
    Overload {
        cpu: urgency.overload_cpu,
        mem: urgency.overload_mem,
        conn: per_pod("CONN_PER_POD"),
        mps: per_pod("MPS_PER_POD"),
    }
}

/// Runs the demo; `stop` (Ctrl-C) ends the load early, then the fleet is
/// removed and the summary written as usual.
///
/// # Errors
///
/// [`DemoError`] naming what failed and what to do.
pub async fn run(config: DemoConfig, stop: impl Future<Output = ()>) -> Result<Outcome, DemoError> {
    let started = Instant::now();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| DemoError::NoStack(e.to_string()))?;
    client
        .apiserver_version()
        .await
        .map_err(|e| DemoError::NoStack(e.to_string()))?;
    std::fs::create_dir_all(&config.out_dir).map_err(write_failed(&config.out_dir))?;
    let record_path = config.out_dir.join("record.jsonl");
    let mut record = std::io::BufWriter::new(
        std::fs::File::create(&record_path).map_err(write_failed(&record_path))?,
    );

    let run_id = format!("demo{}", SystemClock.now_ms() % 1_000_000_000);
    let target = Target {
        namespace: config.namespace.clone(),
        redis_url: config.redis_url.clone(),
        kafka_bootstrap: config.kafka_bootstrap.clone(),
        prefix: format!("rtc-{run_id}"),
        statefulset: config.statefulset,
        settings: config.settings.clone(),
    };
    println!(
        "[demo] removing what an earlier run left in namespace {}",
        config.namespace
    );
    fleet::remove(&client, &config.namespace).await?;
    println!(
        "[demo] installing {} ({})",
        config.overlay.display(),
        if config.statefulset {
            "socket StatefulSet"
        } else {
            "socket Deployment"
        }
    );
    let docs = fleet::prepare(
        fleet::render(&config.overlay).await?,
        &target,
        &config.overlay,
    )?;
    let overload = overload_of(&docs);
    fleet::apply(&docs).await?;
    wait_ready(&client, &config.namespace, 2).await?;
    println!("[demo] two load-balancers and two socket pods are Ready; starting the load");

    let observer = Observer::new(
        client.clone(),
        &config.namespace,
        config.statefulset,
        &config.redis_url,
        &format!("{}:hb:", target.prefix),
        &config.audit_log,
    )?;
    let mut observer = match &config.nodes_dir {
        Some(dir) => observer.with_pod_logs(dir.clone()),
        None => observer,
    };
    let (progress_tx, progress_rx) = watch::channel(Snapshot::default());
    let mut load_config = RunConfig::new(run_id, config.profile.clone());
    load_config.grace = Duration::from_secs(10);
    let total = config.profile.duration() + load_config.grace;
    let discovery = Discovery::Kubernetes {
        client: client.clone(),
        namespace: config.namespace.clone(),
        selector: "app=socket".into(),
        port: 8000,
    };
    let (stopped_tx, mut stopped_rx) = watch::channel(false);
    let load = tokio::spawn(async move {
        let mut progress = Forward(progress_tx);
        let stop = async move {
            let _ = stopped_rx.wait_for(|s| *s).await;
        };
        rtc_loadgen::run_until(load_config, discovery, &mut progress, stop).await
    });
    tokio::pin!(stop);
    tokio::pin!(load);
    let mut display = Display::new(config.plain, 5);
    let mut entries: Vec<Entry> = Vec::new();
    let load_start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut killed = false;
    let mut stopping = false;
    let summary = loop {
        tokio::select! {
            result = &mut load => break result,
            () = &mut stop, if !stopping => {
                // The load ends early; the grace period, the removal and the
                // summary follow as usual.
                stopping = true;
                let _ = stopped_tx.send(true);
            }
            _ = ticker.tick() => {
                let mut seen = Vec::new();
                if let Some(at) = config.kill_leader_at
                    && !killed
                    && load_start.elapsed() >= at
                    && let Some(leader) = observer.view().sample.leader.clone()
                {
                    killed = true;
                    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
                    if pods.delete(&leader, &Default::default()).await.is_ok() {
                        seen.push(Entry::LeaderDeleted(record::LeaderDeleted {
                            at_ms: SystemClock.now_ms(),
                            pod: leader,
                        }));
                    }
                }
                let snapshot = progress_rx.borrow().clone();
                seen.extend(observer.tick(SystemClock.now_ms(), load_of(&snapshot)).await);
                for entry in seen {
                    let line = serde_json::to_string(&entry).unwrap_or_default();
                    writeln!(record, "{line}").map_err(write_failed(&record_path))?;
                    entries.push(entry);
                }
                display.show(load_start.elapsed(), total, observer.view());
            }
        }
    };
    display.finish();
    record.flush().map_err(write_failed(&record_path))?;
    let summary = match summary {
        Ok(result) => result?,
        Err(e) => {
            return Err(DemoError::Write {
                path: "the load generator's task".into(),
                message: e.to_string(),
            });
        }
    };
    if config.keep {
        println!(
            "[demo] leaving the fleet running in namespace {} (--keep)",
            config.namespace
        );
    } else {
        println!("[demo] removing the fleet (its pods drain first)");
        fleet::remove(&client, &config.namespace).await?;
    }

    let story = record::story(&entries, &overload);
    let chart_path = config.out_dir.join("chart.png");
    let title = format!(
        "rtc-autoscale demo: {} spike then calm",
        if config.statefulset {
            "StatefulSet"
        } else {
            "Deployment"
        }
    );
    let (chart, chart_error) = match chart::draw(&entries, &chart_path, &title) {
        Ok(()) => (Some(chart_path), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let summary_path = config.out_dir.join("summary.json");
    let outcome = Outcome {
        story,
        load: summary,
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        record: record_path,
        chart,
        chart_error,
        summary: summary_path.clone(),
    };
    let json = serde_json::to_string_pretty(&outcome).unwrap_or_default();
    std::fs::write(&summary_path, json + "\n").map_err(write_failed(&summary_path))?;
    Ok(outcome)
}

/// `; p95 delivered X ms, relayed Y ms` for the paths a run's messages
/// took, by their first ack (nothing when no message was received).
fn by_path(by_ack: &BTreeMap<AckStatus, Latency>) -> String {
    if by_ack.is_empty() {
        return String::new();
    }
    let paths: Vec<String> = by_ack
        .iter()
        .map(|(ack, l)| format!("{ack} {:.1} ms ({})", l.p95_ms, l.count))
        .collect();
    format!("; p95 by first ack: {}", paths.join(", "))
}

/// The summary printed at the end.
pub fn report(o: &Outcome) -> String {
    let s = &o.story;
    let m = &o.load.messages;
    let ms = |v: Option<u64>| v.map_or("n/a".to_owned(), |v| format!("{:.1} s", v as f64 / 1000.0));
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let mut out = vec![
        format!("[demo] done in {:.0} s", o.wall_ms as f64 / 1000.0),
        format!("  scale-outs: {}", list(&s.scale_outs)),
        format!("  scale-ins:  {}", list(&s.scale_ins)),
        format!(
            "  victims chosen by the load-balancer: {}",
            list(&s.victims)
        ),
        format!(
            "  pods removed: {}; drained before SIGTERM (from their logs): {}{}",
            list(&s.drained),
            list(&s.drained_first),
            if s.not_drained_first.is_empty() {
                String::new()
            } else {
                format!("; NOT drained first: {}", list(&s.not_drained_first))
            }
        ),
        format!(
            "  peak replicas: {}; /scale writes accepted: {}; leaders: {}",
            s.peak_replicas,
            s.scale_writes,
            list(&s.leaders)
        ),
        format!(
            "  messages: {} sent, {} received, {} lost, {} duplicates; latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms{}",
            m.sent,
            m.received,
            m.lost,
            m.duplicates,
            o.load.latency.p50_ms,
            o.load.latency.p95_ms,
            o.load.latency.p99_ms,
            by_path(&o.load.latency_by_ack)
        ),
        format!(
            "  latency from the schedule (a message's due time to its arrival, waits in the sender included): p95 {:.1} ms, p99 {:.1} ms; of the clients first on the pods Ready at the start ({}): p95 {:.1} ms, p99 {:.1} ms",
            o.load.latency_from_schedule.p95_ms,
            o.load.latency_from_schedule.p99_ms,
            o.load.first_targets.len(),
            o.load.latency_from_schedule_first_targets.p95_ms,
            o.load.latency_from_schedule_first_targets.p99_ms,
        ),
        match &s.leader_deleted {
            Some((pod, Some(ms))) => format!(
                "  leader {pod} deleted: another replica led {:.1} s later",
                *ms as f64 / 1000.0
            ),
            Some((pod, None)) => {
                format!("  leader {pod} deleted: no other replica led before the end")
            }
            None => "  leader: not deleted (--kill-leader-at)".to_owned(),
        },
        format!(
            "  reaction: first overloaded heartbeat -> /scale write {}, -> first new pod Ready {} more",
            ms(s.reaction_ms),
            ms(s.write_to_ready_ms)
        ),
        format!(
            "  rebalances: {}; pods before the spike's scale-out: {}, their median p95 over the spike {}; spread of connections at the spike's end {}",
            list(&s.rebalances),
            list(&s.first_pods),
            s.first_pods_spike_p95_ms
                .map_or("n/a".to_owned(), |v| format!("{v:.0} ms")),
            s.spike_end_spread
                .map_or("n/a".to_owned(), |v| v.to_string()),
        ),
        format!("  record:  {}", o.record.display()),
    ];
    match (&o.chart, &o.chart_error) {
        (Some(c), _) => out.push(format!("  chart:   {}", c.display())),
        (None, Some(e)) => out.push(format!("  chart:   not drawn: {e}")),
        (None, None) => {}
    }
    out.push(format!("  summary: {}", o.summary.display()));
    out.join("\n")
}
