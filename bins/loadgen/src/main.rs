//! The loadgen binary. It only wires: parse and validate the flags, start
//! logs, build the discovery, run (Ctrl-C ends the profile early), write the
//! summary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rtc_loadgen::discovery::Discovery;
use rtc_loadgen::duration::parse_duration;
use rtc_loadgen::progress::{Progress, Silent, Stderr};
use rtc_loadgen::target::{Strategy, parse_target};
use rtc_loadgen::{PhaseKind, Profile, Rate, RunConfig};
use rtc_telemetry::LogFormat;
use rtc_time::{SystemClock, WallClock};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Steady,
    Ramp,
    Spike,
    Calm,
}

/// WebSocket load for the socket fleet, with exact counts of what arrived.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, long_about = None)]
struct Cli {
    /// Kubeconfig of the cluster whose socket pods take the load.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the socket pods.
    #[arg(long, default_value = "rtc")]
    namespace: String,
    /// Label selector of the socket pods.
    #[arg(long, default_value = "app=socket")]
    selector: String,
    /// WebSocket port of the socket pods.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// A fixed target instead of discovery (repeatable); loopback only.
    #[arg(long = "target", value_parser = parse_target)]
    targets: Vec<SocketAddr>,
    /// How new connections are spread over the Ready targets.
    #[arg(long, value_enum, default_value_t = Strategy::LeastConnections)]
    strategy: Strategy,
    /// A JSON load profile (see docs/loadgen.md); overrides the phase flags.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Single phase: its kind.
    #[arg(long, value_enum, default_value_t = Kind::Steady)]
    kind: Kind,
    /// Single phase: its length.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Single phase: connections (at its end, for a ramp).
    #[arg(long, default_value_t = 10)]
    connections: u32,
    /// Single phase: messages per second over all connections.
    #[arg(long, default_value_t = 10.0, conflicts_with = "rate_per_connection")]
    rate: f64,
    /// Single phase: messages per second per connection, instead of --rate.
    #[arg(long)]
    rate_per_connection: Option<f64>,
    /// How long to wait after the profile for messages still on their way.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    grace: Duration,
    /// Where to write the JSON summary (default: standard output).
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Prefix of client and message ids (default: from the clock).
    #[arg(long)]
    run_id: Option<String>,
    /// Seed of the recipients' draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No progress on standard error.
    #[arg(long)]
    quiet: bool,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn profile(cli: &Cli) -> anyhow::Result<Profile> {
    if let Some(path) = &cli.profile {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the profile {}", path.display()))?;
        return Profile::from_json(&text).with_context(|| format!("profile {}", path.display()));
    }
    let kind = match cli.kind {
        Kind::Steady => PhaseKind::Steady,
        Kind::Ramp => PhaseKind::Ramp,
        Kind::Spike => PhaseKind::Spike,
        Kind::Calm => PhaseKind::Calm,
    };
    let rate = cli
        .rate_per_connection
        .map_or(Rate::Overall(cli.rate), Rate::PerConnection);
    Ok(Profile::single(kind, cli.duration, cli.connections, rate)?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let profile = profile(&cli)?;
    rtc_telemetry::init_logs(cli.log_format)?;
    let run_id = cli
        .run_id
        .clone()
        .unwrap_or_else(|| default_run_id(SystemClock.now_ms()));
    let mut config = RunConfig::new(run_id, profile);
    config.grace = cli.grace;
    config.strategy = cli.strategy;
    config.seed = cli.seed;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(async {
        let discovery = if cli.targets.is_empty() {
            Discovery::Kubernetes {
                client: kube_client(cli.kubeconfig.as_deref()).await?,
                namespace: cli.namespace.clone(),
                selector: cli.selector.clone(),
                port: cli.port,
            }
        } else {
            Discovery::Static(cli.targets.clone())
        };
        let mut progress: Box<dyn Progress> = if cli.quiet {
            Box::new(Silent)
        } else {
            Box::new(Stderr::new(config.profile.duration()))
        };
        // Ctrl-C ends the profile early; the grace period and the summary follow.
        let interrupted = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        anyhow::Ok(rtc_loadgen::run_until(config, discovery, progress.as_mut(), interrupted).await?)
    })?;
    let json = serde_json::to_string_pretty(&summary)?;
    match &cli.summary {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the summary {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(if summary.all_received() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn kube_client(path: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("loading the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// A short id from the wall clock (`now_ms`, ms since the Unix epoch):
/// unique enough between runs on one machine, and only a label.
fn default_run_id(now_ms: u64) -> String {
    let mut n = now_ms;
    let mut id = String::new();
    while n > 0 {
        let digit = u32::try_from(n % 36).unwrap_or(0);
        id.insert(0, char::from_digit(digit, 36).unwrap_or('0'));
        n /= 36;
    }
    if id.is_empty() { "0".into() } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_run_id_is_the_time_in_base_36() {
        assert_eq!(default_run_id(0), "0");
        assert_eq!(default_run_id(35), "z");
        assert_eq!(default_run_id(36), "10");
        assert!(rtc_loadgen::frames::valid_run_id(&default_run_id(u64::MAX)));
    }
}
