//! Installing the fleet: the local overlay of deploy/k8s rendered by
//! `kubectl kustomize`, pointed at the stack's Redis and broker, applied
//! with `kubectl apply --server-side`; and removing it again.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Installing or removing the fleet failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// kubectl could not run or failed.
    #[error("{what}: {message}")]
    Kubectl {
        /// What it was asked to do.
        what: String,
        /// Its error output, or why it could not start.
        message: String,
    },
    /// The rendered manifests are not what the demo runs.
    #[error("the manifests of {overlay}: {message}")]
    Manifests {
        /// The overlay.
        overlay: String,
        /// What is wrong.
        message: String,
    },
    /// The API server refused or failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was asked.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// The namespace of an earlier run did not go away.
    #[error(
        "namespace {0} is still being deleted after 3 minutes; run the demo again once `kubectl get namespace {0}` no longer finds it"
    )]
    NamespaceStuck(String),
}

/// What the fleet is pointed at and how the socket workload runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// The namespace (the overlay's).
    pub namespace: String,
    /// The stack's Redis.
    pub redis_url: String,
    /// The stack's broker.
    pub kafka_bootstrap: String,
    /// Prefix of this run's Redis keys and delivery topics.
    pub prefix: String,
    /// Run the socket workload as a StatefulSet instead of a Deployment.
    pub statefulset: bool,
    /// Keys of the ConfigMap rtc-config set over the overlay's.
    pub settings: std::collections::BTreeMap<String, String>,
}

/// Runs kubectl with `args`, feeding it `input`; its standard output.
async fn kubectl(args: &[&str], input: Option<&[u8]>, what: &str) -> Result<Vec<u8>, FleetError> {
    let failed = |message: String| FleetError::Kubectl {
        what: what.to_owned(),
        message,
    };
    let mut child = tokio::process::Command::new("kubectl")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            failed(format!(
                "cannot run kubectl ({e}); install kubectl 1.30 or later"
            ))
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input)
            .await
            .map_err(|e| failed(format!("writing to kubectl: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("waiting for kubectl: {e}")))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(out.stdout)
}

/// The documents of `overlay`, rendered by `kubectl kustomize`.
///
/// # Errors
///
/// [`FleetError`] when kubectl fails or its output is not YAML.
pub async fn render(overlay: &Path) -> Result<Vec<Value>, FleetError> {
    let dir = overlay.display().to_string();
    let text = kubectl(&["kustomize", &dir], None, &format!("rendering {dir}")).await?;
    let text = String::from_utf8_lossy(&text);
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| FleetError::Manifests {
            overlay: dir.clone(),
            message: format!("not YAML: {e}"),
        })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Whether `doc` is the object `kind`/`name`.
pub fn is(doc: &Value, kind: &str, name: &str) -> bool {
    doc["kind"] == kind && doc["metadata"]["name"] == name
}

/// The rendered documents, made ready for the stack: the shared ConfigMap
/// points at the stack's Redis and broker under this run's prefix; the
/// socket Deployment becomes a StatefulSet when asked; workloads of images
/// the node agents do not run (the monitoring stack) are left out.
///
/// # Errors
///
/// [`FleetError::Manifests`] when the ConfigMap or the socket workload is
/// missing.
pub fn prepare(
    docs: Vec<Value>,
    target: &Target,
    overlay: &Path,
) -> Result<Vec<Value>, FleetError> {
    let missing = |what: &str| FleetError::Manifests {
        overlay: overlay.display().to_string(),
        message: format!("{what} is missing"),
    };
    let mut out = Vec::new();
    let mut config = false;
    let mut socket = false;
    for mut doc in docs {
        if is(&doc, "ConfigMap", "rtc-config") {
            let data = &mut doc["data"];
            data["REDIS_URL"] = target.redis_url.clone().into();
            data["KAFKA_BOOTSTRAP"] = target.kafka_bootstrap.clone().into();
            data["HEARTBEAT_PREFIX"] = format!("{}:hb:", target.prefix).into();
            data["RELAY_PREFIX"] = format!("{}:relay:", target.prefix).into();
            data["DELIVERY_TOPIC_PREFIX"] = format!("{}.deliver.", target.prefix).into();
            data["DECISION_STATE_KEY"] = format!("{}:lb:state", target.prefix).into();
            for (key, value) in &target.settings {
                data[key.as_str()] = value.clone().into();
            }
            config = true;
        }
        if is(&doc, "Deployment", "socket") {
            socket = true;
            if target.statefulset {
                doc = statefulset_of(doc);
            }
        }
        let runnable = doc["spec"]["template"]["spec"]["containers"]
            .as_array()
            .is_none_or(|cs| {
                cs.iter()
                    .all(|c| c["image"].as_str().is_some_and(|i| i.starts_with("rtc/")))
            });
        if runnable {
            out.push(doc);
        }
    }
    if !config {
        return Err(missing("the ConfigMap rtc-config"));
    }
    if !socket {
        return Err(missing("the Deployment socket"));
    }
    Ok(out)
}

/// The socket Deployment as a StatefulSet of the same template: pods
/// `socket-0`, `socket-1`, ..., started and removed in parallel, the top
/// ordinal going first on scale-in.
pub fn statefulset_of(deployment: Value) -> Value {
    let mut sts = deployment;
    sts["kind"] = "StatefulSet".into();
    if let Some(spec) = sts["spec"].as_object_mut() {
        spec.remove("strategy");
        spec.remove("progressDeadlineSeconds");
        spec.insert("serviceName".into(), "socket".into());
        spec.insert("podManagementPolicy".into(), "Parallel".into());
    }
    sts
}

/// Applies `docs` with `kubectl apply --server-side`.
///
/// # Errors
///
/// [`FleetError::Kubectl`] with kubectl's message.
pub async fn apply(docs: &[Value]) -> Result<(), FleetError> {
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": docs });
    kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=rtc-demo",
            "-f",
            "-",
        ],
        Some(list.to_string().as_bytes()),
        "kubectl apply of the fleet",
    )
    .await?;
    Ok(())
}

/// Deletes `namespace` if it exists and waits until it is gone (its pods
/// drain first).
///
/// # Errors
///
/// [`FleetError`] when the API server fails, or the namespace is still
/// there after three minutes.
pub async fn remove(client: &kube::Client, namespace: &str) -> Result<(), FleetError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let kube = |what: &str| {
        let what = what.to_owned();
        move |source| FleetError::Kube { what, source }
    };
    match namespaces
        .delete(namespace, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(kube(&format!("deleting namespace {namespace}"))(e)),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while tokio::time::Instant::now() < deadline {
        if namespaces
            .get_opt(namespace)
            .await
            .map_err(kube(&format!("reading namespace {namespace}")))?
            .is_none()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(FleetError::NamespaceStuck(namespace.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(statefulset: bool) -> Target {
        Target {
            namespace: "rtc".into(),
            redis_url: "redis://127.0.0.1:1".into(),
            kafka_bootstrap: "127.0.0.1:2".into(),
            prefix: "demo-1".into(),
            statefulset,
            settings: [("REBALANCE".to_owned(), "false".to_owned())].into(),
        }
    }

    fn docs() -> Vec<Value> {
        vec![
            json!({"kind": "ConfigMap", "metadata": {"name": "rtc-config"}, "data": {"REDIS_URL": "redis://redis.rtc.svc:6379"}}),
            json!({"kind": "Deployment", "metadata": {"name": "socket"}, "spec": {"strategy": {}, "template": {"spec": {"containers": [{"image": "rtc/socket-node:0.1.0"}]}}}}),
            json!({"kind": "Deployment", "metadata": {"name": "grafana"}, "spec": {"template": {"spec": {"containers": [{"image": "grafana/grafana:11"}]}}}}),
            json!({"kind": "Role", "metadata": {"name": "load-balancer"}}),
        ]
    }

    #[test]
    fn the_fleet_points_at_the_stack_and_leaves_out_what_the_agents_cannot_run()
    -> Result<(), FleetError> {
        let out = prepare(docs(), &target(false), Path::new("o"))?;
        let names: Vec<_> = out.iter().map(|d| d["metadata"]["name"].clone()).collect();
        assert_eq!(
            names,
            [json!("rtc-config"), json!("socket"), json!("load-balancer")]
        );
        assert_eq!(out[0]["data"]["REDIS_URL"], "redis://127.0.0.1:1");
        assert_eq!(out[0]["data"]["KAFKA_BOOTSTRAP"], "127.0.0.1:2");
        assert_eq!(out[0]["data"]["RELAY_PREFIX"], "demo-1:relay:");
        assert_eq!(
            out[0]["data"]["REBALANCE"], "false",
            "--set overrides the overlay"
        );
        assert_eq!(out[1]["kind"], "Deployment");
        Ok(())
    }

    #[test]
    fn the_socket_workload_can_be_a_statefulset() -> Result<(), FleetError> {
        let out = prepare(docs(), &target(true), Path::new("o"))?;
        let sts = &out[1];
        assert_eq!(sts["kind"], "StatefulSet");
        assert_eq!(sts["spec"]["serviceName"], "socket");
        assert!(sts["spec"].get("strategy").is_none());
        Ok(())
    }

    #[test]
    fn missing_pieces_are_named() {
        let err = prepare(docs()[1..].to_vec(), &target(false), Path::new("deploy/x"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("the manifests of deploy/x: the ConfigMap rtc-config is missing")
        );
    }
}
