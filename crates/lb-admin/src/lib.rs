//! The load-balancer's admin HTTP port.
//!
//! - `GET /healthz`: `ok` while the process serves.
//! - `GET /readyz`: 200 when heartbeat ingestion works (its last poll
//!   succeeded, at most 3 s ago) and the Kubernetes API answers within
//!   2 s, else 503; the JSON body says which part fails and whether this
//!   replica leads.
//! - `GET /metrics`: the Prometheus text format.
//! - `GET /decisions?n=`: the last `n` (default 20) decisions with their
//!   explanations and outcomes, newest first.
//!
//! The binary binds the port and passes a shutdown future; [`serve`]
//! stops accepting when it completes.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use rtc_autoscaler::DecisionRecord;
use rtc_heartbeat::LinkStatus;
use rtc_leader::LeaderGuard;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Heartbeat ingestion counts as working while its last successful poll is
/// at most this old (polls run every second).
const INGEST_FRESH: Duration = Duration::from_secs(3);

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// The autoscaler's last decisions.
    pub decisions: watch::Receiver<Arc<Vec<DecisionRecord>>>,
    /// The heartbeat ingestor's link to Redis.
    pub ingest: watch::Receiver<LinkStatus>,
    /// Whether this replica leads.
    pub guard: LeaderGuard,
    /// Asked for its version by `/readyz`.
    pub kube: kube::Client,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ingest", &*self.ingest.borrow())
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

/// The routes, over `state`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/decisions", get(decisions))
        .with_state(state)
}

/// Serves `listener` until `shutdown` completes; a failure is logged.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin port failed");
    }
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    heartbeats: String,
    kubernetes: String,
    leader: bool,
}

/// Ready when heartbeat ingestion works and the Kubernetes API answers.
async fn readyz(State(s): State<AdminState>) -> Response {
    // A poll hanging on an unreachable Redis has not failed yet: also
    // require a recent success.
    let heartbeats = match &*s.ingest.borrow() {
        LinkStatus::Connected { last, .. } if last.elapsed() <= INGEST_FRESH => Ok(()),
        LinkStatus::Connected { last, .. } => Err(format!(
            "no successful heartbeat poll for {:?}",
            last.elapsed()
        )),
        other => Err(format!("{other:?}")),
    };
    let kubernetes =
        match tokio::time::timeout(Duration::from_secs(2), s.kube.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2s".to_owned()),
        };
    let ready = heartbeats.is_ok() && kubernetes.is_ok();
    let body = Readiness {
        ready,
        heartbeats: heartbeats.err().unwrap_or_else(|| "ok".to_owned()),
        kubernetes: kubernetes.err().unwrap_or_else(|| "ok".to_owned()),
        leader: s.guard.is_leader(),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    s.prometheus.run_upkeep();
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Last {
    n: Option<usize>,
}

/// The last decisions with their reasons, newest first (`?n=`, default 20).
async fn decisions(State(s): State<AdminState>, Query(q): Query<Last>) -> Response {
    let all = s.decisions.borrow().clone();
    let n = q.n.unwrap_or(20).min(all.len());
    let newest: Vec<&DecisionRecord> = all.iter().rev().take(n).collect();
    Json(newest).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use rtc_leader::{ElectionConfig, Elector, MemoryLeaseStore};
    use std::net::SocketAddr;

    /// An admin port on a free loopback port, with a Kubernetes API that
    /// does not answer and ingestion that has not started.
    async fn start(decisions: Vec<DecisionRecord>) -> SocketAddr {
        let elector = Elector::new(MemoryLeaseStore::new(), ElectionConfig::new("lb-0"))
            .expect("election config");
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let state = AdminState {
            prometheus: PrometheusBuilder::new().build_recorder().handle(),
            decisions: watch::channel(Arc::new(decisions)).1,
            ingest: watch::channel(LinkStatus::Starting).1,
            guard: elector.guard(),
            kube: kube::Client::try_from(config).expect("client"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve(listener, state, std::future::pending()));
        addr
    }

    fn record(timestamp_ms: u64) -> DecisionRecord {
        let engine = rtc_decision::Engine::new(rtc_decision::Policy::default()).expect("policy");
        let obs = rtc_decision::Observation {
            now_ms: timestamp_ms,
            replicas: 2,
            nodes: &[],
        };
        let (decision, _) = engine.decide(&rtc_decision::State::default(), &obs);
        DecisionRecord {
            timestamp_ms,
            explanation: decision.explain().map(|l| l.to_string()).collect(),
            decision,
            outcome: "none".to_owned(),
            expected_victim: None,
        }
    }

    #[tokio::test]
    async fn health_metrics_and_the_newest_decisions_first() {
        let addr = start((1..=3).map(record).collect()).await;
        assert_eq!(
            rtc_testkit::http(addr, "GET", "/healthz")
                .await
                .expect("up"),
            (200, "ok".to_owned())
        );
        let (code, _) = rtc_testkit::http(addr, "GET", "/metrics")
            .await
            .expect("up");
        assert_eq!(code, 200);
        let (code, body) = rtc_testkit::http(addr, "GET", "/decisions?n=2")
            .await
            .expect("up");
        assert_eq!(code, 200);
        let newest: serde_json::Value = serde_json::from_str(&body).expect("json");
        let times: Vec<u64> = newest
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|d| d["timestamp_ms"].as_u64())
            .collect();
        assert_eq!(times, [3, 2]);
    }

    #[tokio::test]
    async fn not_ready_says_which_part_fails() {
        let addr = start(Vec::new()).await;
        let (code, body) = rtc_testkit::http(addr, "GET", "/readyz").await.expect("up");
        assert_eq!(code, 503, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["ready"], false);
        assert_eq!(body["heartbeats"], "Starting");
        assert_ne!(body["kubernetes"], "ok");
        assert_eq!(body["leader"], false);
    }
}
