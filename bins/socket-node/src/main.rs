//! The socket-node binary. It only wires: parse the settings, start
//! telemetry and the node (`rtc-socket`), drain on SIGTERM (a second SIGTERM
//! forces exit), then stop under a deadline.

mod args;
mod telemetry;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// How long stopping may take once the drain has finished.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(name = "socket-node", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    node: args::NodeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli.node) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("socket-node: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &args::NodeArgs) -> anyhow::Result<ExitCode> {
    let settings = args
        .raw(std::env::var("HOSTNAME").ok(), &rtc_time::SystemClock)
        .validate()?;
    rtc_telemetry::init_logs(args.log_format)?;
    let prometheus = telemetry::metrics(&settings.node_id)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let node = rtc_socket::start(settings, Some(prometheus)).await?;
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received: draining (a second signal forces exit)");
        let wait = node.core().drain_now();
        tokio::select! {
            summary = wait.wait() => tracing::info!(?summary, "drained"),
            _ = term.recv() => return Ok(forced()),
            _ = tokio::signal::ctrl_c() => return Ok(forced()),
        }
        if tokio::time::timeout(SHUTDOWN_DEADLINE, node.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(deadline = ?SHUTDOWN_DEADLINE, "stopping took too long; exiting");
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn forced() -> ExitCode {
    tracing::warn!("second signal: exiting without finishing the drain");
    ExitCode::from(1)
}
