//! `cargo xtask sqlx-prepare`: regenerates `.sqlx/`, the compile-time query metadata that lets
//! `sqlx::query!` build offline (CI, Docker) and checks every query against `migrations/`. A
//! throwaway Postgres with the migrations applied, then the crates holding queries rebuilt with
//! the macros writing their metadata (what `cargo sqlx prepare` does, without sqlx-cli).
//!
//! It works while the queries no longer match `.sqlx/` because xtask does not build the store.

use std::ffi::OsString;

use anyhow::{Context, bail};

use crate::postgres::{Cluster, Postgres, stop_stale};
use crate::process::{describe, free_port};
use crate::signals::Signals;
use crate::steps::{Outcome, run_foreground};
use crate::{Ctx, log, pg_bin_dir};

pub async fn run(ctx: &Ctx, signals: &Signals) -> anyhow::Result<u8> {
    let pg_bin = pg_bin_dir()?;
    let pg_dir = ctx.parley_dir().join("sqlx/pg");
    stop_stale(&pg_bin, &pg_dir)?;
    let postgres = Postgres::start(&pg_bin, &pg_dir, free_port()?, Cluster::Fresh)?;
    postgres.create_database("parley")?;

    let mut migrations: Vec<_> = std::fs::read_dir(ctx.root.join("migrations"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    migrations.sort();
    for migration in &migrations {
        let mut psql = postgres.psql();
        psql.args(["-d", "parley", "-v", "ON_ERROR_STOP=1", "-q", "-f"])
            .arg(migration);
        let status = psql.status().context("psql")?;
        anyhow::ensure!(status.success(), "{} failed to apply", migration.display());
    }

    let sqlx_dir = ctx.root.join(".sqlx");
    match std::fs::remove_dir_all(&sqlx_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    std::fs::create_dir_all(&sqlx_dir)?;

    // Force the macros to run again in every crate that holds queries.
    let mut clean = ctx.cargo();
    clean.args(["clean", "-p", "parley-store", "-p", "parley-test-support"]);
    let mut check = ctx.cargo();
    check
        .args(["check", "--workspace", "--all-targets"])
        .env("SQLX_OFFLINE", "false")
        .env("SQLX_OFFLINE_DIR", &sqlx_dir)
        .env("DATABASE_URL", postgres.url("parley"));
    for (what, command) in [("cargo clean", clean), ("cargo check", check)] {
        match run_foreground(command, signals).await? {
            Outcome::Exited(status) if status.success() => {}
            Outcome::Exited(status) => bail!("{what} failed ({})", describe(status)),
            Outcome::Interrupted(code) => return Ok(code),
        }
    }
    let written = std::fs::read_dir(&sqlx_dir)?
        .filter_map(Result::ok)
        .filter(|entry| {
            let name: OsString = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("query-") && name.ends_with(".json")
        })
        .count();
    log(format!("wrote {written} query files to .sqlx/"));
    drop(postgres);
    Ok(0)
}
