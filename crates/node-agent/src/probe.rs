//! Probes and lifecycle hooks: what to check, and the state machine that
//! turns single results into a settled result with the kubelet's thresholds.
//!
//! Time here is a [`Duration`] on the agent's monotonic clock (since it
//! started), passed in by the caller; nothing in this module reads a clock.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A probe or hook that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// A named port is not among the container's ports.
    #[error("port {name:?} is not a named port of container {container}")]
    UnknownPortName {
        /// The port name.
        name: String,
        /// The container.
        container: String,
    },
    /// A port number is outside 1..=65535.
    #[error("port {port} is not a valid port number (1 to 65535)")]
    BadPort {
        /// The number as given.
        port: i64,
    },
    /// The probe or hook has no action this agent can run.
    #[error("{what} has no supported action (httpGet, tcpSocket, exec{sleep})")]
    NoAction {
        /// `readiness probe`, `preStop hook`, ...
        what: &'static str,
        /// `, sleep` for hooks, empty for probes.
        sleep: &'static str,
    },
}

impl ProbeError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnknownPortName { .. } => "unknown_port_name",
            Self::BadPort { .. } => "bad_port",
            Self::NoAction { .. } => "no_action",
        }
    }
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `startupProbe`: holds the other two back until it succeeds; failing
    /// it restarts the container.
    Startup,
    /// `readinessProbe`: decides `ready`.
    Readiness,
    /// `livenessProbe`: failing it restarts the container.
    Liveness,
}

impl ProbeKind {
    /// Lowercase name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Readiness => "readiness",
            Self::Liveness => "liveness",
        }
    }
}

/// One check or hook action, resolved against the container and pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An HTTP GET; a status from 200 to 399 succeeds.
    HttpGet {
        /// Host to connect to (the pod's address unless the spec names one).
        host: String,
        /// Port number.
        port: u16,
        /// Request path, starting with `/`.
        path: String,
        /// Whether the spec asks for HTTPS, which this agent cannot speak.
        https: bool,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens succeeds.
    TcpSocket {
        /// Host to connect to.
        host: String,
        /// Port number.
        port: u16,
    },
    /// A command run on this machine in the container's environment; exit
    /// status 0 succeeds.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
    /// A pause (hooks only).
    Sleep(Duration),
    /// An action this agent does not run (gRPC); it always fails.
    Unsupported(&'static str),
}

/// How often and how patiently a probe runs, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Wait after the container starts before the first check.
    pub initial_delay: Duration,
    /// Time between checks.
    pub period: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive successes that turn a failed probe into a succeeded one.
    pub success_threshold: u32,
    /// Consecutive failures that turn a succeeded probe into a failed one.
    pub failure_threshold: u32,
}

impl ProbeTiming {
    /// The timing of `probe`: `initialDelaySeconds` 0, `periodSeconds` 10,
    /// `timeoutSeconds` 1, `successThreshold` 1 (always 1 for liveness and
    /// startup) and `failureThreshold` 3 unless set; values below the API's
    /// minimum are raised to it.
    pub fn of(kind: ProbeKind, probe: &Probe) -> Self {
        let seconds = |value: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(u64::try_from(value.unwrap_or(default).max(min)).unwrap_or(0))
        };
        let count = |value: Option<i32>, default: i32| {
            u32::try_from(value.unwrap_or(default).max(1)).unwrap_or(1)
        };
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold: match kind {
                ProbeKind::Readiness => count(probe.success_threshold, 1),
                ProbeKind::Liveness | ProbeKind::Startup => 1,
            },
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// The action of a probe.
///
/// # Errors
///
/// [`ProbeError`] for a port that cannot be resolved or a probe without an
/// action.
pub fn probe_action(
    kind: ProbeKind,
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
) -> Result<Action, ProbeError> {
    if let Some(http) = &probe.http_get {
        return http_action(http, container, pod_ip);
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Ok(Action::TcpSocket {
            host: non_empty(tcp.host.as_deref()).unwrap_or(pod_ip).to_owned(),
            port: resolve_port(&tcp.port, container)?,
        });
    }
    if let Some(exec) = &probe.exec {
        return Ok(Action::Exec {
            command: exec.command.clone().unwrap_or_default(),
        });
    }
    if probe.grpc.is_some() {
        return Ok(Action::Unsupported(
            "gRPC probes are not supported by this node agent",
        ));
    }
    Err(ProbeError::NoAction {
        what: match kind {
            ProbeKind::Startup => "startup probe",
            ProbeKind::Readiness => "readiness probe",
            ProbeKind::Liveness => "liveness probe",
        },
        sleep: "",
    })
}

/// The action of a lifecycle hook (`preStop`, `postStart`).
///
/// # Errors
///
/// [`ProbeError`] for a port that cannot be resolved or a hook without an
/// action.
pub fn hook_action(
    handler: &LifecycleHandler,
    container: &Container,
    pod_ip: &str,
) -> Result<Action, ProbeError> {
    if let Some(http) = &handler.http_get {
        return http_action(http, container, pod_ip);
    }
    if let Some(exec) = &handler.exec {
        return Ok(Action::Exec {
            command: exec.command.clone().unwrap_or_default(),
        });
    }
    if let Some(sleep) = &handler.sleep {
        return Ok(Action::Sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        )));
    }
    if let Some(tcp) = &handler.tcp_socket {
        return Ok(Action::TcpSocket {
            host: non_empty(tcp.host.as_deref()).unwrap_or(pod_ip).to_owned(),
            port: resolve_port(&tcp.port, container)?,
        });
    }
    Err(ProbeError::NoAction {
        what: "lifecycle hook",
        sleep: ", sleep",
    })
}

fn http_action(
    http: &k8s_openapi::api::core::v1::HTTPGetAction,
    container: &Container,
    pod_ip: &str,
) -> Result<Action, ProbeError> {
    let path = match http.path.as_deref() {
        None | Some("") => "/".to_owned(),
        Some(path) if path.starts_with('/') => path.to_owned(),
        Some(path) => format!("/{path}"),
    };
    Ok(Action::HttpGet {
        host: non_empty(http.host.as_deref()).unwrap_or(pod_ip).to_owned(),
        port: resolve_port(&http.port, container)?,
        path,
        https: http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https")),
        headers: http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    })
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.is_empty())
}

/// A port by number, or by the name of one of the container's ports.
///
/// # Errors
///
/// [`ProbeError::BadPort`] outside 1..=65535, [`ProbeError::UnknownPortName`]
/// for a name the container does not declare.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, ProbeError> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => match name.parse::<i64>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| i64::from(p.container_port))
                .ok_or_else(|| ProbeError::UnknownPortName {
                    name: name.clone(),
                    container: container.name.clone(),
                })?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|&p| p != 0)
        .ok_or(ProbeError::BadPort { port: number })
}

/// One probe of one run of a container: when it is due, and its settled
/// result after the thresholds.
///
/// Readiness and startup start out failed, liveness succeeded, as in the
/// kubelet. A settled result changes only after `success_threshold`
/// consecutive successes or `failure_threshold` consecutive failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTracker {
    kind: ProbeKind,
    timing: ProbeTiming,
    success: bool,
    successes: u32,
    failures: u32,
    next_at: Duration,
    in_flight: bool,
}

impl ProbeTracker {
    /// A tracker for a run that started at `started_at`.
    pub fn new(kind: ProbeKind, timing: ProbeTiming, started_at: Duration) -> Self {
        Self {
            kind,
            timing,
            success: matches!(kind, ProbeKind::Liveness),
            successes: 0,
            failures: 0,
            next_at: started_at + timing.initial_delay,
            in_flight: false,
        }
    }

    /// Which probe this is.
    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// The probe's timing.
    pub fn timing(&self) -> ProbeTiming {
        self.timing
    }

    /// Whether a check should start at `now`. A startup probe that has
    /// succeeded is never due again.
    pub fn is_due(&self, now: Duration) -> bool {
        !self.in_flight && now >= self.next_at && !self.is_finished()
    }

    /// When the next check is due (meaningless while one is in flight or
    /// after a startup probe succeeded).
    pub fn next_at(&self) -> Duration {
        self.next_at
    }

    /// Whether this is a startup probe that has succeeded.
    pub fn is_finished(&self) -> bool {
        self.kind == ProbeKind::Startup && self.success
    }

    /// Marks a check as started at `now`; the next one is due a period
    /// later, and not before this one reports.
    pub fn begin(&mut self, now: Duration) {
        self.in_flight = true;
        self.next_at = now + self.timing.period;
    }

    /// Records a check's result and returns the new settled result when it
    /// changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        self.in_flight = false;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.success && self.successes >= self.timing.success_threshold {
                self.success = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.success && self.failures >= self.timing.failure_threshold {
                self.success = false;
                return Some(false);
            }
            // A startup probe starts out failed; running out of attempts
            // is what fails it, so report that once.
            if self.kind == ProbeKind::Startup && self.failures == self.timing.failure_threshold {
                return Some(false);
            }
        }
        None
    }

    /// The settled result.
    pub fn is_success(&self) -> bool {
        self.success
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, HTTPGetAction, HTTPHeader, SleepAction, TCPSocketAction,
    };
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn timing(success: u32, failure: u32) -> ProbeTiming {
        ProbeTiming {
            initial_delay: 5 * S,
            period: 2 * S,
            timeout: S,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    fn container() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        }
    }

    #[test]
    fn kubernetes_defaults_apply_to_an_empty_probe() {
        let t = ProbeTiming::of(ProbeKind::Readiness, &Probe::default());
        assert_eq!(
            t,
            ProbeTiming {
                initial_delay: Duration::ZERO,
                period: 10 * S,
                timeout: S,
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[test]
    fn liveness_success_threshold_is_always_one_and_minimums_hold() {
        let probe = Probe {
            success_threshold: Some(3),
            period_seconds: Some(0),
            timeout_seconds: Some(-4),
            failure_threshold: Some(0),
            initial_delay_seconds: Some(-1),
            ..Probe::default()
        };
        let t = ProbeTiming::of(ProbeKind::Liveness, &probe);
        assert_eq!(t.success_threshold, 1);
        assert_eq!(t.period, S);
        assert_eq!(t.timeout, S);
        assert_eq!(t.failure_threshold, 1);
        assert_eq!(t.initial_delay, Duration::ZERO);
        assert_eq!(
            ProbeTiming::of(ProbeKind::Readiness, &probe).success_threshold,
            3
        );
    }

    #[test]
    fn ports_resolve_by_number_and_by_name() {
        let c = container();
        assert_eq!(resolve_port(&IntOrString::Int(9000), &c), Ok(9000));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c), Ok(81));
        let err = resolve_port(&IntOrString::String("grpc".into()), &c).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "port \"grpc\" is not a named port of container web"
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(0), &c),
            Err(ProbeError::BadPort { port: 0 })
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(70000), &c),
            Err(ProbeError::BadPort { port: 70000 })
        );
    }

    #[test]
    fn http_probes_default_to_the_pod_address_and_root_path() {
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("healthz".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-A".into(),
                    value: "b".into(),
                }]),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        };
        let action =
            probe_action(ProbeKind::Readiness, &probe, &container(), "127.10.0.3").expect("action");
        assert_eq!(
            action,
            Action::HttpGet {
                host: "127.10.0.3".into(),
                port: 8080,
                path: "/healthz".into(),
                https: false,
                headers: vec![("X-A".into(), "b".into())],
            }
        );
    }

    #[test]
    fn tcp_exec_and_missing_actions() {
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                host: Some("127.0.0.1".into()),
                port: IntOrString::Int(22),
            }),
            ..Probe::default()
        };
        assert_eq!(
            probe_action(ProbeKind::Liveness, &tcp, &container(), "127.10.0.3"),
            Ok(Action::TcpSocket {
                host: "127.0.0.1".into(),
                port: 22
            })
        );
        let exec = Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Probe::default()
        };
        assert_eq!(
            probe_action(ProbeKind::Liveness, &exec, &container(), "x"),
            Ok(Action::Exec {
                command: vec!["true".into()]
            })
        );
        let err = probe_action(ProbeKind::Startup, &Probe::default(), &container(), "x")
            .expect_err("none");
        assert_eq!(
            err.to_string(),
            "startup probe has no supported action (httpGet, tcpSocket, exec)"
        );
    }

    #[test]
    fn hooks_support_sleep() {
        let hook = LifecycleHandler {
            sleep: Some(SleepAction { seconds: 3 }),
            ..LifecycleHandler::default()
        };
        assert_eq!(
            hook_action(&hook, &container(), "x"),
            Ok(Action::Sleep(3 * S))
        );
        let err = hook_action(&LifecycleHandler::default(), &container(), "x").expect_err("none");
        assert_eq!(err.label(), "no_action");
    }

    #[test]
    fn first_check_waits_for_the_initial_delay_then_runs_each_period() {
        let mut t = ProbeTracker::new(ProbeKind::Readiness, timing(1, 3), 10 * S);
        assert!(!t.is_due(14 * S));
        assert!(t.is_due(15 * S));
        t.begin(15 * S);
        assert!(!t.is_due(20 * S), "a check in flight is not started again");
        assert_eq!(t.record(true), Some(true));
        assert!(!t.is_due(16 * S));
        assert!(t.is_due(17 * S));
    }

    #[test]
    fn readiness_starts_failed_and_needs_success_threshold_successes() {
        let mut t = ProbeTracker::new(ProbeKind::Readiness, timing(2, 3), Duration::ZERO);
        assert!(!t.is_success());
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert!(t.is_success());
    }

    #[test]
    fn failure_threshold_consecutive_failures_fail_a_probe() {
        let mut t = ProbeTracker::new(ProbeKind::Liveness, timing(1, 3), Duration::ZERO);
        assert!(t.is_success(), "liveness starts out succeeded");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the count");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(false), None, "reported once");
    }

    #[test]
    fn startup_fails_once_after_its_attempts_and_finishes_on_success() {
        let mut t = ProbeTracker::new(ProbeKind::Startup, timing(1, 2), Duration::ZERO);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(false), None);

        let mut t = ProbeTracker::new(ProbeKind::Startup, timing(1, 2), Duration::ZERO);
        assert_eq!(t.record(true), Some(true));
        assert!(t.is_finished());
        assert!(!t.is_due(Duration::from_secs(1000)));
    }

    proptest! {
        #[test]
        fn settled_result_follows_the_last_threshold_run(
            results in prop::collection::vec(any::<bool>(), 0..60),
            success in 1_u32..4,
            failure in 1_u32..4,
        ) {
            let mut t = ProbeTracker::new(ProbeKind::Readiness, timing(success, failure), Duration::ZERO);
            let mut model = false;
            let (mut ok_run, mut fail_run) = (0, 0);
            for ok in results {
                let flipped = t.record(ok);
                if ok { ok_run += 1; fail_run = 0; } else { fail_run += 1; ok_run = 0; }
                let before = model;
                if ok_run >= success { model = true; }
                if fail_run >= failure { model = false; }
                prop_assert_eq!(t.is_success(), model);
                prop_assert_eq!(flipped, (before != model).then_some(model));
            }
        }
    }
}
