//! The admin routes: /drain (GET for a preStop httpGet hook, and POST),
//! /healthz, /readyz, /metrics. They act on the drain only, through
//! [`Admin`], so they know nothing of the node around it.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use rtc_drain::{Drain, DrainWait};

/// Starts the node's drain (or joins the one under way).
pub type StartDrain = Arc<dyn Fn() -> DrainWait + Send + Sync>;

/// What the admin handlers read.
#[derive(Clone)]
pub struct Admin {
    /// The drain, for readiness.
    pub drain: Drain,
    /// Starts the drain.
    pub start_drain: StartDrain,
    /// Renders `/metrics`; `None` when no recorder is installed here.
    pub prometheus: Option<PrometheusHandle>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("drain", &self.drain)
            .field("prometheus", &self.prometheus.is_some())
            .finish_non_exhaustive()
    }
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
    let summary = (s.start_drain)().wait().await;
    (StatusCode::OK, Json(&*summary)).into_response()
}

async fn readyz(State(s): State<Admin>) -> Response {
    if *s.drain.ready().borrow() {
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
