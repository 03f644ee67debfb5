//! Wiring: connect, spawn ingestion, election and admin port, run the
//! loop, and stop everything under the shutdown timeout.

use crate::settings::Settings;
use metrics_exporter_prometheus::PrometheusHandle;
use rtc_autoscaler::{Autoscaler, Controller, NoSignals, SignalSink};
use rtc_heartbeat::{Ingestor, KeyLayout, RedisOptions, RedisStore, SystemClock};
use rtc_lb_admin::AdminState;
use rtc_leader::{Elector, KubeLeaseStore};
use rtc_signal_kafka::{KafkaSignalSink, SIGNAL_TOPIC};
use rtc_state_redis::StateStore;
use rtc_workload::{KubeWorkloadApi, WorkloadScaler};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Why the load-balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No usable Kubernetes client configuration (in-cluster or KUBECONFIG).
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    Kubernetes(#[source] kube::Error),
    /// The Redis URL could not be used.
    #[error("bad setting REDIS_URL: value {url:?}: {reason}")]
    Redis {
        /// The URL as given.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A component refused its configuration.
    #[error("bad {component} configuration: {reason}")]
    Config {
        /// Which component.
        component: &'static str,
        /// What it said.
        reason: String,
    },
    /// The admin port could not be opened.
    #[error("bad setting ADMIN_ADDR: cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
}

fn config(component: &'static str) -> impl FnOnce(String) -> StartError {
    move |reason| StartError::Config { component, reason }
}

/// Runs the load-balancer until `shutdown` resolves.
///
/// # Errors
///
/// [`StartError`] when it cannot start; once running, failures of Redis,
/// Kafka or the API server are retried and reported by metrics, logs and
/// the admin port, never returned.
pub async fn run(
    s: Settings,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    info!(identity = %s.identity, namespace = %s.namespace, workload = %s.workload, "starting");
    let kube = kube::Client::try_default()
        .await
        .map_err(StartError::Kubernetes)?;
    let redis = rtc_heartbeat::connect(&RedisOptions::new(s.redis_url.clone())).map_err(|e| {
        StartError::Redis {
            url: s.redis_url.clone(),
            reason: e.to_string(),
        }
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let heartbeats = RedisStore::new(redis.clone(), KeyLayout::new(s.heartbeat_prefix.clone()));
    let ingest = Ingestor::new(heartbeats, SystemClock, s.ingest.clone())
        .map_err(|e| config("heartbeat")(e.to_string()))?
        .spawn();
    let lease = KubeLeaseStore::new(kube.clone(), &s.namespace, s.lease_name.clone());
    let elector =
        Elector::new(lease, s.election.clone()).map_err(|e| config("election")(e.to_string()))?;
    let guard = elector.guard();
    let election = tokio::spawn(elector.run(stopped()));

    let sink: Arc<dyn SignalSink> = if s.kafka.is_empty() {
        info!("KAFKA_BOOTSTRAP is empty: scaling signals are not published");
        Arc::new(NoSignals)
    } else {
        Arc::new(KafkaSignalSink::spawn(s.kafka.clone(), SIGNAL_TOPIC))
    };
    let scaler = WorkloadScaler::new(KubeWorkloadApi::new(kube.clone(), &s.namespace), s.scaler);
    let state = StateStore::new(redis.clone(), s.state_key.clone());
    let mut controller = Controller::new(
        s.engine,
        scaler,
        state,
        sink,
        s.identity,
        s.decision_history,
    );
    if let Some(shed) = s.shed {
        info!(port = shed.port, window = ?shed.window, "rebalancing on: hot nodes are asked to shed through their admin port");
        let window = shed.window;
        let shedder = crate::shed::HttpShedder::new(kube.clone(), &s.namespace, shed);
        controller = controller.with_shedding(Arc::new(shedder), window);
    }
    let autoscaler = Autoscaler::new(s.looping, controller, guard.clone(), ingest.snapshots())
        .map_err(|e| config("autoscaler")(e.to_string()))?;

    let admin_state = AdminState {
        prometheus,
        decisions: autoscaler.decisions(),
        ingest: ingest.status(),
        guard,
        kube,
    };
    let listener = tokio::net::TcpListener::bind(s.admin)
        .await
        .map_err(|source| StartError::Listen {
            addr: s.admin,
            source,
        })?;
    info!(addr = %s.admin, "admin port listening");
    let admin = tokio::spawn(rtc_lb_admin::serve(listener, admin_state, stopped()));

    autoscaler.run(shutdown).await;

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
