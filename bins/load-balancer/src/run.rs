//! `load-balancer run`: every replica ingests heartbeats; the Lease holder
//! scales. Wiring and shutdown only; the loop is rtc-autoscaler's.

use crate::args::RunArgs;
use crate::settings::{Settings, settings};
use anyhow::{Context, anyhow};
use rtc_autoscaler::{Autoscaler, Controller, NoSignals, SignalSink};
use rtc_heartbeat::{Ingestor, KeyLayout, RedisOptions, RedisStore, SystemClock};
use rtc_lb_admin::AdminState;
use rtc_leader::{Elector, KubeLeaseStore};
use rtc_signal_kafka::{KafkaSignalSink, SIGNAL_TOPIC};
use rtc_state_redis::StateStore;
use rtc_workload::{KubeWorkloadApi, WorkloadScaler};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<()> {
    let settings = settings(args)?;
    rtc_telemetry::init_logs(args.log_format)?;
    let prometheus = crate::telemetry::metrics()?;
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
        .map_err(|e| anyhow!("bad setting REDIS_URL: value {:?}: {e}", args.redis_url))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let heartbeats = RedisStore::new(redis.clone(), KeyLayout::new(args.heartbeat_prefix.clone()));
    let ingest = Ingestor::new(heartbeats, SystemClock, s.ingest.clone())
        .map_err(|e| anyhow!("{e}"))?
        .spawn();
    let lease = KubeLeaseStore::new(kube.clone(), &args.namespace, args.lease_name.clone());
    let elector = Elector::new(lease, s.election.clone()).map_err(|e| anyhow!("{e}"))?;
    let guard = elector.guard();
    let election = tokio::spawn(elector.run(stopped()));

    let sink: Arc<dyn SignalSink> = if s.kafka.is_empty() {
        info!("KAFKA_BOOTSTRAP is empty: scaling signals are not published");
        Arc::new(NoSignals)
    } else {
        Arc::new(KafkaSignalSink::spawn(s.kafka.clone(), SIGNAL_TOPIC))
    };
    let scaler = WorkloadScaler::new(
        KubeWorkloadApi::new(kube.clone(), &args.namespace),
        s.scaler,
    );
    let state = StateStore::new(redis.clone(), args.state_key.clone());
    let controller = Controller::new(
        s.engine,
        scaler,
        state,
        sink,
        s.identity,
        args.decision_history,
    );
    let autoscaler = Autoscaler::new(s.looping, controller, guard.clone(), ingest.snapshots())
        .map_err(|e| anyhow!("{e}"))?;

    let admin_state = AdminState {
        prometheus,
        decisions: autoscaler.decisions(),
        ingest: ingest.status(),
        guard,
        kube,
    };
    let listener = tokio::net::TcpListener::bind(s.admin)
        .await
        .with_context(|| format!("bad setting ADMIN_ADDR: cannot listen on {}", s.admin))?;
    info!(addr = %s.admin, "admin port listening");
    let admin = tokio::spawn(rtc_lb_admin::serve(listener, admin_state, stopped()));

    autoscaler.run(shutdown_signal()).await;

    info!("shutting down: releasing the lease");
    let _ = stop_tx.send(true);
    let deadline = s.looping.shutdown_timeout;
    if tokio::time::timeout(deadline, election).await.is_err() {
        warn!("the lease was not released within the shutdown timeout");
    }
    let _ = tokio::time::timeout(deadline, ingest.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    info!("stopped");
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = ctrl_c.await;
            return;
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
