//! The demo's pieces run on the local stack, for the end-to-end tests.
//! The runs share the overlay's namespace, so they run one at a time.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rtc_demo::record::Entry;
use rtc_demo::{DemoConfig, Outcome};
use rtc_loadgen::Profile;

pub type Result<T = (), E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env(key: &str) -> Result<String> {
    std::env::var(key).map_err(|_| {
        format!("{key} is not set: run under `eval \"$(deploy/local/stack env)\"`").into()
    })
}

/// What one run varies.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// The load profile (JSON).
    pub profile: &'static str,
    /// The socket workload as a StatefulSet.
    pub statefulset: bool,
    /// Delete the leading load-balancer pod this long after the load starts.
    pub kill_leader_at: Option<Duration>,
    /// Keys of the ConfigMap set over the local overlay's.
    pub settings: BTreeMap<String, String>,
}

/// Runs the demo once and reads back its record.
pub fn run(run: Run) -> Result<(Outcome, Vec<Entry>)> {
    let kubeconfig = PathBuf::from(env("KUBECONFIG")?);
    let out_dir = std::env::temp_dir().join(format!(
        "rtc-demo-e2e-{}-{}",
        if run.statefulset { "sts" } else { "deploy" },
        std::process::id()
    ));
    let config = DemoConfig {
        overlay: repo().join("deploy/k8s/overlays/local"),
        namespace: "rtc".into(),
        statefulset: run.statefulset,
        profile: Profile::from_json(run.profile)?,
        out_dir: out_dir.clone(),
        plain: true,
        redis_url: env("RTC_REDIS_URL")?,
        kafka_bootstrap: env("RTC_KAFKA_BOOTSTRAP")?,
        audit_log: PathBuf::from(env("RTC_AUDIT_LOG")?),
        keep: false,
        kill_leader_at: run.kill_leader_at,
        settings: run.settings,
        nodes_dir: kubeconfig.parent().map(|d| d.join("nodes")),
    };
    // The run's future is deep: it runs on workers with room for it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()?;
    let outcome = runtime.block_on(async {
        let _serial = SERIAL.lock().await;
        tokio::spawn(rtc_demo::run(config, std::future::pending())).await
    })??;
    // The figures of the run, for the test log.
    println!("{}", rtc_demo::report(&outcome));
    let text = std::fs::read_to_string(&outcome.record)?;
    let entries = text
        .lines()
        .map(serde_json::from_str::<Entry>)
        .collect::<Result<Vec<_>, _>>()?;
    let _ = std::fs::remove_dir_all(&out_dir);
    Ok((outcome, entries))
}

/// Nothing lost, and the load ran.
pub fn check_nothing_lost(outcome: &Outcome) {
    let m = &outcome.load.messages;
    assert!(m.sent > 10_000, "the spike ran: {m:?}");
    assert_eq!(m.lost, 0, "lost: {:?}", outcome.load.never_received);
    assert!(outcome.load.all_received(), "{m:?}");
}
