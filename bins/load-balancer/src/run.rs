//! `load-balancer run`: every replica ingests heartbeats; the Lease holder
//! scales. Configuration, wiring and the tick schedule only; the logic is in
//! the crates.

use crate::admin::{self, AdminState};
use crate::policy_args::PolicyArgs;
use crate::telemetry;
use anyhow::{Context, bail};
use clap::Args;
use rtc_autoscaler::{Controller, NoSignals, SignalSink};
use rtc_decision::Engine;
use rtc_heartbeat::{Ingestor, IngestorConfig, KeyLayout, RedisOptions, RedisStore, SystemClock};
use rtc_leader::{ElectionConfig, Elector, KubeLeaseStore, LeaderGuard};
use rtc_signal_kafka::{KafkaSignalSink, SIGNAL_TOPIC};
use rtc_state_redis::StateStore;
use rtc_telemetry::LogFormat;
use rtc_workload::{FenceError, KubeWorkloadApi, ScalerConfig, WorkloadScaler};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// The load-balancer's settings. Each flag can also be set through the
/// environment key shown.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    identity: Option<String>,

    /// Namespace of the socket workload and of the Lease.
    #[arg(
        long,
        env = "KUBERNETES_NAMESPACE",
        default_value = "rtc",
        value_name = "NS"
    )]
    namespace: String,

    /// Name of the socket Deployment or StatefulSet (the kind is detected).
    #[arg(
        long,
        env = "SOCKET_WORKLOAD_NAME",
        default_value = "socket",
        value_name = "NAME"
    )]
    workload: String,

    /// Redis holding heartbeats and the decision state.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    redis_url: String,

    /// Kafka bootstrap servers (comma-separated) for scaling signals on
    /// `rtc.control.scale`; empty disables them.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP",
        default_value = "",
        value_name = "HOST:PORT,..."
    )]
    kafka_bootstrap: String,

    /// Key prefix of the heartbeats in Redis.
    #[arg(
        long,
        env = "HEARTBEAT_PREFIX",
        default_value = "rtc:hb:",
        value_name = "PREFIX"
    )]
    heartbeat_prefix: String,

    /// Redis key of the stored decision state.
    #[arg(
        long,
        env = "DECISION_STATE_KEY",
        default_value = "rtc:lb:decision-state",
        value_name = "KEY"
    )]
    state_key: String,

    /// Time between two scaling ticks of the leader, in ms.
    #[arg(
        long,
        env = "TICK_INTERVAL_MS",
        default_value_t = 5_000,
        value_name = "MS"
    )]
    tick_interval_ms: u64,

    /// Name of the Lease the replicas compete for.
    #[arg(
        long,
        env = "LEASE_NAME",
        default_value = "rtc-load-balancer",
        value_name = "NAME"
    )]
    lease_name: String,

    /// How long others wait on an unrenewed Lease before taking it, in ms.
    #[arg(
        long,
        env = "LEASE_DURATION_MS",
        default_value_t = 15_000,
        value_name = "MS"
    )]
    lease_duration_ms: u64,

    /// How long a leader keeps trying to renew before stepping down, in ms.
    #[arg(
        long,
        env = "RENEW_DEADLINE_MS",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    renew_deadline_ms: u64,

    /// Time between two acquire or renew attempts, in ms.
    #[arg(
        long,
        env = "RETRY_PERIOD_MS",
        default_value_t = 2_000,
        value_name = "MS"
    )]
    retry_period_ms: u64,

    /// Lease time that must be left before a write, in ms.
    #[arg(
        long,
        env = "LEADER_SAFETY_MARGIN_MS",
        default_value_t = 2_000,
        value_name = "MS"
    )]
    safety_margin_ms: u64,

    /// Address of the admin HTTP port (/healthz, /readyz, /metrics, /decisions).
    #[arg(
        long,
        env = "ADMIN_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    admin_addr: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,

    /// Decisions kept for the /decisions endpoint.
    #[arg(
        long,
        env = "DECISION_HISTORY",
        default_value_t = 100,
        value_name = "N"
    )]
    decision_history: usize,

    /// How long shutdown may take (finishing a tick, releasing the Lease), in ms.
    #[arg(
        long,
        env = "SHUTDOWN_TIMEOUT_MS",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    shutdown_timeout_ms: u64,

    #[command(flatten)]
    policy: PolicyArgs,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn positive(key: &str, v: u64) -> anyhow::Result<()> {
    if v == 0 {
        bail!(
            "bad setting {key}: value 0 is not allowed; allowed: a whole number of milliseconds, 1 or more"
        );
    }
    Ok(())
}

/// Everything validated, before anything connects.
struct Settings {
    identity: String,
    admin: SocketAddr,
    kafka: Vec<String>,
    election: ElectionConfig,
    scaler: ScalerConfig,
    engine: Engine,
    ingest: IngestorConfig,
}

impl RunArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let policy = self.policy.policy()?;
        let identity = match &self.identity {
            Some(id) if !id.trim().is_empty() => id.clone(),
            _ => std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).context(
                "bad setting POD_NAME: it is unset and so is HOSTNAME; allowed: this replica's unique name (the pod name)",
            )?,
        };
        let admin: SocketAddr = self.admin_addr.parse().map_err(|e| {
            anyhow::anyhow!(
                "bad setting ADMIN_ADDR: value {:?} is not allowed ({e}); allowed: IP:PORT, e.g. 0.0.0.0:8080",
                self.admin_addr
            )
        })?;
        positive("TICK_INTERVAL_MS", self.tick_interval_ms)?;
        positive("RETRY_PERIOD_MS", self.retry_period_ms)?;
        let kafka: Vec<String> = self
            .kafka_bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = kafka.iter().find(|s| !s.contains(':')) {
            bail!(
                "bad setting KAFKA_BOOTSTRAP: value {bad:?} is not allowed; allowed: comma-separated HOST:PORT entries, or empty"
            );
        }
        let election = ElectionConfig::new(identity.clone()).with_timing(
            ms(self.lease_duration_ms),
            ms(self.renew_deadline_ms),
            ms(self.retry_period_ms),
        );
        election.validate().map_err(|e| {
            anyhow::anyhow!(
                "bad setting LEASE_DURATION_MS / RENEW_DEADLINE_MS / RETRY_PERIOD_MS ({} / {} / {}): {e}",
                self.lease_duration_ms,
                self.renew_deadline_ms,
                self.retry_period_ms
            )
        })?;
        let scaler = ScalerConfig::new(
            self.workload.clone(),
            policy.min_replicas,
            policy.max_replicas,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let stale_after = Duration::from_millis(u64::try_from(policy.stale_after_ms).unwrap_or(0));
        let ingest = IngestorConfig {
            stale_after,
            ..IngestorConfig::default()
        };
        ingest
            .validate()
            .map_err(|e| anyhow::anyhow!("bad heartbeat setting: {e}"))?;
        let engine = Engine::new(policy).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Settings {
            identity,
            admin,
            kafka,
            election,
            scaler,
            engine,
            ingest,
        })
    }
}

/// The leader guard as the workload scaler's fence: refuses writes with
/// less than the safety margin of lease time left.
struct GuardFence {
    guard: LeaderGuard,
    margin: Duration,
}

impl rtc_workload::Fence for GuardFence {
    fn check(&self) -> Result<u64, FenceError> {
        self.guard
            .check(self.margin)
            .map(|f| f.token)
            .map_err(|e| FenceError::new(e.to_string()))
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    rtc_telemetry::init_logs(args.log_format)?;
    let prometheus = telemetry::metrics()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, settings, prometheus))
}

async fn serve(
    args: &RunArgs,
    s: Settings,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    info!(identity = %s.identity, namespace = %args.namespace, workload = %args.workload, "starting");
    let kube = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let redis = rtc_heartbeat::connect(&RedisOptions::new(args.redis_url.clone()))
        .map_err(|e| anyhow::anyhow!("bad setting REDIS_URL: value {:?}: {e}", args.redis_url))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let ingest = Ingestor::new(
        RedisStore::new(redis.clone(), KeyLayout::new(args.heartbeat_prefix.clone())),
        SystemClock,
        s.ingest.clone(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?
    .spawn();

    let elector = Elector::new(
        KubeLeaseStore::new(kube.clone(), &args.namespace, args.lease_name.clone()),
        s.election.clone(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let guard = elector.guard();
    let mut election_stop = stop_rx.clone();
    let election = tokio::spawn(elector.run(async move {
        let _ = election_stop.wait_for(|stop| *stop).await;
    }));

    let sink: Arc<dyn SignalSink> = if s.kafka.is_empty() {
        info!("KAFKA_BOOTSTRAP is empty: scaling signals are not published");
        Arc::new(NoSignals)
    } else {
        Arc::new(KafkaSignalSink::spawn(s.kafka.clone(), SIGNAL_TOPIC))
    };
    let scaler = WorkloadScaler::new(
        KubeWorkloadApi::new(kube.clone(), &args.namespace),
        s.scaler.clone(),
    );
    let mut controller = Controller::new(
        s.engine.clone(),
        scaler,
        StateStore::new(redis.clone(), args.state_key.clone()),
        sink,
        s.identity.clone(),
        args.decision_history,
    );

    let admin_state = AdminState {
        prometheus,
        decisions: controller.decisions(),
        ingest: ingest.status(),
        guard: guard.clone(),
        kube: kube.clone(),
    };
    let listener = tokio::net::TcpListener::bind(s.admin)
        .await
        .with_context(|| format!("bad setting ADMIN_ADDR: cannot listen on {}", s.admin))?;
    info!(addr = %s.admin, "admin port listening");
    let mut admin_stop = stop_rx.clone();
    let admin = tokio::spawn(admin::serve(listener, admin_state, async move {
        let _ = admin_stop.wait_for(|stop| *stop).await;
    }));

    let fence = GuardFence {
        guard: guard.clone(),
        margin: ms(args.safety_margin_ms),
    };
    let mut ticks = tokio::time::interval(ms(args.tick_interval_ms));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tick_deadline = ms(args.tick_interval_ms.max(args.shutdown_timeout_ms));
    let mut leading = false;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticks.tick() => {}
        }
        let snapshot = ingest.snapshot();
        let samples = snapshot.samples(tokio::time::Instant::now());
        metrics::gauge!("rtc_lb_ring_nodes").set(samples.len() as f64);
        if !guard.is_leader() {
            if leading {
                warn!("lost leadership; scaling stops");
            }
            leading = false;
            continue;
        }
        if !leading {
            info!("leading: resuming the stored decision state");
            controller.resume().await;
            leading = true;
        }
        // The tick runs to completion (bounded) even if a signal arrives
        // meanwhile; the loop checks for shutdown before the next one.
        match tokio::time::timeout(tick_deadline, controller.tick(wall_ms(), &samples, &fence))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "tick failed"),
            Err(_) => error!(deadline = ?tick_deadline, "tick abandoned after its deadline"),
        }
    }

    info!("shutting down: releasing the lease");
    let _ = stop_tx.send(true);
    let deadline = ms(args.shutdown_timeout_ms);
    if tokio::time::timeout(deadline, election).await.is_err() {
        warn!("the lease was not released within the shutdown timeout");
    }
    let _ = tokio::time::timeout(deadline, ingest.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(
            ["x", "--identity", "lb-0"]
                .into_iter()
                .chain(args.iter().copied()),
        )?;
        cli.run.settings()
    }

    #[test]
    fn defaults_are_valid() {
        let s = settings(&[]).expect("defaults");
        assert_eq!(s.identity, "lb-0");
        assert!(s.kafka.is_empty());
        assert_eq!(s.election.lease_duration, Duration::from_secs(15));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (args, key) in [
            (vec!["--tick-interval-ms", "0"], "TICK_INTERVAL_MS"),
            (vec!["--admin-addr", "nowhere"], "ADMIN_ADDR"),
            (vec!["--kafka-bootstrap", "broker"], "KAFKA_BOOTSTRAP"),
            (vec!["--renew-deadline-ms", "20000"], "RENEW_DEADLINE_MS"),
            (vec!["--min-replicas", "0"], "SOCKET_MIN_REPLICAS"),
        ] {
            let err = settings(&args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{args:?}: {err}");
        }
    }
}
