//! The kustomize base deploy/k8s/base is accepted by the local stack's real
//! control plane (with the KEDA CRDs the stack installs, so the
//! ScaledObject too), `kubectl apply -k` of it and of each overlay
//! succeeds, and its settings are ones the binaries know.

use kube::api::{DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/base")
}

/// The files of the base, as its kustomization.yaml lists them: what
/// `kubectl apply -k` installs.
fn base_files() -> Result<Vec<PathBuf>> {
    let dir = base();
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let kustomization: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let files: Vec<PathBuf> = kustomization["resources"]
        .as_array()
        .ok_or_else(|| format!("{}: no resources list", path.display()))?
        .iter()
        .map(|r| r.as_str().map(|r| dir.join(r)))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{}: a resource is not a file name", path.display()))?;
    // Every manifest beside it is listed, so none is left out unnoticed.
    for entry in std::fs::read_dir(&dir)? {
        let file = entry?.path();
        if file.extension().is_some_and(|x| x == "yaml") && file != path {
            assert!(
                files.contains(&file),
                "{} is not listed in {}",
                file.display(),
                path.display()
            );
        }
    }
    Ok(files)
}

fn manifests() -> Result<Vec<(PathBuf, serde_json::Value)>> {
    let mut docs = Vec::new();
    for file in base_files()? {
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

/// Runs kubectl against the stack's API server (with its admin kubeconfig).
fn kubectl(args: &[&str]) -> Result<String> {
    let kubeconfig = rtc_testkit::Endpoints::from_env().kubeconfig;
    kubectl_with(Some(&kubeconfig), args)
}

/// Every overlay in deploy/k8s/overlays, by directory name, sorted.
fn overlay_names() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(base().join("../overlays"))? {
        let entry = entry?;
        if entry.path().join("kustomization.yaml").is_file() {
            names.push(
                entry
                    .file_name()
                    .into_string()
                    .map_err(|n| format!("{n:?} is not UTF-8"))?,
            );
        }
    }
    names.sort();
    assert!(
        names.iter().any(|n| n == "local") && names.iter().any(|n| n == "production"),
        "{names:?}"
    );
    Ok(names)
}

/// The objects `kubectl kustomize` renders of deploy/k8s/overlays/`name`.
fn overlay(name: &str) -> Result<Vec<serde_json::Value>> {
    let dir = base().join("../overlays").join(name);
    let dir = dir.to_str().ok_or("overlay path is not UTF-8")?;
    let text = kubectl_with(None, &["kustomize", dir])?;
    let values: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("overlay {name}: {e}"))?;
    Ok(values.into_iter().filter(|v| !v.is_null()).collect())
}

/// Runs kubectl, with `kubeconfig` when one is given (`kubectl kustomize`
/// needs none).
fn kubectl_with(kubeconfig: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut command = std::process::Command::new("kubectl");
    if let Some(kubeconfig) = kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    let out = command
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
}

/// The operator's command, `kubectl apply --server-side -k deploy/k8s/base`,
/// against the stack, where the namespace and RBAC of the base already
/// exist (the stack applies them). Everything else it created is deleted
/// again, so the fleet it describes (whose Redis and Kafka addresses exist
/// only in a cluster) does not keep running on the stack.
#[test]
fn kubectl_apply_server_side_of_the_base_succeeds() -> Result {
    let dir = base();
    let dir = dir.to_str().ok_or("deploy/k8s/base path is not UTF-8")?;
    let apply = [
        "apply",
        "--server-side",
        "--field-manager",
        "rtc-test",
        "-k",
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
    let files: Vec<PathBuf> = base_files()?
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with("00-") && !name.starts_with("01-")
        })
        .collect();
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
        "applying deploy/k8s/base again must not reset the load-balancer's scaling"
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

/// Each overlay is accepted by the API server as a whole (a server-side
/// dry run: nothing is created, so the stack is left as it was).
#[test]
fn every_overlay_passes_a_server_side_dry_run() -> Result {
    for overlay in overlay_names()? {
        let dir = base().join("../overlays").join(&overlay);
        let dir = dir.to_str().ok_or("overlay path is not UTF-8")?;
        let out = kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager",
            "rtc-test",
            "-k",
            dir,
        ])?;
        for object in [
            "deployment.apps/socket serverside-applied (server dry run)",
            "configmap/rtc-config serverside-applied (server dry run)",
        ] {
            assert!(out.contains(object), "{overlay}: {object} not in\n{out}");
        }
    }
    Ok(())
}

/// Every environment key either binary reads.
fn known_keys() -> Result<BTreeSet<String>> {
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
    Ok(known)
}

#[test]
fn every_configured_key_is_a_setting_of_a_binary() -> Result {
    let known = known_keys()?;
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

/// Only the keys of either binary, in each overlay as rendered: a misspelt
/// key in a patch would be silently ignored by the binaries.
#[test]
fn every_key_an_overlay_sets_is_a_setting_of_a_binary() -> Result {
    let known = known_keys()?;
    for name in overlay_names()? {
        let mut checked = 0;
        for doc in overlay(&name)? {
            if doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "rtc-config" {
                for key in doc["data"].as_object().ok_or("no data")?.keys() {
                    assert!(known.contains(key), "overlay {name}: {key} is no setting");
                    checked += 1;
                }
            }
            for container in containers(&doc) {
                for env in container["env"].as_array().into_iter().flatten() {
                    let key = env["name"].as_str().ok_or("env without name")?;
                    assert!(
                        known.contains(key) || key.starts_with("GF_"),
                        "overlay {name}: {key} is no setting"
                    );
                }
            }
        }
        assert!(checked > 10, "overlay {name}: checked {checked} keys");
    }
    Ok(())
}

fn containers(doc: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
}

/// A duration setting of the rendered ConfigMap in milliseconds: bare
/// milliseconds (`5000`) or a number with `ms`, `s` or `m`.
fn millis(config: &serde_json::Value, key: &str) -> Result<u64> {
    let text = config["data"][key]
        .as_str()
        .ok_or_else(|| format!("local overlay: {key} is not set"))?;
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1)
    };
    let n: u64 = number
        .parse()
        .map_err(|e| format!("local overlay: {key}={text:?}: {e}"))?;
    Ok(n * scale)
}

/// The local overlay runs on the stack and tells the demo's story in about
/// five minutes: its images are ones the node agents map to this
/// workspace's binaries, its servers are the stack's, the monitoring pods
/// (images the node agents cannot run) are left out, the policy it sets is
/// one the load-balancer accepts, the way back from the most pods to the
/// fewest takes at most five minutes, and a socket pod's grace period
/// covers its drain.
#[test]
fn the_local_overlay_fits_the_stack_and_the_demo() -> Result {
    let docs = overlay("local")?;
    let mut images = BTreeSet::new();
    for doc in &docs {
        for container in containers(doc) {
            images.insert(container["image"].as_str().ok_or("no image")?.to_owned());
        }
    }
    let expected: BTreeSet<String> = ["rtc/load-balancer:local", "rtc/socket-node:local"]
        .map(str::to_owned)
        .into();
    assert_eq!(
        images, expected,
        "local overlay: only this workspace's binaries run"
    );
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "rtc-config")
        .ok_or("local overlay: no ConfigMap rtc-config")?;
    let data = config["data"].as_object().ok_or("no data")?;
    let text = |key: &str| data.get(key).and_then(|v| v.as_str()).unwrap_or_default();
    assert!(
        text("REDIS_URL").starts_with("redis://127.0.0.1:"),
        "{data:?}"
    );
    assert!(
        text("KAFKA_BOOTSTRAP").starts_with("127.0.0.1:"),
        "{data:?}"
    );

    // The load-balancer's own checks of the policy, as `run` makes them.
    let mut decide = std::process::Command::new(env!("CARGO_BIN_EXE_load-balancer"));
    decide.arg("decide").env_clear();
    for (key, value) in data {
        decide.env(key, value.as_str().ok_or("a value is not a string")?);
    }
    let out = decide.stdin(std::process::Stdio::null()).output()?;
    assert!(
        out.status.success(),
        "local overlay: the policy is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let number = |key: &str| -> Result<u64> {
        text(key)
            .parse()
            .map_err(|e| format!("local overlay: {key}: {e}").into())
    };
    let steps = number("SOCKET_MAX_REPLICAS")? - number("SOCKET_MIN_REPLICAS")?;
    let calm = steps * millis(config, "SCALE_IN_WINDOW_MS")?
        + millis(config, "SCALE_IN_STABILIZATION_MS")?;
    assert!(
        calm <= 300_000,
        "local overlay: back from the most pods to the fewest takes {calm} ms, more than five minutes"
    );

    let socket = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "socket")
        .ok_or("local overlay: no socket Deployment")?;
    let grace = socket["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .ok_or("local overlay: no grace period")?;
    let drain = millis(config, "DRAIN_TIMEOUT")? + millis(config, "DRAIN_ENDPOINT_DELAY_MS")?;
    assert!(
        grace * 1000 > drain,
        "local overlay: grace period {grace}s is shorter than the drain ({drain} ms)"
    );
    Ok(())
}
