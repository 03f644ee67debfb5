//! The load-balancer binary. It only wires: parse the command line and the
//! environment, then hand over to the crates.

use clap::Parser;
use std::process::ExitCode;

mod args;
mod decide;
mod run;
mod settings;
mod telemetry;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = match &cli.command {
        args::Command::Run(args) => run::run(args),
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
