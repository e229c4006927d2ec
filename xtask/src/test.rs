//! `cargo xtask test [cargo test args]`: what CI runs. A fresh Postgres on a free port for the
//! tests' databases, then fmt, clippy, `cargo test --workspace`, the compose.yaml checks and the
//! official socket.io-client against the binaries (tests/js) — every step run and recorded, a
//! summary, non-zero when any failed, and Postgres stopped whatever happens.
//!
//! Skips: `PARLEY_SKIP_LINT=1` (fmt, clippy), `PARLEY_SKIP_COMPOSE=1`, `PARLEY_SKIP_JS=1`.

use std::ffi::OsString;
use std::path::Path;

use anyhow::Context;

use crate::postgres::{Cluster, Postgres, stop_stale};
use crate::process::free_port;
use crate::signals::Signals;
use crate::steps::{Steps, section};
use crate::{Ctx, log, nats_server_bin, pg_bin_dir};

fn skipped(var: &str) -> bool {
    std::env::var(var).is_ok_and(|value| value == "1")
}

pub async fn run(ctx: &Ctx, signals: &Signals, args: Vec<OsString>) -> anyhow::Result<u8> {
    section("Setup");
    let pg_bin = pg_bin_dir()?;
    let nats = nats_server_bin()?;
    let test_dir = ctx.parley_dir().join("test");
    let pg_dir = test_dir.join("pg");
    stop_stale(&pg_bin, &pg_dir)?; // left by a killed earlier run
    match std::fs::remove_dir_all(&test_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context(format!("cannot remove {}", test_dir.display()));
        }
        _ => {}
    }
    let port = free_port()?;
    let postgres = Postgres::start(&pg_bin, &pg_dir, port, Cluster::Fresh)?;

    let database_url = postgres.url("postgres");
    let mut env: Vec<(&str, OsString)> = vec![
        ("PARLEY_TEST_DATABASE_URL", database_url.clone().into()),
        ("PARLEY_TEST_NATS_SERVER", nats.clone().into()),
        ("PARLEY_TEST_NATS_CONFIG", ctx.root.join("nats/nats-server.conf").into()),
        ("SQLX_OFFLINE", "true".into()),
    ];
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        env.push(("RUST_BACKTRACE", "1".into()));
    }
    println!("PARLEY_TEST_DATABASE_URL={database_url}");
    println!("PARLEY_TEST_NATS_SERVER={}", nats.display());

    let cargo = |args: &[&str]| {
        let mut command = ctx.cargo();
        command.args(args).envs(env.iter().cloned());
        command
    };
    let mut steps = Steps::default();
    // Every step returns early on a signal; `postgres` is dropped (stopped) on the way out.
    macro_rules! step {
        ($name:expr, $shown:expr, $command:expr) => {
            if let Some(code) = steps.run($name, $shown, $command, signals).await? {
                log("interrupted");
                return Ok(code);
            }
        };
    }

    if skipped("PARLEY_SKIP_LINT") {
        section("Lint skipped (PARLEY_SKIP_LINT=1)");
    } else {
        ensure_cargo_tool(ctx, "fmt", "rustfmt").await?;
        ensure_cargo_tool(ctx, "clippy", "clippy").await?;
        step!(
            "cargo fmt",
            "cargo fmt --all -- --check",
            cargo(&["fmt", "--all", "--", "--check"])
        );
        step!(
            "cargo clippy",
            "cargo clippy --workspace --all-targets -- -D warnings",
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
        );
    }

    // The whole workspace, unless the arguments choose packages (`--workspace` would override
    // a `-p`).
    let mut test_args: Vec<OsString> = vec!["test".into()];
    if !chooses_packages(&args) {
        test_args.push("--workspace".into());
    }
    test_args.extend(args.iter().cloned());
    let mut cargo_test = ctx.cargo();
    cargo_test.args(&test_args).envs(env.iter().cloned());
    let shown: Vec<String> = test_args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
    step!("cargo test", &format!("cargo {}", shown.join(" ")), cargo_test);

    if !skipped("PARLEY_SKIP_COMPOSE") {
        let name = "compose.yaml checks";
        match std::env::var_os("PARLEY_TEST_PY").filter(|py| !py.is_empty()) {
            Some(py) => {
                let mut command = tokio::process::Command::new(&py);
                command
                    .args(["-m", "unittest", "discover", "-s"])
                    .arg(ctx.root.join("tests/compose"))
                    .arg("-v")
                    .env(
                        "PYTHONPATH",
                        std::env::var_os("PARLEY_TEST_PYTHONPATH").unwrap_or_default(),
                    )
                    .current_dir(&ctx.root);
                let shown = format!("{} -m unittest discover -s tests/compose -v", Path::new(&py).display());
                step!(name, &shown, command);
            }
            None => {
                section(name);
                steps.fail(
                    name,
                    "jsonschema and PyYAML are missing: scripts/lib.sh could not install them (see its messages above)",
                );
            }
        }
    }

    let js = ctx.root.join("tests/js");
    if js.join("package.json").is_file() && !skipped("PARLEY_SKIP_JS") {
        // The Node tests start the binaries themselves.
        let bin_dir = ctx.target_dir.join("debug");
        step!("cargo build --bins", "cargo build --bins", cargo(&["build", "--bins"]));

        let in_js = |program: &str, args: &[&str]| {
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                .current_dir(&js)
                .envs(env.iter().cloned())
                .env("PARLEY_BIN_DIR", &bin_dir);
            command
        };
        if js.join("package-lock.json").is_file() || js.join("npm-shrinkwrap.json").is_file() {
            step!(
                "npm ci",
                "(cd tests/js && npm ci --no-audit --no-fund)",
                in_js("npm", &["ci", "--no-audit", "--no-fund"])
            );
        } else {
            step!(
                "npm install",
                "(cd tests/js && npm install --no-audit --no-fund)",
                in_js("npm", &["install", "--no-audit", "--no-fund"])
            );
        }

        match node_major().await {
            // Node 20 searches a folder argument for test files (*.test.js, test-*.js, …).
            Some(major) if major <= 20 => {
                let mut command = in_js("node", &["--test", "tests/js/"]);
                command.current_dir(&ctx.root);
                step!("node tests", "node --test tests/js/", command);
            }
            // Newer Node takes globs, not folders: let it search tests/js by its defaults.
            Some(_) => step!("node tests", "(cd tests/js && node --test)", in_js("node", &["--test"])),
            None => {
                section("node tests");
                steps.fail("node tests", "node is missing or did not say its version");
            }
        }
    }

    let code = steps.summary();
    drop(postgres);
    Ok(code)
}

/// Whether `cargo test` arguments name packages (before a `--`, after which they are the
/// test binaries').
fn chooses_packages(args: &[OsString]) -> bool {
    args.iter()
        .map(|arg| arg.to_string_lossy())
        .take_while(|arg| arg != "--")
        .any(|arg| {
            arg == "-p"
                || arg == "--package"
                || arg.starts_with("--package=")
                || (arg.starts_with("-p") && arg.len() > 2)
        })
}

/// The major version of `node` on PATH.
async fn node_major() -> Option<u32> {
    let out = tokio::process::Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Adds a rustup component (rustfmt, clippy) when its cargo subcommand is missing.
async fn ensure_cargo_tool(ctx: &Ctx, sub: &str, component: &str) -> anyhow::Result<()> {
    let present = ctx
        .cargo()
        .args([sub, "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success());
    if present {
        return Ok(());
    }
    log(format!("cargo {sub} is missing: rustup component add {component}"));
    let status = tokio::process::Command::new("rustup")
        .args(["component", "add", component])
        .status()
        .await
        .with_context(|| format!("cargo {sub} is missing and rustup is not available to add {component}"))?;
    anyhow::ensure!(status.success(), "rustup component add {component} failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_arguments_are_recognised() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(chooses_packages(&args(&["-p", "parley-store"])));
        assert!(chooses_packages(&args(&["--package=parley-store"])));
        assert!(chooses_packages(&args(&["-pparley-store", "name"])));
        assert!(!chooses_packages(&args(&["name_filter"])));
        assert!(!chooses_packages(&args(&["--", "-p"])));
    }
}
