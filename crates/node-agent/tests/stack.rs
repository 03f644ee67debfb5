//! The node agent against the local stack's real control plane
//! (`deploy/local/stack up`): each test starts an agent of its own, on a
//! Node of its own, and runs real processes through it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    Agent, alive, condition, container, create, is_ready, phase, pid, pod, pod_ip, read, wait_dead,
    wait_for, wait_gone,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use tokio::time::Instant;

/// A python HTTP server on port 8080 of every interface (so the agent's
/// rewrite to the pod's address is exercised).
fn http_server() -> serde_json::Value {
    json!({
        "name": "web",
        "image": "rtc/python:3",
        "args": ["-m", "http.server", "8080", "--bind", "0.0.0.0"],
        "ports": [{ "name": "http", "containerPort": 8080 }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_ready_on_its_own_address_and_answers_there() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;

    let mut web = http_server();
    web["readinessProbe"] =
        json!({ "httpGet": { "path": "/", "port": "http" }, "periodSeconds": 1 });
    web["startupProbe"] =
        json!({ "tcpSocket": { "port": 8080 }, "periodSeconds": 1, "failureThreshold": 30 });
    web["livenessProbe"] = json!({
        "exec": { "command": ["/bin/sh", "-c", "test -n \"$POD_IP\""] },
        "periodSeconds": 1,
    });
    create(
        &ns,
        &pod("web", &agent.node, json!({ "containers": [web] })),
    )
    .await;
    let running = wait_for(&ns, &agent, "web", "Ready", is_ready).await;

    let status = running.status.clone().expect("status");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ip = pod_ip(&running);
    assert!(agent.owns(&ip), "pod IP {ip} outside {}", agent.prefix);
    assert_eq!(status.pod_ips.expect("podIPs")[0].ip, ip);
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.start_time.is_some());
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ] {
        assert_eq!(
            condition(&running, kind).map(|c| c.0),
            Some("True".to_owned()),
            "{kind}"
        );
    }
    let c = container(&running).expect("container status");
    assert!(c.ready);
    assert_eq!(c.started, Some(true));
    assert_eq!(c.restart_count, 0);
    assert_eq!(c.image, "rtc/python:3");
    assert_eq!(c.image_id, format!("file://{}", common::python().display()));
    assert!(c.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    assert!(alive(pid(&running)));
    assert!(
        !agent.log_text().contains("probe failed: killing"),
        "{}",
        agent.log_text()
    );

    let addr: SocketAddr = format!("{ip}:8080").parse().expect("address");
    let (code, body) = rtc_testkit::http(addr, "GET", "/")
        .await
        .expect("server answers on the pod IP");
    assert_eq!(code, 200);
    assert!(body.contains("Directory listing"), "{body}");
    // `--bind 0.0.0.0` became the pod's address: another address of the
    // agent's range (one it has not handed out) gets no answer.
    let elsewhere: SocketAddr = format!("{}.253:8080", agent.prefix)
        .parse()
        .expect("address");
    assert!(
        rtc_testkit::http(elsewhere, "GET", "/").await.is_err(),
        "the server bound every address"
    );

    // The node side: a Lease held by the node, owned by its Node.
    let lease: Api<Lease> = Api::namespaced(ns.client().clone(), "kube-node-lease");
    let lease = lease.get(&agent.node).await.expect("lease");
    let spec = lease.spec.expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(agent.node.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &lease.metadata.owner_references.expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", agent.node.as_str())
    );
    let node: Api<Node> = Api::all(ns.client().clone());
    let node = node.get(&agent.node).await.expect("node");
    let info = node.status.and_then(|s| s.node_info).expect("node info");
    assert_eq!(info.kubelet_version, "v1.37.2");
    assert_eq!(info.container_runtime_version, "rtc-node-agent://0.1.0");

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_comes_from_config_maps_field_refs_and_literals() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let settings: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "settings" },
        "data": { "MODE": "fast", "LISTEN": "0.0.0.0:9000", "PORT": "8080" },
    }))
    .expect("configmap");
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &settings)
        .await
        .expect("create configmap");

    let script = "import json, os, sys; json.dump(dict(os.environ), open('env.json', 'w')); json.dump(sys.argv[1:], open('argv.json', 'w'))";
    let spec = json!({
        "restartPolicy": "Never",
        "containers": [{
            "name": "env",
            "image": "rtc/python",
            "command": ["-c", script],
            "args": ["$(PORT)", "--bind=0.0.0.0", "$(MISSING)"],
            "envFrom": [
                { "configMapRef": { "name": "settings" } },
                { "configMapRef": { "name": "nope" , "optional": true }, "prefix": "OPT_" },
            ],
            "env": [
                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                { "name": "MY_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                { "name": "APP", "valueFrom": { "fieldRef": { "fieldPath": "metadata.labels['app']" } } },
                { "name": "ONE_KEY", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "MODE" } } },
                { "name": "GREETING", "value": "mode=$(MODE) escaped=$$(MODE)" },
            ],
        }],
    });
    let mut env_pod = pod("env", &agent.node, spec);
    env_pod.metadata.labels = Some([("app".to_owned(), "envtest".to_owned())].into());
    let created = create(&ns, &env_pod).await;
    let done = wait_for(&ns, &agent, "env", "Succeeded", |p| phase(p) == "Succeeded").await;

    let terminated = container(&done)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert_eq!(
        condition(&done, "Ready").and_then(|c| c.1).as_deref(),
        Some("PodCompleted")
    );

    let dir = agent.pod_dir(&created);
    let env: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&read(&dir.join("env.json")))
            .unwrap_or_else(|e| panic!("env.json: {e}; agent log:\n{}", agent.log_text()));
    let ip = pod_ip(&done);
    let get = |key: &str| env.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    assert_eq!(get("POD_NAME").as_deref(), Some("env"));
    assert_eq!(get("POD_NAMESPACE").as_deref(), Some(ns.name()));
    assert_eq!(get("NODE").as_deref(), Some(agent.node.as_str()));
    assert_eq!(get("MY_IP"), Some(ip.clone()));
    assert_eq!(get("POD_IP"), Some(ip.clone()));
    assert_eq!(get("APP").as_deref(), Some("envtest"));
    assert_eq!(get("MODE").as_deref(), Some("fast"));
    assert_eq!(get("ONE_KEY").as_deref(), Some("fast"));
    assert_eq!(
        get("LISTEN"),
        Some(format!("{ip}:9000")),
        "0.0.0.0 becomes the pod's address"
    );
    assert_eq!(
        get("GREETING").as_deref(),
        Some("mode=fast escaped=$(MODE)")
    );
    assert!(get("PATH").is_some(), "PATH comes from the agent");
    assert!(
        !env.keys().any(|k| k.starts_with("OPT_")),
        "a missing optional configmap adds nothing"
    );
    assert_eq!(
        get("KUBECONFIG"),
        Some(dir.join("serviceaccount/kubeconfig").display().to_string()),
        "the agent's own environment does not leak: the pod's is its service account's"
    );

    let argv: Vec<String> = serde_json::from_str(&read(&dir.join("argv.json"))).expect("argv.json");
    assert_eq!(argv, ["8080", &format!("--bind={ip}"), "$(MISSING)"]);

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

/// Asks the API server who the pod is, with the credentials the agent gave
/// it: the kubeconfig in `KUBECONFIG`, its CA and its token file.
const WHOAMI: &str = r#"
import base64, json, os, ssl, urllib.request
k = json.load(open(os.environ["KUBECONFIG"]))
cluster = k["clusters"][0]["cluster"]
open("ca.pem", "wb").write(base64.b64decode(cluster["certificate-authority-data"]))
token = open(k["users"][0]["user"]["tokenFile"]).read()
review = b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}'
request = urllib.request.Request(cluster["server"] + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=review, method="POST",
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, context=ssl.create_default_context(cafile="ca.pem")))
json.dump({"user": answer["status"]["userInfo"], "host": os.environ.get("KUBERNETES_SERVICE_HOST"),
    "namespace": open(os.path.join(os.path.dirname(os.environ["KUBECONFIG"]), "namespace")).read()},
    open("whoami.json", "w"))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_the_api_server_as_its_service_account_bound_to_itself() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let account: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "reader" } })).expect("account");
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &account)
        .await
        .expect("create service account");
    let spec = |automount: bool| {
        json!({
            "restartPolicy": "Never",
            "serviceAccountName": "reader",
            "automountServiceAccountToken": automount,
            "containers": [{ "name": "who", "image": "rtc/python", "command": ["-c", WHOAMI] }],
        })
    };
    let created = create(&ns, &pod("who", &agent.node, spec(true))).await;
    let done = wait_for(&ns, &agent, "who", "Succeeded", |p| phase(p) == "Succeeded").await;
    let dir = agent.pod_dir(&created);
    let whoami: serde_json::Value = serde_json::from_str(&read(&dir.join("whoami.json")))
        .unwrap_or_else(|e| panic!("whoami.json: {e}; agent log:\n{}", agent.log_text()));
    assert_eq!(
        whoami["user"]["username"],
        format!("system:serviceaccount:{}:reader", ns.name())
    );
    let bound = &whoami["user"]["extra"]["authentication.kubernetes.io/pod-name"];
    assert_eq!(bound, &json!(["who"]), "the token is bound to the pod");
    assert_eq!(whoami["host"], "127.0.0.1");
    assert_eq!(whoami["namespace"], ns.name());
    assert_eq!(container(&done).map(|c| c.restart_count), Some(0));

    // Opting out gives no credentials: the same script fails.
    create(&ns, &pod("anon", &agent.node, spec(false))).await;
    wait_for(&ns, &agent, "anon", "Failed", |p| phase(p) == "Failed").await;
    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_map_an_unmapped_image_or_init_containers_keep_the_pod_pending() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    create(
        &ns,
        &pod(
            "unmapped",
            &agent.node,
            json!({ "containers": [{ "name": "c", "image": "nginx:1.27" }] }),
        ),
    )
    .await;
    let missing = json!({ "containers": [{
        "name": "c",
        "image": "rtc/python",
        "envFrom": [{ "configMapRef": { "name": "absent" } }],
    }] });
    create(&ns, &pod("noconfig", &agent.node, missing)).await;
    let with_init = json!({
        "initContainers": [{ "name": "migrate", "image": "rtc/python", "args": ["-c", "pass"] }],
        "containers": [{ "name": "c", "image": "rtc/python", "args": ["-c", "import time; time.sleep(600)"] }],
    });
    create(&ns, &pod("init", &agent.node, with_init)).await;

    let waiting_reason = |p: &Pod| {
        container(p)
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone())
    };
    let unmapped = wait_for(&ns, &agent, "unmapped", "ErrImagePull", |p| {
        waiting_reason(p).as_deref() == Some("ErrImagePull")
    })
    .await;
    assert_eq!(phase(&unmapped), "Pending");
    let message = container(&unmapped)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(message.contains("\"nginx:1.27\""), "{message}");
    assert!(
        message.contains("rtc/python"),
        "the message lists the mapped images: {message}"
    );

    let noconfig = wait_for(&ns, &agent, "noconfig", "CreateContainerConfigError", |p| {
        waiting_reason(p).as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    assert_eq!(phase(&noconfig), "Pending");

    let init = wait_for(&ns, &agent, "init", "not initialized", |p| {
        condition(p, "Initialized").is_some_and(|(status, _)| status == "False")
    })
    .await;
    assert_eq!(phase(&init), "Pending");
    assert_eq!(waiting_reason(&init).as_deref(), Some("PodInitializing"));

    // The ConfigMap appears: the next attempt starts the container.
    let absent: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "absent" }, "data": { "A": "1" } }))
            .expect("cm");
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &absent)
        .await
        .expect("create configmap");
    wait_for(&ns, &agent, "noconfig", "Running", |p| {
        phase(p) == "Running"
    })
    .await;

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_readiness_probe_keeps_the_pod_unready() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let mut web = http_server();
    web["readinessProbe"] = json!({
        "httpGet": { "path": "/no-such-page", "port": 8080 },
        "periodSeconds": 1,
        "failureThreshold": 1,
    });
    create(
        &ns,
        &pod("unready", &agent.node, json!({ "containers": [web] })),
    )
    .await;
    let running = wait_for(&ns, &agent, "unready", "Running", |p| phase(p) == "Running").await;
    let addr: SocketAddr = format!("{}:8080", pod_ip(&running))
        .parse()
        .expect("address");
    // Let the server come up and the probe run a few times.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rtc_testkit::http(addr, "GET", "/").await.is_err() {
        assert!(Instant::now() < deadline, "server never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pod = ns.api::<Pod>().get("unready").await.expect("pod");
    assert_eq!(phase(&pod), "Running");
    assert_eq!(
        condition(&pod, "Ready"),
        Some(("False".to_owned(), Some("ContainersNotReady".to_owned())))
    );
    assert_eq!(
        condition(&pod, "ContainersReady").map(|c| c.0).as_deref(),
        Some("False")
    );
    let c = container(&pod).expect("container");
    assert!(!c.ready);
    assert_eq!(c.started, Some(true));
    assert_eq!(c.restart_count, 0, "readiness never restarts");
    let server_log = read(&agent.pod_dir(&pod).join("web.log"));
    assert!(
        server_log.contains("GET /no-such-page"),
        "the probe reached the server: {server_log}"
    );

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_container_is_restarted_with_a_growing_restart_count() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let spec = json!({ "containers": [{
        "name": "crash",
        "image": "rtc/python",
        "args": ["-c", "import sys; print('crashing', flush=True); sys.exit(3)"],
    }] });
    create(&ns, &pod("crash", &agent.node, spec)).await;
    let crashed = wait_for(&ns, &agent, "crash", "two restarts", |p| {
        container(p).is_some_and(|c| c.restart_count >= 2)
    })
    .await;

    assert_eq!(
        phase(&crashed),
        "Running",
        "Always restarts, so the pod stays Running"
    );
    let c = container(&crashed).expect("container");
    let last = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("last state");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let state = c.state.clone().unwrap_or_default();
    let backing_off =
        state.waiting.as_ref().and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff");
    assert!(
        backing_off || state.running.is_some(),
        "between runs or in one: {state:?}"
    );
    let log = read(&agent.pod_dir(&crashed).join("crash.log"));
    assert!(
        log.matches("crashing").count() >= 2,
        "each finished run appended to the log: {log}"
    );

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let mut web = http_server();
    web["livenessProbe"] = json!({
        "httpGet": { "path": "/dead", "port": "http" },
        "initialDelaySeconds": 1,
        "periodSeconds": 1,
        "failureThreshold": 2,
    });
    create(
        &ns,
        &pod(
            "dead",
            &agent.node,
            json!({ "terminationGracePeriodSeconds": 2, "containers": [web] }),
        ),
    )
    .await;
    let first = wait_for(&ns, &agent, "dead", "Running", |p| {
        phase(p) == "Running" && container(p).is_some_and(|c| c.started == Some(true))
    })
    .await;
    let first_pid = pid(&first);
    let restarted = wait_for(&ns, &agent, "dead", "a restart", |p| {
        container(p).is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    let last = container(&restarted)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("last state");
    assert_eq!(last.exit_code, 143, "python dies of the SIGTERM");
    wait_dead(first_pid).await;

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

/// A server that logs each request and its SIGTERM, so their order shows.
const LOGGING_SERVER: &str = r#"
import http.server, os, signal, sys
def term(*_):
    print("SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("GET", self.path, flush=True)
        self.send_response(200)
        self.end_headers()
    def log_message(self, *_):
        pass
print("serving", flush=True)
http.server.HTTPServer((os.environ["BIND"], 8080), Handler).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deletion_runs_pre_stop_then_sigterm_then_deletes_the_pod() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let spec = json!({
        "terminationGracePeriodSeconds": 20,
        "containers": [{
            "name": "server",
            "image": "rtc/python",
            "args": ["-u", "-c", LOGGING_SERVER],
            "env": [{ "name": "BIND", "value": "0.0.0.0" }],
            "readinessProbe": { "tcpSocket": { "port": 8080 }, "periodSeconds": 1 },
            "lifecycle": { "preStop": { "httpGet": { "path": "/prestop", "port": 8080 } } },
        }],
    });
    let created = create(&ns, &pod("graceful", &agent.node, spec)).await;
    let ready = wait_for(&ns, &agent, "graceful", "Ready", is_ready).await;
    let server = pid(&ready);

    let began = Instant::now();
    ns.api::<Pod>()
        .delete("graceful", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&ns, &agent, "graceful").await;
    let took = began.elapsed();
    assert!(!alive(server), "the server process is gone with the pod");
    assert!(
        took < Duration::from_secs(15),
        "the server stopped on SIGTERM, well before the 20 s grace ran out: {took:?}"
    );

    let log = read(&agent.pod_dir(&created).join("server.log"));
    let pre_stop = log
        .find("GET /prestop")
        .unwrap_or_else(|| panic!("no preStop request in the log:\n{log}"));
    let term = log
        .find("SIGTERM")
        .unwrap_or_else(|| panic!("no SIGTERM in the log:\n{log}"));
    assert!(pre_stop < term, "preStop ran before SIGTERM:\n{log}");
    let agent_log = agent.log_text();
    assert!(agent_log.contains("preStop hook done"), "{agent_log}");
    assert!(
        agent_log.contains("pod terminated and deleted"),
        "{agent_log}"
    );

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_ignores_sigterm_is_killed_when_the_grace_period_ends() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)";
    let spec = json!({
        "terminationGracePeriodSeconds": 3,
        "containers": [{ "name": "stubborn", "image": "rtc/python", "args": ["-c", stubborn] }],
    });
    let created = create(&ns, &pod("stubborn", &agent.node, spec)).await;
    let running = wait_for(&ns, &agent, "stubborn", "Running", |p| {
        phase(p) == "Running"
    })
    .await;
    let process = pid(&running);
    // The handler must be in place before the pod is deleted.
    let log = agent.pod_dir(&created).join("stubborn.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read(&log).contains("up") {
        assert!(Instant::now() < deadline, "the program never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let began = Instant::now();
    ns.api::<Pod>()
        .delete("stubborn", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&ns, &agent, "stubborn").await;
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "SIGKILL waited for the grace period: {took:?}"
    );
    assert!(!alive(process));
    assert!(
        agent.log_text().contains("grace period over: SIGKILL sent"),
        "{}",
        agent.log_text()
    );

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_outright_has_its_processes_stopped() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    create(
        &ns,
        &pod(
            "forced",
            &agent.node,
            json!({ "containers": [http_server()] }),
        ),
    )
    .await;
    let running = wait_for(&ns, &agent, "forced", "Running", |p| phase(p) == "Running").await;
    let process = pid(&running);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    ns.api::<Pod>()
        .delete("forced", &now)
        .await
        .expect("delete");
    wait_dead(process).await;
    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

/// The cgroup file `file` of `pid`'s cgroup in the hierarchy that holds
/// `controller` (v1), or in the unified tree (v2).
fn cgroup_file(pid: u32, controller: &str, v1_file: &str, v2_file: &str) -> Option<String> {
    let cgroups = read(std::path::Path::new(&format!("/proc/{pid}/cgroup")));
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == controller) {
            let mount = std::fs::read_dir("/sys/fs/cgroup")
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.split(',').any(|c| c == controller))
                })?;
            return Some(
                read(&mount.join(path.trim_start_matches('/')).join(v1_file))
                    .trim()
                    .to_owned(),
            );
        }
    }
    let unified = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let value = read(
        &std::path::Path::new("/sys/fs/cgroup")
            .join(unified.trim_start_matches('/'))
            .join(v2_file),
    );
    Some(value.trim().to_owned()).filter(|v| !v.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_and_memory_limits_land_in_the_process_cgroups() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let spec = json!({ "containers": [{
        "name": "limited",
        "image": "rtc/python",
        "args": ["-c", "import time; print('up', flush=True); time.sleep(600)"],
        "resources": { "limits": { "cpu": "500m", "memory": "256Mi" } },
    }] });
    create(&ns, &pod("limited", &agent.node, spec)).await;
    let running = wait_for(&ns, &agent, "limited", "Running", |p| phase(p) == "Running").await;
    let process = pid(&running);
    // The process joins its cgroups before the program runs: once the
    // program speaks, the joining is done.
    let log = agent.pod_dir(&running).join("limited.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read(&log).contains("up") {
        assert!(Instant::now() < deadline, "the program never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !agent.log_text().contains("no usable cgroups"),
        "{}",
        agent.log_text()
    );

    let cgroup = read(std::path::Path::new(&format!("/proc/{process}/cgroup")));
    let memory = cgroup_file(process, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(
        memory.as_deref(),
        Some("268435456"),
        "memory limit of pid {process} in\n{cgroup}"
    );
    let cpu = cgroup_file(process, "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(
        matches!(cpu.as_deref(), Some("50000" | "50000 100000")),
        "cpu quota of pid {process}: {cpu:?}"
    );
    let uid = running.metadata.uid.clone().expect("uid");
    assert!(
        cgroup.contains(&format!("rtc-node-agent/{}/pod{uid}/limited", agent.node)),
        "{cgroup}"
    );
    if cgroup.lines().any(|l| l.contains(":cpuacct")) {
        assert!(
            cgroup
                .lines()
                .any(|l| l.contains("cpuacct") && l.contains(&format!("pod{uid}"))),
            "joined cpuacct too: {cgroup}"
        );
    }

    agent.finish().await;
    assert!(
        !alive(process),
        "stopping the agent stopped the pod's process"
    );
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_stops_every_pod_process_and_leaves_the_objects() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let mut agent = Agent::start(&ns).await;
    for name in ["one", "two"] {
        create(
            &ns,
            &pod(name, &agent.node, json!({ "containers": [http_server()] })),
        )
        .await;
    }
    let mut pids = Vec::new();
    for name in ["one", "two"] {
        let running = wait_for(&ns, &agent, name, "Running", |p| phase(p) == "Running").await;
        pids.push(pid(&running));
    }
    let status = agent.stop().await;
    assert!(
        status.success(),
        "agent exit: {status}; log:\n{}",
        agent.log_text()
    );
    for process in pids {
        assert!(!alive(process), "pid {process} outlived the agent");
    }
    let left = std::fs::read_dir("/sys/fs/cgroup/memory/rtc-node-agent")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy() == agent.node)
        })
        .unwrap_or(false);
    assert!(!left, "the node's cgroups are removed");
    assert!(
        ns.api::<Pod>().get_opt("one").await.expect("get").is_some(),
        "API objects stay"
    );
    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_scheduler_places_a_pod_on_the_agents_node() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let agent = Agent::start(&ns).await;
    let mut scheduled = pod(
        "scheduled",
        &agent.node,
        json!({
            "containers": [http_server()],
            "nodeSelector": { "kubernetes.io/hostname": agent.node },
        }),
    );
    if let Some(spec) = scheduled.spec.as_mut() {
        spec.node_name = None;
    }
    create(&ns, &scheduled).await;
    let running = wait_for(&ns, &agent, "scheduled", "Running", |p| {
        phase(p) == "Running"
    })
    .await;
    let spec = running.spec.clone().expect("spec");
    assert_eq!(
        spec.node_name.as_deref(),
        Some(agent.node.as_str()),
        "the scheduler bound it"
    );
    assert_eq!(
        condition(&running, "PodScheduled").map(|c| c.0).as_deref(),
        Some("True")
    );
    assert!(agent.owns(&pod_ip(&running)));
    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_node_of_the_same_name_is_taken_over() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let name = rtc_testkit::unique_name("takeover");
    let nodes: Api<Node> = Api::all(ns.client().clone());
    let stale: Node = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "example.com/kept": "yes" } },
        "spec": { "taints": [{ "key": common::TAINT_KEY, "value": name, "effect": "NoSchedule" }] },
    }))
    .expect("node");
    let before = nodes
        .create(&PostParams::default(), &stale)
        .await
        .expect("create node");

    let agent = Agent::start_named(&ns, name.clone()).await;
    let node = nodes.get(&name).await.expect("node");
    assert_eq!(
        node.metadata.uid, before.metadata.uid,
        "the same Node object"
    );
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&name));
    assert_eq!(
        labels.get("example.com/kept").map(String::as_str),
        Some("yes")
    );
    let status = node.status.expect("status");
    assert_eq!(
        status.node_info.map(|i| i.kubelet_version).as_deref(),
        Some("v1.37.2")
    );
    assert!(status.capacity.is_some_and(|c| c.contains_key("pods")));

    // And it runs pods like a node it created.
    create(
        &ns,
        &pod(
            "after-takeover",
            &agent.node,
            json!({ "containers": [http_server()] }),
        ),
    )
    .await;
    wait_for(&ns, &agent, "after-takeover", "Running", |p| {
        phase(p) == "Running"
    })
    .await;
    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}
