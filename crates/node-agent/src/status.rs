//! A pod's status, computed from what the agent knows of its containers, as
//! the kubelet computes it: the phase, the container statuses and the four
//! conditions it owns (`PodReadyToStartContainers`, `Initialized`,
//! `ContainersReady`, `Ready`), each of whose `lastTransitionTime` moves only
//! when its status flips.
//!
//! Times are passed in; nothing here reads a clock.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::restart::RestartPolicy;

/// Waiting reasons, as the kubelet spells them.
pub mod reason {
    /// Not started yet.
    pub const CONTAINER_CREATING: &str = "ContainerCreating";
    /// The image is not in the image map.
    pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
    /// The environment could not be built (missing ConfigMap, Secret, key).
    pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
    /// The process could not be started.
    pub const RUN_CONTAINER_ERROR: &str = "RunContainerError";
    /// Held back until the pod is initialized.
    pub const POD_INITIALIZING: &str = "PodInitializing";
    /// Waiting to start again after an exit.
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
    /// Terminated with exit status 0.
    pub const COMPLETED: &str = "Completed";
    /// Terminated with another exit status or a signal.
    pub const ERROR: &str = "Error";
}

/// The condition types this agent owns.
const READY_TO_START: &str = "PodReadyToStartContainers";
const INITIALIZED: &str = "Initialized";
const CONTAINERS_READY: &str = "ContainersReady";
const READY: &str = "Ready";

/// The end of one run of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Exit status, or 128 + the signal that ended the process.
    pub exit_code: i32,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    /// `Completed` or `Error`.
    pub reason: String,
    /// When the run started.
    pub started_at: Time,
    /// When it ended.
    pub finished_at: Time,
    /// The run's container ID (`rtc://<pid>`).
    pub container_id: String,
}

impl Termination {
    /// A termination with the reason the kubelet gives for `exit_code`.
    pub fn new(
        exit_code: i32,
        signal: Option<i32>,
        started_at: Time,
        finished_at: Time,
        container_id: String,
    ) -> Self {
        let reason = if exit_code == 0 {
            reason::COMPLETED
        } else {
            reason::ERROR
        };
        Self {
            exit_code,
            signal,
            reason: reason.to_owned(),
            started_at,
            finished_at,
            container_id,
        }
    }

    fn to_api(&self) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: self.exit_code,
                signal: self.signal,
                reason: Some(self.reason.clone()),
                started_at: Some(self.started_at.clone()),
                finished_at: Some(self.finished_at.clone()),
                container_id: Some(self.container_id.clone()),
                message: None,
            }),
            ..ContainerState::default()
        }
    }
}

/// Where a container is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Not running, and will (or may) run.
    Waiting {
        /// One of [`reason`].
        reason: String,
        /// Details for people.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When the process started.
        started_at: Time,
        /// The container ID (`rtc://<pid>`).
        container_id: String,
    },
    /// Exited, not to run again (or not yet told to).
    Terminated(Termination),
}

impl RunState {
    /// Waiting with `reason` and an optional message.
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }

    /// Whether the container is running.
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running { .. })
    }
}

/// What the agent knows of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The container's name.
    pub name: String,
    /// The image as the spec names it.
    pub image: String,
    /// What stands in for an image digest: `file://<program>`, empty when
    /// the image is not mapped.
    pub image_id: String,
    /// Current state.
    pub state: RunState,
    /// The previous run's end, after a restart.
    pub last_termination: Option<Termination>,
    /// Times the container was started again.
    pub restart_count: i32,
    /// Ready (running, started and passing its readiness probe).
    pub ready: bool,
    /// Started (running and past its startup probe).
    pub started: bool,
}

impl ContainerRecord {
    /// A container that has not run yet.
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: String::new(),
            state: RunState::waiting(reason::CONTAINER_CREATING, None),
            last_termination: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    /// A run started at `started_at` as `container_id` (`rtc://<pid>`);
    /// `restart` counts it as a restart.
    pub fn start(&mut self, started_at: Time, container_id: String, restart: bool) {
        if restart {
            self.restart_count = self.restart_count.saturating_add(1);
        }
        self.state = RunState::Running {
            started_at,
            container_id,
        };
        self.ready = false;
        self.started = false;
    }

    /// The current run ended with `exit_code` (and `signal`) at
    /// `finished_at`. With `restart_after`, the container waits to start
    /// again (`CrashLoopBackOff`, the run kept as `lastState`); without, it
    /// stays terminated. `pod_ref` (`name_namespace(uid)`) goes in the
    /// message, as the kubelet writes it.
    pub fn exit(
        &mut self,
        exit_code: i32,
        signal: Option<i32>,
        finished_at: Time,
        restart_after: Option<std::time::Duration>,
        pod_ref: &str,
    ) {
        let (started_at, container_id) = match &self.state {
            RunState::Running {
                started_at,
                container_id,
            } => (started_at.clone(), container_id.clone()),
            _ => (finished_at.clone(), String::new()),
        };
        let termination =
            Termination::new(exit_code, signal, started_at, finished_at, container_id);
        self.ready = false;
        self.started = false;
        match restart_after {
            Some(delay) => {
                self.state = RunState::waiting(
                    reason::CRASH_LOOP_BACK_OFF,
                    Some(format!(
                        "back-off {}s restarting failed container={} pod={pod_ref}",
                        delay.as_secs(),
                        self.name
                    )),
                );
                self.last_termination = Some(termination);
            }
            None => self.state = RunState::Terminated(termination),
        }
    }

    fn to_api(&self) -> ContainerStatus {
        let (state, container_id) = match &self.state {
            RunState::Waiting { reason, message } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: message.clone(),
                    }),
                    ..ContainerState::default()
                },
                None,
            ),
            RunState::Running {
                started_at,
                container_id,
            } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(started_at.clone()),
                    }),
                    ..ContainerState::default()
                },
                Some(container_id.clone()),
            ),
            RunState::Terminated(t) => (t.to_api(), Some(t.container_id.clone())),
        };
        let container_id = container_id.or_else(|| {
            self.last_termination
                .as_ref()
                .map(|t| t.container_id.clone())
        });
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id,
            ready: self.ready,
            started: Some(self.started),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: Some(
                self.last_termination
                    .as_ref()
                    .map(Termination::to_api)
                    .unwrap_or_default(),
            ),
            ..ContainerStatus::default()
        }
    }
}

/// A pod's phase from its containers, as the kubelet's `getPhase` decides:
/// `terminal` is true once the pod is shutting down for good (deleted), when
/// stopped containers are final whatever the restart policy.
pub fn phase(
    restart_policy: Option<&str>,
    containers: &[ContainerRecord],
    terminal: bool,
) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            RunState::Waiting { .. } if c.last_termination.is_some() => stopped += 1,
            RunState::Waiting { .. } => waiting += 1,
        }
    }
    if containers.is_empty() || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    // Every container has stopped.
    let all_succeeded = stopped == succeeded;
    match (terminal, RestartPolicy::from_spec(restart_policy)) {
        (true, _) | (false, RestartPolicy::Never | RestartPolicy::OnFailure) if all_succeeded => {
            "Succeeded"
        }
        (true, _) | (false, RestartPolicy::Never) => "Failed",
        // Always, or OnFailure after a failure: restarting.
        (false, RestartPolicy::Always | RestartPolicy::OnFailure) => "Running",
    }
}

/// Everything [`pod_status`] is computed from.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    /// The pod as last seen (restart policy, readiness gates, conditions
    /// other components own).
    pub pod: &'a Pod,
    /// The containers, in spec order.
    pub containers: &'a [ContainerRecord],
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The node's address.
    pub host_ip: Ipv4Addr,
    /// When the agent took the pod on.
    pub start_time: &'a Time,
    /// The conditions last computed, whose transition times are kept while
    /// their status holds.
    pub previous: &'a [PodCondition],
    /// Whether the pod is shutting down for good.
    pub terminal: bool,
    /// Init containers the agent cannot run (it runs none): when any,
    /// `Initialized` is `False` and nothing starts.
    pub unsupported_init: &'a [String],
    /// Now, for conditions that flip.
    pub now: &'a Time,
}

/// The pod status the agent reports.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let spec = input.pod.spec.as_ref();
    let restart_policy = spec.and_then(|s| s.restart_policy.as_deref());
    let phase = phase(restart_policy, input.containers, input.terminal);
    let completed = matches!(phase, "Succeeded" | "Failed");

    let unready: Vec<&str> = input
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = if completed {
        Verdict::no("PodCompleted", None)
    } else if unready.is_empty() {
        Verdict::yes()
    } else {
        Verdict::no(
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let ready = match (&containers_ready, readiness_gates(input.pod)) {
        (Verdict { ok: true, .. }, Some(gates)) => gates,
        (verdict, _) => verdict.clone(),
    };

    let initialized = if input.unsupported_init.is_empty() {
        Verdict::yes()
    } else {
        Verdict::no(
            "ContainersNotInitialized",
            Some(format!(
                "init containers are not supported by this node agent: [{}]",
                input.unsupported_init.join(" ")
            )),
        )
    };
    let condition = |kind: &str, verdict: &Verdict| {
        let status = if verdict.ok { "True" } else { "False" };
        let since = input
            .previous
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| input.now.clone());
        PodCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: verdict.reason.clone(),
            message: verdict.message.clone(),
            last_transition_time: Some(since),
            last_probe_time: None,
            observed_generation: None,
        }
    };
    let conditions = vec![
        condition(READY_TO_START, &Verdict::yes()),
        condition(INITIALIZED, &initialized),
        condition(CONTAINERS_READY, &containers_ready),
        condition(READY, &ready),
    ];

    let pod_ip = input.pod_ip.to_string();
    let host_ip = input.host_ip.to_string();
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        pod_ip: Some(pod_ip.clone()),
        pod_ips: Some(vec![PodIP { ip: pod_ip }]),
        host_ip: Some(host_ip.clone()),
        host_ips: Some(vec![HostIP { ip: host_ip }]),
        start_time: Some(input.start_time.clone()),
        container_statuses: Some(
            input
                .containers
                .iter()
                .map(ContainerRecord::to_api)
                .collect(),
        ),
        qos_class: input.pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        ..PodStatus::default()
    }
}

/// A condition's value with its reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
}

impl Verdict {
    fn yes() -> Self {
        Self {
            ok: true,
            reason: None,
            message: None,
        }
    }

    fn no(reason: &str, message: Option<String>) -> Self {
        Self {
            ok: false,
            reason: Some(reason.to_owned()),
            message,
        }
    }
}

/// `Some` verdict when a readiness gate holds `Ready` back, `None` when
/// every gate's condition is `True` (or there are none).
fn readiness_gates(pod: &Pod) -> Option<Verdict> {
    let gates = pod.spec.as_ref()?.readiness_gates.as_ref()?;
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    for gate in gates {
        let found =
            conditions.and_then(|list| list.iter().find(|c| c.type_ == gate.condition_type));
        match found {
            None => {
                return Some(Verdict::no(
                    "ReadinessGatesNotReady",
                    Some(format!(
                        "corresponding condition of pod readiness gate {:?} does not exist.",
                        gate.condition_type
                    )),
                ));
            }
            Some(c) if c.status != "True" => {
                return Some(Verdict::no(
                    "ReadinessGatesNotReady",
                    Some(format!(
                        "the status of pod readiness gate {:?} is not \"True\", but {}",
                        gate.condition_type, c.status
                    )),
                ));
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodReadinessGate, PodSpec};
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + seconds).expect("timestamp"))
    }

    fn running(name: &str, ready: bool) -> ContainerRecord {
        ContainerRecord {
            state: RunState::Running {
                started_at: at(1),
                container_id: "rtc://42".into(),
            },
            ready,
            started: true,
            image_id: "file:///usr/bin/python3".into(),
            ..ContainerRecord::new(name, "rtc/python")
        }
    }

    fn exited(name: &str, code: i32) -> ContainerRecord {
        ContainerRecord {
            state: RunState::Terminated(Termination::new(
                code,
                None,
                at(1),
                at(2),
                "rtc://42".into(),
            )),
            ..ContainerRecord::new(name, "rtc/python")
        }
    }

    fn backing_off(name: &str, code: i32) -> ContainerRecord {
        ContainerRecord {
            state: RunState::waiting(reason::CRASH_LOOP_BACK_OFF, Some("back-off 1s".into())),
            last_termination: Some(Termination::new(
                code,
                None,
                at(1),
                at(2),
                "rtc://42".into(),
            )),
            restart_count: 1,
            ..ContainerRecord::new(name, "rtc/python")
        }
    }

    fn pod(policy: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let creating = ContainerRecord::new("a", "x");
        let cases: Vec<(&str, Vec<ContainerRecord>, bool, &str)> = vec![
            ("Always", vec![creating.clone()], false, "Pending"),
            (
                "Always",
                vec![running("a", true), creating.clone()],
                false,
                "Pending",
            ),
            ("Always", vec![running("a", true)], false, "Running"),
            (
                "Never",
                vec![running("a", true), exited("b", 1)],
                false,
                "Running",
            ),
            ("Always", vec![exited("a", 0)], false, "Running"),
            ("Always", vec![backing_off("a", 1)], false, "Running"),
            (
                "Never",
                vec![exited("a", 0), exited("b", 0)],
                false,
                "Succeeded",
            ),
            (
                "Never",
                vec![exited("a", 0), exited("b", 1)],
                false,
                "Failed",
            ),
            ("OnFailure", vec![exited("a", 0)], false, "Succeeded"),
            ("OnFailure", vec![backing_off("a", 1)], false, "Running"),
            ("Always", vec![exited("a", 0)], true, "Succeeded"),
            ("Always", vec![exited("a", 143)], true, "Failed"),
            ("OnFailure", vec![exited("a", 2)], true, "Failed"),
            ("Always", vec![], false, "Pending"),
        ];
        for (policy, containers, terminal, want) in cases {
            assert_eq!(
                phase(Some(policy), &containers, terminal),
                want,
                "{policy} {containers:?} terminal={terminal}"
            );
        }
        assert_eq!(
            phase(None, &[exited("a", 0)], false),
            "Running",
            "the default policy is Always"
        );
    }

    fn status(
        pod: &Pod,
        containers: &[ContainerRecord],
        previous: &[PodCondition],
        now: &Time,
    ) -> PodStatus {
        pod_status(&StatusInput {
            pod,
            containers,
            pod_ip: Ipv4Addr::new(127, 10, 0, 2),
            host_ip: Ipv4Addr::LOCALHOST,
            start_time: &at(0),
            previous,
            terminal: false,
            unsupported_init: &[],
            now,
        })
    }

    fn condition<'a>(status: &'a PodStatus, kind: &str) -> &'a PodCondition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind} condition"))
    }

    #[test]
    fn ready_containers_make_a_ready_pod_with_addresses() {
        let s = status(&pod("Always"), &[running("web", true)], &[], &at(5));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.10.0.2"));
        assert_eq!(
            s.pod_ips,
            Some(vec![PodIP {
                ip: "127.10.0.2".into()
            }])
        );
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
        for kind in [READY_TO_START, INITIALIZED, CONTAINERS_READY, READY] {
            let c = condition(&s, kind);
            assert_eq!(c.status, "True", "{kind}");
            assert_eq!(c.last_transition_time, Some(at(5)));
        }
        let cs = &s.container_statuses.expect("statuses")[0];
        assert_eq!(cs.container_id.as_deref(), Some("rtc://42"));
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    }

    #[test]
    fn transition_times_move_only_when_the_status_flips() {
        let p = pod("Always");
        let first = status(&p, &[running("web", false)], &[], &at(5));
        let ready = condition(&first, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("ContainersNotReady"))
        );
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [web]")
        );

        let same = status(
            &p,
            &[running("web", false)],
            first.conditions.as_deref().unwrap_or_default(),
            &at(9),
        );
        assert_eq!(condition(&same, READY).last_transition_time, Some(at(5)));
        assert_eq!(
            condition(&same, INITIALIZED).last_transition_time,
            Some(at(5))
        );

        let flipped = status(
            &p,
            &[running("web", true)],
            same.conditions.as_deref().unwrap_or_default(),
            &at(12),
        );
        assert_eq!(
            condition(&flipped, READY).last_transition_time,
            Some(at(12))
        );
        assert_eq!(
            condition(&flipped, INITIALIZED).last_transition_time,
            Some(at(5))
        );
    }

    #[test]
    fn completed_pods_are_not_ready_with_reason_pod_completed() {
        let s = status(&pod("Never"), &[exited("job", 0)], &[], &at(5));
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(condition(&s, READY).reason.as_deref(), Some("PodCompleted"));
        let terminated = s.container_statuses.expect("statuses")[0]
            .state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .expect("terminated");
        assert_eq!(terminated.exit_code, 0);
        assert_eq!(terminated.reason.as_deref(), Some("Completed"));
    }

    #[test]
    fn a_restarted_container_shows_its_last_state() {
        let s = status(&pod("Always"), &[backing_off("web", 3)], &[], &at(5));
        let cs = &s.container_statuses.expect("statuses")[0];
        assert_eq!(cs.restart_count, 1);
        let waiting = cs
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("last");
        assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
        assert_eq!(cs.container_id.as_deref(), Some("rtc://42"));
    }

    #[test]
    fn a_run_ends_terminated_or_backing_off_and_restarts_count() {
        let mut c = ContainerRecord::new("web", "rtc/python");
        c.start(at(1), "rtc://10".into(), false);
        assert_eq!(c.restart_count, 0);
        assert!(c.state.is_running());
        c.exit(
            1,
            None,
            at(3),
            Some(std::time::Duration::from_secs(2)),
            "web_ns(u1)",
        );
        assert_eq!(
            c.state,
            RunState::waiting(
                reason::CRASH_LOOP_BACK_OFF,
                Some("back-off 2s restarting failed container=web pod=web_ns(u1)".into())
            )
        );
        let last = c.last_termination.clone().expect("last");
        assert_eq!(
            (last.exit_code, last.started_at, last.finished_at),
            (1, at(1), at(3))
        );
        assert_eq!(last.container_id, "rtc://10");

        c.start(at(5), "rtc://11".into(), true);
        assert_eq!(c.restart_count, 1);
        c.exit(137, Some(9), at(6), None, "web_ns(u1)");
        let RunState::Terminated(t) = &c.state else {
            panic!("terminated: {:?}", c.state);
        };
        assert_eq!(
            (t.exit_code, t.signal, t.reason.as_str()),
            (137, Some(9), "Error")
        );
        assert_eq!(t.container_id, "rtc://11");
        assert_eq!(
            c.last_termination.map(|t| t.container_id).as_deref(),
            Some("rtc://10")
        );
        assert!(!c.ready && !c.started);
    }

    #[test]
    fn unsupported_init_containers_leave_the_pod_uninitialized() {
        let waiting = ContainerRecord {
            state: RunState::waiting(reason::POD_INITIALIZING, None),
            ..ContainerRecord::new("web", "x")
        };
        let s = pod_status(&StatusInput {
            pod: &pod("Always"),
            containers: &[waiting],
            pod_ip: Ipv4Addr::new(127, 10, 0, 2),
            host_ip: Ipv4Addr::LOCALHOST,
            start_time: &at(0),
            previous: &[],
            terminal: false,
            unsupported_init: &["migrate".to_owned()],
            now: &at(1),
        });
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = condition(&s, INITIALIZED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("ContainersNotInitialized"))
        );
        assert_eq!(
            c.message.as_deref(),
            Some("init containers are not supported by this node agent: [migrate]")
        );
    }

    #[test]
    fn readiness_gates_hold_ready_back_until_their_condition_is_true() {
        let mut p = pod("Always");
        if let Some(spec) = p.spec.as_mut() {
            spec.readiness_gates = Some(vec![PodReadinessGate {
                condition_type: "example.com/lb".into(),
            }]);
        }
        let s = status(&p, &[running("web", true)], &[], &at(5));
        assert_eq!(condition(&s, CONTAINERS_READY).status, "True");
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("ReadinessGatesNotReady"))
        );

        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "example.com/lb".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        let s = status(&p, &[running("web", true)], &[], &at(5));
        assert_eq!(condition(&s, READY).status, "True");
    }
}
