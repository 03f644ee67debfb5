//! deploy/k8s is accepted by the local stack's real control plane (with the
//! KEDA CRDs the stack installs, so the ScaledObject too), and its settings
//! are ones the binaries know.

use kube::api::{DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn manifests() -> Result<Vec<(PathBuf, serde_json::Value)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let values: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        for v in values.into_iter().filter(|v| !v.is_null()) {
            docs.push((file.clone(), v));
        }
    }
    Ok(docs)
}

fn gvk(v: &serde_json::Value) -> Result<GroupVersionKind> {
    let api_version = v["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = v["kind"].as_str().ok_or("no kind")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

#[tokio::test]
async fn every_object_is_accepted_by_the_api_server() -> Result {
    let ns = rtc_testkit::kubernetes().await?;
    let client = ns.client().clone();
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut created = 0;
    for (file, mut doc) in manifests()? {
        let gvk = gvk(&doc)?;
        let id = format!("{}/{}", doc["apiVersion"].as_str().unwrap_or(""), gvk.kind);
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| format!("{}: {id} is not served", file.display()))?;
        if gvk.kind == "Namespace" {
            assert_eq!(doc["metadata"]["name"], "rtc");
            continue;
        }
        assert_eq!(caps.scope, Scope::Namespaced, "{}: {id}", file.display());
        // Everything goes into the test's own namespace, with subjects too.
        doc["metadata"]["namespace"] = ns.name().into();
        if let Some(subjects) = doc["subjects"].as_array_mut() {
            for s in subjects {
                s["namespace"] = ns.name().into();
            }
        }
        let object: DynamicObject = serde_json::from_value(doc)?;
        let api = kube::Api::<DynamicObject>::namespaced_with(client.clone(), ns.name(), &resource);
        api.create(&PostParams::default(), &object)
            .await
            .map_err(|e| {
                format!(
                    "{}: {id} {:?} refused: {e}",
                    file.display(),
                    object.metadata.name
                )
            })?;
        created += 1;
    }
    assert!(created >= 16, "created {created} objects");
    ns.cleanup().await?;
    Ok(())
}

/// The operator's command, `kubectl apply --server-side -f deploy/k8s`,
/// against the stack, where the namespace and RBAC of deploy/k8s already
/// exist (the stack applies them). Everything else it created is deleted
/// again, so the fleet it describes (whose Redis and Kafka addresses exist
/// only in a cluster) does not keep running on the stack.
#[test]
fn kubectl_apply_server_side_of_deploy_k8s_succeeds() -> Result {
    let kubeconfig = rtc_testkit::Endpoints::from_env().kubeconfig;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s");
    let kubectl = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .map_err(|e| format!("kubectl: {e} (install kubectl 1.32 or newer)"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "kubectl {args:?}: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into())
        }
    };
    let dir = dir.to_str().ok_or("deploy/k8s path is not UTF-8")?;
    let apply = [
        "apply",
        "--server-side",
        "--field-manager",
        "rtc-test",
        "-f",
        dir,
    ];
    let applied = kubectl(&apply);
    // The load-balancer scales through /scale; the operator applies the
    // manifests again: the scaling must survive (the manifest leaves
    // spec.replicas out, so the applier never owns it).
    let reapplied = applied.as_ref().map_err(|e| e.to_string()).and_then(|_| {
        kubectl(&["-n", "rtc", "scale", "deployment/socket", "--replicas=5"])
            .and_then(|_| kubectl(&apply))
            .and_then(|_| {
                kubectl(&[
                    "-n",
                    "rtc",
                    "get",
                    "deployment/socket",
                    "-o",
                    "jsonpath={.spec.replicas}",
                ])
            })
            .map_err(|e| e.to_string())
    });
    // Everything but the namespace and RBAC goes again, whatever the outcome.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with("00-") && !name.starts_with("01-")
        })
        .collect();
    files.sort();
    let mut delete = vec!["delete", "--ignore-not-found", "--wait=false"];
    for f in &files {
        delete.push("-f");
        delete.push(f.to_str().ok_or("path is not UTF-8")?);
    }
    let deleted = kubectl(&delete);
    let applied = applied?;
    let replicas_after_reapply = reapplied?;
    deleted?;
    assert_eq!(
        replicas_after_reapply.trim(),
        "5",
        "applying deploy/k8s again must not reset the load-balancer's scaling"
    );
    for object in [
        "deployment.apps/socket serverside-applied",
        "deployment.apps/load-balancer serverside-applied",
        "scaledobject.keda.sh/socket-backup serverside-applied",
    ] {
        assert!(applied.contains(object), "{object} not in\n{applied}");
    }
    Ok(())
}

#[test]
fn every_configured_key_is_a_setting_of_a_binary() -> Result {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_load-balancer"))
        .args(["run", "--help"])
        .output()?;
    let mut known: BTreeSet<String> = String::from_utf8(help.stdout)?
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next().map(str::to_owned))
        .collect();
    assert!(known.contains("SOCKET_WORKLOAD_NAME"), "{known:?}");
    let socket_config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../socket-node/src/args.rs"),
    )?;
    known.extend(
        socket_config
            .split("env = \"")
            .skip(1)
            .filter_map(|s| s.split('"').next().map(str::to_owned)),
    );
    assert!(known.contains("DRAIN_TIMEOUT"), "{known:?}");
    let mut checked = 0;
    for (file, doc) in manifests()? {
        if doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "rtc-config" {
            for key in doc["data"].as_object().ok_or("no data")?.keys() {
                assert!(
                    known.contains(key),
                    "{}: {key} is no setting of either binary",
                    file.display()
                );
                checked += 1;
            }
        }
        for container in doc["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for env in container["env"].as_array().into_iter().flatten() {
                let key = env["name"].as_str().ok_or("env without name")?;
                assert!(
                    known.contains(key) || key.starts_with("GF_"),
                    "{}: {key}",
                    file.display()
                );
            }
        }
    }
    assert!(checked > 10, "checked {checked} keys");
    Ok(())
}
