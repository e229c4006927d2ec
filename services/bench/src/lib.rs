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
pub mod transcript;

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
    Transcript,
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
    /// The nats-server configuration the stack runs with: Parley's own, which fsyncs every
    /// JetStream write before acknowledging it.
    #[arg(long, env = "PARLEY_BENCH_NATS_CONFIG", default_value = "nats/nats-server.conf")]
    pub nats_config: PathBuf,
    /// Runs the ingest and latency parts on a three-node JetStream cluster started from
    /// `nats/cluster/*.conf`, every stream replicated three times, against raw JetStream on the
    /// same cluster; the report goes to `<out>/cluster`.
    #[arg(long)]
    pub cluster: bool,
}

/// How the nats-server of a part keeps JetStream writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsDurability {
    /// Parley's own configuration, as every stack it ships runs: each write is on disk before its
    /// acknowledgement. The figures the goals are judged on.
    Shipped(PathBuf),
    /// nats-server's defaults, which fsync every two minutes: the figure shows what each message
    /// costs the processes rather than the disk's fsync. Ingest and latency are measured this way
    /// too, in a second pass.
    Unsynced,
}

/// What every part gets.
#[derive(Debug, Clone)]
pub struct Context {
    pub mode: Mode,
    pub bin_dir: PathBuf,
    pub out: PathBuf,
    pub nats: NatsDurability,
    /// Whether NATS is the three-node cluster (streams R3) rather than one server.
    pub cluster: bool,
}

impl Context {
    /// `short` in short mode, `full` otherwise.
    pub fn size<T>(&self, short: T, full: T) -> T {
        match self.mode {
            Mode::Short => short,
            Mode::Full => full,
        }
    }

    /// The configuration file the part's nats-server starts with, if any.
    pub fn nats_config(&self) -> Option<PathBuf> {
        match &self.nats {
            NatsDurability::Shipped(path) => Some(path.clone()),
            NatsDurability::Unsynced => None,
        }
    }

    /// A figure's name, marked when it was measured without fsync.
    pub fn figure_name(&self, name: &str) -> String {
        let name = if self.cluster {
            format!("{name}, 3-node cluster R3")
        } else {
            name.to_owned()
        };
        match self.nats {
            NatsDurability::Shipped(_) => name,
            NatsDurability::Unsynced => format!("{name}, NATS without fsync"),
        }
    }

    /// The name of a file the part writes beside the report, distinct for each pass.
    pub fn artifact(&self, stem: &str, extension: &str) -> String {
        match self.nats {
            NatsDurability::Shipped(_) => format!("{stem}.{extension}"),
            NatsDurability::Unsynced => format!("{stem}-unsynced.{extension}"),
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.nats_config.is_file(),
        "--nats-config: {} is not a file (run from the repository's root, or name nats/nats-server.conf)",
        args.nats_config.display()
    );
    let context = Context {
        mode: args.mode,
        bin_dir: args.bin_dir.clone(),
        out: if args.cluster {
            args.out.join("cluster")
        } else {
            args.out.clone()
        },
        nats: NatsDurability::Shipped(args.nats_config.clone()),
        cluster: args.cluster,
    };
    let unsynced = Context {
        nats: NatsDurability::Unsynced,
        ..context.clone()
    };
    std::fs::create_dir_all(&context.out)?;
    let parts = if args.cluster {
        let parts = if args.only.is_empty() {
            vec![Part::Ingest, Part::Latency]
        } else {
            args.only.clone()
        };
        anyhow::ensure!(
            parts.iter().all(|p| matches!(p, Part::Ingest | Part::Latency)),
            "--cluster measures the ingest and latency parts only"
        );
        parts
    } else if args.only.is_empty() {
        vec![
            Part::Persistence,
            Part::Ingest,
            Part::Latency,
            Part::Idle,
            Part::Replay,
            Part::Transcript,
        ]
    } else {
        args.only.clone()
    };
    // Ingest and latency also run on an unsynced server: with every write fsynced, the disk
    // bounds both Parley and its baseline, and the processes' own cost per message hides.
    let mut passes = Vec::new();
    for part in parts {
        passes.push((part, &context));
        if matches!(part, Part::Ingest | Part::Latency) {
            passes.push((part, &unsynced));
        }
    }
    let mut figures = Vec::new();
    for (part, pass) in passes {
        eprintln!("== {}", pass.figure_name(&format!("{part:?}")));
        let measured = match part {
            Part::Persistence => persistence::run(pass).await?,
            Part::Ingest => ingest::run(pass).await?,
            Part::Latency => latency::run(pass).await?,
            Part::Idle => idle::run(pass).await?,
            Part::Replay => replay::run(pass).await?,
            Part::Transcript => transcript::run(pass).await?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn context(nats: NatsDurability) -> Context {
        Context {
            mode: Mode::Short,
            bin_dir: PathBuf::new(),
            out: PathBuf::new(),
            nats,
            cluster: false,
        }
    }

    #[test]
    fn the_pass_without_fsync_names_its_figures_and_files_apart_and_starts_nats_on_its_defaults() {
        let config = PathBuf::from("nats/nats-server.conf");
        let shipped = context(NatsDurability::Shipped(config.clone()));
        let unsynced = context(NatsDurability::Unsynced);

        assert_eq!(shipped.nats_config(), Some(config));
        assert_eq!(unsynced.nats_config(), None);
        assert_eq!(shipped.figure_name("Ingest"), "Ingest");
        assert_eq!(unsynced.figure_name("Ingest"), "Ingest, NATS without fsync");
        assert_eq!(shipped.artifact("latency", "svg"), "latency.svg");
        assert_ne!(unsynced.artifact("latency", "svg"), shipped.artifact("latency", "svg"));
    }

    #[test]
    fn figures_measured_on_the_cluster_say_so_in_both_passes() {
        let config = PathBuf::from("nats/nats-server.conf");
        let shipped = Context {
            cluster: true,
            ..context(NatsDurability::Shipped(config))
        };
        let unsynced = Context {
            cluster: true,
            ..context(NatsDurability::Unsynced)
        };
        assert_eq!(shipped.figure_name("Ingest"), "Ingest, 3-node cluster R3");
        assert_eq!(
            unsynced.figure_name("Ingest"),
            "Ingest, 3-node cluster R3, NATS without fsync"
        );
    }
}
