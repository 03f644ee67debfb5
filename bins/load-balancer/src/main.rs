//! The load-balancer binary. It only wires: parse the command line and the
//! environment, start telemetry, run `rtc-balancer` until SIGTERM, or
//! replay decisions offline.

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;

mod args;
mod decide;
mod telemetry;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = match &cli.command {
        args::Command::Run(args) => run(args),
        args::Command::Decide(args) => decide::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load-balancer: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `load-balancer run`: every replica ingests heartbeats; the Lease holder
/// scales.
fn run(args: &args::RunArgs) -> anyhow::Result<()> {
    let settings = args.raw(std::env::var("HOSTNAME").ok()).validate()?;
    rtc_telemetry::init_logs(args.log_format)?;
    let prometheus = telemetry::metrics()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(rtc_balancer::run(settings, prometheus, terminated()))?;
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
