//! The socket-node binary. It only wires: parse the settings, start
//! telemetry and the node, drain on SIGTERM (a second SIGTERM forces exit).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rtc_socket_node::{NodeArgs, telemetry};

#[derive(Debug, Parser)]
#[command(name = "socket-node", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
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

fn run(args: &NodeArgs) -> anyhow::Result<ExitCode> {
    let settings = args.settings()?;
    rtc_telemetry::init_logs(args.log_format)?;
    let prometheus = telemetry::metrics(&settings.node_id)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let node = rtc_socket_node::start(settings, Some(prometheus)).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received: draining (a second signal forces exit)");
        let wait = node.core().drain_now();
        tokio::select! {
            summary = wait.wait() => tracing::info!(?summary, "drained"),
            _ = term.recv() => {
                tracing::warn!("second signal: exiting without finishing the drain");
                return Ok(ExitCode::from(1));
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::warn!("second signal: exiting without finishing the drain");
                return Ok(ExitCode::from(1));
            }
        }
        node.shutdown().await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
