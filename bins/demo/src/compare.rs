//! The comparison (`./dev compare`, docs/compare.md): the same load
//! profiles against the same socket Deployment, scaled in turn by this
//! project's load-balancer, by a HorizontalPodAutoscaler (autoscaling/v2)
//! on CPU utilization, and by KEDA as the primary autoscaler, one run after
//! the other on the local stack; then the figures of every run, a table per
//! profile and a chart per profile with every system's replicas over the
//! load.
//!
//! Every system is measured the same way: the `/scale` writes come from the
//! API server's audit log (whoever made them), the pods and their
//! heartbeats from the API server and Redis once a second, the messages
//! from the load generator. The windows of every system are production's
//! divided by one factor ([`Windows`]); the pods, their start, their drain
//! and the nodes are the same.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtc_loadgen::discovery::Discovery;
use rtc_loadgen::frames::Reason;
use rtc_loadgen::progress::Snapshot;
use rtc_loadgen::{Profile, RunConfig};
use rtc_time::{SystemClock, WallClock};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fleet::{self, Target};
use crate::observe::Observer;
use crate::record::{Entry, Overload, PodChange};
use crate::run::{DemoError, Forward, load_of, overload_of, wait_ready, write_failed};

/// A heartbeat older than this at a sample does not count (the overlay's
/// `STALE_AFTER_MS`).
pub const FRESH_MS: u64 = 5_000;
/// p95 delivery latency above which a pod counts as overloaded, ms.
pub const P95_LIMIT_MS: f64 = 500.0;
/// The user the kube-controller-manager's HPA controller writes as.
pub const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
/// Largest factor windows may be divided by.
pub const MAX_FACTOR: u32 = 60;

/// Bad arguments of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompareError {
    /// A system that does not parse.
    #[error(
        "unknown system {0:?}: use lb, hpa:<cpu %> (e.g. hpa:50), keda (cpu 70 %, memory 75 %), keda:<cpu %>:<memory %> or backup"
    )]
    System(String),
    /// A factor out of range.
    #[error("the time factor {0} is out of range: windows are divided by 1 to {MAX_FACTOR}")]
    Factor(u32),
    /// The manifests lack a piece.
    #[error("the rendered overlay has no {0}")]
    Missing(&'static str),
}

/// Who scales the socket Deployment in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum System {
    /// This project's load-balancer (two pods, one leading); no HPA, no
    /// ScaledObject.
    LoadBalancer,
    /// No load-balancer; an autoscaling/v2 HPA on CPU utilization with
    /// the default behavior, its windows scaled.
    Hpa {
        /// Target average CPU utilization, % of the request.
        cpu: u32,
    },
    /// No load-balancer; a KEDA ScaledObject with cpu and memory triggers
    /// (KEDA as the primary autoscaler), the default behavior, its windows
    /// scaled.
    Keda {
        /// The cpu trigger, % of the request.
        cpu: u32,
        /// The memory trigger, % of the request.
        memory: u32,
    },
    /// The load-balancer and KEDA's backup ScaledObject as deploy/k8s ships
    /// them, windows scaled; the load-balancer is stopped (scaled to zero)
    /// at the end of the profile's first phase. It runs on the backup
    /// profile only.
    Backup,
}

impl System {
    /// `lb`, `hpa:<cpu>`, `keda`, `keda:<cpu>:<memory>` or `backup`.
    ///
    /// # Errors
    ///
    /// [`CompareError::System`] naming what is allowed.
    pub fn parse(text: &str) -> Result<Self, CompareError> {
        let bad = || CompareError::System(text.to_owned());
        let percent = |v: &str| {
            v.parse::<u32>()
                .ok()
                .filter(|p| (1..=1000).contains(p))
                .ok_or_else(bad)
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        match parts.as_slice() {
            ["lb" | "load-balancer"] => Ok(Self::LoadBalancer),
            ["hpa", cpu] => Ok(Self::Hpa { cpu: percent(cpu)? }),
            ["keda"] => Ok(Self::Keda {
                cpu: 70,
                memory: 75,
            }),
            ["keda", cpu, memory] => Ok(Self::Keda {
                cpu: percent(cpu)?,
                memory: percent(memory)?,
            }),
            ["backup"] => Ok(Self::Backup),
            _ => Err(bad()),
        }
    }

    /// The name in tables and charts.
    pub fn label(&self) -> String {
        match self {
            Self::LoadBalancer => "load-balancer".into(),
            Self::Hpa { cpu } => format!("HPA cpu {cpu} %"),
            Self::Keda { cpu, memory } => format!("KEDA cpu {cpu} % / memory {memory} %"),
            Self::Backup => "load-balancer + KEDA backup".into(),
        }
    }

    /// The name in paths.
    pub fn slug(&self) -> String {
        match self {
            Self::LoadBalancer => "lb".into(),
            Self::Hpa { cpu } => format!("hpa-{cpu}"),
            Self::Keda { cpu, memory } => format!("keda-{cpu}-{memory}"),
            Self::Backup => "backup".into(),
        }
    }

    fn load_balancers(&self) -> usize {
        match self {
            Self::LoadBalancer | Self::Backup => 2,
            Self::Hpa { .. } | Self::Keda { .. } => 0,
        }
    }
}

/// Production's windows divided by one factor, for every system alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    /// What production's windows are divided by.
    pub factor: u32,
}

impl Windows {
    /// Windows `factor` times shorter than production's.
    ///
    /// # Errors
    ///
    /// [`CompareError::Factor`] outside 1 to [`MAX_FACTOR`].
    pub fn new(factor: u32) -> Result<Self, CompareError> {
        if (1..=MAX_FACTOR).contains(&factor) {
            Ok(Self { factor })
        } else {
            Err(CompareError::Factor(factor))
        }
    }

    /// `production_s` seconds scaled, rounded up, at least 1 s.
    pub fn secs(&self, production_s: u64) -> u64 {
        production_s.div_ceil(u64::from(self.factor)).max(1)
    }

    /// The drain timeout (production: 5 min), seconds.
    pub fn drain_s(&self) -> u64 {
        self.secs(300)
    }

    /// The load-balancer's windows and the drain, as ConfigMap entries
    /// (production: a 3 min scale-out window, a 5 min scale-in window, 3
    /// min of stabilization, 1 min of settling, a 5 min drain, a 1 min
    /// rebalance window with moves spread over 20 s).
    pub fn config(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SCALE_OUT_WINDOW_MS", (self.secs(180) * 1000).to_string()),
            ("SCALE_IN_WINDOW_MS", (self.secs(300) * 1000).to_string()),
            (
                "SCALE_IN_STABILIZATION_MS",
                (self.secs(180) * 1000).to_string(),
            ),
            ("SETTLE_MS", (self.secs(60) * 1000).to_string()),
            ("DRAIN_TIMEOUT", format!("{}s", self.drain_s())),
            ("REBALANCE_WINDOW_MS", (self.secs(60) * 1000).to_string()),
            (
                "REBALANCE_SHED_WINDOW_MS",
                (self.secs(20) * 1000).to_string(),
            ),
        ]
    }

    /// The HPA's default behavior (scale up by 100 % or 4 pods per 15 s,
    /// whichever is more, without stabilization; scale down by 100 % per
    /// 15 s after a 300 s stabilization), its periods and window scaled.
    pub fn hpa_behavior(&self) -> Value {
        let period = self.secs(15);
        json!({
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": period},
                    {"type": "Pods", "value": 4, "periodSeconds": period}
                ]
            },
            "scaleDown": {
                "stabilizationWindowSeconds": self.secs(300),
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": period}
                ]
            }
        })
    }

    /// KEDA's backup behavior of deploy/k8s/base/05-keda-scaler.yaml
    /// (one pod per 180 s after a 600 s stabilization, never down), scaled.
    fn backup_behavior(&self) -> Value {
        json!({
            "scaleUp": {
                "stabilizationWindowSeconds": self.secs(600),
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": self.secs(180)}]
            },
            "scaleDown": {"selectPolicy": "Disabled"}
        })
    }
}

/// The fraction of the socket container's CPU limit at which the shipped
/// backup ScaledObject's cpu trigger fires (deploy/k8s/base: 175 % of a
/// 500m request with a limit of 1 CPU), above the policy's hotspot CPU of
/// 0.85.
pub const BACKUP_CPU_OF_LIMIT: f64 = 0.875;
/// The same for memory (181 % of a 512Mi request with a 1Gi limit), above
/// the policy's hotspot memory of 0.90.
pub const BACKUP_MEMORY_OF_LIMIT: f64 = 0.905;
/// The socket container's CPU request and limit in the backup run: small
/// enough that the load generator can drive two pods to their limit on
/// this machine, in the local overlay's ratio of 1 to 5.
pub const BACKUP_CPU: (&str, &str) = ("10m", "50m");

/// A CPU quantity (`250m`, `0.5`, `2`) in millicores.
fn cpu_millis(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q.parse::<f64>().ok().map(|cores| cores * 1000.0),
    }
    .filter(|m: &f64| m.is_finite() && *m > 0.0)
}

/// A memory quantity (`64Mi`, `1Gi`, `512Ki`, `1000000`) in bytes.
fn memory_bytes(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    let (number, unit) = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
    ]
    .iter()
    .find_map(|(suffix, unit)| q.strip_suffix(suffix).map(|n| (n, *unit)))
    .unwrap_or((q, 1.0));
    number
        .parse::<f64>()
        .ok()
        .map(|n| n * unit)
        .filter(|b| b.is_finite() && *b > 0.0)
}

/// The utilization trigger, % of `request`, that fires at `of_limit` of
/// `limit`: KEDA's (the HPA's) utilization is of the request, the policy's
/// fractions are of the limit.
pub fn trigger_percent(of_limit: f64, request: f64, limit: f64) -> u32 {
    // Two decimals first, so that 0.875 x 5 x 100 is 437.5 and not 437.50000001.
    let percent = (of_limit * limit / request * 100.0 * 100.0).round() / 100.0;
    // Saturating float-to-int: a trigger is at least 1 %.
    (percent.ceil() as u32).max(1)
}

/// The backup run's socket container: [`BACKUP_CPU`], and the backup
/// ScaledObject's triggers (`scaled`) at [`BACKUP_CPU_OF_LIMIT`] and
/// [`BACKUP_MEMORY_OF_LIMIT`] of the container's limits, as the base's
/// triggers are of the base's sizing.
fn size_for_backup(socket: &mut Value, scaled: &mut Value) -> Result<(), CompareError> {
    let containers = socket["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .ok_or(CompareError::Missing("socket container"))?;
    let container = containers
        .iter_mut()
        .find(|c| c["name"] == "socket")
        .ok_or(CompareError::Missing("socket container"))?;
    let resources = &mut container["resources"];
    resources["requests"]["cpu"] = json!(BACKUP_CPU.0);
    resources["limits"]["cpu"] = json!(BACKUP_CPU.1);
    let memory = resources["requests"]["memory"]
        .as_str()
        .and_then(memory_bytes)
        .zip(
            resources["limits"]["memory"]
                .as_str()
                .and_then(memory_bytes),
        )
        .ok_or(CompareError::Missing("socket memory request and limit"))?;
    let cpu = (
        cpu_millis(BACKUP_CPU.0).unwrap_or(1.0),
        cpu_millis(BACKUP_CPU.1).unwrap_or(1.0),
    );
    let triggers = scaled["spec"]["triggers"]
        .as_array_mut()
        .ok_or(CompareError::Missing("backup ScaledObject triggers"))?;
    for trigger in triggers {
        let value = match trigger["type"].as_str() {
            Some("cpu") => trigger_percent(BACKUP_CPU_OF_LIMIT, cpu.0, cpu.1),
            Some("memory") => trigger_percent(BACKUP_MEMORY_OF_LIMIT, memory.0, memory.1),
            _ => continue,
        };
        trigger["metadata"]["value"] = json!(value.to_string());
    }
    Ok(())
}

fn replicas_of(config: &Value, key: &str, default: u32) -> u32 {
    config["data"][key]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The rendered overlay made into the fleet of one run: the ConfigMap's
/// windows and the socket pods' grace period scaled; the load-balancer
/// left out unless `system` is it; the shipped backup ScaledObject left
/// out unless `system` is [`System::Backup`], whose socket container is
/// then sized to [`BACKUP_CPU`] with the triggers moved to match; an HPA or
/// a ScaledObject added for those systems, on the ConfigMap's replica
/// bounds.
///
/// # Errors
///
/// [`CompareError::Missing`] when the ConfigMap or the socket Deployment
/// is missing, or, for the backup run, the socket container's resources or
/// the ScaledObject's triggers.
pub fn fleet_for(
    docs: Vec<Value>,
    system: &System,
    windows: Windows,
) -> Result<Vec<Value>, CompareError> {
    let mut out = Vec::new();
    let mut config = None;
    let mut namespace = None;
    let (mut backup, mut socket) = (None, None);
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        if kind == "ScaledObject" {
            if *system == System::Backup {
                doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] =
                    windows.backup_behavior();
                doc["spec"]["pollingInterval"] = json!(windows.secs(30));
                doc["spec"]["cooldownPeriod"] = json!(windows.secs(600));
                backup = Some(out.len());
                out.push(doc);
            }
            continue;
        }
        if kind == "Deployment" && name == "load-balancer" && system.load_balancers() == 0 {
            continue;
        }
        if fleet::is(&doc, "ConfigMap", "rtc-config") {
            for (key, value) in windows.config() {
                doc["data"][key] = value.into();
            }
            config = Some(doc.clone());
        }
        if fleet::is(&doc, "Deployment", "socket") {
            doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] =
                json!(windows.drain_s() + 20);
            namespace = doc["metadata"]["namespace"].as_str().map(str::to_owned);
            socket = Some(out.len());
        }
        out.push(doc);
    }
    if let (Some(b), Some(s)) = (backup, socket) {
        let mut scaled = out[b].take();
        let result = size_for_backup(&mut out[s], &mut scaled);
        out[b] = scaled;
        result?;
    }
    let config = config.ok_or(CompareError::Missing("ConfigMap rtc-config"))?;
    let namespace = namespace.ok_or(CompareError::Missing("Deployment socket"))?;
    let min = replicas_of(&config, "SOCKET_MIN_REPLICAS", 2);
    let max = replicas_of(&config, "SOCKET_MAX_REPLICAS", 50);
    match system {
        System::Hpa { cpu } => out.push(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "socket", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "socket"},
                "minReplicas": min,
                "maxReplicas": max,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}],
                "behavior": windows.hpa_behavior()
            }
        })),
        System::Keda { cpu, memory } => out.push(json!({
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "socket", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "socket"},
                "minReplicaCount": min,
                "maxReplicaCount": max,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": windows.hpa_behavior()}},
                "triggers": [
                    {"type": "cpu", "metricType": "Utilization", "metadata": {"value": cpu.to_string()}},
                    {"type": "memory", "metricType": "Utilization", "metadata": {"value": memory.to_string()}}
                ]
            }
        })),
        System::LoadBalancer | System::Backup => {}
    }
    Ok(out)
}

/// The figures of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Seconds with any pod overloaded: a fresh, non-draining heartbeat
    /// above a critical threshold of the policy (see [`Overload`]) or with
    /// a p95 above [`P95_LIMIT_MS`].
    pub overload_s: f64,
    /// Socket pods in existence (draining ones included), integrated over
    /// the run, minutes.
    pub replica_minutes: f64,
    /// `/scale` writes the API server accepted, by anyone.
    pub scale_writes: usize,
    /// Of those, the HPA controller's.
    pub hpa_writes: usize,
    /// Of those, the load-balancer's.
    pub lb_writes: usize,
    /// Rises of `spec.replicas` between two samples.
    pub scale_outs: usize,
    /// Falls of `spec.replicas` between two samples.
    pub scale_ins: usize,
    /// Falls of `spec.replicas` after `split_ms` (the backup run's stop of
    /// the load-balancer).
    pub scale_ins_after_split: usize,
    /// Rises after `split_ms`.
    pub scale_outs_after_split: usize,
    /// `/scale` writes of the HPA controller before `split_ms`.
    pub hpa_writes_before_split: usize,
    /// Most replicas asked for.
    pub peak_replicas: i32,
    /// The highest p95 of a socket pod, ms.
    pub p95_max_ms: f64,
    /// The median over the samples of the highest p95, ms.
    pub p95_median_ms: f64,
}

/// The curves of one run, seconds since its first sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    /// Connections the profile wants.
    pub wanted_connections: Vec<(f64, f64)>,
    /// Connections open.
    pub open_connections: Vec<(f64, f64)>,
    /// Socket pods in existence.
    pub pods: Vec<(f64, f64)>,
    /// `spec.replicas`.
    pub replicas: Vec<(f64, f64)>,
    /// The highest p95 of the socket pods, ms.
    pub p95: Vec<(f64, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// The figures and curves of a run's `entries`; `split_ms` (ms since the
/// Unix epoch) splits the backup run's figures at the load-balancer's stop.
/// Each sample stands for the time until the next one.
pub fn figures(entries: &[Entry], overload: &Overload, split_ms: Option<u64>) -> (Figures, Curves) {
    let mut f = Figures::default();
    let mut c = Curves::default();
    let mut alive: BTreeSet<&str> = BTreeSet::new();
    let mut first: Option<u64> = None;
    let mut last: Option<(u64, bool, usize, Option<i32>)> = None;
    let mut p95s = Vec::new();
    let split = split_ms.unwrap_or(u64::MAX);
    let close = |f: &mut Figures, prev: (u64, bool, usize, Option<i32>), at_ms: u64| {
        let dt = at_ms.saturating_sub(prev.0) as f64 / 1000.0;
        if prev.1 {
            f.overload_s += dt;
        }
        f.replica_minutes += prev.2 as f64 * dt / 60.0;
    };
    for e in entries {
        match e {
            Entry::Pod(p) => match p.change {
                PodChange::Created => {
                    alive.insert(&p.pod);
                }
                PodChange::Gone => {
                    alive.remove(p.pod.as_str());
                }
                PodChange::Ready | PodChange::Deleting => {}
            },
            Entry::Write(w) => {
                f.scale_writes += 1;
                if w.user == HPA_USER {
                    f.hpa_writes += 1;
                    if w.at_ms < split {
                        f.hpa_writes_before_split += 1;
                    }
                } else if w.user.ends_with(":load-balancer") {
                    f.lb_writes += 1;
                }
            }
            Entry::Sample(s) => {
                let t0 = *first.get_or_insert(s.at_ms);
                let x = s.at_ms.saturating_sub(t0) as f64 / 1000.0;
                let fresh = s
                    .nodes
                    .iter()
                    .filter(|n| !n.draining && n.sent_ms + FRESH_MS >= s.at_ms);
                let hot = fresh
                    .clone()
                    .any(|n| overload.hit(n) || n.p95_ms > P95_LIMIT_MS);
                let p95 = fresh.map(|n| n.p95_ms).fold(0.0, f64::max);
                p95s.push(p95);
                f.p95_max_ms = f.p95_max_ms.max(p95);
                f.peak_replicas = f.peak_replicas.max(s.wanted.unwrap_or(0));
                if let Some(prev) = last {
                    close(&mut f, prev, s.at_ms);
                    if let (Some(before), Some(now)) = (prev.3, s.wanted) {
                        if now > before {
                            f.scale_outs += 1;
                            if s.at_ms >= split {
                                f.scale_outs_after_split += 1;
                            }
                        } else if now < before {
                            f.scale_ins += 1;
                            if s.at_ms >= split {
                                f.scale_ins_after_split += 1;
                            }
                        }
                    }
                }
                last = Some((
                    s.at_ms,
                    hot,
                    alive.len(),
                    s.wanted.or(last.and_then(|l| l.3)),
                ));
                c.wanted_connections.push((x, f64::from(s.load.wanted)));
                c.open_connections.push((x, s.load.open as f64));
                c.pods.push((x, alive.len() as f64));
                if let Some(w) = s.wanted {
                    c.replicas.push((x, f64::from(w)));
                }
                c.p95.push((x, p95));
            }
            _ => {}
        }
    }
    f.p95_median_ms = median(p95s);
    (f, c)
}

/// What the load generator measured in a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    /// Messages sent.
    pub sent: u64,
    /// Received by their recipient.
    pub received: u64,
    /// Never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Connections a draining pod ended (a `reconnect` frame or close
    /// 1012): the clients scale-in disconnected.
    pub disconnected_by_drain: u64,
    /// Connections that ended otherwise (dropped, closed, refused) and
    /// reconnected.
    pub other_reconnects: u64,
}

impl Messages {
    /// The figures of the load generator's `summary`.
    pub fn of(summary: &rtc_loadgen::Summary) -> Self {
        let m = &summary.messages;
        let drain = summary.reconnects.get(&Reason::Drain).copied().unwrap_or(0);
        let all: u64 = summary.reconnects.values().sum();
        Self {
            sent: m.sent,
            received: m.received,
            lost: m.lost,
            duplicates: m.duplicates,
            disconnected_by_drain: drain,
            other_reconnects: all - drain,
        }
    }
}

/// One run of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The profile's name.
    pub profile: String,
    /// Who scaled.
    pub system: System,
    /// Its label.
    pub label: String,
    /// The figures.
    pub figures: Figures,
    /// The messages.
    pub messages: Messages,
    /// The curves.
    pub curves: Curves,
    /// Load time (the profile and the grace after it), ms.
    pub load_ms: u64,
    /// The run record.
    pub record: PathBuf,
}

/// What a comparison needs.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The kustomize overlay of deploy/k8s to install.
    pub overlay: PathBuf,
    /// Its namespace.
    pub namespace: String,
    /// The profiles, by name.
    pub profiles: Vec<(String, Profile)>,
    /// The profile of the backup run ([`System::Backup`]), by name.
    pub backup_profile: Option<(String, Profile)>,
    /// The systems, each run on every profile.
    pub systems: Vec<System>,
    /// The windows.
    pub windows: Windows,
    /// Where records, tables and charts go.
    pub out_dir: PathBuf,
    /// The stack's Redis.
    pub redis_url: String,
    /// The stack's broker.
    pub kafka_bootstrap: String,
    /// The API server's audit log.
    pub audit_log: PathBuf,
    /// The stack's `nodes/` directory (pod logs).
    pub nodes_dir: Option<PathBuf>,
}

/// Scales the load-balancer Deployment to zero (the backup run's stop).
async fn stop_load_balancer(client: &kube::Client, namespace: &str) -> Result<(), DemoError> {
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), namespace);
    let patch = json!({"spec": {"replicas": 0}});
    api.patch_scale(
        "load-balancer",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|e| DemoError::Write {
        path: "the load-balancer Deployment's /scale".into(),
        message: e.to_string(),
    })
}

/// Runs `profile` against the fleet of `system`.
async fn run_one(
    client: &kube::Client,
    config: &CompareConfig,
    rendered: &[Value],
    (name, profile): &(String, Profile),
    system: &System,
) -> Result<RunResult, DemoError> {
    let dir = config.out_dir.join(name).join(system.slug());
    std::fs::create_dir_all(&dir).map_err(write_failed(&dir))?;
    let run_id = format!("cmp{}", SystemClock.now_ms() % 1_000_000_000);
    let target = Target {
        namespace: config.namespace.clone(),
        redis_url: config.redis_url.clone(),
        kafka_bootstrap: config.kafka_bootstrap.clone(),
        prefix: format!("rtc-{run_id}"),
        statefulset: false,
        settings: std::collections::BTreeMap::new(),
    };
    fleet::remove(client, &config.namespace).await?;
    let docs = fleet::prepare(rendered.to_vec(), &target, &config.overlay)?;
    let docs = fleet_for(docs, system, config.windows).map_err(|e| DemoError::Write {
        path: config.overlay.display().to_string(),
        message: e.to_string(),
    })?;
    let overload = overload_of(&docs);
    fleet::apply(&docs).await?;
    wait_ready(client, &config.namespace, system.load_balancers()).await?;
    println!(
        "[compare] {name}: {} is Ready; {} s of load",
        system.label(),
        profile.duration().as_secs()
    );
    let observer = Observer::new(
        client.clone(),
        &config.namespace,
        false,
        &config.redis_url,
        &format!("{}:hb:", target.prefix),
        &config.audit_log,
    )?
    .with_all_writers();
    let mut observer = match &config.nodes_dir {
        Some(d) => observer.with_pod_logs(d.clone()),
        None => observer,
    };
    let record_path = dir.join("record.jsonl");
    let mut record = std::io::BufWriter::new(
        std::fs::File::create(&record_path).map_err(write_failed(&record_path))?,
    );
    let (progress_tx, progress_rx) = watch::channel(Snapshot::default());
    let mut load_config = RunConfig::new(run_id, profile.clone());
    load_config.grace = Duration::from_secs(10);
    let discovery = Discovery::Kubernetes {
        client: client.clone(),
        namespace: config.namespace.clone(),
        selector: "app=socket".into(),
        port: 8000,
    };
    let load = tokio::spawn(async move {
        let mut progress = Forward(progress_tx);
        rtc_loadgen::run(load_config, discovery, &mut progress).await
    });
    tokio::pin!(load);
    let stop_at = (*system == System::Backup)
        .then(|| profile.phases.first().map(|p| p.duration))
        .flatten();
    let mut split_ms = None;
    let started = Instant::now();
    let mut entries = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let summary = loop {
        tokio::select! {
            result = &mut load => break result,
            _ = ticker.tick() => {
                if let Some(at) = stop_at
                    && split_ms.is_none()
                    && started.elapsed() >= at
                {
                    stop_load_balancer(client, &config.namespace).await?;
                    split_ms = Some(SystemClock.now_ms());
                    println!("[compare] {name}: load-balancer stopped (scaled to 0)");
                }
                let snapshot = progress_rx.borrow().clone();
                for entry in observer.tick(SystemClock.now_ms(), load_of(&snapshot)).await {
                    let line = serde_json::to_string(&entry).unwrap_or_default();
                    writeln!(record, "{line}").map_err(write_failed(&record_path))?;
                    entries.push(entry);
                }
            }
        }
    };
    record.flush().map_err(write_failed(&record_path))?;
    let summary = summary.map_err(|e| DemoError::Write {
        path: "the load generator's task".into(),
        message: e.to_string(),
    })??;
    let summary_path = dir.join("load.json");
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    std::fs::write(&summary_path, json + "\n").map_err(write_failed(&summary_path))?;
    let (figures, curves) = figures(&entries, &overload, split_ms);
    let result = RunResult {
        profile: name.clone(),
        system: system.clone(),
        label: system.label(),
        figures,
        messages: Messages::of(&summary),
        curves,
        load_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        record: record_path,
    };
    println!("[compare] {name}: {}", row(&result));
    Ok(result)
}

/// Runs every system on every profile, one after the other, then removes
/// the fleet and writes `results.json`, `tables.md` and one chart per
/// profile (`<profile>.png`) to the output directory.
///
/// # Errors
///
/// [`DemoError`] naming what failed.
pub async fn compare(config: &CompareConfig) -> Result<Vec<RunResult>, DemoError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| DemoError::NoStack(e.to_string()))?;
    client
        .apiserver_version()
        .await
        .map_err(|e| DemoError::NoStack(e.to_string()))?;
    std::fs::create_dir_all(&config.out_dir).map_err(write_failed(&config.out_dir))?;
    let rendered = fleet::render(&config.overlay).await?;
    let mut results = Vec::new();
    for profile in &config.profiles {
        for system in config.systems.iter().filter(|s| **s != System::Backup) {
            results.push(run_one(&client, config, &rendered, profile, system).await?);
        }
        write_all(&config.out_dir, config.windows, &results)?;
    }
    if config.systems.contains(&System::Backup) {
        let profile = config
            .backup_profile
            .as_ref()
            .ok_or_else(|| DemoError::Write {
                path: "the backup run".into(),
                message: "no backup profile was given (--backup-profile)".into(),
            })?;
        results.push(run_one(&client, config, &rendered, profile, &System::Backup).await?);
        write_all(&config.out_dir, config.windows, &results)?;
    }
    fleet::remove(&client, &config.namespace).await?;
    Ok(results)
}

/// The runs of an earlier comparison, from its `results.json`.
///
/// # Errors
///
/// A message naming the file and what is wrong with it.
pub fn read_results(path: &Path) -> Result<(Windows, Vec<RunResult>), String> {
    #[derive(Deserialize)]
    struct Saved {
        windows: Windows,
        runs: Vec<RunResult>,
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let saved: Saved = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not the results.json of a comparison: {e}",
            path.display()
        )
    })?;
    Ok((saved.windows, saved.runs))
}

/// Writes `results.json`, `tables.md` and a chart per profile of
/// `results` to `out_dir`.
///
/// # Errors
///
/// [`DemoError::Write`] when a file cannot be written.
pub fn write_all(out_dir: &Path, windows: Windows, results: &[RunResult]) -> Result<(), DemoError> {
    std::fs::create_dir_all(out_dir).map_err(write_failed(out_dir))?;
    let json_path = out_dir.join("results.json");
    let json = serde_json::to_string_pretty(&json!({
        "windows": windows,
        "runs": results,
    }))
    .unwrap_or_default();
    std::fs::write(&json_path, json + "\n").map_err(write_failed(&json_path))?;
    let md_path = out_dir.join("tables.md");
    std::fs::write(&md_path, tables(results, windows)).map_err(write_failed(&md_path))?;
    let mut profiles: Vec<&str> = Vec::new();
    for r in results {
        if !profiles.contains(&r.profile.as_str()) {
            profiles.push(&r.profile);
        }
    }
    for name in profiles {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.profile == name).collect();
        let path = out_dir.join(format!("{name}.png"));
        if let Err(e) =
            crate::chart::draw_compare(&runs, &path, &format!("{name}: replicas over the load"))
        {
            println!("[compare] chart {} not drawn: {e}", path.display());
        }
    }
    Ok(())
}

fn row(r: &RunResult) -> String {
    let f = &r.figures;
    let m = &r.messages;
    format!(
        "| {} | {:.1} | {:.1} | {} ({} out, {} in) | {} | {} | {} / {} | {} | {:.0} / {:.0} |",
        r.label,
        f.overload_s,
        f.replica_minutes,
        f.scale_writes,
        f.scale_outs,
        f.scale_ins,
        f.peak_replicas,
        m.disconnected_by_drain,
        m.lost,
        m.sent,
        m.duplicates,
        f.p95_median_ms,
        f.p95_max_ms,
    )
}

/// How the load-balancer did against the best HPA run of a profile (the
/// one with the least overload in whole seconds, then the fewest
/// replica-minutes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    /// The profile.
    pub profile: String,
    /// The HPA run compared with.
    pub hpa: String,
    /// Load-balancer replica-minutes / the HPA's (goal: at most 1.10).
    pub replica_ratio: f64,
    /// Load-balancer overload / the HPA's (goal: at most 0.70); `None`
    /// when the HPA had none.
    pub overload_ratio: Option<f64>,
    /// HPA scale events / the load-balancer's (goal: at least 3); `None`
    /// when the load-balancer made none.
    pub events_ratio: Option<f64>,
    /// Messages the load-balancer's run lost (goal: 0).
    pub lost: u64,
}

impl Goal {
    /// Whether every part of the goal holds.
    pub fn met(&self) -> bool {
        self.replica_ratio <= 1.10
            && self.overload_ratio.is_none_or(|r| r <= 0.70)
            && self.events_ratio.is_none_or(|r| r >= 3.0)
            && self.lost == 0
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// The goal of each profile that has a load-balancer run and an HPA run.
pub fn goals(results: &[RunResult]) -> Vec<Goal> {
    let mut profiles: Vec<&str> = Vec::new();
    for r in results {
        if !profiles.contains(&r.profile.as_str()) {
            profiles.push(&r.profile);
        }
    }
    let mut out = Vec::new();
    for p in profiles {
        let lb = results
            .iter()
            .find(|r| r.profile == p && r.system == System::LoadBalancer);
        let hpa = results
            .iter()
            .filter(|r| r.profile == p && matches!(r.system, System::Hpa { .. }))
            .min_by(|a, b| {
                // Whole seconds: the sampling is once a second.
                let (oa, ob) = (a.figures.overload_s.round(), b.figures.overload_s.round());
                oa.total_cmp(&ob).then(
                    a.figures
                        .replica_minutes
                        .total_cmp(&b.figures.replica_minutes),
                )
            });
        let (Some(lb), Some(hpa)) = (lb, hpa) else {
            continue;
        };
        let overload = if lb.figures.overload_s == 0.0 && hpa.figures.overload_s == 0.0 {
            None
        } else {
            Some(ratio(lb.figures.overload_s, hpa.figures.overload_s).unwrap_or(f64::INFINITY))
        };
        out.push(Goal {
            profile: p.to_owned(),
            hpa: hpa.label.clone(),
            replica_ratio: ratio(lb.figures.replica_minutes, hpa.figures.replica_minutes)
                .unwrap_or(f64::INFINITY),
            overload_ratio: overload,
            events_ratio: ratio(
                hpa.figures.scale_writes as f64,
                lb.figures.scale_writes as f64,
            ),
            lost: lb.messages.lost,
        });
    }
    out
}

/// The tables of `results` as markdown: one per profile, the goal's
/// ratios, and the backup runs.
pub fn tables(results: &[RunResult], windows: Windows) -> String {
    let mut out = format!(
        "Windows: production's divided by {} (drain timeout {} s).\n\n",
        windows.factor,
        windows.drain_s()
    );
    let mut profiles: Vec<&str> = Vec::new();
    for r in results {
        if !profiles.contains(&r.profile.as_str()) {
            profiles.push(&r.profile);
        }
    }
    for p in &profiles {
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.profile == *p && r.system != System::Backup)
            .collect();
        if runs.is_empty() {
            continue;
        }
        out.push_str(&format!("### {p}\n\n"));
        out.push_str("| system | overload s | replica-minutes | scale events (/scale writes; spec.replicas rises, falls) | peak replicas | clients disconnected by scale-in | lost / sent | duplicates | p95 ms median / max |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for r in runs {
            out.push_str(&row(r));
            out.push('\n');
        }
        out.push('\n');
    }
    let goals = goals(results);
    if !goals.is_empty() {
        let show = |v: Option<f64>, none: &str| v.map_or(none.to_owned(), |v| format!("{v:.2}"));
        out.push_str("### The goal, load-balancer against the best HPA run of each profile\n\n");
        out.push_str("| profile | best HPA run | replica-minutes ratio (goal <= 1.10) | overload ratio (goal <= 0.70) | HPA / load-balancer scale events (goal >= 3) | messages lost (goal 0) | met |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for g in &goals {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {} | {} | {} | {} |\n",
                g.profile,
                g.hpa,
                g.replica_ratio,
                show(g.overload_ratio, "no overload in either"),
                show(g.events_ratio, "load-balancer made none"),
                g.lost,
                if g.met() { "yes" } else { "no" }
            ));
        }
        out.push('\n');
    }
    let backups: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.system == System::Backup)
        .collect();
    if !backups.is_empty() {
        out.push_str("### Backup mode: the load-balancer and KEDA's backup ScaledObject together, the load-balancer stopped after the first phase\n\n");
        out.push_str("| profile | KEDA (HPA controller) /scale writes while the load-balancer ran | after it stopped: rises, falls of spec.replicas | load-balancer writes | overload s | lost / sent |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for r in backups {
            let f = &r.figures;
            out.push_str(&format!(
                "| {} | {} | {}, {} | {} | {:.1} | {} / {} |\n",
                r.profile,
                f.hpa_writes_before_split,
                f.scale_outs_after_split,
                f.scale_ins_after_split,
                f.lb_writes,
                f.overload_s,
                r.messages.lost,
                r.messages.sent
            ));
        }
        out.push('\n');
    }
    out
}

/// Reads the profile at `path`, named after its file.
///
/// # Errors
///
/// A message naming the file and what is wrong with it.
pub fn read_profile(path: &Path) -> Result<(String, Profile), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the profile {}: {e}", path.display()))?;
    let profile =
        Profile::from_json(&text).map_err(|e| format!("the profile {}: {e}", path.display()))?;
    let name = path.file_stem().map_or_else(
        || "profile".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    Ok((name, profile))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Load, NodeFigures, PodEvent, Sample, ScaleWrite};

    const OVERLOAD: Overload = Overload {
        cpu: 0.70,
        mem: 0.75,
        conn: Some(135.0),
        mps: None,
    };

    fn node(sent_ms: u64, conn: u64, p95_ms: f64) -> NodeFigures {
        NodeFigures {
            pod: "socket-a".into(),
            sent_ms,
            conn,
            p95_ms,
            ..NodeFigures::default()
        }
    }

    fn sample(at_ms: u64, wanted: i32, nodes: Vec<NodeFigures>) -> Entry {
        Entry::Sample(Sample {
            at_ms,
            wanted: Some(wanted),
            ready: Some(wanted),
            load: Load {
                wanted: 100,
                open: 90,
                ..Load::default()
            },
            nodes,
            ..Sample::default()
        })
    }

    fn pod(at_ms: u64, name: &str, change: PodChange) -> Entry {
        Entry::Pod(PodEvent {
            at_ms,
            pod: name.into(),
            change,
        })
    }

    fn write(at_ms: u64, user: &str) -> Entry {
        Entry::Write(ScaleWrite {
            at_ms,
            user: user.into(),
            code: 200,
        })
    }

    #[test]
    fn systems_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(System::parse("lb"), Ok(System::LoadBalancer));
        assert_eq!(System::parse("hpa:50"), Ok(System::Hpa { cpu: 50 }));
        assert_eq!(
            System::parse("keda"),
            Ok(System::Keda {
                cpu: 70,
                memory: 75
            })
        );
        assert_eq!(
            System::parse("keda:60:80"),
            Ok(System::Keda {
                cpu: 60,
                memory: 80
            })
        );
        for bad in ["hpa", "hpa:0", "hpa:x", "keda:1", "vpa"] {
            let e = System::parse(bad).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains("use lb, hpa:")),
                "{bad}: {e:?}"
            );
        }
        assert_eq!(Windows::new(0), Err(CompareError::Factor(0)));
        assert_eq!(Windows::new(61), Err(CompareError::Factor(61)));
    }

    #[test]
    fn windows_divide_production_and_the_hpa_defaults_alike() -> Result<(), CompareError> {
        let w = Windows::new(10)?;
        let config: std::collections::BTreeMap<_, _> = w.config().into_iter().collect();
        assert_eq!(config["SCALE_OUT_WINDOW_MS"], "18000");
        assert_eq!(config["SCALE_IN_WINDOW_MS"], "30000");
        assert_eq!(config["SCALE_IN_STABILIZATION_MS"], "18000");
        assert_eq!(config["SETTLE_MS"], "6000");
        assert_eq!(config["DRAIN_TIMEOUT"], "30s");
        assert_eq!(config["REBALANCE_WINDOW_MS"], "6000");
        assert_eq!(config["REBALANCE_SHED_WINDOW_MS"], "2000");
        let b = w.hpa_behavior();
        assert_eq!(b["scaleDown"]["stabilizationWindowSeconds"], 30);
        assert_eq!(b["scaleUp"]["policies"][0]["periodSeconds"], 2);
        assert_eq!(b["scaleUp"]["policies"][1]["value"], 4);
        Ok(())
    }

    fn rendered() -> Vec<Value> {
        vec![
            json!({"kind": "ConfigMap", "metadata": {"name": "rtc-config", "namespace": "rtc"}, "data": {"SOCKET_MIN_REPLICAS": "2", "SOCKET_MAX_REPLICAS": "8"}}),
            json!({"kind": "Deployment", "metadata": {"name": "socket", "namespace": "rtc"}, "spec": {"template": {"spec": {"containers": [
                {"name": "socket", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}}
            ]}}}}),
            json!({"kind": "Deployment", "metadata": {"name": "load-balancer", "namespace": "rtc"}}),
            json!({"kind": "ScaledObject", "metadata": {"name": "socket-backup", "namespace": "rtc"}, "spec": {"triggers": [
                {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "175"}},
                {"type": "memory", "metricType": "Utilization", "metadata": {"value": "181"}}
            ]}}),
        ]
    }

    fn kinds(docs: &[Value]) -> Vec<String> {
        docs.iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or(""),
                    d["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn each_system_gets_its_own_scaler_and_nothing_else_scales() -> Result<(), CompareError> {
        let w = Windows::new(10)?;
        let lb = fleet_for(rendered(), &System::LoadBalancer, w)?;
        assert_eq!(
            kinds(&lb),
            [
                "ConfigMap/rtc-config",
                "Deployment/socket",
                "Deployment/load-balancer"
            ]
        );
        assert_eq!(lb[0]["data"]["SETTLE_MS"], "6000");
        assert_eq!(
            lb[1]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            50
        );
        let hpa = fleet_for(rendered(), &System::Hpa { cpu: 70 }, w)?;
        assert_eq!(
            kinds(&hpa),
            [
                "ConfigMap/rtc-config",
                "Deployment/socket",
                "HorizontalPodAutoscaler/socket"
            ]
        );
        let spec = &hpa[2]["spec"];
        assert_eq!(spec["minReplicas"], 2);
        assert_eq!(spec["maxReplicas"], 8);
        assert_eq!(
            spec["metrics"][0]["resource"]["target"]["averageUtilization"],
            70
        );
        let keda = fleet_for(
            rendered(),
            &System::Keda {
                cpu: 70,
                memory: 75,
            },
            w,
        )?;
        assert_eq!(
            kinds(&keda),
            [
                "ConfigMap/rtc-config",
                "Deployment/socket",
                "ScaledObject/socket"
            ]
        );
        assert_eq!(keda[2]["spec"]["triggers"][1]["metadata"]["value"], "75");
        let backup = fleet_for(rendered(), &System::Backup, w)?;
        assert_eq!(
            kinds(&backup),
            [
                "ConfigMap/rtc-config",
                "Deployment/socket",
                "Deployment/load-balancer",
                "ScaledObject/socket-backup"
            ]
        );
        assert_eq!(
            backup[3]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                ["selectPolicy"],
            "Disabled"
        );
        // The backup run's small pods, and triggers at the base's fractions
        // of their limits: 0.875 x 50m / 10m and 0.905 x 512Mi / 64Mi.
        let resources = &backup[1]["spec"]["template"]["spec"]["containers"][0]["resources"];
        assert_eq!(resources["requests"]["cpu"], "10m");
        assert_eq!(resources["limits"]["cpu"], "50m");
        assert_eq!(resources["limits"]["memory"], "512Mi");
        let triggers = &backup[3]["spec"]["triggers"];
        assert_eq!(triggers[0]["metadata"]["value"], "438");
        assert_eq!(triggers[1]["metadata"]["value"], "724");
        // No other run is resized.
        assert_eq!(
            lb[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "500m"
        );
        assert_eq!(
            fleet_for(rendered()[1..].to_vec(), &System::LoadBalancer, w).err(),
            Some(CompareError::Missing("ConfigMap rtc-config"))
        );
        Ok(())
    }

    #[test]
    fn the_backup_fractions_are_the_shipped_triggers_over_the_base_sizing()
    -> Result<(), Box<dyn std::error::Error>> {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/base");
        let docs = |file: &str| -> Result<Vec<Value>, Box<dyn std::error::Error>> {
            let text = std::fs::read_to_string(base.join(file))?;
            Ok(serde_saphyr::from_multiple(&text)?)
        };
        let keda = docs("05-keda-scaler.yaml")?;
        let scaled = keda
            .iter()
            .find(|d| d["kind"] == "ScaledObject")
            .ok_or("no ScaledObject")?;
        let socket = docs("04-socket.yaml")?;
        let container = socket
            .iter()
            .filter(|d| d["kind"] == "Deployment")
            .flat_map(|d| {
                d["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|c| c["name"] == "socket")
            .ok_or("no socket container")?;
        let quantity = |kind: &str, name: &str| -> Result<f64, String> {
            let q = &container["resources"][kind][name];
            let text = q
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| q.to_string());
            let parsed = if name == "cpu" {
                cpu_millis(&text)
            } else {
                memory_bytes(&text)
            };
            parsed.ok_or_else(|| format!("resources.{kind}.{name} = {text}"))
        };
        for (kind, fraction) in [
            ("cpu", BACKUP_CPU_OF_LIMIT),
            ("memory", BACKUP_MEMORY_OF_LIMIT),
        ] {
            let value: f64 = scaled["spec"]["triggers"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["type"] == kind))
                .and_then(|t| t["metadata"]["value"].as_str())
                .ok_or("no trigger")?
                .parse()?;
            let shipped = value / 100.0 * quantity("requests", kind)? / quantity("limits", kind)?;
            assert!(
                (shipped - fraction).abs() < 1e-9,
                "{kind}: {shipped} against {fraction}"
            );
            // And back: the base's own sizing gives the shipped trigger.
            assert_eq!(
                f64::from(trigger_percent(
                    fraction,
                    quantity("requests", kind)?,
                    quantity("limits", kind)?
                )),
                value
            );
        }
        Ok(())
    }

    #[test]
    fn quantities_parse_and_bad_ones_are_none() {
        assert_eq!(cpu_millis("250m"), Some(250.0));
        assert_eq!(cpu_millis("1"), Some(1000.0));
        assert_eq!(cpu_millis("0.5"), Some(500.0));
        assert_eq!(memory_bytes("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(memory_bytes("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(memory_bytes("2048"), Some(2048.0));
        for bad in ["", "m", "-1", "0", "ten", "1Xi"] {
            assert_eq!(cpu_millis(bad).or(memory_bytes(bad)), None, "{bad:?}");
        }
        assert_eq!(trigger_percent(0.875, 10.0, 50.0), 438);
        assert_eq!(trigger_percent(0.875, 500.0, 1000.0), 175);
    }

    #[test]
    fn overload_replicas_and_events_are_integrated_over_the_samples() {
        let hot = node(9_500, 200, 10.0);
        let slow = node(11_500, 10, 800.0);
        let calm = node(12_500, 10, 10.0);
        let stale_hot = node(1_000, 500, 10.0);
        let entries = vec![
            pod(10_000, "a", PodChange::Created),
            pod(10_000, "b", PodChange::Created),
            sample(10_000, 2, vec![hot]),
            write(10_500, HPA_USER),
            pod(11_000, "c", PodChange::Created),
            sample(12_000, 3, vec![slow]),
            pod(13_000, "c", PodChange::Gone),
            sample(13_000, 2, vec![calm, stale_hot]),
            write(13_500, "system:serviceaccount:rtc:load-balancer"),
            sample(16_000, 2, vec![]),
        ];
        let (f, c) = figures(&entries, &OVERLOAD, Some(12_500));
        // Hot from 10 s to 12 s (capacity), 12 s to 13 s (p95); the stale
        // heartbeat at 13 s does not count.
        assert!((f.overload_s - 3.0).abs() < 1e-9, "{}", f.overload_s);
        // 2 pods for 2 s, 3 for 1 s, 2 for 3 s: 13 pod-seconds.
        assert!((f.replica_minutes - 13.0 / 60.0).abs() < 1e-9);
        assert_eq!((f.scale_writes, f.hpa_writes, f.lb_writes), (2, 1, 1));
        assert_eq!((f.scale_outs, f.scale_ins), (1, 1));
        assert_eq!((f.scale_outs_after_split, f.scale_ins_after_split), (0, 1));
        assert_eq!(f.hpa_writes_before_split, 1);
        assert_eq!(f.peak_replicas, 3);
        assert!((f.p95_max_ms - 800.0).abs() < 1e-9);
        assert!((f.p95_median_ms - 10.0).abs() < 1e-9);
        assert_eq!(c.pods, [(0.0, 2.0), (2.0, 3.0), (3.0, 2.0), (6.0, 2.0)]);
        assert_eq!(c.wanted_connections.len(), 4);
    }

    fn result(profile: &str, system: System, overload_s: f64, rm: f64, writes: usize) -> RunResult {
        RunResult {
            profile: profile.into(),
            label: system.label(),
            system,
            figures: Figures {
                overload_s,
                replica_minutes: rm,
                scale_writes: writes,
                ..Figures::default()
            },
            messages: Messages::default(),
            curves: Curves::default(),
            load_ms: 0,
            record: PathBuf::new(),
        }
    }

    #[test]
    fn the_goal_compares_with_the_hpa_run_of_least_overload() -> Result<(), CompareError> {
        let results = vec![
            result("spike", System::LoadBalancer, 6.0, 10.5, 2),
            result("spike", System::Hpa { cpu: 50 }, 20.0, 12.0, 6),
            result("spike", System::Hpa { cpu: 70 }, 40.0, 8.0, 4),
            result("ramp", System::LoadBalancer, 10.0, 10.0, 3),
            result("ramp", System::Hpa { cpu: 50 }, 10.0, 5.0, 3),
            result("ramp", System::Hpa { cpu: 70 }, 9.8, 6.0, 3),
        ];
        let g = goals(&results);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].hpa, "HPA cpu 50 %");
        assert!((g[0].replica_ratio - 0.875).abs() < 1e-9);
        assert_eq!(g[0].overload_ratio, Some(0.3));
        assert_eq!(g[0].events_ratio, Some(3.0));
        assert!(g[0].met());
        assert!(!g[1].met());
        let md = tables(&results, Windows::new(10)?);
        assert!(md.contains("### spike"));
        assert!(md.contains("| HPA cpu 70 % | 40.0 | 8.0 | 4 (0 out, 0 in) |"));
        assert!(md.contains("| ramp | HPA cpu 50 % | 2.00 | 1.00 | 1.00 | 0 | no |"));
        Ok(())
    }
}
