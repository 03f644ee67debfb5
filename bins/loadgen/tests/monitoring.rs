//! The monitoring of deploy/k8s against the real binaries: the demo (the
//! local overlay, `kubectl apply -k`) in namespace `rtc` of the local
//! stack, under load from the generator, scraped by the stack's Prometheus
//! through the scrape configuration of deploy/k8s/base/08-monitoring.yaml as
//! the local overlay renders it, with the stack's kafka-exporter for
//! consumer-group lag. Every PromQL expression of the Grafana dashboard
//! (deploy/grafana/*.json) and of docs/ (```promql blocks, one expression a
//! line) must parse and return at least one series.
//!
//! Needs `deploy/local/stack up` and `deploy/local/stack up prometheus
//! kafka-exporter`. It takes namespace `rtc` of the stack over: what the
//! overlay creates there (all but the namespace and RBAC, which the stack
//! itself applies) is deleted before and after.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use rtc_loadgen::progress::Silent;
use rtc_loadgen::{Discovery, PhaseKind, Profile, Rate, RunConfig};
use serde_json::Value;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// How long a query may take to show its first series after the load.
const SERIES_TIMEOUT: Duration = Duration::from_secs(90);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the stack's Prometheus answers: `RTC_PROMETHEUS_URL`, else
/// 127.0.0.1 on `RTC_PROMETHEUS_PORT` (default 19090, as the stack's).
fn prometheus_url() -> String {
    std::env::var("RTC_PROMETHEUS_URL").unwrap_or_else(|_| {
        let port = std::env::var("RTC_PROMETHEUS_PORT").unwrap_or_else(|_| "19090".to_owned());
        format!("http://127.0.0.1:{port}")
    })
}

fn run(command: &mut Command) -> Result<String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
        .into())
    }
}

/// The Prometheus HTTP API's answer to GET `path` with `params`, its
/// `data` when the status is success.
fn api(path: &str, params: &[(&str, &str)]) -> Result<Value> {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10", "--get"]);
    for (key, value) in params {
        curl.arg("--data-urlencode").arg(format!("{key}={value}"));
    }
    curl.arg(format!("{}{path}", prometheus_url()));
    let body = run(&mut curl).map_err(|e| {
        format!(
            "Prometheus at {} does not answer ({e}); start it: deploy/local/stack up prometheus kafka-exporter",
            prometheus_url()
        )
    })?;
    let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
    if answer["status"] != "success" {
        return Err(format!(
            "{path} {params:?}: {} {}",
            answer["errorType"], answer["error"]
        )
        .into());
    }
    Ok(answer["data"].clone())
}

/// Every `expr` of every panel target in `value`, recursively (rows and
/// library panels included).
fn dashboard_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) if !expr.trim().is_empty() => {
                        out.push(expr.clone());
                    }
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Every line of every ```promql block of the markdown `text`, but blank
/// lines and `#` comments.
fn markdown_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = !inside && trimmed.trim_start_matches('`').trim() == "promql";
            continue;
        }
        if inside && !trimmed.is_empty() && !trimmed.starts_with('#') {
            out.push(trimmed.to_owned());
        }
    }
    out
}

/// (where, expression) of the dashboards under deploy/grafana and of docs/.
fn expressions() -> Result<Vec<(String, String)>> {
    let mut all = Vec::new();
    for dir in ["deploy/grafana", "docs"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repository().join(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for file in files {
            let name = format!(
                "{dir}/{}",
                file.file_name().unwrap_or_default().to_string_lossy()
            );
            let found = match file.extension().and_then(|x| x.to_str()) {
                Some("json") => {
                    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)
                        .map_err(|e| format!("{name}: {e}"))?;
                    let mut exprs = Vec::new();
                    dashboard_exprs(&dashboard, &mut exprs);
                    exprs
                }
                Some("md") => markdown_exprs(&std::fs::read_to_string(&file)?),
                _ => continue,
            };
            all.extend(found.into_iter().map(|e| (name.clone(), e)));
        }
    }
    Ok(all)
}

/// Grafana's own interval variables, as Grafana would put them into a
/// query before sending it.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
}

fn kubectl(args: &[&str]) -> Result<String> {
    run(Command::new("kubectl").args(args))
}

/// The overlay the stack's ports need (`deploy/local/stack overlay`: the
/// local overlay with this stack's Redis and broker).
fn overlay() -> Result<String> {
    let dir = run(Command::new("bash")
        .arg(repository().join("deploy/local/stack"))
        .arg("overlay"))?;
    Ok(dir.trim().to_owned())
}

/// Deletes what the overlay made in `rtc` but the namespace and RBAC, and
/// waits until its pods are gone.
fn remove_demo(overlay: &str) -> Result {
    let rendered = kubectl(&["kustomize", overlay])?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&rendered).map_err(|e| format!("{overlay}: {e}"))?;
    let mut names = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        if matches!(
            kind,
            "Namespace" | "ServiceAccount" | "Role" | "RoleBinding"
        ) || name.is_empty()
        {
            continue;
        }
        names.push(format!("{}/{name}", kind.to_lowercase()));
    }
    let mut args = vec![
        "-n",
        "rtc",
        "delete",
        "--ignore-not-found",
        "--wait=true",
        "--timeout=120s",
    ];
    args.extend(names.iter().map(String::as_str));
    kubectl(&args)?;
    kubectl(&[
        "-n",
        "rtc",
        "wait",
        "--for=delete",
        "pod",
        "-l",
        "app in (socket,load-balancer)",
        "--timeout=120s",
    ])
    .or_else(|e| {
        if e.to_string().contains("no matching resources") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_docs_query_returns_a_series_under_load() -> Result {
    let exprs = expressions()?;
    assert!(
        exprs.iter().any(|(w, _)| w.starts_with("deploy/grafana"))
            && exprs.iter().any(|(w, _)| w.starts_with("docs")),
        "no PromQL found in deploy/grafana and docs: {exprs:?}"
    );
    // Prometheus is up and reads the local overlay's scrape configuration.
    let build = api("/api/v1/status/buildinfo", &[])?;
    println!("Prometheus {}", build["version"]);

    let overlay = overlay()?;
    remove_demo(&overlay)?;
    let applied = kubectl(&[
        "apply",
        "--server-side",
        "--field-manager",
        "rtc-test",
        "-k",
        &overlay,
    ])?;
    assert!(
        applied.contains("deployment.apps/socket serverside-applied"),
        "{applied}"
    );

    let result = load_and_query(&exprs).await;
    let removed = remove_demo(&overlay);
    let report = result?;
    removed?;
    println!("{report}");
    Ok(())
}

async fn load_and_query(exprs: &[(String, String)]) -> Result<String> {
    let client = kube::Client::try_default().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "rtc");
    // The socket Deployment starts at one pod; the leader raises it to
    // SOCKET_MIN_REPLICAS (2) at its first tick: a scale-out signal.
    rtc_testkit::manifests::wait_ready(&pods, "app=load-balancer", 2, Duration::from_secs(120))
        .await?;
    rtc_testkit::manifests::wait_ready(&pods, "app=socket", 2, Duration::from_secs(120)).await?;

    // Messages between clients on different pods go through the delivery
    // topics, whose committed positions kafka-exporter reports.
    let profile = Profile::single(
        PhaseKind::Steady,
        Duration::from_secs(30),
        40,
        Rate::Overall(100.0),
    )?;
    let mut config = RunConfig::new(format!("mon{}", std::process::id()), profile);
    config.grace = Duration::from_secs(5);
    let discovery = Discovery::Kubernetes {
        client,
        namespace: "rtc".to_owned(),
        selector: "app=socket".into(),
        port: 8000,
    };
    let summary = rtc_loadgen::run(config, discovery, &mut Silent).await?;
    assert!(summary.messages.received > 0, "{:?}", summary.messages);

    // Each expression parses and, within SERIES_TIMEOUT, returns a series.
    let mut report = format!(
        "{} messages delivered; queries:\n",
        summary.messages.received
    );
    let mut empty = Vec::new();
    for (source, expr) in exprs {
        let query = as_grafana_sends(expr);
        let deadline = tokio::time::Instant::now() + SERIES_TIMEOUT;
        let series = loop {
            let data = api("/api/v1/query", &[("query", &query)])
                .map_err(|e| format!("{source}: {expr}: {e}"))?;
            let count = match data["resultType"].as_str() {
                Some("vector" | "matrix") => data["result"].as_array().map_or(0, Vec::len),
                Some("scalar" | "string") => 1,
                other => return Err(format!("{source}: {expr}: result type {other:?}").into()),
            };
            if count > 0 || tokio::time::Instant::now() >= deadline {
                break count;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        report.push_str(&format!("  {series:>3} series  {source}: {expr}\n"));
        if series == 0 {
            empty.push(format!("{source}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries that returned no series:\n{}\n{report}",
        empty.join("\n")
    );
    Ok(report)
}
