//! `parley-bench`: measures Parley against baselines taken in the same run, and writes a report.
//! See `scripts/bench.sh` for the one command that builds, starts what is needed and runs it.

use std::process::ExitCode;

use clap::Parser;
use parley_bench::{Args, run};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parley-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
