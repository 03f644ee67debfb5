//! Set-up shared by the node agent's tests against the local stack: an agent
//! process of the test's own (own Node name, own pod address range, a taint
//! so the scheduler keeps other tests' pods off it), pods built from JSON,
//! and waits that say what they last saw when they give up.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a fixture that cannot be built should fail the test that uses it, at once"
)]

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use rtc_testkit::{Endpoints, TestNamespace};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The taint every test node carries: only pods that tolerate it (or name
/// the node directly) land there.
pub const TAINT_KEY: &str = "rtc.test/node-agent";

/// How long a test waits for a pod to get somewhere.
pub const WAIT: Duration = Duration::from_secs(45);

static AGENTS: AtomicU32 = AtomicU32::new(0);

/// An agent process serving a Node of its own.
pub struct Agent {
    child: Option<Child>,
    /// The Node's name.
    pub node: String,
    /// The first three octets of the agent's pod addresses.
    pub prefix: String,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    log: PathBuf,
    kubeconfig: PathBuf,
    client: Client,
    deleted: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts an agent with the stack's admin kubeconfig and waits until its
    /// Node is Ready.
    pub async fn start(ns: &TestNamespace) -> Self {
        Self::start_named(ns, rtc_testkit::unique_name("agent")).await
    }

    /// [`Agent::start`] with a given Node name.
    pub async fn start_named(ns: &TestNamespace, node: String) -> Self {
        Self::start_with(ns, node, &[]).await
    }

    /// [`Agent::start_named`] with more flags.
    pub async fn start_with(ns: &TestNamespace, node: String, extra: &[String]) -> Self {
        let endpoints = Endpoints::from_env();
        // A /24 of loopback no other agent of this run uses: the stack's
        // nodes use 127.10.x, tests 127.77 to 127.79.
        let n = std::process::id()
            .wrapping_mul(7)
            .wrapping_add(AGENTS.fetch_add(1, Ordering::Relaxed));
        let prefix = format!("127.{}.{}", 77 + (n / 250) % 3, n % 250);
        let state_dir = std::env::temp_dir().join(&node);
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let log = state_dir.join("agent.log");
        let log_file = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_rtc-node-agent"))
            .args(["--kubeconfig", path_str(&endpoints.kubeconfig)])
            .args(["--node-name", &node])
            .args(["--pod-ip-prefix", &prefix])
            .args(["--state-dir", path_str(&state_dir)])
            .args(["--image", &format!("rtc/python={}", python().display())])
            .args(["--image", "rtc/shell=/bin/sh"])
            .args([
                "--register-with-taints",
                &format!("{TAINT_KEY}={node}:NoSchedule"),
            ])
            .args(["--cpu", "2", "--memory", "4Gi", "--max-pods", "20"])
            .args(extra)
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("IMAGE_MAP")
            .env_remove("REGISTER_WITH_TAINTS")
            .env_remove("KUBELET_PORT")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("start rtc-node-agent");
        let agent = Self {
            child: Some(child),
            node,
            prefix,
            state_dir,
            log,
            kubeconfig: endpoints.kubeconfig,
            client: ns.client().clone(),
            deleted: false,
        };
        agent.wait_ready().await;
        agent
    }

    async fn wait_ready(&self) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let deadline = Instant::now() + WAIT;
        loop {
            let node = nodes.get_opt(&self.node).await.ok().flatten();
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not Ready in {WAIT:?}; agent log:\n{}",
                self.node,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The directory of a pod (its working directory and logs).
    pub fn pod_dir(&self, pod: &Pod) -> PathBuf {
        let meta = &pod.metadata;
        self.state_dir.join("pods").join(format!(
            "{}_{}_{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
            meta.uid.as_deref().unwrap_or_default()
        ))
    }

    /// Whether `ip` is in this agent's range.
    pub fn owns(&self, ip: &str) -> bool {
        ip.parse::<Ipv4Addr>().is_ok_and(|ip| {
            let [a, b, c, _] = ip.octets();
            format!("{a}.{b}.{c}") == self.prefix
        })
    }

    /// Sends SIGTERM and waits for the agent to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            panic!("agent already stopped");
        };
        tokio::task::spawn_blocking(move || terminate(&mut child))
            .await
            .expect("stop the agent")
    }

    /// Stops the agent (if running) and deletes its Node.
    pub async fn finish(mut self) {
        if self.child.is_some() {
            let status = self.stop().await;
            assert!(
                status.success(),
                "agent exited with {status}; log:\n{}",
                self.log_text()
            );
        }
        assert!(
            delete_node(&self.client, &self.node).await,
            "deleting node {}",
            self.node
        );
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        if self.deleted {
            return;
        }
        // A test that failed still removes its Node.
        let node = self.node.clone();
        let kubeconfig = self.kubeconfig.clone();
        rtc_testkit::run_to_end(move || async move {
            // A few tries: the test may have failed because the API server
            // was briefly away.
            for _ in 0..5 {
                if let Some(client) = client_for(&kubeconfig).await
                    && delete_node(&client, &node).await
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

async fn client_for(kubeconfig: &Path) -> Option<Client> {
    let config = Kubeconfig::read_from(kubeconfig).ok()?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .ok()?;
    Client::try_from(config).ok()
}

/// Deletes the Node; true when it is gone.
async fn delete_node(client: &Client, name: &str) -> bool {
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(name, &DeleteParams::default()).await {
        Ok(_) => true,
        Err(kube::Error::Api(status)) => status.is_not_found(),
        Err(_) => false,
    }
}

/// SIGTERM, up to 20 s to exit, then SIGKILL.
fn terminate(child: &mut Child) -> ExitStatus {
    let _ = Command::new("/bin/kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().expect("wait for the agent")
}

/// The python3 that `rtc/python` runs: the system's, else the first on
/// `PATH`.
pub fn python() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    if system.exists() {
        return system;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.exists())
        .unwrap_or(system)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A pod from JSON: `spec` is merged over a spec bound to `node`.
pub fn pod(name: &str, node: &str, spec: Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 5,
            "tolerations": [{ "key": TAINT_KEY, "operator": "Exists" }],
        },
    });
    if let (Some(base), Value::Object(extra)) = (pod["spec"].as_object_mut(), spec) {
        base.extend(extra);
    }
    serde_json::from_value(pod).expect("pod json")
}

/// Creates `pod` in the test namespace and returns it as created.
pub async fn create(ns: &TestNamespace, pod: &Pod) -> Pod {
    ns.api::<Pod>()
        .create(&PostParams::default(), pod)
        .await
        .expect("create pod")
}

/// Polls the pod until `done` holds, failing after [`WAIT`] with the last
/// status and the agent's log.
pub async fn wait_for(
    ns: &TestNamespace,
    agent: &Agent,
    name: &str,
    what: &str,
    done: impl Fn(&Pod) -> bool,
) -> Pod {
    let pods = ns.api::<Pod>();
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Ok(pod) = pods.get(name).await {
            if done(&pod) {
                return pod;
            }
            last = Some(pod);
        }
        if Instant::now() > deadline {
            let status = last
                .and_then(|p| p.status)
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default());
            panic!(
                "pod {name}: {what} not within {WAIT:?}; last status: {}\nagent log:\n{}",
                status.unwrap_or_else(|| "none".to_owned()),
                agent.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the pod object is gone.
pub async fn wait_gone(ns: &TestNamespace, agent: &Agent, name: &str) {
    let pods = ns.api::<Pod>();
    let deadline = Instant::now() + WAIT;
    // An error (the API server restarting) counts as "not gone yet".
    while !matches!(pods.get_opt(name).await, Ok(None)) {
        assert!(
            Instant::now() < deadline,
            "pod {name} still there after {WAIT:?}; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod's condition `kind`, as `(status, reason)`.
pub fn condition(pod: &Pod, kind: &str) -> Option<(String, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Whether the pod's Ready condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").is_some_and(|(status, _)| status == "True")
}

/// The phase.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The first container's status.
pub fn container(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

/// The pid behind the first container's `rtc://<pid>` ID.
pub fn pid(pod: &Pod) -> u32 {
    let id = container(pod)
        .and_then(|c| c.container_id.as_deref())
        .expect("container id");
    id.strip_prefix("rtc://")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("container id {id:?} is not rtc://<pid>"))
}

/// The pod's IP.
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod ip")
}

/// Whether a process with `pid` exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until the process with `pid` is gone.
pub async fn wait_dead(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still alive after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a file, empty when missing.
pub fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}
