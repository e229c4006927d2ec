//! `cargo xtask`: the project's commands — the test suite, the local stack, the benchmark, the
//! `.sqlx/` regeneration — in Rust instead of bash. `scripts/*.sh` install what must exist before
//! Rust can run (Debian's Postgres, the pinned nats-server, the compose checks' Python packages)
//! and hand over with `exec cargo xtask …`, passing what they found in the environment:
//!
//! - `PARLEY_PG_BIN_DIR`: Postgres' server binaries (else the newest `/usr/lib/postgresql/*/bin`)
//! - `PARLEY_NATS_SERVER_BIN`: nats-server of the pinned version
//! - `PARLEY_TEST_PY`, `PARLEY_TEST_PYTHONPATH`: the Python that has the compose checks' packages
//!
//! Starting, waiting and stopping reuse `parley-test-support`'s [`process`] and [`postgres`]
//! modules, compiled in from their source so that this crate does not build the database stack.

// The two modules serve the tests too: what only they use is unused here.
#[allow(dead_code)]
#[path = "../../libs/test-support/src/postgres.rs"]
mod postgres;
#[allow(dead_code)]
#[path = "../../libs/test-support/src/process.rs"]
mod process;

mod bench;
mod dev;
mod signals;
mod sqlx_prepare;
mod steps;
mod test;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;

/// The project's commands (run through scripts/*.sh, which install what they need first).
#[derive(Parser, Debug)]
#[command(name = "cargo xtask")]
enum Cli {
    /// The whole test suite: fmt, clippy, cargo test, compose checks, Node tests (what CI runs).
    Test {
        /// Given to `cargo test`, e.g. `-p parley-gateway` or a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The whole stack locally with a demo conversation, until Ctrl-C.
    Dev,
    /// The benchmark suite; the arguments go to parley-bench (--mode, --only).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Regenerate `.sqlx/` from a throwaway Postgres with the migrations applied.
    SqlxPrepare,
}

/// What every command needs to know about the checkout.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    pub cargo: OsString,
}

impl Ctx {
    fn from_env() -> anyhow::Result<Ctx> {
        let root = match std::env::var_os("PARLEY_ROOT") {
            Some(root) => PathBuf::from(root),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("xtask's manifest has no parent folder")?
                .to_owned(),
        };
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Ctx {
            root,
            target_dir,
            cargo,
        })
    }

    /// The `cargo` that runs us, in the checkout's root.
    pub fn cargo(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.cargo);
        command.current_dir(&self.root);
        command
    }

    pub fn parley_dir(&self) -> PathBuf {
        self.root.join(".parley")
    }
}

/// `[parley] …` on stderr, like the scripts say things.
pub fn log(line: impl AsRef<str>) {
    eprintln!("[parley] {}", line.as_ref());
}

/// Postgres' server binaries, as `scripts/lib.sh` found them.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    match postgres::find_bin_dir() {
        Some(dir) => Ok(dir),
        None => bail!(
            "no Postgres server binaries (set {} or run this through scripts/*.sh, which install Debian's postgresql)",
            postgres::BIN_DIR_ENV
        ),
    }
}

/// The pinned nats-server, as `scripts/lib.sh` installed it.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    match std::env::var_os("PARLEY_NATS_SERVER_BIN") {
        Some(path) if Path::new(&path).is_file() => Ok(PathBuf::from(path)),
        Some(path) => bail!("PARLEY_NATS_SERVER_BIN={} is not a file", PathBuf::from(path).display()),
        None => bail!("PARLEY_NATS_SERVER_BIN is not set: run this through scripts/*.sh, which install nats-server"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log(format!("ERROR: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let ctx = Ctx::from_env()?;
        let signals = signals::Signals::install()?;
        match cli {
            Cli::Test { args } => test::run(&ctx, &signals, args).await,
            Cli::Dev => dev::run(&ctx, &signals).await,
            Cli::Bench { args } => bench::run(&ctx, &signals, args).await,
            Cli::SqlxPrepare => sqlx_prepare::run(&ctx, &signals).await,
        }
    });
    match code {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            log(format!("ERROR: {error:#}"));
            ExitCode::FAILURE
        }
    }
}
