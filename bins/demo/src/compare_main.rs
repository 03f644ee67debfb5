//! The comparison binary: flags, then [`rtc_demo::compare::compare`].
//! `./dev compare` starts the stack (and KEDA's operator) and runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rtc_demo::compare::{self, CompareConfig, System, Windows};
use rtc_time::{SystemClock, WallClock};

/// The same load against the same socket Deployment, scaled in turn by the
/// load-balancer, by a HorizontalPodAutoscaler on CPU and by KEDA, on the
/// local stack; a table and a chart per profile (docs/compare.md).
#[derive(Debug, Parser)]
#[command(name = "compare", version)]
struct Cli {
    /// A load profile (JSON, docs/loadgen.md); repeat for more.
    #[arg(long = "profile", default_values = [
        "bins/demo/profiles/compare/spike-then-calm.json",
        "bins/demo/profiles/compare/daily-ramp.json",
        "bins/demo/profiles/compare/bursts.json",
    ])]
    profiles: Vec<PathBuf>,
    /// The profile of the backup run (system `backup`): the load-balancer
    /// is stopped at the end of its first phase.
    #[arg(long, default_value = "bins/demo/profiles/compare/backup.json")]
    backup_profile: PathBuf,
    /// The systems, comma-separated: lb, hpa:<cpu %>, keda (cpu 70 %,
    /// memory 75 %), keda:<cpu %>:<memory %>, backup (the load-balancer
    /// with KEDA's shipped backup, on the backup profile).
    #[arg(
        long,
        value_delimiter = ',',
        env = "RTC_COMPARE_SYSTEMS",
        default_value = "lb,hpa:50,hpa:70"
    )]
    systems: Vec<String>,
    /// Production's windows are divided by this, for every system.
    #[arg(long, default_value_t = 10)]
    factor: u32,
    /// The kustomize overlay to install.
    #[arg(long, default_value = "deploy/k8s/overlays/local")]
    overlay: PathBuf,
    /// The overlay's namespace.
    #[arg(long, default_value = "rtc")]
    namespace: String,
    /// Where the tables, charts and records go (default:
    /// target/compare/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the tables and charts again from an earlier comparison's
    /// results.json (to --out, default beside it), without running
    /// anything.
    #[arg(long, value_name = "RESULTS_JSON")]
    redraw: Option<PathBuf>,
    /// The stack's Redis (`deploy/local/stack env`).
    #[arg(long, env = "RTC_REDIS_URL")]
    redis_url: Option<String>,
    /// The stack's broker.
    #[arg(long, env = "RTC_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// The API server's audit log.
    #[arg(long, env = "RTC_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
}

/// Stack of the runtime's threads.
const STACK: usize = 32 << 20;

fn needed<T>(value: Option<T>, name: &str) -> anyhow::Result<T> {
    value.with_context(|| {
        format!(
            "{name} is not set: run `eval \"$(deploy/local/stack env)\"` first, or use `./dev compare`"
        )
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(path) = &cli.redraw {
        let (windows, results) = compare::read_results(path).map_err(anyhow::Error::msg)?;
        let out = cli.out.clone().unwrap_or_else(|| {
            path.parent()
                .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
        });
        compare::write_all(&out, windows, &results)?;
        print!("{}", compare::tables(&results, windows));
        println!("[compare] tables and charts in {}", out.display());
        return Ok(());
    }
    let profiles = cli
        .profiles
        .iter()
        .map(|p| compare::read_profile(p).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let systems = cli
        .systems
        .iter()
        .map(|s| System::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let backup_profile = if systems.contains(&System::Backup) {
        Some(compare::read_profile(&cli.backup_profile).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let config = CompareConfig {
        backup_profile,
        overlay: cli.overlay.clone(),
        namespace: cli.namespace.clone(),
        profiles,
        systems,
        windows: Windows::new(cli.factor)?,
        out_dir: cli.out.clone().unwrap_or_else(|| {
            PathBuf::from("target/compare").join((SystemClock.now_ms() / 1000).to_string())
        }),
        redis_url: needed(cli.redis_url, "RTC_REDIS_URL")?,
        kafka_bootstrap: needed(cli.kafka_bootstrap, "RTC_KAFKA_BOOTSTRAP")?,
        audit_log: needed(cli.audit_log, "RTC_AUDIT_LOG")?,
        nodes_dir: std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .and_then(|k| k.parent().map(|d| d.join("nodes"))),
    };
    if !config.overlay.join("kustomization.yaml").exists() {
        anyhow::bail!(
            "{} has no kustomization.yaml: pass --overlay with a kustomize overlay of deploy/k8s",
            config.overlay.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(STACK)
        .build()
        .context("starting the async runtime")?;
    let out_dir = config.out_dir.clone();
    let results = runtime.block_on(async move {
        tokio::spawn(async move { compare::compare(&config).await }).await
    })??;
    print!("{}", compare::tables(&results, Windows::new(cli.factor)?));
    println!(
        "[compare] tables, charts and records in {}",
        out_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
