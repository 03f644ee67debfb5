//! The load-balancer's [`ShedSink`]: each hot node of a rebalance is asked
//! through its admin port (`POST /shed` with the shared bearer token), at
//! the IP of the pod the heartbeat names. Requests go out in the
//! background; each one's answer is logged and counted.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use rtc_autoscaler::ShedSink;
use rtc_decision::Rebalance;
use tracing::{info, warn};

/// How long one node's answer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how the nodes are asked.
#[derive(Debug, Clone)]
pub struct ShedSettings {
    /// The socket pods' admin port.
    pub port: u16,
    /// The bearer token their ADMIN_TOKEN expects.
    pub token: Arc<str>,
    /// The time each node spreads its moves over.
    pub window: Duration,
}

/// Sends sheds to the socket pods of one namespace.
#[derive(Clone)]
pub(crate) struct HttpShedder {
    pods: Api<Pod>,
    settings: ShedSettings,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for HttpShedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpShedder")
            .field("port", &self.settings.port)
            .field("window", &self.settings.window)
            .finish_non_exhaustive()
    }
}

/// Why one node was not asked, or refused.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("reading pod {pod} failed: {source}")]
    Pod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("pod {0} has no IP")]
    NoIp(String),
    #[error("the request to {0} failed: {1}")]
    Request(String, String),
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
}

impl SendError {
    fn label(&self) -> &'static str {
        match self {
            Self::Pod { .. } => "pod_unreadable",
            Self::NoIp(_) => "no_ip",
            Self::Request(..) => "unreachable",
            Self::Refused { status: 409, .. } => "conflict",
            Self::Refused { .. } => "refused",
        }
    }
}

impl HttpShedder {
    pub(crate) fn new(kube: kube::Client, namespace: &str, settings: ShedSettings) -> Self {
        Self {
            pods: Api::namespaced(kube, namespace),
            settings,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&self, node: &str, connections: u64) -> Result<serde_json::Value, SendError> {
        let pod = self.pods.get(node).await.map_err(|source| SendError::Pod {
            pod: node.to_owned(),
            source,
        })?;
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| SendError::NoIp(node.to_owned()))?;
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        let url = format!("http://{host}:{}/shed", self.settings.port);
        let body = serde_json::json!({
            "connections": connections,
            "window_ms": u64::try_from(self.settings.window.as_millis()).unwrap_or(u64::MAX),
        });
        let request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, format!("Bearer {}", self.settings.token))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| SendError::Request(url.clone(), e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                SendError::Request(url.clone(), format!("no answer within {REQUEST_TIMEOUT:?}"))
            })?
            .map_err(|e| SendError::Request(url.clone(), e))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status != StatusCode::ACCEPTED {
            return Err(SendError::Refused {
                url,
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or_default())
    }
}

impl ShedSink for HttpShedder {
    fn offer(&self, rebalance: &Rebalance) -> bool {
        for shed in &rebalance.sheds {
            let this = self.clone();
            let (node, connections) = (shed.node.clone(), shed.connections);
            tokio::spawn(async move {
                match this.send(&node, connections).await {
                    Ok(answer) => {
                        let selected = answer["selected"].as_u64().unwrap_or(0);
                        metrics::counter!("rtc_lb_shed_requests_total", "result" => "accepted")
                            .increment(1);
                        info!(
                            node,
                            asked = connections,
                            selected,
                            "shed accepted by the node"
                        );
                    }
                    Err(e) => {
                        metrics::counter!("rtc_lb_shed_requests_total", "result" => e.label())
                            .increment(1);
                        warn!(node, asked = connections, error = %e, "shed not accepted");
                    }
                }
            });
        }
        true
    }
}
