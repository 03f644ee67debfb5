//! An in-memory [`WorkloadApi`] with fault injection, for tests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{MutexGuard, PoisonError};

use crate::FENCING_TOKEN_ANNOTATION;
use crate::api::{ApiError, PodState, WorkloadApi, WorkloadKind, WorkloadState};
use crate::victim::DELETION_COST_ANNOTATION;

/// The requests of [`WorkloadApi`], to aim faults and count calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// [`WorkloadApi::get_workload`].
    GetWorkload,
    /// [`WorkloadApi::replace_scale`].
    ReplaceScale,
    /// [`WorkloadApi::list_pods`].
    ListPods,
    /// [`WorkloadApi::patch_pod_annotation`].
    PatchPod,
    /// [`WorkloadApi::annotate_workload`].
    AnnotateWorkload,
}

/// A fault the next call of a [`Method`] meets instead of being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The call never answers (the scaler's request timeout cuts it off).
    Hang,
    /// The call fails with this error.
    Fail(ApiError),
    /// The request is applied, then its answer is lost: the caller sees
    /// this error although the write landed.
    LandThenFail(ApiError),
}

impl Fault {
    /// A failure with an HTTP status code, classified as the real API's would be.
    pub fn status(code: u16) -> Self {
        Self::Fail(ApiError::from_status(code, format!("injected {code}")))
    }
}

/// An in-memory namespace: workloads, pods of the (one) workload, and a
/// queue of faults. Writes bump a resourceVersion as the API server does, and
/// a /scale write with an old one fails with [`ApiError::Conflict`].
/// `list_pods` ignores the selector: every pod belongs to the workload.
#[derive(Debug)]
#[expect(
    clippy::disallowed_types,
    reason = "the namespace is locked only in sync code, never across an .await"
)]
pub struct FakeWorkloadApi {
    namespace: String,
    state: std::sync::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    workloads: BTreeMap<(String, String), WorkloadState>,
    pods: BTreeMap<String, PodState>,
    faults: VecDeque<(Method, Fault)>,
    calls: Vec<Method>,
    version: u64,
}

impl State {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    /// The workload to write, with the version the write gives it, if it
    /// exists and is still at `resource_version` (the API's precondition).
    fn write_workload(
        &mut self,
        kind: WorkloadKind,
        name: &str,
        resource_version: &str,
    ) -> Result<(&mut WorkloadState, String), ApiError> {
        let version = self.next_version();
        let workload = self
            .workloads
            .get_mut(&key(kind, name))
            .ok_or_else(|| ApiError::NotFound(format!("{kind} {name:?} not found")))?;
        if workload.resource_version != resource_version {
            return Err(ApiError::Conflict(format!(
                "the object has been modified (at {}, not {resource_version})",
                workload.resource_version
            )));
        }
        Ok((workload, version))
    }
}

fn key(kind: WorkloadKind, name: &str) -> (String, String) {
    (kind.as_str().to_owned(), name.to_owned())
}

impl FakeWorkloadApi {
    /// An empty namespace.
    #[expect(
        clippy::disallowed_types,
        reason = "makes the namespace lock, taken only in sync code"
    )]
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            state: std::sync::Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates (or replaces, with a new uid) a workload with `replicas`, all ready.
    pub fn put_workload(&self, kind: WorkloadKind, name: &str, replicas: u32) {
        let mut state = self.state();
        let version = state.next_version();
        let workload = WorkloadState {
            kind,
            name: name.to_owned(),
            uid: format!("uid-{version}"),
            resource_version: version,
            spec_replicas: replicas,
            ready_replicas: replicas,
            selector: format!("app={name}"),
            fencing_token: None,
        };
        state.workloads.insert(key(kind, name), workload);
    }

    /// Deletes a workload.
    pub fn delete_workload(&self, kind: WorkloadKind, name: &str) {
        self.state().workloads.remove(&key(kind, name));
    }

    /// Another writer sets the replicas (bumping the resourceVersion).
    pub fn set_replicas(&self, kind: WorkloadKind, name: &str, replicas: u32) {
        let mut state = self.state();
        let version = state.next_version();
        if let Some(w) = state.workloads.get_mut(&key(kind, name)) {
            w.spec_replicas = replicas;
            w.resource_version = version;
        }
    }

    /// The workload as stored.
    pub fn workload(&self, kind: WorkloadKind, name: &str) -> Option<WorkloadState> {
        self.state().workloads.get(&key(kind, name)).cloned()
    }

    /// Adds or replaces a pod.
    pub fn put_pod(&self, pod: PodState) {
        self.state().pods.insert(pod.name.clone(), pod);
    }

    /// A pod as stored.
    pub fn pod(&self, name: &str) -> Option<PodState> {
        self.state().pods.get(name).cloned()
    }

    /// Moves a pod's resourceVersion, as a kubelet status update does.
    pub fn touch_pod(&self, name: &str) {
        let mut state = self.state();
        let version = state.next_version();
        if let Some(pod) = state.pods.get_mut(name) {
            pod.resource_version = version;
        }
    }

    /// The next call of `method` meets `fault`. Faults queue up in order.
    pub fn inject(&self, method: Method, fault: Fault) {
        self.state().faults.push_back((method, fault));
    }

    /// How many times `method` was called, faults included.
    pub fn calls(&self, method: Method) -> usize {
        self.state().calls.iter().filter(|m| **m == method).count()
    }

    /// Records the call and takes the first fault queued for `method`.
    fn enter(&self, method: Method) -> Option<Fault> {
        let mut state = self.state();
        state.calls.push(method);
        let at = state.faults.iter().position(|(m, _)| *m == method)?;
        state.faults.remove(at).map(|(_, fault)| fault)
    }

    async fn serve<T>(
        &self,
        method: Method,
        serve: impl FnOnce(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match self.enter(method) {
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Fail(error)) => Err(error),
            Some(Fault::LandThenFail(error)) => serve(&mut self.state()).and(Err(error)),
            None => serve(&mut self.state()),
        }
    }
}

impl WorkloadApi for FakeWorkloadApi {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn get_workload(
        &self,
        kind: WorkloadKind,
        name: &str,
    ) -> Result<WorkloadState, ApiError> {
        self.serve(Method::GetWorkload, |state| {
            state
                .workloads
                .get(&key(kind, name))
                .cloned()
                .ok_or_else(|| ApiError::NotFound(format!("{kind} {name:?} not found")))
        })
        .await
    }

    async fn replace_scale(
        &self,
        kind: WorkloadKind,
        name: &str,
        replicas: u32,
        resource_version: &str,
    ) -> Result<u32, ApiError> {
        self.serve(Method::ReplaceScale, |state| {
            let (workload, version) = state.write_workload(kind, name, resource_version)?;
            workload.spec_replicas = replicas;
            workload.resource_version = version;
            Ok(replicas)
        })
        .await
    }

    async fn list_pods(&self, _selector: &str) -> Result<Vec<PodState>, ApiError> {
        self.serve(Method::ListPods, |state| {
            Ok(state.pods.values().cloned().collect())
        })
        .await
    }

    async fn patch_pod_annotation(
        &self,
        pod: &str,
        key: &str,
        value: &str,
        resource_version: &str,
    ) -> Result<(), ApiError> {
        self.serve(Method::PatchPod, |state| {
            let version = state.next_version();
            let stored = state
                .pods
                .get_mut(pod)
                .ok_or_else(|| ApiError::NotFound(format!("pod {pod:?} not found")))?;
            if stored.resource_version != resource_version {
                return Err(ApiError::Conflict(format!(
                    "pod {pod} has been modified (at {:?}, not {resource_version:?})",
                    stored.resource_version
                )));
            }
            if key == DELETION_COST_ANNOTATION {
                stored.deletion_cost = Some(value.to_owned());
            }
            stored.resource_version = version;
            Ok(())
        })
        .await
    }

    async fn annotate_workload(
        &self,
        kind: WorkloadKind,
        name: &str,
        key_: &str,
        value: &str,
        resource_version: &str,
    ) -> Result<String, ApiError> {
        self.serve(Method::AnnotateWorkload, |state| {
            let (workload, version) = state.write_workload(kind, name, resource_version)?;
            if key_ == FENCING_TOKEN_ANNOTATION {
                workload.fencing_token = value.parse().ok();
            }
            workload.resource_version = version.clone();
            Ok(version)
        })
        .await
    }
}
