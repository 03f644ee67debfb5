//! Fixtures shared by the end-to-end tests of the load-balancer binary.
#![allow(dead_code, unreachable_pub)]

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use rtc_heartbeat::{
    KeyLayout, Load, PublisherConfig, PublisherHandle, RedisOptions, RedisStore, SystemClock,
    publisher,
};
use rtc_testkit::{Endpoints, TestNamespace, fixtures};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

pub const NAME: &str = "socket";
pub const INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Deployment,
    StatefulSet,
}

/// Where the load-balancer processes of namespace `ns` find their
/// kubeconfig: that of the namespace's `load-balancer` service account.
fn lb_kubeconfig(ns: &TestNamespace) -> PathBuf {
    std::env::temp_dir().join(format!("{}-load-balancer.kubeconfig", ns.name()))
}

/// Creates the socket workload, and the load-balancer's service account
/// with the RBAC of deploy/k8s whose kubeconfig [`Lb::start`] runs with.
pub async fn create_workload(ns: &TestNamespace, kind: Kind, replicas: i32) -> Result {
    fixtures::grant_load_balancer(ns).await?;
    ns.service_account_kubeconfig("load-balancer", &lb_kubeconfig(ns))
        .await?;
    let pp = PostParams::default();
    match kind {
        Kind::Deployment => {
            let d = fixtures::deployment(NAME, replicas);
            ns.api::<Deployment>().create(&pp, &d).await?;
            fixtures::settled(&ns.api::<Deployment>(), NAME).await?;
        }
        Kind::StatefulSet => {
            let s = fixtures::stateful_set(NAME, replicas);
            ns.api::<StatefulSet>().create(&pp, &s).await?;
            fixtures::settled(&ns.api::<StatefulSet>(), NAME).await?;
        }
    }
    Ok(())
}

pub async fn replicas(ns: &TestNamespace, kind: Kind) -> Result<i32> {
    Ok(match kind {
        Kind::Deployment => ns
            .api::<Deployment>()
            .get(NAME)
            .await?
            .spec
            .and_then(|s| s.replicas),
        Kind::StatefulSet => ns
            .api::<StatefulSet>()
            .get(NAME)
            .await?
            .spec
            .and_then(|s| s.replicas),
    }
    .unwrap_or(1))
}

/// A scheduled, running, ready pod with the workload's labels, as the
/// (absent) ReplicaSet controller and kubelet would have made it.
pub async fn create_pod(ns: &TestNamespace, name: &str) -> Result {
    fixtures::create_ready_pod(&ns.api::<Pod>(), &fixtures::scheduled_pod(NAME, name)).await?;
    Ok(())
}

/// Simulated socket nodes publishing heartbeats under a prefix.
pub struct Fleet {
    store: RedisStore,
    interval: Duration,
    stale_after: Duration,
    pub nodes: Vec<(String, watch::Sender<Load>, PublisherHandle<RedisStore>)>,
}

pub fn load(cpu: f64, conn: u64) -> Load {
    Load {
        cpu,
        mem: cpu,
        conn,
        mps: 5.0,
        p95_ms: 20.0,
        lag_ms: 1.0,
        ..Load::IDLE
    }
}

impl Fleet {
    pub fn new(prefix: &str) -> Result<Self> {
        Self::with_timing(prefix, INTERVAL, Duration::from_millis(1_500))
    }

    pub fn with_timing(prefix: &str, interval: Duration, stale_after: Duration) -> Result<Self> {
        let client = rtc_heartbeat::connect(&RedisOptions::new(Endpoints::from_env().redis_url))?;
        Ok(Self {
            store: RedisStore::new(client, KeyLayout::new(prefix)),
            interval,
            stale_after,
            nodes: Vec::new(),
        })
    }

    pub fn add(&mut self, id: &str, l: Load) -> Result {
        let (tx, rx) = watch::channel(l);
        let config = PublisherConfig {
            interval: self.interval,
            stale_after: self.stale_after,
            ..PublisherConfig::new(id, "boot-1")
        };
        let handle = publisher::spawn(config, self.store.clone(), SystemClock, rx)?;
        self.nodes.push((id.to_owned(), tx, handle));
        Ok(())
    }

    /// Every node reports `l` from its next heartbeat on.
    pub fn set_all(&self, l: Load) {
        for (_, tx, _) in &self.nodes {
            tx.send_replace(l);
        }
    }

    /// Stops a node's heartbeats without deregistering: it goes silent.
    pub fn silence(&mut self, id: &str) {
        self.nodes.retain(|(n, _, _)| n != id);
    }
}

/// One load-balancer process, killed on drop. It runs as the namespace's
/// `load-balancer` service account, so the API server's RBAC holds it to
/// what deploy/k8s grants; [`create_workload`] makes the account.
pub struct Lb {
    pub child: Child,
    log: PathBuf,
}

impl Lb {
    pub fn start(
        identity: &str,
        ns: &TestNamespace,
        prefix: &str,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        let endpoints = Endpoints::from_env();
        let kubeconfig = lb_kubeconfig(ns);
        if !kubeconfig.exists() {
            return Err(format!(
                "{} is missing: call create_workload before Lb::start",
                kubeconfig.display()
            )
            .into());
        }
        let log = std::env::temp_dir().join(format!("{}-{identity}.log", ns.name()));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_load-balancer"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("POD_NAME", identity)
            .env("KUBECONFIG", &kubeconfig)
            .env("KUBERNETES_NAMESPACE", ns.name())
            .env("SOCKET_WORKLOAD_NAME", NAME)
            .env("REDIS_URL", &endpoints.redis_url)
            .env("HEARTBEAT_PREFIX", prefix)
            .env("DECISION_STATE_KEY", format!("{prefix}decision-state"))
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("TICK_INTERVAL_MS", "500")
            .env("STALE_AFTER_MS", "1500")
            .env("LEASE_DURATION_MS", "3000")
            .env("RENEW_DEADLINE_MS", "2000")
            .env("RETRY_PERIOD_MS", "500")
            .env("LEADER_SAFETY_MARGIN_MS", "500")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Ok(Self {
            child: cmd.spawn()?,
            log,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a 5-replica workload of `kind` in `ns` whose 5 nodes heartbeat
/// through `fleet` with a balanced load, starts load-balancer `identity` on
/// it, and waits (up to `within`) until it has led one tick.
pub async fn start_balanced(
    ns: &TestNamespace,
    kind: Kind,
    fleet: &mut Fleet,
    identity: &str,
    extra: &[(&str, &str)],
    within: Duration,
) -> Result<Lb> {
    create_workload(ns, kind, 5).await?;
    for i in 0..5 {
        fleet.add(&format!("socket-{i}"), load(0.4, 100))?;
    }
    let lb = Lb::start(identity, ns, &prefix(ns), extra)?;
    eventually(within, || async {
        lb.log().contains("reason=balanced").then_some(())
    })
    .await
    .ok_or_else(|| format!("{identity} never ticked on a balanced fleet:\n{}", lb.log()))?;
    Ok(lb)
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub const SIGNAL_TOPIC: &str = "rtc.control.scale";

/// The scaling signal `leader` published, if it is on the topic yet.
pub async fn scale_signal(leader: &str) -> Option<serde_json::Value> {
    let client = rskafka::client::ClientBuilder::new(vec![Endpoints::from_env().kafka_bootstrap])
        .build()
        .await
        .ok()?;
    let partition = client
        .partition_client(
            SIGNAL_TOPIC,
            0,
            rskafka::client::partition::UnknownTopicHandling::Error,
        )
        .await
        .ok()?;
    let mut offset = 0;
    loop {
        let (records, high_watermark) = partition
            .fetch_records(offset, 1..10_000_000, 200)
            .await
            .ok()?;
        for r in &records {
            let value: serde_json::Value =
                serde_json::from_slice(r.record.value.as_deref()?).ok()?;
            if value["leader"] == leader {
                return Some(value);
            }
            offset = r.offset + 1;
        }
        if records.is_empty() || offset >= high_watermark {
            return None;
        }
    }
}

pub fn prefix(ns: &TestNamespace) -> String {
    format!("{}:", ns.name())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs one of the stack's service scripts (`redis`, `apiserver`, ...).
pub fn service(name: &str, action: &str) -> Result {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/local/services")
        .join(format!("{name}.sh"));
    let status = Command::new("bash")
        .arg(&script)
        .arg(action)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("{} {action} failed: {status}", script.display()).into());
    }
    Ok(())
}

/// Starts a stack service again when dropped, even if the test failed.
pub struct Restart(pub &'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        if let Err(e) = service(self.0, "start") {
            eprintln!("could not restart {}: {e}", self.0);
        }
    }
}

/// GET on the admin port: status code and body.
pub async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    rtc_testkit::http(([127, 0, 0, 1], port).into(), "GET", path)
        .await
        .ok()
}
