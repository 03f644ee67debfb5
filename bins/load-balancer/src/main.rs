//! The load-balancer binary. It only wires: parse the command line and the
//! environment, then hand over to the crates.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod admin;
mod decide;
mod policy_args;
mod run;
mod telemetry;

#[derive(Debug, Parser)]
#[command(name = "load-balancer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load-balancer: ingest heartbeats and, as the Lease holder,
    /// scale the socket workload.
    Run(Box<run::RunArgs>),
    /// Replay JSON lines of observations through the decision core and print
    /// each decision (offline; no cluster needed).
    Decide(decide::DecideArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => run::run(args),
        Command::Decide(args) => decide::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load-balancer: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
