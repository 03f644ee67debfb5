//! Watching the run: once a second, the socket workload and its pods
//! through the API server, the leader and its decisions through the
//! load-balancers' admin ports, each socket pod's heartbeat from Redis, and
//! the accepted `/scale` writes from the API server's audit log.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use rtc_heartbeat::{Ingestor, IngestorConfig, KeyLayout, RedisOptions, RedisStore, SystemClock};
use rtc_testkit::audit::AuditLog;
use serde_json::Value;

use crate::record::{
    DecisionEntry, DrainCheck, Entry, Load, NodeFigures, PodChange, PodEvent, Sample, ScaleWrite,
    Step,
};

/// Port of the load-balancers' admin endpoints.
const ADMIN_PORT: u16 = 8080;
/// Decisions kept for the live view.
const RECENT: usize = 8;

/// Watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Redis could not be used.
    #[error("redis {url}: {message}")]
    Redis {
        /// Its URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The audit log could not be read.
    #[error("the API server's audit log {path}: {message}")]
    Audit {
        /// Its path.
        path: String,
        /// What failed.
        message: String,
    },
}

/// What the live view shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The latest sample.
    pub sample: Sample,
    /// The latest decisions, newest first.
    pub decisions: VecDeque<DecisionEntry>,
    /// Pods being deleted (draining), with when it began.
    pub drains: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PodSeen {
    ready: bool,
    deleting: bool,
    /// The directory the node agent keeps for it (`<node>/pods/<ns>_<name>_<uid>`).
    dir: Option<PathBuf>,
}

/// The watcher. See the [module docs](self).
pub struct Observer {
    client: kube::Client,
    namespace: String,
    statefulset: bool,
    heartbeats: Ingestor<RedisStore, SystemClock>,
    audit: AuditLog,
    lb_user: String,
    all_writers: bool,
    pods: BTreeMap<String, PodSeen>,
    last_decision_ms: u64,
    view: View,
    nodes_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("namespace", &self.namespace)
            .field("statefulset", &self.statefulset)
            .field("pods", &self.pods.len())
            .finish_non_exhaustive()
    }
}

fn ip_of(pod: &Pod) -> Option<std::net::IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

impl Observer {
    /// A watcher of the fleet in `namespace`, its heartbeats under
    /// `heartbeat_prefix` in the Redis at `redis_url`, and the audit log at
    /// `audit_log` from its current end.
    ///
    /// # Errors
    ///
    /// [`ObserveError`] when Redis or the audit log cannot be used.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        statefulset: bool,
        redis_url: &str,
        heartbeat_prefix: &str,
        audit_log: &Path,
    ) -> Result<Self, ObserveError> {
        let redis_err = |message: String| ObserveError::Redis {
            url: redis_url.to_owned(),
            message,
        };
        let redis = rtc_heartbeat::connect(&RedisOptions::new(redis_url.to_owned()))
            .map_err(|e| redis_err(e.to_string()))?;
        let store = RedisStore::new(redis, KeyLayout::new(heartbeat_prefix.to_owned()));
        let heartbeats = Ingestor::new(store, SystemClock, IngestorConfig::default())
            .map_err(|e| redis_err(e.to_string()))?;
        let audit = AuditLog::from_end(audit_log)
            .map_err(|e| ObserveError::Audit {
                path: audit_log.display().to_string(),
                message: e.to_string(),
            })?
            .namespace(namespace);
        Ok(Self {
            client,
            namespace: namespace.to_owned(),
            statefulset,
            heartbeats,
            audit,
            lb_user: format!("system:serviceaccount:{namespace}:load-balancer"),
            all_writers: false,
            pods: BTreeMap::new(),
            last_decision_ms: 0,
            view: View::default(),
            nodes_dir: None,
        })
    }

    /// Reads the logs of removed pods under `dir` (the stack's `nodes/`
    /// directory, where the node agents keep each pod's logs).
    #[must_use]
    pub fn with_pod_logs(mut self, dir: PathBuf) -> Self {
        self.nodes_dir = Some(dir);
        self
    }

    /// Records the accepted `/scale` writes of every user (the
    /// HorizontalPodAutoscaler controller's too), not only the
    /// load-balancer's.
    #[must_use]
    pub fn with_all_writers(mut self) -> Self {
        self.all_writers = true;
        self
    }

    /// What the live view shows now.
    pub fn view(&self) -> &View {
        &self.view
    }

    async fn replicas(&self) -> (Option<i32>, Option<i32>) {
        if self.statefulset {
            let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
            match api.get_opt("socket").await {
                Ok(Some(s)) => (
                    s.spec.and_then(|s| s.replicas),
                    s.status.and_then(|s| s.ready_replicas).or(Some(0)),
                ),
                _ => (None, None),
            }
        } else {
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
            match api.get_opt("socket").await {
                Ok(Some(d)) => (
                    d.spec.and_then(|s| s.replicas),
                    d.status.and_then(|s| s.ready_replicas).or(Some(0)),
                ),
                _ => (None, None),
            }
        }
    }

    async fn pod_events(&mut self, now_ms: u64, out: &mut Vec<Entry>) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let Ok(list) = api.list(&ListParams::default().labels("app=socket")).await else {
            return;
        };
        let mut now: BTreeMap<String, PodSeen> = BTreeMap::new();
        for pod in &list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let dir = match (&self.nodes_dir, node) {
                (Some(root), Some(node)) => Some(root.join(node).join("pods").join(format!(
                    "{}_{}_{}",
                    self.namespace,
                    name,
                    pod.metadata.uid.as_deref().unwrap_or_default()
                ))),
                _ => None,
            };
            let seen = PodSeen {
                ready: rtc_loadgen::discovery::is_ready(pod),
                deleting: pod.metadata.deletion_timestamp.is_some(),
                dir,
            };
            let before = self.pods.get(&name).cloned();
            let mut event = |change| {
                out.push(Entry::Pod(PodEvent {
                    at_ms: now_ms,
                    pod: name.clone(),
                    change,
                }));
            };
            if before.is_none() {
                event(PodChange::Created);
            }
            if seen.ready && !before.as_ref().is_some_and(|b| b.ready) {
                event(PodChange::Ready);
            }
            if seen.deleting && !before.as_ref().is_some_and(|b| b.deleting) {
                event(PodChange::Deleting);
                self.view.drains.insert(name.clone(), now_ms);
            }
            now.insert(name, seen);
        }
        for (name, seen) in &self.pods {
            if !now.contains_key(name) {
                out.push(Entry::Pod(PodEvent {
                    at_ms: now_ms,
                    pod: name.clone(),
                    change: PodChange::Gone,
                }));
                self.view.drains.remove(name);
                if let Some(dir) = &seen.dir {
                    let log = dir.join("socket.log");
                    let (drained_first, detail) = match std::fs::read_to_string(&log) {
                        Ok(text) => crate::record::drain_in_log(&text),
                        Err(e) => (false, format!("{}: {e}", log.display())),
                    };
                    out.push(Entry::Drain(DrainCheck {
                        at_ms: now_ms,
                        pod: name.clone(),
                        drained_first,
                        detail,
                    }));
                }
            }
        }
        self.pods = now;
    }

    /// The leading load-balancer pod and its new decisions.
    async fn leader(&mut self, out: &mut Vec<Entry>) -> Option<String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = api
            .list(&ListParams::default().labels("app=load-balancer"))
            .await
            .ok()?;
        for pod in &list.items {
            let (Some(ip), Some(name)) = (ip_of(pod), pod.metadata.name.clone()) else {
                continue;
            };
            let addr = SocketAddr::new(ip, ADMIN_PORT);
            let Ok((200 | 503, body)) = rtc_testkit::http(addr, "GET", "/readyz").await else {
                continue;
            };
            let leads = serde_json::from_str::<Value>(&body)
                .is_ok_and(|v| v["leader"] == Value::Bool(true));
            if !leads {
                continue;
            }
            if let Ok((200, body)) = rtc_testkit::http(addr, "GET", "/decisions?n=20").await {
                self.decisions(&name, &body, out);
            }
            return Some(name);
        }
        None
    }

    fn decisions(&mut self, by: &str, body: &str, out: &mut Vec<Entry>) {
        let Ok(Value::Array(records)) = serde_json::from_str::<Value>(body) else {
            return;
        };
        let mut fresh: Vec<DecisionEntry> = records
            .iter()
            .filter_map(|r| decision_of(by, r))
            .filter(|d| d.at_ms > self.last_decision_ms)
            .collect();
        fresh.sort_by_key(|d| d.at_ms);
        for d in fresh {
            self.last_decision_ms = d.at_ms;
            if d.action != "hold"
                || self
                    .view
                    .decisions
                    .front()
                    .is_none_or(|l| l.reason != d.reason)
            {
                self.view.decisions.push_front(d.clone());
                self.view.decisions.truncate(RECENT);
            }
            out.push(Entry::Decision(d));
        }
    }

    fn writes(&mut self, out: &mut Vec<Entry>) {
        let Ok(events) = self.audit.read_new() else {
            return;
        };
        for e in events {
            // The socket workload's only: the comparison's backup run scales
            // the load-balancer's own Deployment to zero.
            if (e.is_about("deployments", Some("scale"))
                || e.is_about("statefulsets", Some("scale")))
                && e.name() == Some("socket")
            {
                let code = e.code().unwrap_or(0);
                if (self.all_writers || e.user.username == self.lb_user) && e.accepted() {
                    let at_ms =
                        u64::try_from(e.request_received_timestamp.as_millisecond()).unwrap_or(0);
                    out.push(Entry::Write(ScaleWrite {
                        at_ms,
                        user: e.user.username.clone(),
                        code,
                    }));
                }
            }
        }
    }

    /// Looks around once, at `now_ms` (ms since the Unix epoch), with the
    /// load generator's figures `load`; returns what it saw, the sample
    /// last.
    pub async fn tick(&mut self, now_ms: u64, load: Load) -> Vec<Entry> {
        let mut out = Vec::new();
        let (wanted, ready) = self.replicas().await;
        self.pod_events(now_ms, &mut out).await;
        let leader = self.leader(&mut out).await;
        self.writes(&mut out);
        let _ = self.heartbeats.poll_once().await;
        let snapshot = self.heartbeats.snapshot();
        let nodes = snapshot
            .nodes
            .iter()
            .filter(|n| self.pods.contains_key(&n.latest.heartbeat.node))
            .map(|n| {
                let h = &n.latest.heartbeat;
                NodeFigures {
                    pod: h.node.clone(),
                    sent_ms: h.sent_ms,
                    conn: h.conn,
                    cpu: h.cpu,
                    mem: h.mem,
                    mps: h.mps,
                    p95_ms: h.p95_ms,
                    draining: h.draining,
                }
            })
            .collect();
        let sample = Sample {
            at_ms: now_ms,
            wanted,
            ready,
            leader,
            load,
            nodes,
        };
        self.view.sample = sample.clone();
        out.push(Entry::Sample(sample));
        out
    }
}

/// A decision record of the admin port's `/decisions`, by `by`.
fn decision_of(by: &str, r: &Value) -> Option<DecisionEntry> {
    let d = &r["decision"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let count = |v: &Value| u32::try_from(v.as_u64().unwrap_or(0)).unwrap_or(u32::MAX);
    Some(DecisionEntry {
        at_ms: r["timestamp_ms"].as_u64()?,
        by: by.to_owned(),
        action: text(&d["action"]),
        from: count(&d["from"]),
        to: count(&d["to"]),
        reason: text(&d["reason"]),
        urgency: text(&d["urgency"]),
        outcome: text(&r["outcome"]),
        victim: r["expected_victim"]
            .as_str()
            .or_else(|| d["victim"].as_str())
            .map(str::to_owned),
        explanation: r["explanation"][0].as_str().unwrap_or_default().to_owned(),
        step: d["step"].is_object().then(|| Step {
            base: count(&d["step"]["base"]),
            consecutive: count(&d["step"]["consecutive"]),
            step: count(&d["step"]["step"]),
        }),
        sheds: d["rebalance"]["sheds"]
            .as_array()
            .map(|sheds| {
                sheds
                    .iter()
                    .filter_map(|s| {
                        Some((s["node"].as_str()?.to_owned(), s["connections"].as_u64()?))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_record_of_the_admin_port_reads_as_an_entry() {
        let record = serde_json::json!({
            "timestamp_ms": 17,
            "decision": {"action": "scale_in", "from": 4, "to": 3, "reason": "low-load", "urgency": "none", "victim": "socket-b"},
            "explanation": ["SCALE_IN 4 -> 3", "more"],
            "outcome": "scaled",
            "expected_victim": "socket-a",
        });
        let d = decision_of("lb-1", &record);
        assert_eq!(
            d,
            Some(DecisionEntry {
                at_ms: 17,
                by: "lb-1".into(),
                action: "scale_in".into(),
                from: 4,
                to: 3,
                reason: "low-load".into(),
                urgency: "none".into(),
                outcome: "scaled".into(),
                victim: Some("socket-a".into()),
                explanation: "SCALE_IN 4 -> 3".into(),
                step: None,
                sheds: Vec::new(),
            })
        );
        assert_eq!(decision_of("x", &serde_json::json!({})), None);
        let rebalance = serde_json::json!({
            "timestamp_ms": 20,
            "decision": {"action": "rebalance", "from": 5, "to": 5, "reason": "connection-spread",
                "rebalance": {"mean_conn": 120.0, "spread": 300.0,
                    "sheds": [{"node": "socket-a", "connections": 75}, {"node": "socket-b", "connections": 74}]}},
            "outcome": "none",
        });
        let d = decision_of("lb-1", &rebalance).expect("a decision");
        assert_eq!(
            d.sheds,
            [("socket-a".to_owned(), 75), ("socket-b".to_owned(), 74)]
        );
    }
}
