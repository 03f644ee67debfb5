//! The agent: registers the Node, keeps its Lease and status fresh, watches
//! the pods bound to it and gives each its own worker ([`crate::pod`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api;
use crate::cgroup::Cgroups;
use crate::clock;
use crate::config::AgentConfig;
use crate::ipam::PodIps;
use crate::kubelet_server::{KubeletServer, ServeError};
use crate::node::{self, HostInfo, NodeIdentity};
use crate::pod::{self, Ending, NodeContext, PodUpdate};
use crate::quantity::Quantity;
use crate::token::ApiAccess;
use crate::usage::Running;

/// How often the Lease is renewed (the kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How soon a failed renewal is tried again.
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// How often the Node status is sent even when nothing changed.
const STATUS_REPORT: Duration = Duration::from_secs(60);
/// Wait between registration attempts while the API server is not there.
const REGISTER_RETRY: Duration = Duration::from_secs(2);
/// How long pod processes get between SIGTERM and SIGKILL when the agent
/// shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the agent waits for its pod workers on shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The kubeconfig could not be read.
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig {
        /// Its path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The kubelet port could not be served.
    #[error(transparent)]
    KubeletPort(#[from] ServeError),
    /// The state directory could not be created.
    #[error("creating state directory {path}: {source}")]
    StateDir {
        /// Its path.
        path: String,
        /// The system's answer.
        source: std::io::Error,
    },
}

impl AgentError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kubeconfig { .. } => "kubeconfig",
            Self::StateDir { .. } => "state_dir",
            Self::KubeletPort(e) => e.label(),
        }
    }
}

/// A client for the kubeconfig at `path`.
///
/// # Errors
///
/// [`AgentError::Kubeconfig`] when it cannot be read or used.
pub async fn client(path: &Path) -> Result<Client, AgentError> {
    let error = |message: String| AgentError::Kubeconfig {
        path: path.display().to_string(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| error(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| error(e.to_string()))?;
    Client::try_from(config).map_err(|e| error(e.to_string()))
}

/// Runs the agent until `shutdown` completes, then stops every pod process
/// it started, removes its cgroups and returns. API objects stay as they
/// are.
///
/// # Errors
///
/// [`AgentError`] when the kubeconfig or state directory cannot be used.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let client = client(&config.kubeconfig).await?;
    let api = Kubeconfig::read_from(&config.kubeconfig)
        .ok()
        .as_ref()
        .and_then(ApiAccess::of);
    let pods_dir = config.state_dir.join("pods");
    tokio::fs::create_dir_all(&pods_dir)
        .await
        .map_err(|source| AgentError::StateDir {
            path: pods_dir.display().to_string(),
            source,
        })?;
    let cgroups = Cgroups::detect(&config.cgroup_parent, &config.node_name).await;
    tracing::info!(node = %config.node_name, cgroups = cgroups.mode_name(), images = %config.images, "node agent starting");
    cgroups.remove_leftovers().await;

    let running = Running::default();
    // Bound before the Node is registered, so its status carries the port.
    let kubelet = match &config.kubelet {
        Some((port, files)) => Some(
            KubeletServer::bind(*port, files, running.clone(), cgroups.node_usage_dirs()).await?,
        ),
        None => None,
    };
    let identity = NodeIdentity {
        name: config.node_name.clone(),
        cpu: config.cpu.clone(),
        memory: config.memory.clone(),
        max_pods: config.max_pods,
        taints: config.taints.clone(),
        host: host_info().await,
        kubelet_port: kubelet.as_ref().map_or(0, KubeletServer::port),
    };
    let base_env = ["PATH", "HOME"]
        .into_iter()
        .filter_map(|key| std::env::var(key).ok().map(|value| (key.to_owned(), value)))
        .collect();
    let ctx = Arc::new(NodeContext {
        client: client.clone(),
        node_name: config.node_name.clone(),
        images: config.images.clone(),
        pods_dir,
        cgroups: cgroups.clone(),
        base_env,
        node_cpu: Quantity::parse(&config.cpu).unwrap_or(Quantity::ZERO),
        node_memory: Quantity::parse(&config.memory).unwrap_or(Quantity::ZERO),
        epoch: Instant::now(),
        shutdown_grace: SHUTDOWN_GRACE,
        api,
        running,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let ready_since = clock::now();
    let node_uid = tokio::select! {
        uid = register(&client, &identity, &ready_since) => uid,
        () = &mut shutdown => {
            tracing::info!("stopped before the node was registered");
            cgroups.remove_node_dirs().await;
            return Ok(());
        }
    };
    let kubelet = kubelet.map(|server| {
        let mut stop = stop_rx.clone();
        tokio::spawn(server.serve(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }))
    });
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        identity.clone(),
        node_uid,
        ready_since,
        stop_rx.clone(),
    ));

    let mut pods = Pods {
        ctx,
        ips: config.pod_ips.clone(),
        workers: HashMap::new(),
        finished: HashSet::new(),
        listed: None,
        tasks: JoinSet::new(),
        task_uids: HashMap::new(),
        stop: stop_rx,
    };
    let selector = format!("spec.nodeName={}", config.node_name);
    let stream = watcher(
        Api::<Pod>::all(client),
        watcher::Config::default().fields(&selector),
    )
    .default_backoff();
    tokio::pin!(stream);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            event = stream.next() => match event {
                Some(Ok(event)) => pods.on_event(event),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
            Some(done) = pods.tasks.join_next_with_id(), if !pods.tasks.is_empty() => pods.on_done(done),
        }
    }

    tracing::info!(
        pods = pods.workers.len(),
        "shutting down: stopping every pod process"
    );
    let _ = stop_tx.send(true);
    let waited = tokio::time::timeout(SHUTDOWN_WAIT, async {
        while let Some(done) = pods.tasks.join_next_with_id().await {
            pods.on_done(done);
        }
    })
    .await;
    if waited.is_err() {
        tracing::warn!("pod workers did not stop in time");
        pods.tasks.abort_all();
    }
    let _ = heartbeat.await;
    if let Some(kubelet) = kubelet {
        let _ = kubelet.await;
    }
    cgroups.remove_node_dirs().await;
    tracing::info!("node agent stopped");
    Ok(())
}

/// Registers the Node, retrying until the API server takes it.
async fn register(client: &Client, identity: &NodeIdentity, ready_since: &Time) -> String {
    loop {
        let wanted = node::node(identity, &clock::now(), ready_since);
        match api::register_node(client, &wanted).await {
            Ok(uid) => return uid,
            Err(e) => {
                tracing::warn!(node = %identity.name, error = %e, "node registration failed; retrying");
                tokio::time::sleep(REGISTER_RETRY).await;
            }
        }
    }
}

/// Renews the Lease every 10 s and sends the Node status every minute,
/// until told to stop.
async fn heartbeat(
    client: Client,
    identity: NodeIdentity,
    node_uid: String,
    ready_since: Time,
    mut stop: watch::Receiver<bool>,
) {
    let mut lease: Option<Lease> = None;
    let mut next_status = Instant::now();
    let mut next_lease = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_lease {
            match api::renew_lease(
                &client,
                &identity.name,
                &node_uid,
                &mut lease,
                clock::micro_now(),
            )
            .await
            {
                Ok(()) => next_lease = now + LEASE_RENEW,
                Err(e) => {
                    tracing::warn!(node = %identity.name, error = %e, "lease renewal failed");
                    next_lease = now + LEASE_RETRY;
                }
            }
        }
        if now >= next_status {
            let status = node::status(&identity, &clock::now(), &ready_since);
            match api::patch_node_status(&client, &identity.name, &status).await {
                Ok(()) => next_status = now + STATUS_REPORT,
                Err(e) => {
                    tracing::warn!(node = %identity.name, error = %e, "node status update failed");
                    next_status = now + LEASE_RETRY * 5;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_lease.min(next_status)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Facts about this machine for the Node's `nodeInfo`.
async fn host_info() -> HostInfo {
    let read = |path: &'static str| async move {
        tokio::fs::read_to_string(path)
            .await
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    HostInfo {
        machine_id: read("/etc/machine-id").await,
        boot_id: read("/proc/sys/kernel/random/boot_id").await,
        kernel_version: read("/proc/sys/kernel/osrelease").await,
        os_image: node::os_image(&read("/etc/os-release").await)
            .unwrap_or_else(|| "Linux".to_owned()),
        architecture: node::go_arch(std::env::consts::ARCH).to_owned(),
    }
}

/// A pod worker as the agent sees it.
#[derive(Debug)]
struct Worker {
    updates: watch::Sender<PodUpdate>,
    ip: Option<Ipv4Addr>,
}

/// The pods bound to this node and their workers.
struct Pods {
    ctx: Arc<NodeContext>,
    ips: PodIps,
    workers: HashMap<String, Worker>,
    /// Pods whose worker is done (deleted by the agent): later events for
    /// them are ignored until the deletion shows.
    finished: HashSet<String>,
    /// UIDs seen during a (re)list, to find pods deleted while not watching.
    listed: Option<HashSet<String>>,
    tasks: JoinSet<Ending>,
    /// The pod UID of each worker task.
    task_uids: HashMap<tokio::task::Id, String>,
    stop: watch::Receiver<bool>,
}

impl Pods {
    fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.listed = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(listed), Some(uid)) = (self.listed.as_mut(), pod.metadata.uid.as_ref())
                {
                    listed.insert(uid.clone());
                }
                self.apply(pod);
            }
            watcher::Event::InitDone => {
                let listed = self.listed.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .workers
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.gone(&uid);
                }
                self.finished.retain(|uid| listed.contains(uid));
            }
            watcher::Event::Apply(pod) => self.apply(pod),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.finished.remove(uid);
                    self.gone(uid);
                }
            }
        }
    }

    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if self.finished.contains(&uid) {
            return;
        }
        let pod = Arc::new(pod);
        if let Some(worker) = self.workers.get(&uid) {
            let _ = worker.updates.send(PodUpdate::Present(pod));
            return;
        }
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let ip = if host_network {
            // As on a real node, a host-network pod has the node's address.
            Some(pod::HOST_IP)
        } else if pod::is_finished(&pod) {
            // A finished pod runs nothing; its address, if any, stays its own.
            pod::reported_ip(&pod).filter(|&ip| self.ips.claim(ip))
        } else {
            let ip = pod::reported_ip(&pod)
                .filter(|&ip| self.ips.claim(ip))
                .or_else(|| self.ips.allocate());
            let Some(ip) = ip else {
                tracing::error!(pod = ?pod.metadata.name, "no free pod address; the pod stays pending");
                return;
            };
            Some(ip)
        };
        let (updates, rx) = watch::channel(PodUpdate::Present(Arc::clone(&pod)));
        let ctx = Arc::clone(&self.ctx);
        let stop = self.stop.clone();
        let address = ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let task = self.tasks.spawn(pod::run(ctx, pod, address, rx, stop));
        self.task_uids.insert(task.id(), uid.clone());
        self.workers.insert(uid, Worker { updates, ip });
    }

    fn gone(&mut self, uid: &str) {
        if let Some(worker) = self.workers.get(uid) {
            let _ = worker.updates.send(PodUpdate::Gone);
        }
    }

    fn on_done(&mut self, done: Result<(tokio::task::Id, Ending), tokio::task::JoinError>) {
        let (id, ending) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "a pod worker failed");
                (e.id(), Ending::Removed)
            }
        };
        let Some(uid) = self.task_uids.remove(&id) else {
            return;
        };
        if let Some(ip) = self.workers.remove(&uid).and_then(|w| w.ip) {
            self.ips.release(ip);
        }
        if ending == Ending::Deleted {
            self.finished.insert(uid);
        }
    }
}
