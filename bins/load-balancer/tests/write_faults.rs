//! Write-path faults on the real API server, counted from its audit log.
//!
//! Two load-balancer processes, each with its own service account and each
//! reaching the API server through its own toxiproxy proxy, scale a
//! Deployment whose fleet keeps asking for more replicas. Every round, an
//! operator (the test, as admin) sets the replicas back to 3, so the leader
//! writes one scale-out per round, and then one fault hits the current
//! leader: a kill without release, or a stall of its API traffic longer
//! than the lease (a latency toxic on its proxy, in both directions, so its
//! Lease renewals and its /scale write are held in transit together).
//!
//! Afterwards the audit log says, for every /scale write the API server
//! accepted from a load-balancer, whether its sender held the Lease when
//! the write was applied: its own accepted Lease write was the last one
//! before it and at most a lease duration old. And between two operator
//! resets at most one load-balancer write landed: no step applied twice.
//!
//! Rounds: `RTC_FAULT_ROUNDS` of each kind (default 5, so the suite stays
//! short; the figures in docs/leader-election.md come from 50 of each).

mod common;

use common::{Fleet, Lb, Result, create_workload, eventually, load, prefix};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Patch, PatchParams, PostParams};
use rtc_testkit::audit::{AuditLog, Event};
use rtc_testkit::toxiproxy::{Proxy, Toxic};
use rtc_testkit::{Endpoints, TestNamespace};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const NAME: &str = "socket";
/// LEASE_DURATION_MS of the processes (common::Lb).
const LEASE: Duration = Duration::from_secs(3);
/// Longer than the lease: the stalled leader steps down, another takes over.
const STALL: Duration = Duration::from_secs(5);

fn rounds() -> usize {
    std::env::var("RTC_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// A second service account with the load-balancer's Role.
async fn second_account(ns: &TestNamespace, account: &str) -> Result {
    let pp = PostParams::default();
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": { "name": account, "namespace": ns.name() }
    }))?;
    ns.api::<ServiceAccount>().create(&pp, &sa).await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": account, "namespace": ns.name() },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "load-balancer" },
        "subjects": [{ "kind": "ServiceAccount", "name": account, "namespace": ns.name() }],
    }))?;
    ns.api::<RoleBinding>().create(&pp, &binding).await?;
    Ok(())
}

/// A kubeconfig of `account` that reaches the API server through a new
/// proxy of `toxiproxy` (the API server's certificate names 127.0.0.1, so
/// TLS still verifies through it).
async fn proxied(
    ns: &TestNamespace,
    toxiproxy: &rtc_testkit::toxiproxy::Toxiproxy,
    identity: &str,
    account: &str,
) -> Result<(PathBuf, Proxy)> {
    let path = std::env::temp_dir().join(format!("{}-{account}-proxied.kubeconfig", ns.name()));
    ns.service_account_kubeconfig(account, &path).await?;
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let server = &mut config["clusters"][0]["cluster"]["server"];
    let upstream = server
        .as_str()
        .and_then(|s| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{}: no https server", path.display()))?
        .to_owned();
    let proxy = toxiproxy.proxy(identity, &upstream).await?;
    *server = format!("https://{}", proxy.listen()).into();
    std::fs::write(&path, serde_json::to_string(&config)?)?;
    Ok((path, proxy))
}

struct Replica {
    identity: String,
    kubeconfig: PathBuf,
    proxy: Proxy,
    lb: Option<Lb>,
}

impl Replica {
    fn start(&mut self, ns: &TestNamespace) -> Result {
        let kubeconfig = self.kubeconfig.to_str().ok_or("kubeconfig path")?;
        self.lb = Some(Lb::start(
            &self.identity,
            ns,
            &prefix(ns),
            &[("KUBECONFIG", kubeconfig), ("SCALE_OUT_WINDOW_MS", "1000")],
        )?);
        Ok(())
    }

    fn log(&self) -> String {
        self.lb.as_ref().map(Lb::log).unwrap_or_default()
    }
}

async fn holder(ns: &TestNamespace) -> Option<String> {
    ns.api::<Lease>()
        .get("rtc-load-balancer")
        .await
        .ok()?
        .spec?
        .holder_identity
}

async fn set_replicas(ns: &TestNamespace, n: i32) -> Result {
    let patch = Patch::Merge(json!({ "spec": { "replicas": n } }));
    ns.api::<Deployment>()
        .patch_scale(NAME, &PatchParams::default(), &patch)
        .await?;
    Ok(())
}

/// What the audit log shows.
#[derive(Debug, Default)]
struct Findings {
    lb_scale_writes: usize,
    lb_scale_refused: usize,
    lease_writes: usize,
    resets: usize,
    /// Accepted load-balancer /scale writes whose sender did not hold the Lease.
    outside_lease: Vec<String>,
    /// Operator intervals with more than one load-balancer write.
    doubled: Vec<String>,
}

fn examine(events: &[Event], lb_users: &[String], admin_user: &str) -> Findings {
    let mut f = Findings::default();
    let is_lb = |e: &Event| lb_users.contains(&e.user.username);
    // The latest accepted Lease write: (user, when it was applied).
    let mut lease: Option<(&str, k8s_openapi::jiff::Timestamp)> = None;
    let mut since_reset = 0usize;
    for e in events {
        if e.is_about("leases", None) && e.name() == Some("rtc-load-balancer") {
            if e.accepted() && e.is_write() {
                f.lease_writes += 1;
                lease = Some((e.user.username.as_str(), e.stage_timestamp));
            }
            continue;
        }
        if !e.is_about("deployments", Some("scale")) {
            continue;
        }
        if e.user.username == admin_user && e.accepted() {
            f.resets += 1;
            since_reset = 0;
            continue;
        }
        if !is_lb(e) {
            continue;
        }
        if !e.accepted() {
            f.lb_scale_refused += 1;
            continue;
        }
        f.lb_scale_writes += 1;
        since_reset += 1;
        if since_reset > 1 {
            f.doubled.push(format!(
                "{} at {}: write {since_reset} since the last reset",
                e.user.username, e.stage_timestamp
            ));
        }
        let held = lease.is_some_and(|(user, at)| {
            let age = e.stage_timestamp.duration_since(at);
            user == e.user.username
                && age <= k8s_openapi::jiff::SignedDuration::try_from(LEASE).unwrap_or_default()
        });
        if !held {
            f.outside_lease.push(format!(
                "{} applied at {}; last Lease write {:?}",
                e.user.username, e.stage_timestamp, lease
            ));
        }
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_scale_write_lands_outside_its_senders_lease() -> Result {
    let endpoints = Endpoints::from_env();
    let ns = rtc_testkit::kubernetes().await?;
    let mut audit = AuditLog::from_end(&endpoints.audit_log)?.namespace(ns.name());
    create_workload(&ns, common::Kind::Deployment, 3).await?;
    second_account(&ns, "load-balancer-b").await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    for i in 0..3 {
        fleet.add(&format!("socket-{i}"), load(0.8, 900))?;
    }
    let toxiproxy = rtc_testkit::toxiproxy().await?;
    let mut replicas = Vec::new();
    for (identity, account) in [("lb-a", "load-balancer"), ("lb-b", "load-balancer-b")] {
        let (kubeconfig, proxy) = proxied(&ns, &toxiproxy, identity, account).await?;
        let mut r = Replica {
            identity: identity.to_owned(),
            kubeconfig,
            proxy,
            lb: None,
        };
        r.start(&ns)?;
        replicas.push(r);
    }
    let lb_users: Vec<String> = ["load-balancer", "load-balancer-b"]
        .iter()
        .map(|a| format!("system:serviceaccount:{}:{a}", ns.name()))
        .collect();

    let n = rounds();
    let mut kills = 0;
    let mut stalls = 0;
    for round in 0..2 * n {
        let leader = eventually(Duration::from_secs(20), || holder(&ns))
            .await
            .ok_or("nobody leads")?;
        let at = replicas
            .iter()
            .position(|r| r.identity == leader)
            .ok_or("unknown leader")?;
        set_replicas(&ns, 3).await?;
        // Let the leader see the reset and start its write, then hit it.
        tokio::time::sleep(Duration::from_millis(300 + 97 * (round as u64 % 7))).await;
        if round % 2 == 0 {
            if let Some(lb) = replicas[at].lb.take() {
                drop(lb); // SIGKILL: no release
            }
            kills += 1;
            eventually(Duration::from_secs(10), || async {
                holder(&ns).await.filter(|h| *h != leader)
            })
            .await
            .ok_or_else(|| format!("round {round}: no takeover after killing {leader}"))?;
            replicas[at].start(&ns)?;
        } else {
            let up = replicas[at]
                .proxy
                .add(&Toxic::latency(STALL, Duration::ZERO).upstream())
                .await?;
            let down = replicas[at]
                .proxy
                .add(&Toxic::latency(STALL, Duration::ZERO))
                .await?;
            stalls += 1;
            tokio::time::sleep(STALL + Duration::from_secs(1)).await;
            replicas[at].proxy.remove_toxic(&up).await?;
            replicas[at].proxy.remove_toxic(&down).await?;
        }
        // The round's scale-out lands (from whoever leads now) before the next.
        eventually(Duration::from_secs(15), || async {
            (common::replicas(&ns, common::Kind::Deployment).await.ok()? > 3).then_some(())
        })
        .await
        .ok_or_else(|| {
            format!(
                "round {round}: no scale-out after the fault\n--- {}\n{}\n--- {}\n{}",
                replicas[0].identity,
                replicas[0].log(),
                replicas[1].identity,
                replicas[1].log()
            )
        })?;
    }
    // Give held requests time to arrive before reading the log.
    tokio::time::sleep(STALL + Duration::from_secs(1)).await;
    let admin_user = audit
        .events()?
        .iter()
        .find(|e| e.is_about("deployments", Some("scale")) && !lb_users.contains(&e.user.username))
        .map(|e| e.user.username.clone())
        .ok_or("no operator reset in the audit log")?;
    let findings = examine(audit.events()?, &lb_users, &admin_user);
    eprintln!(
        "write faults: {kills} leader kills, {stalls} stalls of {STALL:?}; \
         {} load-balancer /scale writes accepted, {} refused, {} operator resets, {} Lease writes",
        findings.lb_scale_writes, findings.lb_scale_refused, findings.resets, findings.lease_writes
    );
    assert!(
        findings.outside_lease.is_empty(),
        "{:#?}",
        findings.outside_lease
    );
    assert!(findings.doubled.is_empty(), "{:#?}", findings.doubled);
    assert_eq!(findings.resets, 2 * n, "one operator reset per round");
    assert!(
        findings.lb_scale_writes >= 2 * n,
        "every round scaled out: {findings:?}"
    );
    drop(replicas);
    ns.cleanup().await?;
    Ok(())
}

/// The check itself, on a made-up log: it must see a write applied after
/// its sender's lease ran out, one applied after another replica took the
/// Lease, and a second step between two resets.
#[test]
fn the_audit_check_finds_late_and_doubled_writes() -> Result {
    let event = |user: &str, resource: &str, sub: Option<&str>, at: &str, code: u16| {
        serde_json::from_value::<Event>(json!({
            "auditID": format!("{user}-{at}"),
            "stage": "ResponseComplete",
            "verb": "update",
            "user": { "username": user },
            "objectRef": {
                "resource": resource,
                "subresource": sub,
                "namespace": "ns",
                "name": if resource == "leases" { "rtc-load-balancer" } else { NAME },
                "apiGroup": if resource == "leases" { "coordination.k8s.io" } else { "apps" },
            },
            "responseStatus": { "code": code },
            "requestReceivedTimestamp": at,
            "stageTimestamp": at,
        }))
    };
    let (a, b, admin) = ("lb-a", "lb-b", "admin");
    let users = vec![a.to_owned(), b.to_owned()];
    let lease = |u, at| event(u, "leases", None, at, 200);
    let scale = |u, at, code| event(u, "deployments", Some("scale"), at, code);
    let log = vec![
        scale(admin, "2026-01-01T00:00:00Z", 200)?,
        lease(a, "2026-01-01T00:00:01Z")?,
        scale(a, "2026-01-01T00:00:02Z", 200)?,     // fine
        scale(a, "2026-01-01T00:00:02.500Z", 200)?, // a second step
        scale(admin, "2026-01-01T00:00:03Z", 200)?,
        scale(a, "2026-01-01T00:00:05Z", 200)?, // 4 s after a's last renewal
        scale(admin, "2026-01-01T00:00:06Z", 200)?,
        lease(b, "2026-01-01T00:00:06.500Z")?,
        scale(a, "2026-01-01T00:00:07Z", 409)?, // refused: not counted
        scale(a, "2026-01-01T00:00:07.500Z", 200)?, // after b took over
    ];
    let f = examine(&log, &users, admin);
    assert_eq!(f.outside_lease.len(), 2, "{f:#?}");
    assert_eq!(f.doubled.len(), 1, "{f:#?}");
    assert_eq!((f.lb_scale_writes, f.lb_scale_refused, f.resets), (4, 1, 3));
    // And a clean log passes.
    let clean = vec![
        scale(admin, "2026-01-01T00:00:00Z", 200)?,
        lease(a, "2026-01-01T00:00:01Z")?,
        scale(a, "2026-01-01T00:00:02Z", 200)?,
        scale(admin, "2026-01-01T00:00:03Z", 200)?,
        lease(b, "2026-01-01T00:00:04Z")?,
        scale(b, "2026-01-01T00:00:04.200Z", 200)?,
    ];
    let f = examine(&clean, &users, admin);
    assert!(f.outside_lease.is_empty() && f.doubled.is_empty(), "{f:#?}");
    Ok(())
}
