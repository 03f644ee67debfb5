//! A short check of the comparison on the local stack (`deploy/local/stack
//! up`): one short spike-then-calm profile against the socket Deployment,
//! scaled by the load-balancer, then by an HPA on CPU utilization, with
//! windows production's divided by 20.
//!
//! - Each run is measured from its own records: samples, pods, and the
//!   `/scale` writes of the audit log attributed to who made them (the
//!   load-balancer's service account, or the HPA controller's).
//! - The load-balancer run scales out on the spike and loses no message.
//! - In the HPA run the load-balancer is not installed: it writes nothing,
//!   and whatever scaled the fleet was the HPA controller.
//! - The tables and the profile's chart are written.

use std::path::PathBuf;

use rtc_demo::compare::{self, CompareConfig, System, Windows};
use rtc_loadgen::Profile;

type Result<T = (), E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const PROFILE: &str = r#"{"phases": [
  {"name": "warm-up", "kind": "ramp", "duration": "8s", "connections": 120, "messages_per_sec": 60},
  {"name": "spike", "kind": "spike", "duration": "25s", "connections": 600, "messages_per_sec": 600},
  {"name": "calm", "kind": "calm", "duration": "20s", "connections": 60, "messages_per_sec": 10}
]}"#;

fn env(key: &str) -> Result<String> {
    std::env::var(key).map_err(|_| {
        format!("{key} is not set: run under `eval \"$(deploy/local/stack env)\"`").into()
    })
}

#[test]
fn the_load_balancer_and_an_hpa_run_the_same_load_and_are_measured_alike() -> Result {
    let kubeconfig = PathBuf::from(env("KUBECONFIG")?);
    let out_dir = std::env::temp_dir().join(format!("rtc-compare-check-{}", std::process::id()));
    let config = CompareConfig {
        overlay: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/overlays/local"),
        namespace: "rtc".into(),
        profiles: vec![("spike".into(), Profile::from_json(PROFILE)?)],
        backup_profile: None,
        systems: vec![System::LoadBalancer, System::Hpa { cpu: 50 }],
        windows: Windows::new(20)?,
        out_dir: out_dir.clone(),
        redis_url: env("RTC_REDIS_URL")?,
        kafka_bootstrap: env("RTC_KAFKA_BOOTSTRAP")?,
        audit_log: PathBuf::from(env("RTC_AUDIT_LOG")?),
        nodes_dir: kubeconfig.parent().map(|d| d.join("nodes")),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()?;
    let results = runtime.block_on(async move {
        tokio::spawn(async move { compare::compare(&config).await }).await
    })??;
    let tables = compare::tables(&results, Windows::new(20)?);
    println!("{tables}");

    assert_eq!(results.len(), 2);
    let (lb, hpa) = (&results[0], &results[1]);
    for r in &results {
        assert!(
            r.curves.pods.len() >= 50,
            "{}: {} samples",
            r.label,
            r.curves.pods.len()
        );
        assert!(r.figures.replica_minutes > 0.0, "{}: no pods", r.label);
        assert!(r.messages.sent > 1_000, "{}: {:?}", r.label, r.messages);
    }
    assert_eq!(lb.system, System::LoadBalancer);
    assert!(lb.figures.scale_outs >= 1, "{:?}", lb.figures);
    assert!(lb.figures.lb_writes >= 1, "{:?}", lb.figures);
    assert_eq!(lb.figures.hpa_writes, 0, "{:?}", lb.figures);
    assert!(lb.figures.peak_replicas > 2, "{:?}", lb.figures);
    assert_eq!((lb.messages.lost, lb.messages.duplicates), (0, 0));

    assert_eq!(hpa.system, System::Hpa { cpu: 50 });
    assert_eq!(hpa.figures.lb_writes, 0, "{:?}", hpa.figures);
    assert_eq!(
        hpa.figures.hpa_writes, hpa.figures.scale_writes,
        "{:?}",
        hpa.figures
    );

    assert!(tables.contains("| load-balancer |"));
    assert!(tables.contains("| HPA cpu 50 % |"));
    assert!(out_dir.join("tables.md").exists());
    assert!(out_dir.join("results.json").exists());
    if rtc_demo::chart::FONTS
        .iter()
        .any(|f| std::path::Path::new(f).exists())
    {
        let png = std::fs::read(out_dir.join("spike.png"))?;
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
    std::fs::remove_dir_all(&out_dir)?;
    Ok(())
}
