//! The load-balancer binary end to end on the local stack: real Redis, real
//! Kubernetes API server, socket nodes simulated by heartbeat publishers.
//! Windows are shortened through configuration, never by changing defaults.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use rtc_heartbeat::{
    KeyLayout, Load, PublisherConfig, PublisherHandle, RedisOptions, RedisStore, SystemClock,
    publisher,
};
use rtc_testkit::{Endpoints, TestNamespace};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::watch;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const NAME: &str = "socket";
const INTERVAL: Duration = Duration::from_millis(300);

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), NAME.to_owned())])
}

fn template() -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: NAME.to_owned(),
                image: Some("socket-node:test".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        name: Some(NAME.to_owned()),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

fn selector() -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels()),
        ..LabelSelector::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Deployment,
    StatefulSet,
}

async fn create_workload(ns: &TestNamespace, kind: Kind, replicas: i32) -> Result {
    let pp = PostParams::default();
    match kind {
        Kind::Deployment => {
            let d = Deployment {
                metadata: meta(),
                spec: Some(DeploymentSpec {
                    replicas: Some(replicas),
                    selector: selector(),
                    template: template(),
                    ..DeploymentSpec::default()
                }),
                ..Deployment::default()
            };
            ns.api::<Deployment>().create(&pp, &d).await?;
        }
        Kind::StatefulSet => {
            let s = StatefulSet {
                metadata: meta(),
                spec: Some(StatefulSetSpec {
                    replicas: Some(replicas),
                    selector: selector(),
                    service_name: Some(NAME.to_owned()),
                    template: template(),
                    ..StatefulSetSpec::default()
                }),
                ..StatefulSet::default()
            };
            ns.api::<StatefulSet>().create(&pp, &s).await?;
        }
    }
    Ok(())
}

async fn replicas(ns: &TestNamespace, kind: Kind) -> Result<i32> {
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
async fn create_pod(ns: &TestNamespace, name: &str) -> Result {
    let pods = ns.api::<Pod>();
    let mut spec = template().spec.unwrap_or_default();
    spec.node_name = Some("node-a".to_owned());
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        ..Pod::default()
    };
    pods.create(&PostParams::default(), &pod).await?;
    let status = json!({ "status": {
        "phase": "Running",
        "conditions": [{ "type": "Ready", "status": "True" }],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

/// Simulated socket nodes publishing heartbeats under a prefix.
struct Fleet {
    store: RedisStore,
    nodes: Vec<(String, watch::Sender<Load>, PublisherHandle<RedisStore>)>,
}

fn load(cpu: f64, conn: u64) -> Load {
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
    fn new(prefix: &str) -> Result<Self> {
        let client = rtc_heartbeat::connect(&RedisOptions::new(Endpoints::from_env().redis_url))?;
        Ok(Self {
            store: RedisStore::new(client, KeyLayout::new(prefix)),
            nodes: Vec::new(),
        })
    }

    fn add(&mut self, id: &str, l: Load) -> Result {
        let (tx, rx) = watch::channel(l);
        let config = PublisherConfig {
            interval: INTERVAL,
            stale_after: Duration::from_millis(1_500),
            ..PublisherConfig::new(id, "boot-1")
        };
        let handle = publisher::spawn(config, self.store.clone(), SystemClock, rx)?;
        self.nodes.push((id.to_owned(), tx, handle));
        Ok(())
    }

    /// Stops a node's heartbeats without deregistering: it goes silent.
    fn silence(&mut self, id: &str) {
        self.nodes.retain(|(n, _, _)| n != id);
    }
}

/// One load-balancer process, killed on drop.
struct Lb {
    child: Child,
    log: PathBuf,
}

impl Lb {
    fn start(
        identity: &str,
        ns: &TestNamespace,
        prefix: &str,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        let endpoints = Endpoints::from_env();
        let log = std::env::temp_dir().join(format!("{}-{identity}.log", ns.name()));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_load-balancer"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("POD_NAME", identity)
            .env("KUBECONFIG", &endpoints.kubeconfig)
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
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

fn prefix(ns: &TestNamespace) -> String {
    format!("{}:", ns.name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_scales_out_both_kinds_by_the_critical_step() -> Result {
    for kind in [Kind::Deployment, Kind::StatefulSet] {
        let ns = rtc_testkit::kubernetes().await?;
        create_workload(&ns, kind, 5).await?;
        let mut fleet = Fleet::new(&prefix(&ns))?;
        let lb = Lb::start("lb-0", &ns, &prefix(&ns), &[])?;
        // Let the replica become leader on a calm fleet first, so the
        // measured time is heartbeat-to-write, not process start.
        for i in 0..5 {
            fleet.add(&format!("socket-{i}"), load(0.4, 100))?;
        }
        eventually(Duration::from_secs(20), || async {
            lb.log().contains("reason=balanced").then_some(())
        })
        .await
        .ok_or_else(|| format!("{kind:?}: never ticked on a balanced fleet:\n{}", lb.log()))?;
        let overloaded = Instant::now();
        for (_, tx, _) in &fleet.nodes {
            tx.send_replace(load(0.8, 900));
        }
        let took = eventually(Duration::from_secs(20), || async {
            (replicas(&ns, kind).await.ok() == Some(8)).then(|| overloaded.elapsed())
        })
        .await
        .ok_or_else(|| format!("{kind:?}: no scale-out to 8:\n{}", lb.log()))?;
        println!("{kind:?}: first overloaded heartbeat to /scale write seen: {took:?}");

        let log = lb.log();
        assert!(
            log.contains("CRITICAL: resource overload (CPU 80.0%, Mem 80.0%)"),
            "{log}"
        );
        assert!(
            log.contains(
                "Exponential scale-out: urgency=3, base=3, consecutive=0, growth=n/a, step=3"
            ),
            "{log}"
        );
        assert!(log.contains("SCALE_OUT nodes=5->8 (+3)"), "{log}");
        assert!(log.contains("Successfully scaled"), "{log}");
        // The new pods never report: the leader settles instead of compounding.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(replicas(&ns, kind).await?, 8, "{}", lb.log());
        assert!(lb.log().contains("reason=settling"), "{}", lb.log());
        drop(lb);
        ns.cleanup().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calm_scales_in_by_one_with_the_least_loaded_pod_cheapest() -> Result {
    let ns = rtc_testkit::kubernetes().await?;
    create_workload(&ns, Kind::Deployment, 4).await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    let conns = [40, 3, 25, 9];
    for (i, c) in conns.iter().enumerate() {
        create_pod(&ns, &format!("socket-{i}")).await?;
        fleet.add(&format!("socket-{i}"), load(0.05, *c))?;
    }
    let lb = Lb::start(
        "lb-0",
        &ns,
        &prefix(&ns),
        &[
            ("SCALE_IN_WINDOW_MS", "1000"),
            ("SCALE_IN_STABILIZATION_MS", "2000"),
        ],
    )?;
    eventually(Duration::from_secs(30), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(3)).then_some(())
    })
    .await
    .ok_or_else(|| format!("no scale-in:\n{}", lb.log()))?;
    let log = lb.log();
    assert!(
        log.contains("SCALE_IN nodes=4->3 (-1) victim=socket-1"),
        "{log}"
    );
    let pods = ns.api::<Pod>();
    let mut costs = BTreeMap::new();
    for i in 0..4 {
        let name = format!("socket-{i}");
        let cost: i64 = pods
            .get(&name)
            .await?
            .metadata
            .annotations
            .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost").cloned())
            .ok_or("pod not annotated")?
            .parse()?;
        costs.insert(name, cost);
    }
    let victim = costs["socket-1"];
    assert!(
        costs.iter().all(|(n, c)| n == "socket-1" || *c > victim),
        "{costs:?}"
    );
    // One node at a time: it stays at 3 while the window runs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(replicas(&ns, Kind::Deployment).await?, 3);
    drop(lb);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_not_read_as_idle() -> Result {
    let ns = rtc_testkit::kubernetes().await?;
    create_workload(&ns, Kind::Deployment, 4).await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    for i in 0..4 {
        create_pod(&ns, &format!("socket-{i}")).await?;
        fleet.add(&format!("socket-{i}"), load(0.05, 10))?;
    }
    let lb = Lb::start(
        "lb-0",
        &ns,
        &prefix(&ns),
        &[
            ("SCALE_IN_WINDOW_MS", "1000"),
            ("SCALE_IN_STABILIZATION_MS", "4000"),
        ],
    )?;
    eventually(Duration::from_secs(20), || async {
        lb.log().contains("reason=stabilizing").then_some(())
    })
    .await
    .ok_or_else(|| format!("never stabilizing:\n{}", lb.log()))?;
    fleet.silence("socket-2");
    eventually(Duration::from_secs(10), || async {
        lb.log().contains("reason=incomplete-data").then_some(())
    })
    .await
    .ok_or_else(|| format!("the silent node was not noticed:\n{}", lb.log()))?;
    // Well past the stabilization time: still no scale-in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replicas(&ns, Kind::Deployment).await?, 4, "{}", lb.log());
    assert!(!lb.log().contains("SCALE_IN"), "{}", lb.log());
    drop(lb);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_both_scale_and_a_successor_resumes_the_state() -> Result {
    let ns = rtc_testkit::kubernetes().await?;
    create_workload(&ns, Kind::Deployment, 5).await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    for i in 0..5 {
        fleet.add(&format!("socket-{i}"), load(0.8, 900))?;
    }
    let mut lbs = vec![
        Lb::start("lb-a", &ns, &prefix(&ns), &[])?,
        Lb::start("lb-b", &ns, &prefix(&ns), &[])?,
    ];
    eventually(Duration::from_secs(20), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(8)).then_some(())
    })
    .await
    .ok_or("no scale-out")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas(&ns, Kind::Deployment).await?,
        8,
        "exactly one +3 step"
    );
    let scaled: usize = lbs
        .iter()
        .map(|l| l.log().matches("SCALE_OUT nodes=").count())
        .sum();
    assert_eq!(scaled, 1, "only the leader scales");

    // Kill the leader without a release.
    let holder = ns
        .api::<Lease>()
        .get("rtc-load-balancer")
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .ok_or("no lease holder")?;
    let leader = lbs
        .iter()
        .position(|l| l.log().contains("SCALE_OUT"))
        .ok_or("no leader log")?;
    assert!(
        lbs[leader].log().contains(&format!("identity={holder}"))
            || lbs[leader].log().contains(&holder)
    );
    let killed_at = Instant::now();
    lbs.remove(leader);
    let successor = lbs.pop().ok_or("no successor")?;
    let took = eventually(Duration::from_secs(15), || async {
        successor
            .log()
            .contains("resumed the decision state")
            .then(|| killed_at.elapsed())
    })
    .await
    .ok_or_else(|| format!("no takeover:\n{}", successor.log()))?;
    println!("takeover after a crash: {took:?} (lease 3 s, renew deadline 2 s, retry 0.5 s)");
    // Only 5 of 8 replicas report: the successor settles rather than repeating the step.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas(&ns, Kind::Deployment).await?,
        8,
        "{}",
        successor.log()
    );
    assert!(
        successor.log().contains("reason=settling"),
        "{}",
        successor.log()
    );
    // The three new pods join, still overloaded: the next step continues the
    // resumed run of scale-outs (consecutive=1), it does not start over.
    for i in 5..8 {
        fleet.add(&format!("socket-{i}"), load(0.8, 900))?;
    }
    eventually(Duration::from_secs(20), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(11)).then_some(())
    })
    .await
    .ok_or_else(|| format!("no second step:\n{}", successor.log()))?;
    assert!(
        successor
            .log()
            .contains("Exponential scale-out: urgency=3, base=3, consecutive=1"),
        "{}",
        successor.log()
    );
    drop(successor);
    ns.cleanup().await?;
    Ok(())
}
