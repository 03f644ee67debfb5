//! The workload scaler: detection, reads, compare-and-swap writes to /scale,
//! and scale-in preparation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use rtc_time::Backoff;
use tracing::Instrument;

use crate::api::{ApiError, Operation, PodState, WorkloadApi, WorkloadKind, WorkloadState};
use crate::config::{Clamped, ScalerConfig};
use crate::error::ScaleError;
use crate::fence::{FENCING_TOKEN_ANNOTATION, Fence, FenceError, Permit};
use crate::victim::{self, DELETION_COST_ANNOTATION, Override, ScaleInPlan, VICTIM_COST};

/// What a [`WorkloadScaler::scale_to`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleOutcome {
    /// `spec.replicas` went from `from` to `to`.
    Scaled {
        /// The workload's kind.
        kind: WorkloadKind,
        /// Replicas before, as read.
        from: u32,
        /// Replicas now.
        to: u32,
        /// Set when the requested count was brought into bounds.
        clamped: Option<Clamped>,
        /// The fence token the write was made under.
        token: u64,
    },
    /// The (clamped) target equals the current count: nothing was written.
    Unchanged {
        /// The workload's kind.
        kind: WorkloadKind,
        /// The replica count, as read.
        replicas: u32,
        /// Set when the requested count was brought into bounds.
        clamped: Option<Clamped>,
    },
    /// Someone else changed the workload since it was read (409). Nothing
    /// was written: re-read with [`WorkloadScaler::current`] and decide again.
    Conflict {
        /// The workload's kind.
        kind: WorkloadKind,
        /// Replicas as read, now out of date.
        from: u32,
        /// The target that was not written.
        to: u32,
    },
}

impl ScaleOutcome {
    /// A bounded metric label (`scaled`, `unchanged`, `conflict`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Scaled { .. } => "scaled",
            Self::Unchanged { .. } => "unchanged",
            Self::Conflict { .. } => "conflict",
        }
    }
}

/// Finds and scales the socket workload through a [`WorkloadApi`].
///
/// One scaler serves one workload name in one namespace. It remembers which
/// kind it found, and detects again when the workload disappears or comes
/// back as another object (a new uid, or the other kind).
#[derive(Debug)]
#[expect(
    clippy::disallowed_types,
    reason = "what the scaler remembers is locked only in sync code, never across an .await"
)]
pub struct WorkloadScaler<A> {
    api: A,
    config: ScalerConfig,
    memory: std::sync::Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    /// The last workload seen, kept after it goes stale so a replacement is noticed.
    seen: Option<(WorkloadKind, String)>,
    stale: bool,
    /// Requests already reported as forbidden, so a missing permission is
    /// logged once rather than on every tick.
    forbidden: Vec<Operation>,
}

/// The refusal of a writer whose token is older than the workload's claim.
fn newer_claim(kind: WorkloadKind, name: &str, claimed: u64, ours: u64) -> FenceError {
    FenceError::new(format!(
        "{kind} {name} was claimed by fencing token {claimed}, newer than ours ({ours})"
    ))
}

/// How a request finally failed.
enum Failure {
    Api(ApiError),
    Exhausted { attempts: u32, last: ApiError },
    Fenced(FenceError),
}

impl<A: WorkloadApi> WorkloadScaler<A> {
    /// A scaler for `config.workload_name()` in `api.namespace()`. Nothing is
    /// requested until the first call.
    #[expect(
        clippy::disallowed_types,
        reason = "makes the memory lock, taken only in sync code"
    )]
    pub fn new(api: A, config: ScalerConfig) -> Self {
        Self {
            api,
            config,
            memory: std::sync::Mutex::new(Memory::default()),
        }
    }

    /// The configuration the scaler was built with.
    pub fn config(&self) -> &ScalerConfig {
        &self.config
    }

    /// The API the scaler talks through.
    pub fn api(&self) -> &A {
        &self.api
    }

    /// Looks for both a Deployment and a StatefulSet of the configured name.
    ///
    /// # Errors
    ///
    /// [`ScaleError::NotFound`] when neither exists, [`ScaleError::Ambiguous`]
    /// when both do, [`ScaleError::Forbidden`] when RBAC forbids either read,
    /// [`ScaleError::Unavailable`] when the server keeps failing.
    pub async fn detect(&self) -> Result<WorkloadKind, ScaleError> {
        let state = self.detect_state(None).await?;
        self.remember(&state);
        Ok(state.kind)
    }

    /// Reads the workload: kind, spec and ready replicas, and the
    /// resourceVersion the next [`scale_to`](Self::scale_to) is conditioned on.
    /// Detects the workload on the first call and whenever it was deleted.
    ///
    /// # Errors
    ///
    /// As [`detect`](Self::detect) when the workload has to be found again.
    pub async fn current(&self) -> Result<WorkloadState, ScaleError> {
        self.read(None).await
    }

    /// [`current`](Self::current) for a writer: `fence` is checked before
    /// each attempt and each attempt ends within the time it has left, so a
    /// leader's read-decide-write cycle is bounded by its lease.
    ///
    /// # Errors
    ///
    /// As [`current`](Self::current), and [`ScaleError::Fenced`].
    pub async fn current_under(&self, fence: &dyn Fence) -> Result<WorkloadState, ScaleError> {
        self.read(Some(fence)).await
    }

    async fn read(&self, fence: Option<&dyn Fence>) -> Result<WorkloadState, ScaleError> {
        let name = self.config.workload_name();
        let state = match self.known_kind() {
            Some(kind) => match self.get(kind, fence).await {
                Ok(state) => state,
                Err(Failure::Api(ApiError::NotFound(_))) => {
                    self.memory().stale = true;
                    tracing::warn!(
                        "{kind} {name} is gone from namespace {}; detecting the workload again",
                        self.api.namespace()
                    );
                    self.detect_state(fence).await?
                }
                Err(failure) => {
                    return Err(self.error(Operation::GetWorkload(kind), failure));
                }
            },
            None => self.detect_state(fence).await?,
        };
        self.remember(&state);
        let kind = state.kind.label();
        metrics::gauge!("rtc_lb_workload_spec_replicas", "kind" => kind)
            .set(f64::from(state.spec_replicas));
        metrics::gauge!("rtc_lb_workload_ready_replicas", "kind" => kind)
            .set(f64::from(state.ready_replicas));
        Ok(state)
    }

    /// Sets the replicas of the workload `read` describes to `target`,
    /// clamped to `[SOCKET_MIN_REPLICAS, SOCKET_MAX_REPLICAS]`, through its
    /// /scale subresource and on the condition that it is still at
    /// `read.resource_version` (compare-and-swap).
    ///
    /// `fence` is checked right before the write and before every retry.
    /// Timeouts, 5xx and 429 are retried with backoff, bounded by
    /// [`RetryPolicy`](crate::RetryPolicy); a 409 never is: it comes back as
    /// [`ScaleOutcome::Conflict`]. A retry after a timeout whose write did
    /// land also sees 409, which is the safe answer.
    ///
    /// On scale-in of a Deployment, call
    /// [`prepare_scale_in`](Self::prepare_scale_in) first.
    ///
    /// # Errors
    ///
    /// [`ScaleError::Fenced`], [`ScaleError::Gone`] (404),
    /// [`ScaleError::Forbidden`], [`ScaleError::Unavailable`],
    /// [`ScaleError::Rejected`].
    pub async fn scale_to(
        &self,
        read: &WorkloadState,
        target: u32,
        reason: &str,
        fence: &dyn Fence,
    ) -> Result<ScaleOutcome, ScaleError> {
        let span = tracing::info_span!(
            "scale",
            kind = read.kind.as_str(),
            workload = %read.name,
            from = read.spec_replicas,
            target,
        );
        let result = self
            .write_scale(read, target, reason, fence)
            .instrument(span)
            .await;
        let kind = read.kind.label();
        let outcome = match &result {
            Ok(outcome) => outcome.label(),
            Err(error) => {
                metrics::counter!("rtc_lb_workload_scale_errors_total", "kind" => kind, "error" => error.label())
                    .increment(1);
                "error"
            }
        };
        metrics::counter!("rtc_lb_workload_scale_calls_total", "kind" => kind, "outcome" => outcome)
            .increment(1);
        result
    }

    async fn write_scale(
        &self,
        read: &WorkloadState,
        target: u32,
        reason: &str,
        fence: &dyn Fence,
    ) -> Result<ScaleOutcome, ScaleError> {
        let (kind, name, from) = (read.kind, read.name.as_str(), read.spec_replicas);
        let (to, clamped) = self.config.clamp(target);
        if let Some(clamped) = clamped {
            tracing::info!("{kind} {name}: {clamped}");
        }
        if to == from {
            tracing::info!("{kind} {name} already has {from} replicas; nothing to write");
            return Ok(ScaleOutcome::Unchanged {
                kind,
                replicas: from,
                clamped,
            });
        }
        if let Some(claimed) = read.fencing_token {
            let ours = fence.check().map_err(ScaleError::Fenced)?.token;
            if claimed > ours {
                let refused = newer_claim(kind, name, claimed, ours);
                tracing::warn!("Not writing: {refused}");
                return Err(ScaleError::Fenced(refused));
            }
        }
        tracing::info!("Scaling {kind} {name} from {from} to {to} replicas. Reason: {reason}");
        let api = &self.api;
        let version = read.resource_version.as_str();
        let last_token = AtomicU64::new(0);
        let last = &last_token;
        let written = self
            .call(
                kind,
                Operation::UpdateScale(kind),
                Some(fence),
                |token| async move {
                    last.store(token, Ordering::Relaxed);
                    api.replace_scale(kind, name, to, version)
                        .await
                        .map(|now| (now, token))
                },
            )
            .await;
        match written {
            Ok((now, token)) => {
                tracing::info!("Successfully scaled {kind} {name} to {now} replicas");
                Ok(ScaleOutcome::Scaled {
                    kind,
                    from,
                    to: now,
                    clamped,
                    token,
                })
            }
            Err(failure @ (Failure::Api(ApiError::Conflict(_)) | Failure::Exhausted { .. }))
                if self.landed(read, to).await =>
            {
                let why = match failure {
                    Failure::Exhausted { last, .. } => last.to_string(),
                    Failure::Api(e) => e.to_string(),
                    Failure::Fenced(e) => e.to_string(),
                };
                tracing::warn!(
                    "The write of {to} replicas to {kind} {name} landed although its answer was lost ({why}); \
                     a fresh read shows it"
                );
                metrics::counter!("rtc_lb_workload_scale_confirmed_total", "kind" => kind.label())
                    .increment(1);
                Ok(ScaleOutcome::Scaled {
                    kind,
                    from,
                    to,
                    clamped,
                    token: last_token.load(Ordering::Relaxed),
                })
            }
            Err(Failure::Api(ApiError::Conflict(message))) => {
                metrics::counter!("rtc_lb_workload_scale_conflicts_total", "kind" => kind.label())
                    .increment(1);
                tracing::warn!(
                    "Conflict scaling {kind} {name} from {from} to {to}: it changed since \
                     resourceVersion {version} was read ({message}); not overwriting, re-read and re-decide"
                );
                Ok(ScaleOutcome::Conflict { kind, from, to })
            }
            Err(Failure::Api(ApiError::NotFound(_))) => {
                self.memory().stale = true;
                Err(ScaleError::Gone {
                    kind,
                    namespace: self.api.namespace().to_owned(),
                    name: name.to_owned(),
                })
            }
            Err(failure) => Err(self.error(Operation::UpdateScale(kind), failure)),
        }
    }

    /// After an ambiguous end of a /scale write (its answer lost, then a
    /// retry refused with 409 or retries exhausted): whether a fresh read
    /// shows the write landed, that is, the workload moved on from `read`
    /// to exactly `to` replicas without a newer leader's claim.
    async fn landed(&self, read: &WorkloadState, to: u32) -> bool {
        match self.get(read.kind, None).await {
            Ok(now) => {
                now.uid == read.uid
                    && now.resource_version != read.resource_version
                    && now.spec_replicas == to
                    && now.fencing_token == read.fencing_token
            }
            Err(_) => false,
        }
    }

    /// Claims the workload for the fencing token `fence` grants, before
    /// this leader's first scaling write: writes the token into the
    /// [`FENCING_TOKEN_ANNOTATION`] of the workload with its
    /// resourceVersion as the precondition, re-reading on 409.
    ///
    /// From then on, every /scale write an earlier leader prepared fails
    /// with 409 at the API server, however late it arrives: the claim is
    /// the server-side half of the fence. A claim of the same token again is
    /// a no-op.
    ///
    /// # Errors
    ///
    /// [`ScaleError::Fenced`] when the fence refuses, or the workload
    /// already carries a newer token (a later leader claimed it); the
    /// errors of [`current`](Self::current) otherwise.
    pub async fn claim(&self, fence: &dyn Fence) -> Result<WorkloadState, ScaleError> {
        const ATTEMPTS: u32 = 5;
        let mut last = ApiError::Conflict(String::new());
        for _ in 0..ATTEMPTS {
            let permit = fence.check().map_err(ScaleError::Fenced)?;
            let read = self.current_under(fence).await?;
            let (kind, name) = (read.kind, read.name.as_str());
            match read.fencing_token {
                Some(t) if t == permit.token => return Ok(read),
                Some(t) if t > permit.token => {
                    return Err(ScaleError::Fenced(newer_claim(kind, name, t, permit.token)));
                }
                _ => {}
            }
            let api = &self.api;
            let (version, value) = (read.resource_version.as_str(), permit.token.to_string());
            let value = value.as_str();
            let result = self
                .call(
                    kind,
                    Operation::PatchWorkload(kind),
                    Some(fence),
                    |_token| async move {
                        api.annotate_workload(kind, name, FENCING_TOKEN_ANNOTATION, value, version)
                            .await
                    },
                )
                .await;
            match result {
                Ok(resource_version) => {
                    tracing::info!(
                        "Claimed {kind} {name} for fencing token {}: writes prepared by earlier leaders now fail",
                        permit.token
                    );
                    return Ok(WorkloadState {
                        resource_version,
                        fencing_token: Some(permit.token),
                        ..read
                    });
                }
                Err(Failure::Api(conflict @ ApiError::Conflict(_))) => last = conflict,
                // The claim may have landed with its answer lost: the next
                // read shows the token, which returns above.
                Err(Failure::Exhausted { last: error, .. }) => last = error,
                Err(failure) => return Err(self.error(Operation::PatchWorkload(kind), failure)),
            }
        }
        Err(ScaleError::Unavailable {
            operation: Operation::PatchWorkload(
                self.known_kind().unwrap_or(WorkloadKind::Deployment),
            ),
            namespace: self.api.namespace().to_owned(),
            attempts: ATTEMPTS,
            last,
        })
    }

    /// Makes a scale-in by one remove `chosen` where the workload allows it,
    /// and says which pod will actually go.
    ///
    /// - **Deployment**: writes `controller.kubernetes.io/pod-deletion-cost`
    ///   on every active pod with merge patches (the chosen pod
    ///   [`VICTIM_COST`], every other pod its load from `loads`, typically
    ///   active connections, or `i32::MAX` when it has no report), skipping
    ///   pods that already carry the right value, then waits until every
    ///   value is visible in a fresh list. Unscheduled, pending and
    ///   not-ready pods still go before any cost is looked at: the plan
    ///   names such a pod as the victim, with the reason.
    /// - **StatefulSet**: writes nothing. The StatefulSet controller ignores
    ///   deletion cost and removes the highest ordinal, so the plan names
    ///   `<name>-<replicas-1>`.
    ///
    /// `fence` is checked before every patch. Pod patches do not change the
    /// workload's resourceVersion, so `read` stays valid for the
    /// [`scale_to`](Self::scale_to) that follows.
    ///
    /// # Errors
    ///
    /// [`ScaleError::UnknownVictim`] when `chosen` is not an active pod,
    /// [`ScaleError::AnnotationNotVisible`] when the costs do not show in
    /// time, [`ScaleError::NothingToRemove`] at zero replicas, and the
    /// request errors of [`scale_to`](Self::scale_to).
    pub async fn prepare_scale_in(
        &self,
        read: &WorkloadState,
        chosen: &str,
        loads: &BTreeMap<String, u64>,
        fence: &dyn Fence,
    ) -> Result<ScaleInPlan, ScaleError> {
        let span = tracing::info_span!(
            "prepare_scale_in",
            kind = read.kind.as_str(),
            workload = %read.name,
            chosen,
        );
        match read.kind {
            WorkloadKind::StatefulSet => self.stateful_set_plan(read, chosen),
            WorkloadKind::Deployment => {
                self.deployment_plan(read, chosen, loads, fence)
                    .instrument(span)
                    .await
            }
        }
    }

    fn stateful_set_plan(
        &self,
        read: &WorkloadState,
        chosen: &str,
    ) -> Result<ScaleInPlan, ScaleError> {
        let (kind, name) = (read.kind, read.name.as_str());
        let victim = victim::stateful_set_victim(name, read.spec_replicas).ok_or_else(|| {
            ScaleError::NothingToRemove {
                kind,
                name: name.to_owned(),
            }
        })?;
        let overridden = (victim != chosen).then_some(Override::TopOrdinal);
        if overridden.is_some() {
            tracing::warn!(
                "{kind} {name} removes its highest ordinal: {victim} will go, not the chosen {chosen} \
                 (StatefulSets ignore pod-deletion-cost)"
            );
        } else {
            tracing::info!("{kind} {name} will remove {victim}, its highest ordinal");
        }
        Ok(ScaleInPlan {
            kind,
            chosen: chosen.to_owned(),
            victim,
            overridden,
            costs: BTreeMap::new(),
            patched: 0,
        })
    }

    async fn deployment_plan(
        &self,
        read: &WorkloadState,
        chosen: &str,
        loads: &BTreeMap<String, u64>,
        fence: &dyn Fence,
    ) -> Result<ScaleInPlan, ScaleError> {
        let (kind, name) = (read.kind, read.name.as_str());
        let unknown_victim = || ScaleError::UnknownVictim {
            pod: chosen.to_owned(),
            kind,
            name: name.to_owned(),
        };
        let pods = self.list_pods(kind, &read.selector).await?;
        let costs = victim::deletion_costs(&pods, chosen, loads).ok_or_else(unknown_victim)?;

        let mut patched = 0;
        for pod in pods.iter().filter(|p| !p.terminating) {
            let Some(cost) = costs.get(&pod.name) else {
                continue;
            };
            let value = cost.to_string();
            if pod.deletion_cost.as_deref() == Some(value.as_str()) {
                continue;
            }
            let result = self
                .patch_cost(kind, pod, &value, &read.selector, fence)
                .await;
            match result {
                Ok(()) => {
                    patched += 1;
                    metrics::counter!("rtc_lb_workload_deletion_cost_patches_total", "kind" => kind.label())
                        .increment(1);
                }
                // A pod that went away needs no cost; the chosen one must stay.
                Err(Failure::Api(ApiError::NotFound(_))) if pod.name != chosen => {}
                Err(Failure::Api(ApiError::NotFound(_))) => return Err(unknown_victim()),
                Err(failure) => return Err(self.error(Operation::PatchPod, failure)),
            }
        }

        let seen = self.wait_visible(read, chosen, &costs).await?;
        let (victim, overridden) =
            victim::replica_set_victim(&seen, &costs, chosen).ok_or_else(unknown_victim)?;
        tracing::info!(
            "Set pod-deletion-cost on {patched} of {} pods of {kind} {name}; {chosen} has the lowest ({VICTIM_COST})",
            costs.len()
        );
        if let Some(why) = overridden {
            tracing::warn!(
                "{kind} {name} will remove {victim}, not the chosen {chosen}: {}",
                why.describe()
            );
        }
        Ok(ScaleInPlan {
            kind,
            chosen: chosen.to_owned(),
            victim: victim.to_owned(),
            overridden,
            costs,
            patched,
        })
    }

    /// Writes one deletion cost with the pod's resourceVersion as the
    /// precondition; on 409 (the kubelet or a controller updated the pod
    /// since it was listed) lists again and retries with the fresh version.
    async fn patch_cost(
        &self,
        kind: WorkloadKind,
        pod: &PodState,
        value: &str,
        selector: &str,
        fence: &dyn Fence,
    ) -> Result<(), Failure> {
        const ATTEMPTS: u32 = 4;
        let api = &self.api;
        let pod_name = pod.name.as_str();
        let mut version = pod.resource_version.clone();
        for attempt in 1..=ATTEMPTS {
            let v = version.as_str();
            let result = self
                .call(
                    kind,
                    Operation::PatchPod,
                    Some(fence),
                    |_token| async move {
                        api.patch_pod_annotation(pod_name, DELETION_COST_ANNOTATION, value, v)
                            .await
                    },
                )
                .await;
            match result {
                Err(Failure::Api(ApiError::Conflict(message))) if attempt < ATTEMPTS => {
                    tracing::debug!(
                        "pod {pod_name} changed since it was listed ({message}); listing again"
                    );
                    let pods = self
                        .call(kind, Operation::ListPods, None, |_token| async move {
                            api.list_pods(selector).await
                        })
                        .await?;
                    match pods.into_iter().find(|p| p.name == pod_name) {
                        Some(fresh) if fresh.deletion_cost.as_deref() == Some(value) => {
                            return Ok(());
                        }
                        Some(fresh) => version = fresh.resource_version,
                        None => {
                            return Err(Failure::Api(ApiError::NotFound(format!(
                                "pod {pod_name} is gone"
                            ))));
                        }
                    }
                }
                other => return other,
            }
        }
        Err(Failure::Api(ApiError::Conflict(format!(
            "pod {pod_name} kept changing while its deletion cost was written"
        ))))
    }

    /// Lists the pods until every written cost shows, so the ReplicaSet
    /// controller (which reads through the same API) cannot act on old values.
    async fn wait_visible(
        &self,
        read: &WorkloadState,
        chosen: &str,
        costs: &BTreeMap<String, i32>,
    ) -> Result<Vec<PodState>, ScaleError> {
        let timeout = self.config.annotation_visibility_timeout;
        let started = tokio::time::Instant::now();
        let polls = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut attempt = 0;
        loop {
            let pods = self.list_pods(read.kind, &read.selector).await?;
            let missing = costs.iter().find(|(pod, cost)| {
                match pods.iter().find(|p| &p.name == *pod && !p.terminating) {
                    Some(p) => p.deletion_cost.as_deref() != Some(cost.to_string().as_str()),
                    // Gone since: only the chosen pod matters.
                    None => pod.as_str() == chosen,
                }
            });
            let Some((pod, &cost)) = missing else {
                return Ok(pods);
            };
            if !pods.iter().any(|p| p.name == chosen && !p.terminating) {
                return Err(ScaleError::UnknownVictim {
                    pod: chosen.to_owned(),
                    kind: read.kind,
                    name: read.name.clone(),
                });
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(ScaleError::AnnotationNotVisible {
                    pod: pod.clone(),
                    cost,
                    waited,
                });
            }
            attempt += 1;
            tokio::time::sleep(polls.delay(attempt).min(timeout.saturating_sub(waited))).await;
        }
    }

    async fn list_pods(
        &self,
        kind: WorkloadKind,
        selector: &str,
    ) -> Result<Vec<PodState>, ScaleError> {
        let api = &self.api;
        self.call(kind, Operation::ListPods, None, |_token| async move {
            api.list_pods(selector).await
        })
        .await
        .map_err(|failure| self.error(Operation::ListPods, failure))
    }

    async fn get(
        &self,
        kind: WorkloadKind,
        fence: Option<&dyn Fence>,
    ) -> Result<WorkloadState, Failure> {
        let api = &self.api;
        let name = self.config.workload_name();
        self.call(
            kind,
            Operation::GetWorkload(kind),
            fence,
            |_token| async move { api.get_workload(kind, name).await },
        )
        .await
    }

    async fn detect_state(&self, fence: Option<&dyn Fence>) -> Result<WorkloadState, ScaleError> {
        let mut found = Vec::with_capacity(2);
        for kind in WorkloadKind::ALL {
            match self.get(kind, fence).await {
                Ok(state) => found.push(state),
                Err(Failure::Api(ApiError::NotFound(_))) => {}
                Err(failure) => return Err(self.error(Operation::GetWorkload(kind), failure)),
            }
        }
        let namespace = self.api.namespace().to_owned();
        let name = self.config.workload_name().to_owned();
        match found.len() {
            0 => {
                tracing::error!(
                    "No Deployment or StatefulSet named {name} in namespace {namespace}"
                );
                Err(ScaleError::NotFound { namespace, name })
            }
            1 => Ok(found.remove(0)),
            _ => {
                tracing::error!(
                    "Both a Deployment and a StatefulSet are named {name} in namespace {namespace}; refusing to guess"
                );
                Err(ScaleError::Ambiguous { namespace, name })
            }
        }
    }

    fn known_kind(&self) -> Option<WorkloadKind> {
        let memory = self.memory();
        match (&memory.seen, memory.stale) {
            (Some((kind, _)), false) => Some(*kind),
            _ => None,
        }
    }

    fn remember(&self, state: &WorkloadState) {
        let mut memory = self.memory();
        let (kind, name, uid) = (state.kind, &state.name, &state.uid);
        match &memory.seen {
            None => tracing::info!(
                "Detected {kind} {name} in namespace {} (uid {uid})",
                self.api.namespace()
            ),
            Some((old_kind, old_uid)) if *old_kind != kind || old_uid != uid => tracing::info!(
                "Workload {name} was replaced: now {kind} (uid {uid}), was {old_kind} (uid {old_uid})"
            ),
            Some(_) if memory.stale => tracing::info!("{kind} {name} is back (uid {uid})"),
            Some(_) => {}
        }
        memory.seen = Some((kind, uid.clone()));
        memory.stale = false;
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        // Never held across an await; a panic while held leaves nothing half-done.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one request with the request timeout, checking `fence` before
    /// each attempt and retrying transient failures with backoff.
    async fn call<T, F, Fut>(
        &self,
        kind: WorkloadKind,
        operation: Operation,
        fence: Option<&dyn Fence>,
        mut attempt: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let policy = self.config.retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let permit = match fence.map(|f| f.check()).transpose() {
                Ok(permit) => permit.unwrap_or(Permit::unbounded(0)),
                Err(refused) => {
                    tracing::warn!("Not writing ({operation}): {refused}");
                    return Err(Failure::Fenced(refused));
                }
            };
            // A write must end while the lease is still ours: its timeout is
            // the request timeout or the time the fence has left, whichever
            // is shorter. What the server still applies later, the claim of
            // the next leader turns into a 409.
            let budget = policy.request_timeout.min(permit.remaining);
            let result = tokio::time::timeout(budget, attempt(permit.token))
                .await
                .unwrap_or(Err(ApiError::Timeout(budget)));
            let error = match result {
                Ok(value) => {
                    self.memory().forbidden.retain(|op| *op != operation);
                    return Ok(value);
                }
                Err(error) => error,
            };
            metrics::counter!(
                "rtc_lb_workload_api_errors_total",
                "kind" => kind.label(),
                "operation" => operation.label(),
                "error" => error.label(),
            )
            .increment(1);
            if !error.is_transient() {
                return Err(Failure::Api(error));
            }
            if attempts >= max_attempts {
                return Err(Failure::Exhausted {
                    attempts,
                    last: error,
                });
            }
            let wait = policy.backoff.delay(attempts);
            metrics::counter!(
                "rtc_lb_workload_api_retries_total",
                "kind" => kind.label(),
                "operation" => operation.label(),
            )
            .increment(1);
            tracing::warn!(
                "{operation} failed (attempt {attempts} of {max_attempts}): {error}; retrying in {wait:?}"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn error(&self, operation: Operation, failure: Failure) -> ScaleError {
        let namespace = self.api.namespace().to_owned();
        match failure {
            Failure::Fenced(refused) => ScaleError::Fenced(refused),
            Failure::Exhausted { attempts, last } => ScaleError::Unavailable {
                operation,
                namespace,
                attempts,
                last,
            },
            Failure::Api(ApiError::Forbidden(message)) => {
                let first = {
                    let mut memory = self.memory();
                    let first = !memory.forbidden.contains(&operation);
                    if first {
                        memory.forbidden.push(operation);
                    }
                    first
                };
                let error = ScaleError::Forbidden {
                    operation,
                    namespace,
                    message,
                };
                if first {
                    tracing::error!("{error}");
                } else {
                    tracing::debug!("{error}");
                }
                error
            }
            Failure::Api(ApiError::NotFound(_)) => match operation {
                Operation::GetWorkload(kind)
                | Operation::UpdateScale(kind)
                | Operation::PatchWorkload(kind) => ScaleError::Gone {
                    kind,
                    namespace,
                    name: self.config.workload_name().to_owned(),
                },
                Operation::ListPods | Operation::PatchPod => ScaleError::Rejected {
                    operation,
                    namespace,
                    error: ApiError::NotFound(String::new()),
                },
            },
            Failure::Api(error) => ScaleError::Rejected {
                operation,
                namespace,
                error,
            },
        }
    }
}
