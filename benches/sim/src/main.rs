//! `handset-sim`: the simulator's command line (`handset-sim --help`).

use std::process::ExitCode;

use clap::Parser;
use handset_sim::SimArgs;

/// Play Twilio against Media Streams servers: scenarios, load, capacity, report.
#[derive(Debug, Parser)]
#[command(name = "handset-sim", version)]
struct Cli {
    #[command(flatten)]
    args: SimArgs,
}

fn main() -> ExitCode {
    match handset_sim::run_cli(Cli::parse().args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handset-sim: {err}");
            ExitCode::FAILURE
        }
    }
}
