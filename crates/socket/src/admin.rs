//! The admin routes: /drain (GET for a preStop httpGet hook, and POST),
//! /shed (POST, with the ADMIN_TOKEN as a bearer token), /healthz, /readyz,
//! /metrics. They act on the drain only, through [`Admin`], so they know
//! nothing of the node around it.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use rtc_drain::{Drain, DrainWait, ShedOrder, ShedSummary};
use serde::{Deserialize, Serialize};

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
    /// The bearer token `POST /shed` must carry; `None` refuses sheds.
    pub admin_token: Option<Arc<str>>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("drain", &self.drain)
            .field("prometheus", &self.prometheus.is_some())
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// The admin router.
pub fn router(state: Admin) -> Router {
    Router::new()
        .route("/drain", get(drain).post(drain))
        .route("/shed", post(shed))
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

/// The body of `POST /shed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShedBody {
    /// How many connections should leave.
    connections: usize,
    /// The time their reconnects are spread over, ms.
    window_ms: u64,
}

/// The answer to a shed that started.
#[derive(Debug, Serialize)]
struct ShedAnswer {
    #[serde(flatten)]
    started: rtc_drain::ShedStarted,
}

#[derive(Debug, Serialize)]
struct Refusal {
    error: String,
}

fn refuse(status: StatusCode, error: impl Into<String>, label: &'static str) -> Response {
    metrics::counter!("rtc_socket_sheds_total", "result" => label).increment(1);
    (
        status,
        Json(Refusal {
            error: error.into(),
        }),
    )
        .into_response()
}

/// Compares in time that depends only on the lengths.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Starts a shed ([`Drain::shed`]) and answers at once with what it set out
/// to do (202); the shed goes on over its window, and its summary is logged
/// and counted when it ends.
async fn shed(
    State(s): State<Admin>,
    headers: HeaderMap,
    body: Result<Json<ShedBody>, JsonRejection>,
) -> Response {
    let Some(expected) = &s.admin_token else {
        return refuse(
            StatusCode::FORBIDDEN,
            "sheds are disabled on this node: set ADMIN_TOKEN to allow them",
            "disabled",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same_token(given.as_bytes(), expected.as_bytes()) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer <ADMIN_TOKEN>`",
            "unauthorized",
        );
    }
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad shed request: {}; allowed: a JSON object {{\"connections\": <1 or more>, \"window_ms\": <0 to 600000>}}",
                    e.body_text()
                ),
                "bad_request",
            );
        }
    };
    let order = ShedOrder {
        connections: body.connections,
        window: std::time::Duration::from_millis(body.window_ms),
    };
    let handle = match s.drain.shed(order) {
        Ok(h) => h,
        Err(e) => {
            let status = match e {
                rtc_drain::ShedRefused::Draining | rtc_drain::ShedRefused::Busy { .. } => {
                    StatusCode::CONFLICT
                }
                _ => StatusCode::BAD_REQUEST,
            };
            return refuse(status, format!("shed refused: {e}"), e.label());
        }
    };
    let started = handle.started();
    metrics::counter!("rtc_socket_sheds_total", "result" => "started").increment(1);
    metrics::counter!("rtc_socket_shed_connections_total", "stage" => "asked")
        .increment(started.asked as u64);
    tokio::spawn(async move {
        let ShedSummary { told, moved, .. } = handle.wait().await;
        metrics::counter!("rtc_socket_shed_connections_total", "stage" => "told")
            .increment(told as u64);
        metrics::counter!("rtc_socket_shed_connections_total", "stage" => "moved")
            .increment(moved as u64);
    });
    (StatusCode::ACCEPTED, Json(ShedAnswer { started })).into_response()
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
