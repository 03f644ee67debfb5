//! One pod's life on this node: a task that starts its containers, probes
//! them, restarts them, reports the pod's status and, when the pod is
//! deleted, runs the preStop hooks, stops the processes within the grace
//! period and deletes the pod object.
//!
//! The decisions are made by the pure modules ([`crate::status`],
//! [`crate::probe`], [`crate::restart`], [`crate::env`]); this module holds
//! the processes, the timers and the API calls.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::api;
use crate::cgroup::{Cgroups, PodCgroup};
use crate::check::{self, ExecContext};
use crate::clock;
use crate::env::{self, EnvContext};
use crate::image::ImageMap;
use crate::limits::Limits;
use crate::probe::{self, Action, ProbeKind, ProbeTiming, ProbeTracker};
use crate::process::{self, Exit, Launch, Process, Signal};
use crate::quantity::Quantity;
use crate::restart::{Backoff, RestartPolicy};
use crate::status::{self, ContainerRecord, RunState, StatusInput, reason};
use crate::token::{self, ApiAccess};
use crate::usage::{Running, RunningContainer, RunningPod};

/// The node's address, every pod's host IP.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The grace period when a pod sets none.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// The least time a process gets between SIGTERM and SIGKILL, even when the
/// preStop hooks used up the grace period (as in the kubelet).
const MIN_TERM_GRACE: Duration = Duration::from_secs(2);
/// How long a killed process may take to be reaped before the agent moves
/// on.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// The longest the worker sleeps without looking around.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Wait before retrying a container whose environment or program could not
/// be set up.
const SETUP_RETRY: Duration = Duration::from_secs(2);
/// Wait before retrying a status update the server refused.
const STATUS_RETRY: Duration = Duration::from_secs(1);

/// What every pod worker shares.
pub struct NodeContext {
    /// The API client (the node's credentials).
    pub client: Client,
    /// This node's name.
    pub node_name: String,
    /// Image names to programs.
    pub images: ImageMap,
    /// Where pod directories and logs go (`<state-dir>/pods`).
    pub pods_dir: PathBuf,
    /// The node's cgroups.
    pub cgroups: Cgroups,
    /// `PATH` and `HOME` for every container.
    pub base_env: Vec<(String, String)>,
    /// Allocatable CPU, for `resourceFieldRef` without a limit.
    pub node_cpu: Quantity,
    /// Allocatable memory, likewise.
    pub node_memory: Quantity,
    /// Zero of the monotonic clock the pure modules are given.
    pub epoch: Instant,
    /// How long processes get between SIGTERM and SIGKILL when the agent
    /// itself shuts down.
    pub shutdown_grace: Duration,
    /// Where pods reach the API server, for their service-account
    /// credentials ([`crate::token`]); `None`: pods get none.
    pub api: Option<ApiAccess>,
    /// What runs, for the resource-metrics endpoint: each worker keeps its
    /// pod's entry.
    pub running: Running,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("node_name", &self.node_name)
            .field("images", &self.images)
            .field("pods_dir", &self.pods_dir)
            .field("cgroups", &self.cgroups)
            .finish_non_exhaustive()
    }
}

impl NodeContext {
    fn mono(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    fn instant(&self, mono: Duration) -> Instant {
        self.epoch + mono
    }
}

/// The latest word on a pod from the API server.
#[derive(Debug, Clone)]
pub enum PodUpdate {
    /// The pod as last seen.
    Present(Arc<Pod>),
    /// The pod was deleted outright, or is no longer bound to this node.
    Gone,
}

/// How a worker ended, for the agent's books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The agent terminated the pod and deleted it.
    Deleted,
    /// The pod was deleted outright, or is no longer bound here.
    Removed,
    /// The agent is shutting down.
    Shutdown,
}

/// Something that happened to a container, sent to its pod's worker.
#[derive(Debug)]
enum Event {
    Exited {
        slot: usize,
        generation: u64,
        exit: Exit,
    },
    Probed {
        slot: usize,
        generation: u64,
        kind: ProbeKind,
        result: Result<(), String>,
    },
}

/// A probe and what it checks.
#[derive(Debug)]
struct ProbeSlot {
    tracker: ProbeTracker,
    action: Action,
    /// The probe's own `terminationGracePeriodSeconds`, for the kill that
    /// follows a liveness or startup failure.
    termination_grace: Option<Duration>,
}

/// A preStop hook to run, with what it runs in.
#[derive(Debug)]
struct Hook {
    container: String,
    action: Action,
    env: Arc<Vec<(String, String)>>,
    procs: Vec<PathBuf>,
}

/// One container of the pod.
#[derive(Debug)]
struct Slot {
    spec: Container,
    record: ContainerRecord,
    process: Option<Process>,
    /// Bumped at each start, so late probe results of an earlier run are
    /// dropped.
    generation: u64,
    /// Runs so far; the next start after the first is a restart.
    runs: u32,
    started_mono: Duration,
    /// When the running process started, in milliseconds since the epoch.
    started_ms: i64,
    probes: Vec<ProbeSlot>,
    backoff: Backoff,
    /// When to start (again); `None` means not until something changes.
    next_start: Option<Duration>,
    /// When to SIGKILL a process that was sent SIGTERM.
    kill_at: Option<Duration>,
    /// Restart at once after this exit, whatever the policy (the image
    /// changed).
    replace: bool,
    env: Arc<Vec<(String, String)>>,
}

/// Runs one pod until it is deleted or the agent shuts down.
pub async fn run(
    ctx: Arc<NodeContext>,
    pod: Arc<Pod>,
    ip: Ipv4Addr,
    updates: watch::Receiver<PodUpdate>,
    shutdown: watch::Receiver<bool>,
) -> Ending {
    let mut worker = Worker::new(ctx, pod, ip, updates, shutdown).await;
    let ending = worker.run().await;
    worker.ctx.running.remove(&worker.uid).await;
    worker.cgroup.remove().await;
    ending
}

struct Worker {
    ctx: Arc<NodeContext>,
    pod: Arc<Pod>,
    namespace: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    cgroup: PodCgroup,
    policy: RestartPolicy,
    slots: Vec<Slot>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    updates: watch::Receiver<PodUpdate>,
    shutdown: watch::Receiver<bool>,
    start_time: Time,
    conditions: Vec<PodCondition>,
    last_sent: Option<PodStatus>,
    status_retry_at: Option<Instant>,
    /// Whether the pod was already finished (Succeeded or Failed) when the
    /// agent took it on: nothing runs, nothing is reported.
    finished: bool,
    /// The pod's init containers, which the agent does not run; while there
    /// are any, no container starts.
    init_containers: Vec<String>,
}

impl Worker {
    async fn new(
        ctx: Arc<NodeContext>,
        pod: Arc<Pod>,
        ip: Ipv4Addr,
        updates: watch::Receiver<PodUpdate>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let previous = pod.status.clone().unwrap_or_default();
        let finished = matches!(previous.phase.as_deref(), Some("Succeeded" | "Failed"));
        let dir = ctx.pods_dir.join(format!("{namespace}_{name}_{uid}"));
        let (events_tx, events) = mpsc::unbounded_channel();
        let slots = spec
            .containers
            .iter()
            .map(|c| {
                let mut record = ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or(""));
                let before = previous
                    .container_statuses
                    .iter()
                    .flatten()
                    .find(|s| s.name == c.name);
                let mut runs = 0;
                if let Some(before) = before {
                    record.restart_count = before.restart_count;
                    if before.container_id.is_some() {
                        runs = 1;
                    }
                }
                Slot {
                    spec: c.clone(),
                    record,
                    process: None,
                    generation: 0,
                    runs,
                    started_mono: Duration::ZERO,
                    started_ms: 0,
                    probes: Vec::new(),
                    backoff: Backoff::default(),
                    next_start: Some(Duration::ZERO),
                    kill_at: None,
                    replace: false,
                    env: Arc::new(Vec::new()),
                }
            })
            .collect();
        let mut worker = Self {
            namespace,
            name,
            uid,
            ip,
            dir,
            cgroup: PodCgroup::none(),
            policy: RestartPolicy::from_spec(spec.restart_policy.as_deref()),
            slots,
            events,
            events_tx,
            updates,
            shutdown,
            start_time: previous.start_time.clone().unwrap_or_else(clock::now),
            conditions: previous.conditions.clone().unwrap_or_default(),
            last_sent: None,
            status_retry_at: None,
            finished,
            init_containers: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect(),
            pod,
            ctx,
        };
        if !worker.init_containers.is_empty() {
            tracing::warn!(pod = %worker.key(), init = ?worker.init_containers, "init containers are not supported: the pod stays pending");
            for slot in &mut worker.slots {
                slot.next_start = None;
                slot.record.state = RunState::waiting(reason::POD_INITIALIZING, None);
            }
        }
        if !worker.finished && worker.pod.metadata.deletion_timestamp.is_none() {
            worker.set_up().await;
        }
        worker
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod's directory and cgroups. Failures are logged; the pod then
    /// runs without what failed (no cgroup) or its containers fail to start
    /// (no directory) and say why.
    async fn set_up(&mut self) {
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            tracing::error!(pod = %self.key(), dir = %self.dir.display(), error = %e, "cannot create the pod directory");
        }
        let containers = &self.slots;
        let limits: Result<Vec<(String, Limits)>, _> = containers
            .iter()
            .map(|s| Limits::of(s.spec.resources.as_ref()).map(|l| (s.spec.name.clone(), l)))
            .collect();
        let specs: Vec<Container> = containers.iter().map(|s| s.spec.clone()).collect();
        let pod_limits = Limits::of_pod(&specs);
        match (limits, pod_limits) {
            (Ok(limits), Ok(pod_limits)) => {
                match self
                    .ctx
                    .cgroups
                    .create_pod(&self.uid, &pod_limits, &limits)
                    .await
                {
                    Ok(cgroup) => self.cgroup = cgroup,
                    Err(e) => {
                        tracing::error!(pod = %self.key(), error = %e, "cannot set up the pod's cgroups; it runs without limits")
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(pod = %self.key(), error = %e, "bad resource quantity; the pod runs without limits");
            }
        }
    }

    async fn run(&mut self) -> Ending {
        tracing::info!(pod = %self.key(), uid = %self.uid, ip = %self.ip, finished = self.finished, "pod assigned");
        loop {
            if *self.shutdown.borrow() {
                self.stop_all(self.ctx.shutdown_grace).await;
                return Ending::Shutdown;
            }
            let update = self.updates.borrow_and_update().clone();
            match update {
                PodUpdate::Gone => {
                    tracing::info!(pod = %self.key(), "pod deleted outright or no longer bound here: stopping its processes");
                    self.stop_all(MIN_TERM_GRACE).await;
                    return Ending::Removed;
                }
                PodUpdate::Present(pod) => {
                    self.take_update(pod);
                    if self.pod.metadata.deletion_timestamp.is_some() {
                        return self.terminate().await;
                    }
                }
            }

            let now = self.ctx.mono();
            if !self.finished {
                self.step(now).await;
                self.report().await;
                self.publish().await;
            }
            let wake = self.ctx.instant(self.next_wake(now));
            tokio::select! {
                Some(event) = self.events.recv() => self.handle(event),
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        // The agent dropped its side: it is going away.
                        self.stop_all(self.ctx.shutdown_grace).await;
                        return Ending::Shutdown;
                    }
                }
                changed = self.shutdown.changed() => {
                    if changed.is_err() {
                        self.stop_all(self.ctx.shutdown_grace).await;
                        return Ending::Shutdown;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Takes a newer copy of the pod; a container whose image changed is
    /// stopped and started again with the new program.
    fn take_update(&mut self, pod: Arc<Pod>) {
        if Arc::ptr_eq(&pod, &self.pod) {
            return;
        }
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let key = self.key();
        let now = self.ctx.mono();
        for slot in &mut self.slots {
            let Some(new) = containers.iter().find(|c| c.name == slot.spec.name) else {
                continue;
            };
            if new.image != slot.spec.image {
                tracing::info!(pod = %key, container = %slot.spec.name, image = ?new.image, "image changed: restarting the container");
                slot.spec.image = new.image.clone();
                slot.record.image = new.image.clone().unwrap_or_default();
                if let Some(process) = &slot.process {
                    process.signal(Signal::Term);
                    slot.kill_at = Some(now + grace_of(&pod));
                    slot.replace = true;
                } else {
                    slot.next_start = Some(Duration::ZERO);
                }
            }
        }
        self.pod = pod;
    }

    /// Starts what is due, kills what outlived its SIGTERM, runs due probes.
    async fn step(&mut self, now: Duration) {
        for index in 0..self.slots.len() {
            let due = self
                .slots
                .get(index)
                .is_some_and(|s| s.process.is_none() && s.next_start.is_some_and(|t| t <= now));
            if due {
                self.start(index, now).await;
            }
        }
        for slot in &mut self.slots {
            if let (Some(process), Some(at)) = (&slot.process, slot.kill_at)
                && at <= now
            {
                tracing::info!(pod = %format!("{}/{}", self.namespace, self.name), container = %slot.spec.name, "SIGTERM not heeded in time: SIGKILL");
                process.signal(Signal::Kill);
                slot.kill_at = None;
            }
        }
        self.probe(now);
    }

    /// When the worker should look again: the next start, kill or probe.
    fn next_wake(&self, now: Duration) -> Duration {
        let mut wake = now + MAX_SLEEP;
        for slot in &self.slots {
            if slot.process.is_none() {
                if let Some(at) = slot.next_start {
                    wake = wake.min(at);
                }
                continue;
            }
            if let Some(at) = slot.kill_at {
                wake = wake.min(at);
            }
            for p in &slot.probes {
                wake = wake.min(p.tracker.next_at().max(now));
            }
        }
        if let Some(at) = self.status_retry_at {
            wake = wake.min(at.saturating_duration_since(self.ctx.epoch));
        }
        wake
    }

    async fn start(&mut self, index: usize, now: Duration) {
        let key = self.key();
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let image = slot.spec.image.clone().unwrap_or_default();
        let program = match self.ctx.images.program(&image) {
            Ok(program) => program.to_owned(),
            Err(e) => {
                if let Some(slot) = self.slots.get_mut(index) {
                    if !matches!(&slot.record.state, RunState::Waiting { reason: r, .. } if r == reason::ERR_IMAGE_PULL)
                    {
                        tracing::warn!(pod = %key, container = %slot.spec.name, error = %e, "image not mapped");
                    }
                    slot.record.state =
                        RunState::waiting(reason::ERR_IMAGE_PULL, Some(e.to_string()));
                    slot.record.image_id = String::new();
                    slot.next_start = Some(now + SETUP_RETRY * 5);
                }
                return;
            }
        };
        let container_env = match self.container_env(index).await {
            Ok(env) => env,
            Err(message) => {
                if let Some(slot) = self.slots.get_mut(index) {
                    tracing::warn!(pod = %key, container = %slot.spec.name, error = %message, "cannot build the container's environment");
                    slot.record.state =
                        RunState::waiting(reason::CREATE_CONTAINER_CONFIG_ERROR, Some(message));
                    slot.next_start = Some(now + SETUP_RETRY);
                }
                return;
            }
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let launch = Launch {
            program: program.clone(),
            args: env::command_line(&slot.spec, &container_env, self.ip),
            env: container_env.clone(),
            cwd: self.dir.clone(),
            log: self.dir.join(format!("{}.log", slot.spec.name)),
            cgroup_procs: self.cgroup.procs_files(&slot.spec.name),
        };
        let generation = slot.generation + 1;
        let exits = self.events_tx.clone();
        let spawned = process::spawn(&launch, move |exit| {
            let _ = exits.send(Event::Exited {
                slot: index,
                generation,
                exit,
            });
        });
        match spawned {
            Ok(process) => {
                let pid = process.pid();
                slot.generation = generation;
                slot.record
                    .start(clock::now(), format!("rtc://{pid}"), slot.runs > 0);
                slot.runs = slot.runs.saturating_add(1);
                slot.started_mono = now;
                slot.started_ms = clock::unix_ms();
                slot.record.image_id = format!("file://{}", program.display());
                slot.probes = probes_of(&slot.spec, &self.ip.to_string(), now, &key);
                slot.next_start = None;
                slot.kill_at = None;
                slot.replace = false;
                slot.env = Arc::new(container_env);
                slot.process = Some(process);
                refresh_ready(slot);
                tracing::info!(
                    pod = %key,
                    container = %slot.spec.name,
                    pid,
                    restarts = slot.record.restart_count,
                    program = %launch.program.display(),
                    args = ?launch.args,
                    cgroups = launch.cgroup_procs.len(),
                    "container started"
                );
            }
            Err(e) => {
                tracing::warn!(pod = %key, container = %slot.spec.name, program = %program.display(), error = %e, "cannot start the container");
                slot.record.state = RunState::waiting(
                    reason::RUN_CONTAINER_ERROR,
                    Some(format!("starting {}: {e}", program.display())),
                );
                let delay = slot.backoff.next_delay(Duration::ZERO);
                slot.next_start = Some(now + delay);
            }
        }
    }

    /// The environment of container `index`, with its ConfigMaps and
    /// Secrets read now (as the kubelet reads them at each start).
    async fn container_env(&self, index: usize) -> Result<Vec<(String, String)>, String> {
        let Some(slot) = self.slots.get(index) else {
            return Err("no such container".to_owned());
        };
        let single = Pod {
            spec: self
                .pod
                .spec
                .as_ref()
                .map(|s| k8s_openapi::api::core::v1::PodSpec {
                    containers: vec![slot.spec.clone()],
                    ..s.clone()
                }),
            ..(*self.pod).clone()
        };
        let (maps, secrets) = env::referenced_objects(&single);
        let (config_maps, secret_data) = if maps.is_empty() && secrets.is_empty() {
            Default::default()
        } else {
            api::env_sources(&self.ctx.client, &self.namespace, &maps, &secrets)
                .await
                .map_err(|e| e.to_string())?
        };
        let ctx = EnvContext {
            pod: &self.pod,
            pod_ip: self.ip,
            host_ip: HOST_IP,
            base: &self.ctx.base_env,
            config_maps: &config_maps,
            secrets: &secret_data,
            node_cpu: self.ctx.node_cpu,
            node_memory: self.ctx.node_memory,
        };
        let mut vars = env::container_env(&ctx, &slot.spec).map_err(|e| e.to_string())?;
        if let (Some(account), Some(access)) = (token::wants_token(&self.pod), &self.ctx.api) {
            let mut credentials =
                token::credentials(&self.ctx.client, access, &self.pod, account, &self.dir).await?;
            // The container's own variables win, as over the kubelet's.
            credentials.retain(|(key, _)| vars.iter().all(|(k, _)| k != key));
            credentials.append(&mut vars);
            vars = credentials;
        }
        Ok(vars)
    }

    /// Starts each due probe as a task that reports back.
    fn probe(&mut self, now: Duration) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.process.is_none() || slot.kill_at.is_some() {
                continue;
            }
            let startup_pending = slot
                .probes
                .iter()
                .any(|p| p.tracker.kind() == ProbeKind::Startup && !p.tracker.is_finished());
            for p in &mut slot.probes {
                let kind = p.tracker.kind();
                if startup_pending && kind != ProbeKind::Startup {
                    continue;
                }
                if !p.tracker.is_due(now) {
                    continue;
                }
                p.tracker.begin(now);
                let action = p.action.clone();
                let timeout = p.tracker.timing().timeout;
                let env = Arc::clone(&slot.env);
                let cwd = self.dir.clone();
                let procs = self.cgroup.procs_files(&slot.spec.name);
                let events = self.events_tx.clone();
                let generation = slot.generation;
                tokio::spawn(async move {
                    let exec = ExecContext {
                        env: &env,
                        cwd: &cwd,
                        cgroup_procs: &procs,
                    };
                    let result = check::run(&action, timeout, exec).await;
                    let _ = events.send(Event::Probed {
                        slot: index,
                        generation,
                        kind,
                        result,
                    });
                });
            }
        }
    }

    fn handle(&mut self, event: Event) {
        let now = self.ctx.mono();
        let key = self.key();
        let pod_ref = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let terminating = self.pod.metadata.deletion_timestamp.is_some();
        match event {
            Event::Exited {
                slot,
                generation,
                exit,
            } => {
                let Some(slot) = self.slots.get_mut(slot) else {
                    return;
                };
                if slot.generation != generation {
                    return;
                }
                slot.process = None;
                slot.kill_at = None;
                slot.probes.clear();
                let ran_for = now.saturating_sub(slot.started_mono);
                tracing::info!(
                    pod = %key,
                    container = %slot.spec.name,
                    exit_code = exit.code,
                    signal = ?exit.signal,
                    ran_for_s = ran_for.as_secs_f64(),
                    "container exited"
                );
                let restart = !terminating && (slot.replace || self.policy.restarts(exit.code));
                let restart_after = restart.then(|| {
                    if slot.replace {
                        Duration::ZERO
                    } else {
                        slot.backoff.next_delay(ran_for)
                    }
                });
                slot.record.exit(
                    exit.code,
                    exit.signal,
                    clock::now(),
                    restart_after,
                    &pod_ref,
                );
                slot.next_start = restart_after.map(|delay| now + delay);
                slot.replace = false;
            }
            Event::Probed {
                slot,
                generation,
                kind,
                result,
            } => {
                let grace = grace_of(&self.pod);
                let Some(slot) = self.slots.get_mut(slot) else {
                    return;
                };
                if slot.generation != generation || slot.process.is_none() || terminating {
                    return;
                }
                let Some(p) = slot.probes.iter_mut().find(|p| p.tracker.kind() == kind) else {
                    return;
                };
                if let Err(why) = &result {
                    tracing::debug!(pod = %key, container = %slot.spec.name, probe = kind.name(), why = %why, "probe failed");
                }
                let flipped = p.tracker.record(result.is_ok());
                let kill_grace = p.termination_grace.unwrap_or(grace);
                match (kind, flipped) {
                    (_, None) => {}
                    (ProbeKind::Readiness, Some(ok)) => {
                        tracing::info!(pod = %key, container = %slot.spec.name, ready = ok, last_error = ?result.err(), "readiness changed");
                    }
                    (ProbeKind::Startup, Some(true)) => {
                        tracing::info!(pod = %key, container = %slot.spec.name, "startup probe succeeded");
                    }
                    (ProbeKind::Liveness | ProbeKind::Startup, Some(_)) => {
                        tracing::info!(
                            pod = %key,
                            container = %slot.spec.name,
                            probe = kind.name(),
                            last_error = ?result.err(),
                            grace_s = kill_grace.as_secs(),
                            "probe failed: killing the container, to be restarted per restartPolicy"
                        );
                        if let Some(process) = &slot.process {
                            process.signal(Signal::Term);
                            slot.kill_at = Some(now + kill_grace);
                        }
                    }
                }
                refresh_ready(slot);
            }
        }
    }

    /// Records the running containers for the resource-metrics endpoint.
    async fn publish(&self) {
        let containers = self
            .slots
            .iter()
            .filter_map(|slot| {
                let process = slot.process.as_ref()?;
                Some(RunningContainer {
                    name: slot.spec.name.clone(),
                    pid: process.pid(),
                    started_ms: slot.started_ms,
                    dirs: self.cgroup.container_usage_dirs(&slot.spec.name),
                })
            })
            .collect();
        let pod = RunningPod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            dirs: self.cgroup.usage_dirs(),
            containers,
        };
        self.ctx.running.set(&self.uid, pod).await;
    }

    /// Sends the pod's status when it changed since the last one sent.
    async fn report(&mut self) {
        self.report_as(false).await;
    }

    async fn report_as(&mut self, terminal: bool) {
        if let Some(at) = self.status_retry_at
            && Instant::now() < at
        {
            return;
        }
        let records: Vec<ContainerRecord> = self.slots.iter().map(|s| s.record.clone()).collect();
        let now = clock::now();
        let status = status::pod_status(&StatusInput {
            pod: &self.pod,
            containers: &records,
            pod_ip: self.ip,
            host_ip: HOST_IP,
            start_time: &self.start_time,
            previous: &self.conditions,
            terminal,
            unsupported_init: &self.init_containers,
            now: &now,
        });
        self.conditions = status.conditions.clone().unwrap_or_default();
        if self.last_sent.as_ref() == Some(&status) {
            return;
        }
        match api::patch_pod_status(
            &self.ctx.client,
            &self.namespace,
            &self.name,
            &self.uid,
            &status,
        )
        .await
        {
            Ok(()) => {
                if self.last_sent.as_ref().and_then(|s| s.phase.as_ref()) != status.phase.as_ref() {
                    tracing::info!(pod = %self.key(), phase = ?status.phase, "pod phase");
                }
                self.last_sent = Some(status);
                self.status_retry_at = None;
            }
            Err(e) if e.is_gone() => {
                tracing::debug!(pod = %self.key(), error = %e, "status not sent: the pod is gone");
                self.last_sent = Some(status);
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "status update failed; retrying");
                self.status_retry_at = Some(Instant::now() + STATUS_RETRY);
            }
        }
    }

    /// Graceful deletion: preStop hooks, SIGTERM, SIGKILL at the end of the
    /// grace period, the final status, then the pod object deleted.
    async fn terminate(&mut self) -> Ending {
        let began = Instant::now();
        let grace = grace_of(&self.pod);
        let deadline = began + grace;
        let key = self.key();
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots.get(i).is_some_and(|s| s.process.is_some()))
            .collect();
        for slot in &mut self.slots {
            slot.next_start = None;
            slot.probes.clear();
        }
        tracing::info!(pod = %key, grace_s = grace.as_secs(), running = running.len(), "pod deletion requested: terminating");

        // preStop hooks, all at once, within the grace period.
        let ip = self.ip.to_string();
        let hooks: Vec<Hook> = running
            .iter()
            .filter_map(|&i| self.slots.get(i))
            .filter_map(|slot| {
                let handler = slot.spec.lifecycle.as_ref()?.pre_stop.as_ref()?;
                match probe::hook_action(handler, &slot.spec, &ip) {
                    Ok(action) => Some(Hook {
                        container: slot.spec.name.clone(),
                        action,
                        env: Arc::clone(&slot.env),
                        procs: self.cgroup.procs_files(&slot.spec.name),
                    }),
                    Err(e) => {
                        tracing::warn!(pod = %key, container = %slot.spec.name, error = %e, "preStop hook cannot run");
                        None
                    }
                }
            })
            .collect();
        if !hooks.is_empty() {
            let dir = self.dir.clone();
            let runs = hooks.iter().map(|hook| {
                let dir = &dir;
                async move {
                    let exec = ExecContext {
                        env: &hook.env,
                        cwd: dir,
                        cgroup_procs: &hook.procs,
                    };
                    let budget = deadline.saturating_duration_since(Instant::now());
                    let result = check::run(&hook.action, budget, exec).await;
                    (hook.container.as_str(), result)
                }
            });
            let all = futures_util::future::join_all(runs);
            tokio::pin!(all);
            let results = loop {
                tokio::select! {
                    results = &mut all => break Some(results),
                    Some(event) = self.events.recv() => self.handle(event),
                    changed = self.updates.changed() => {
                        if changed.is_err() || matches!(*self.updates.borrow(), PodUpdate::Gone) {
                            break None;
                        }
                    }
                }
            };
            for (name, result) in results.into_iter().flatten() {
                match result {
                    Ok(()) => {
                        tracing::info!(pod = %key, container = name, after_s = began.elapsed().as_secs_f64(), "preStop hook done")
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key, container = name, after_s = began.elapsed().as_secs_f64(), error = %e, "preStop hook failed; terminating anyway")
                    }
                }
            }
        }

        // SIGTERM, then SIGKILL when the grace period is over.
        let term_deadline = deadline.max(Instant::now() + MIN_TERM_GRACE);
        let signalled = self.signal_running(Signal::Term);
        if signalled > 0 {
            tracing::info!(pod = %key, processes = signalled, after_s = began.elapsed().as_secs_f64(), "SIGTERM sent");
        }
        self.wait_for_exits(term_deadline).await;
        let killed = self.signal_running(Signal::Kill);
        if killed > 0 {
            tracing::info!(pod = %key, processes = killed, after_s = began.elapsed().as_secs_f64(), "grace period over: SIGKILL sent");
            self.wait_for_exits(Instant::now() + KILL_WAIT).await;
        }

        self.status_retry_at = None;
        if !self.finished {
            self.report_as(true).await;
        }
        match api::delete_pod(&self.ctx.client, &self.namespace, &self.name, &self.uid).await {
            Ok(()) => {
                tracing::info!(pod = %key, after_s = began.elapsed().as_secs_f64(), "pod terminated and deleted")
            }
            Err(e) => tracing::warn!(pod = %key, error = %e, "deleting the terminated pod failed"),
        }
        Ending::Deleted
    }

    /// Stops every process: SIGTERM, SIGKILL after `grace`.
    async fn stop_all(&mut self, grace: Duration) {
        for slot in &mut self.slots {
            slot.next_start = None;
            slot.probes.clear();
        }
        if self.signal_running(Signal::Term) == 0 {
            return;
        }
        self.wait_for_exits(Instant::now() + grace).await;
        if self.signal_running(Signal::Kill) > 0 {
            self.wait_for_exits(Instant::now() + KILL_WAIT).await;
        }
    }

    fn signal_running(&self, signal: Signal) -> usize {
        let mut count = 0;
        for process in self.slots.iter().filter_map(|s| s.process.as_ref()) {
            process.signal(signal);
            count += 1;
        }
        count
    }

    /// Handles events until no process runs or `deadline` passes, reporting
    /// status as containers stop; a pod deleted outright cuts the wait short.
    async fn wait_for_exits(&mut self, deadline: Instant) {
        while self.slots.iter().any(|s| s.process.is_some()) {
            tokio::select! {
                Some(event) = self.events.recv() => {
                    self.handle(event);
                    if !self.finished {
                        self.report().await;
                    }
                }
                changed = self.updates.changed() => {
                    if changed.is_err() || matches!(*self.updates.borrow(), PodUpdate::Gone) {
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// The probes of one run of `container`, started at `now`.
fn probes_of(container: &Container, pod_ip: &str, now: Duration, key: &str) -> Vec<ProbeSlot> {
    let specs = [
        (ProbeKind::Startup, container.startup_probe.as_ref()),
        (ProbeKind::Readiness, container.readiness_probe.as_ref()),
        (ProbeKind::Liveness, container.liveness_probe.as_ref()),
    ];
    specs
        .into_iter()
        .filter_map(|(kind, spec)| {
            let spec = spec?;
            let action = match probe::probe_action(kind, spec, container, pod_ip) {
                Ok(action) => action,
                Err(e) => {
                    tracing::warn!(pod = %key, container = %container.name, probe = kind.name(), error = %e, "probe cannot run; it fails");
                    Action::Unsupported("the probe cannot run")
                }
            };
            let termination_grace = spec
                .termination_grace_period_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs);
            Some(ProbeSlot {
                tracker: ProbeTracker::new(kind, ProbeTiming::of(kind, spec), now),
                action,
                termination_grace,
            })
        })
        .collect()
}

/// `started` and `ready` from the process and its probes: started once past
/// the startup probe (at once without one), ready once started and past the
/// readiness probe (at once without one).
fn refresh_ready(slot: &mut Slot) {
    let running = slot.process.is_some();
    let passed = |kind: ProbeKind| {
        slot.probes
            .iter()
            .find(|p| p.tracker.kind() == kind)
            .is_none_or(|p| p.tracker.is_success())
    };
    slot.record.started = running && passed(ProbeKind::Startup);
    slot.record.ready =
        slot.record.started && passed(ProbeKind::Readiness) && slot.kill_at.is_none();
}

/// The pod's grace period: `deletionGracePeriodSeconds` once deleted, else
/// `terminationGracePeriodSeconds`, else 30 s.
pub fn grace_of(pod: &Pod) -> Duration {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_GRACE, Duration::from_secs)
}

/// The pod IP a pod already reports, if any (to keep it across agent
/// restarts).
pub fn reported_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// Whether the pod had finished (Succeeded or Failed) before the agent saw
/// it: it runs nothing and needs no address.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn the_grace_period_prefers_the_deletion_one() {
        let mut pod = Pod::default();
        assert_eq!(grace_of(&pod), Duration::from_secs(30));
        pod.spec = Some(PodSpec {
            termination_grace_period_seconds: Some(7),
            ..PodSpec::default()
        });
        assert_eq!(grace_of(&pod), Duration::from_secs(7));
        pod.metadata = ObjectMeta {
            deletion_grace_period_seconds: Some(0),
            ..ObjectMeta::default()
        };
        assert_eq!(grace_of(&pod), Duration::ZERO);
        pod.metadata.deletion_grace_period_seconds = Some(-5);
        assert_eq!(grace_of(&pod), Duration::from_secs(30));
    }

    #[test]
    fn finished_pods_and_reported_addresses() {
        let mut pod = Pod::default();
        assert!(!is_finished(&pod));
        assert_eq!(reported_ip(&pod), None);
        pod.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            pod_ip: Some("127.10.0.9".into()),
            ..PodStatus::default()
        });
        assert!(is_finished(&pod));
        assert_eq!(reported_ip(&pod), Some(Ipv4Addr::new(127, 10, 0, 9)));
    }
}
