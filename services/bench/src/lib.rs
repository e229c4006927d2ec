//! The benchmark suite. Each part measures one figure and its baseline in the same run, on the
//! same machine, so the ratio means something on a noisy host. Parts check their own correctness
//! (nothing lost, duplicated or out of order) and fail the run when it does not hold; a figure
//! that misses its goal is reported, never a failure.

pub mod figure;
pub mod fleet;
pub mod histogram;
pub mod idle;
pub mod ingest;
pub mod latency;
pub mod persistence;
pub mod replay;
pub mod report;
pub mod scrape;
pub mod stack;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

pub use figure::Figure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A few minutes on 2 cores: smaller counts, same shape.
    Short,
    /// The sizes the goals are stated for.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Persistence,
    Ingest,
    Latency,
    Idle,
    Replay,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "parley-bench", about = "Measure Parley against its baselines")]
pub struct Args {
    /// Short (minutes) or full (the goals' sizes).
    #[arg(long, value_enum, default_value = "short")]
    pub mode: Mode,
    /// Run only these parts (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Folder of the release binaries (parley-gateway, …).
    #[arg(long, env = "PARLEY_BENCH_BIN_DIR", default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Where report.md and report.json go.
    #[arg(long, default_value = ".parley/bench")]
    pub out: PathBuf,
}

/// What every part gets.
#[derive(Debug, Clone)]
pub struct Context {
    pub mode: Mode,
    pub bin_dir: PathBuf,
    pub out: PathBuf,
}

impl Context {
    /// `short` in short mode, `full` otherwise.
    pub fn size<T>(&self, short: T, full: T) -> T {
        match self.mode {
            Mode::Short => short,
            Mode::Full => full,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let context = Context {
        mode: args.mode,
        bin_dir: args.bin_dir.clone(),
        out: args.out.clone(),
    };
    std::fs::create_dir_all(&context.out)?;
    let parts = if args.only.is_empty() {
        vec![Part::Persistence, Part::Ingest, Part::Latency, Part::Idle, Part::Replay]
    } else {
        args.only.clone()
    };
    let mut figures = Vec::new();
    for part in parts {
        eprintln!("== {part:?}");
        let measured = match part {
            Part::Persistence => persistence::run(&context).await?,
            Part::Ingest => ingest::run(&context).await?,
            Part::Latency => latency::run(&context).await?,
            Part::Idle => idle::run(&context).await?,
            Part::Replay => replay::run(&context).await?,
        };
        for figure in &measured {
            eprintln!("   {}", figure.one_line());
        }
        figures.extend(measured);
        // Keep what we have, even if a later part fails.
        report::write(&context, &figures)?;
    }
    let written = report::write(&context, &figures)?;
    eprintln!("report: {}", written.display());
    Ok(())
}
