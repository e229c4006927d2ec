//! `cargo xtask bench [--mode short|full] [--only …]`: a private Postgres on a free port, the
//! release binaries, the Node baseline server's dependencies (bench/node), then `parley-bench`,
//! which starts its own nats-server and databases per part and writes `.parley/bench/report.md`
//! and `report.json`; the report is printed at the end. Figures never fail the run; the bench's
//! own checks do. (`scripts/bench.sh` raises the open-files limit before it hands over.)

use std::ffi::OsString;

use anyhow::bail;

use crate::postgres::{Cluster, Postgres, stop_stale};
use crate::process::{describe, free_port};
use crate::signals::Signals;
use crate::steps::{Outcome, run_foreground};
use crate::{Ctx, log, nats_server_bin, pg_bin_dir};

pub async fn run(ctx: &Ctx, signals: &Signals, args: Vec<OsString>) -> anyhow::Result<u8> {
    let pg_bin = pg_bin_dir()?;
    let nats = nats_server_bin()?;
    let pg_dir = ctx.parley_dir().join("bench/pg");
    stop_stale(&pg_bin, &pg_dir)?;
    let postgres = Postgres::start(&pg_bin, &pg_dir, free_port()?, Cluster::Fresh)?;
    let env: [(&str, OsString); 3] = [
        ("PARLEY_TEST_DATABASE_URL", postgres.url("postgres").into()),
        ("PARLEY_TEST_NATS_SERVER", nats.into()),
        ("SQLX_OFFLINE", "true".into()),
    ];

    log("building release binaries");
    let mut build = ctx.cargo();
    build
        .args(["build", "--release", "--locked", "--bins"])
        .envs(env.iter().cloned());
    match run_foreground(build, signals).await? {
        Outcome::Exited(status) if status.success() => {}
        Outcome::Exited(status) => bail!("cargo build --release failed ({})", describe(status)),
        Outcome::Interrupted(code) => return Ok(code),
    }

    let node = ctx.root.join("bench/node");
    if node.join("package.json").is_file() {
        log("installing the Node baseline server");
        let install = if node.join("package-lock.json").is_file() {
            "ci"
        } else {
            "install"
        };
        let mut npm = tokio::process::Command::new("npm");
        npm.args([install, "--no-audit", "--no-fund"])
            .current_dir(&node)
            .stdout(std::process::Stdio::null());
        match run_foreground(npm, signals).await? {
            Outcome::Exited(status) if status.success() => {}
            Outcome::Exited(status) => bail!("npm {install} in bench/node failed ({})", describe(status)),
            Outcome::Interrupted(code) => return Ok(code),
        }
    }

    let release = ctx.target_dir.join("release");
    let out = ctx.parley_dir().join("bench");
    let mut bench = tokio::process::Command::new(release.join("parley-bench"));
    bench
        .arg("--bin-dir")
        .arg(&release)
        .arg("--out")
        .arg(&out)
        .args(["--nats-config", "nats/nats-server.conf"])
        .args(&args)
        .current_dir(&ctx.root)
        .envs(env.iter().cloned());
    match run_foreground(bench, signals).await? {
        Outcome::Exited(status) if status.success() => {}
        Outcome::Exited(status) => {
            log(format!("parley-bench failed ({})", describe(status)));
            return Ok(status.code().and_then(|code| u8::try_from(code).ok()).unwrap_or(1));
        }
        Outcome::Interrupted(code) => return Ok(code),
    }
    println!();
    print!("{}", std::fs::read_to_string(out.join("report.md"))?);
    drop(postgres);
    Ok(0)
}
