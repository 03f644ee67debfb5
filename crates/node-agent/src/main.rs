//! The node agent binary. It only wires: parse and check the flags, start
//! logging, run the agent until SIGTERM or SIGINT, and exit 0 once every
//! pod process it started is stopped.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rtc_node_agent::AgentArgs;

#[derive(Debug, Parser)]
#[command(name = "rtc-node-agent", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli.agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtc-node-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &AgentArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    rtc_telemetry::init_logs(args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        let signal = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        };
        rtc_node_agent::run(config, signal).await?;
        Ok(())
    })
}
