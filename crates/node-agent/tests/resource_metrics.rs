//! The node agent's kubelet port against the local stack: `/metrics/resource`
//! over HTTPS with the stack's PKI reports the real, rising CPU of a pod
//! that burns it, and metrics-server (`deploy/local/stack up
//! metrics-server`) turns it into the `metrics.k8s.io` API behind the API
//! server, as `kubectl top` and the HorizontalPodAutoscaler read it.
//!
//! Each test runs an agent of its own, on a Node of its own, serving its
//! kubelet port on a free loopback port with the stack's serving
//! certificate of node 0 (valid for 127.0.0.1) and the cluster CA for
//! clients.

#![allow(
    clippy::expect_used,
    reason = "test helpers: a fixture that cannot be had fails the test that uses it, at once"
)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Agent, create, is_ready, pod, wait_for};
use kube::Api;
use kube::core::{ApiResource, DynamicObject};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The stack's PKI, beside its admin kubeconfig.
fn pki() -> PathBuf {
    let kubeconfig = rtc_testkit::Endpoints::from_env().kubeconfig;
    kubeconfig
        .parent()
        .map(|dir| dir.join("pki"))
        .expect("kubeconfig directory")
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An agent serving its kubelet port on `port`.
async fn agent_with_kubelet_port(ns: &rtc_testkit::TestNamespace, port: u16) -> Agent {
    let pki = pki();
    let file = |name: &str| pki.join(name).display().to_string();
    assert!(
        pki.join("kubelet-rtc-node-0.crt").exists(),
        "{} is missing: start the stack's nodes first (deploy/local/stack up nodes)",
        pki.join("kubelet-rtc-node-0.crt").display()
    );
    let extra = [
        "--kubelet-port".to_owned(),
        port.to_string(),
        "--tls-cert-file".to_owned(),
        file("kubelet-rtc-node-0.crt"),
        "--tls-private-key-file".to_owned(),
        file("kubelet-rtc-node-0.key"),
        "--client-ca-file".to_owned(),
        file("ca.crt"),
    ];
    Agent::start_with(ns, rtc_testkit::unique_name("agent"), &extra).await
}

/// A pod that keeps one core busy.
async fn burner(ns: &rtc_testkit::TestNamespace, agent: &Agent, name: &str) {
    let spec = json!({
        "containers": [{
            "name": "burn",
            "image": "rtc/python",
            "args": ["-c", "x = b'x' * (32 << 20)\nwhile True:\n    pass"],
            "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } },
        }],
    });
    create(ns, &pod(name, &agent.node, spec)).await;
    wait_for(ns, agent, name, "Ready", is_ready).await;
}

/// A GET over HTTPS to 127.0.0.1:`port`, checking the server against the
/// cluster CA, with the stack's admin client certificate when `client` is
/// true; the status code and body.
async fn https_get(port: u16, path: &str, client: bool) -> Result<(u16, String), String> {
    let pki = pki();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.join("ca.crt")).map_err(|e| e.to_string())? {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let config = if client {
        let certs = CertificateDer::pem_file_iter(pki.join("admin.crt"))
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_file(pki.join("admin.key")).map_err(|e| e.to_string())?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())?
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let exchange = async {
        let mut tls = connector
            .connect(server, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8(response).map_err(|e| e.to_string())?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// The value of the sample `name{labels}` in a Prometheus text body, and
/// its timestamp.
fn sample(text: &str, name: &str, labels: &str) -> Option<(f64, Option<i64>)> {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(&series)?.strip_prefix(' ')?;
        let mut parts = rest.split(' ');
        let value = parts.next()?.parse().ok()?;
        let at = parts.next().and_then(|t| t.parse().ok());
        Some((value, at))
    })
}

async fn scrape(port: u16) -> String {
    let (code, body) = https_get(port, "/metrics/resource", true)
        .await
        .expect("/metrics/resource answers");
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_port_reports_the_rising_cpu_of_a_busy_pod() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let port = free_port();
    let agent = agent_with_kubelet_port(&ns, port).await;

    // The Node advertises the port, where metrics-server looks for it.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(ns.client().clone());
    let node = nodes.get(&agent.node).await.expect("node");
    let advertised = node
        .status
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port);
    assert_eq!(advertised, Some(i32::from(port)));

    // Without a client certificate the handshake is refused.
    let anonymous = https_get(port, "/metrics/resource", false).await;
    assert!(
        anonymous.is_err(),
        "served without a client certificate: {anonymous:?}"
    );

    burner(&ns, &agent, "burn").await;
    let labels = format!(
        "container=\"burn\",namespace=\"{}\",pod=\"burn\"",
        ns.name()
    );
    let pod_labels = format!("namespace=\"{}\",pod=\"burn\"", ns.name());
    let first = scrape(port).await;
    let (cpu1, at1) = sample(&first, "container_cpu_usage_seconds_total", &labels)
        .unwrap_or_else(|| panic!("no container CPU sample for {labels}:\n{first}"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = scrape(port).await;
    let (cpu2, at2) = sample(&second, "container_cpu_usage_seconds_total", &labels)
        .unwrap_or_else(|| panic!("no container CPU sample for {labels}:\n{second}"));
    assert!(cpu2 > cpu1, "CPU did not rise: {cpu1} then {cpu2}");
    assert!(at2 > at1, "sample times must move on: {at1:?} then {at2:?}");

    let (memory, _) = sample(&second, "container_memory_working_set_bytes", &labels)
        .expect("container memory sample");
    // The pod holds 32 MiB it has written.
    assert!(memory >= f64::from(32u32 << 20), "working set {memory}");
    let (start, at) =
        sample(&second, "container_start_time_seconds", &labels).expect("container start time");
    assert_eq!(at, None, "start times carry no timestamp");
    let at2_s = at2.expect("usage samples carry their time") as f64 / 1000.0;
    assert!(
        start > 0.0 && start <= at2_s,
        "start {start} after the sample at {at2_s}"
    );
    let (pod_cpu, _) =
        sample(&second, "pod_cpu_usage_seconds_total", &pod_labels).expect("pod CPU sample");
    assert!(pod_cpu >= cpu2, "pod {pod_cpu} < its container {cpu2}");
    let (node_cpu, _) = sample(&second, "node_cpu_usage_seconds_total", "").expect("node CPU");
    assert!(node_cpu >= pod_cpu, "node {node_cpu} < its pod {pod_cpu}");
    assert!(sample(&second, "node_memory_working_set_bytes", "").is_some());
    assert_eq!(
        sample(&second, "scrape_error", "").map(|s| s.0),
        Some(0.0),
        "{second}"
    );

    let (code, body) = https_get(port, "/healthz", true).await.expect("healthz");
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, _) = https_get(port, "/metrics/cadvisor", true)
        .await
        .expect("an unknown path answers");
    assert_eq!(code, 404);

    // A deleted pod leaves the figures.
    ns.api::<k8s_openapi::api::core::v1::Pod>()
        .delete("burn", &kube::api::DeleteParams::default())
        .await
        .expect("delete");
    common::wait_gone(&ns, &agent, "burn").await;
    let after = scrape(port).await;
    assert!(
        sample(&after, "container_cpu_usage_seconds_total", &labels).is_none(),
        "{after}"
    );

    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

fn pod_metrics() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".to_owned(),
        version: "v1beta1".to_owned(),
        api_version: "metrics.k8s.io/v1beta1".to_owned(),
        kind: "PodMetrics".to_owned(),
        plural: "pods".to_owned(),
    }
}

fn node_metrics() -> ApiResource {
    ApiResource {
        kind: "NodeMetrics".to_owned(),
        plural: "nodes".to_owned(),
        ..pod_metrics()
    }
}

/// A CPU or memory quantity as metrics-server writes them (`412188894n`,
/// `72648Ki`, `3m`, `12`), as a number of cores or bytes.
fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    // Fractions divide, so `412188894n` reads back as 0.412188894 exactly.
    let fraction = match suffix {
        "n" => Some(1e9),
        "u" => Some(1e6),
        "m" => Some(1e3),
        _ => None,
    };
    if let Some(divisor) = fraction {
        return Some(number / divisor);
    }
    let scale = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number * scale)
}

/// Polls `get` until it yields an object, failing after `wait` with the
/// last answer and where to look.
async fn poll_metrics(api: &Api<DynamicObject>, name: &str, wait: Duration) -> DynamicObject {
    let deadline = Instant::now() + wait;
    loop {
        let last = api.get(name).await;
        match last {
            Ok(object) => return object,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no metrics for {name} through the API server within {wait:?}: {e} \
                 (is metrics-server running? deploy/local/stack up metrics-server; its log is \
                 target/stack/metrics-server.log)"
            ),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_server_serves_a_busy_pods_usage_through_the_api_server() {
    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let port = free_port();
    let agent = agent_with_kubelet_port(&ns, port).await;
    burner(&ns, &agent, "burn").await;

    // metrics-server scrapes every 15 s and needs two scrapes for a rate.
    let wait = Duration::from_secs(90);
    let pods: Api<DynamicObject> =
        Api::namespaced_with(ns.client().clone(), ns.name(), &pod_metrics());
    let metrics = poll_metrics(&pods, "burn", wait).await;
    let containers = metrics.data["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let burn = containers
        .iter()
        .find(|c| c["name"] == "burn")
        .unwrap_or_else(|| panic!("no container burn in {:?}", metrics.data));
    let cpu = burn["usage"]["cpu"]
        .as_str()
        .and_then(quantity)
        .unwrap_or_else(|| panic!("cpu of {burn}"));
    let memory = burn["usage"]["memory"]
        .as_str()
        .and_then(quantity)
        .unwrap_or_else(|| panic!("memory of {burn}"));
    // A busy loop on a shared 2-core machine: well above idle, whatever
    // else runs.
    assert!(cpu > 0.05, "cpu {cpu} cores of a busy pod: {burn}");
    assert!(memory >= f64::from(32u32 << 20), "memory {memory}: {burn}");

    let nodes: Api<DynamicObject> = Api::all_with(ns.client().clone(), &node_metrics());
    let node = poll_metrics(&nodes, &agent.node, wait).await;
    let node_cpu = node.data["usage"]["cpu"]
        .as_str()
        .and_then(quantity)
        .unwrap_or_else(|| panic!("node cpu of {:?}", node.data));
    assert!(node_cpu > 0.05, "node cpu {node_cpu}: {:?}", node.data);

    // Gone before its node is, so the namespace can go too.
    ns.api::<k8s_openapi::api::core::v1::Pod>()
        .delete("burn", &kube::api::DeleteParams::default())
        .await
        .expect("delete");
    common::wait_gone(&ns, &agent, "burn").await;
    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}

#[test]
fn quantities_of_metrics_server() {
    assert_eq!(quantity("412188894n"), Some(0.412_188_894));
    assert_eq!(quantity("72648Ki"), Some(72648.0 * 1024.0));
    assert_eq!(quantity("3m"), Some(0.003));
    assert_eq!(quantity("12"), Some(12.0));
    assert_eq!(quantity("5x"), None);
}

#[test]
fn samples_are_found_by_name_and_labels() {
    let text = "a_total{x=\"1\"} 2.5 1700\na_total 7\nb 1e+06\n";
    assert_eq!(sample(text, "a_total", "x=\"1\""), Some((2.5, Some(1700))));
    assert_eq!(sample(text, "a_total", ""), Some((7.0, None)));
    assert_eq!(sample(text, "b", ""), Some((1e6, None)));
    assert_eq!(sample(text, "a", ""), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_on_cpu_utilization_scales_out_a_busy_deployment() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use kube::api::PostParams;

    let ns = rtc_testkit::kubernetes().await.expect("stack");
    let port = free_port();
    let agent = agent_with_kubelet_port(&ns, port).await;

    // Each pod is held to 200m by its cgroup and asks for 50m, so one busy
    // pod is at about 400 % of its request, far above the 50 % target.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "burn" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "burn" } },
            "template": {
                "metadata": { "labels": { "app": "burn" } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/hostname": agent.node },
                    "tolerations": [{ "key": common::TAINT_KEY, "operator": "Exists" }],
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "burn",
                        "image": "rtc/python",
                        "args": ["-c", "while True:\n    pass"],
                        "resources": {
                            "requests": { "cpu": "50m", "memory": "32Mi" },
                            "limits": { "cpu": "200m", "memory": "128Mi" },
                        },
                    }],
                },
            },
        },
    }))
    .expect("deployment");
    let deployments = ns.api::<Deployment>();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": { "name": "burn" },
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "burn" },
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": { "type": "Utilization", "averageUtilization": 50 },
                },
            }],
        },
    }))
    .expect("hpa");
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    hpas.create(&PostParams::default(), &hpa)
        .await
        .expect("create hpa");

    // Two metrics-server scrapes (15 s apart), then the controller's next
    // sync (5 s in the stack): the default behavior scales up at once.
    let wait = Duration::from_secs(150);
    let deadline = Instant::now() + wait;
    loop {
        let replicas = deployments
            .get("burn")
            .await
            .ok()
            .and_then(|d| d.spec)
            .and_then(|s| s.replicas);
        let status = hpas.get("burn").await.ok().and_then(|h| h.status);
        if replicas == Some(3) {
            let utilization = status
                .as_ref()
                .and_then(|s| s.current_metrics.as_ref())
                .and_then(|m| m.first())
                .and_then(|m| m.resource.as_ref())
                .and_then(|r| r.current.average_utilization);
            let desired = status.as_ref().map(|s| s.desired_replicas);
            assert_eq!(desired, Some(3), "{status:?}");
            assert!(
                utilization.is_some_and(|u| u > 50),
                "scaled out at a utilization of {utilization:?} %: {status:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HPA did not scale burn to 3 within {wait:?}; last replicas {replicas:?}, HPA status {status:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The agent runs the new pods.
    loop {
        let ready = deployments
            .get("burn")
            .await
            .ok()
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas);
        if ready == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "burn scaled to 3 but has {ready:?} ready replicas after {wait:?}; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    hpas.delete("burn", &kube::api::DeleteParams::default())
        .await
        .expect("delete hpa");
    deployments
        .delete("burn", &kube::api::DeleteParams::default())
        .await
        .expect("delete deployment");
    // The pods go before their node does, so the namespace can go too.
    let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
    loop {
        let left = pods
            .list(&Default::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "{left} pods of burn left after its deletion; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    agent.finish().await;
    ns.cleanup().await.expect("cleanup");
}
