//! The admin port: /drain (GET for a preStop httpGet hook, and POST),
//! /healthz, /readyz, /metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use rtc_drain::Drain;

use crate::node::NodeCore;

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The node, to start its drain.
    pub core: Arc<NodeCore>,
    /// Renders `/metrics`; `None` when no recorder is installed here.
    pub prometheus: Option<PrometheusHandle>,
}

/// The admin router.
pub fn router(state: Admin) -> Router {
    Router::new()
        .route("/drain", get(drain).post(drain))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Starts the drain (or joins the one under way) and answers only when it
/// has finished, with its summary.
async fn drain(State(s): State<Admin>) -> Response {
    let summary = s.core.drain_now().wait().await;
    (StatusCode::OK, Json(&*summary)).into_response()
}

fn ready(drain: &Drain) -> bool {
    *drain.ready().borrow()
}

async fn readyz(State(s): State<Admin>) -> Response {
    if ready(s.core.drain()) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    }
}

async fn metrics(State(s): State<Admin>) -> Response {
    let body = match &s.prometheus {
        Some(p) => {
            p.run_upkeep();
            p.render()
        }
        None => String::new(),
    };
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}
