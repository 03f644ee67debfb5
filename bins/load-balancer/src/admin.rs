//! The admin port: /healthz, /readyz, /metrics and /decisions.

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
pub(crate) struct AdminState {
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) decisions: watch::Receiver<Arc<Vec<DecisionRecord>>>,
    pub(crate) ingest: watch::Receiver<LinkStatus>,
    pub(crate) guard: LeaderGuard,
    pub(crate) kube: kube::Client,
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/decisions", get(decisions))
        .with_state(state)
}

pub(crate) async fn serve(
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
