//! `cargo xtask test [cargo test args]`: what CI runs. A fresh Postgres on a free port for the
//! tests' databases, then fmt, clippy, `cargo test --workspace`, the compose.yaml checks, the
//! official socket.io-client against the binaries (tests/js), the client package's own tests
//! (clients/js) and the web chat in Debian's Chromium (clients/web, screenshots in
//! `.parley/test/screenshots`) — every step run and recorded, a summary, non-zero when any failed,
//! and Postgres stopped whatever happens. Clients are tested here, against the same binaries and
//! Postgres, so that a gateway change that breaks them fails the same run.
//!
//! Skips: `PARLEY_SKIP_LINT=1` (fmt, clippy), `PARLEY_SKIP_COMPOSE=1`, `PARLEY_SKIP_JS=1`
//! (tests/js), `PARLEY_SKIP_CLIENT=1` (clients/js), `PARLEY_SKIP_BROWSER=1` (clients/web).
//! `PARLEY_CHROMIUM` (set by scripts/lib.sh) is the browser.

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
    let run_js = js.join("package.json").is_file() && !skipped("PARLEY_SKIP_JS");
    let run_client = !skipped("PARLEY_SKIP_CLIENT");
    let run_browser = !skipped("PARLEY_SKIP_BROWSER");
    if run_js || run_client || run_browser {
        // The Node tests start the binaries themselves, with tests/js's harness.
        let bin_dir = ctx.target_dir.join("debug");
        step!("cargo build --bins", "cargo build --bins", cargo(&["build", "--bins"]));

        let in_dir = |dir: &Path, program: &str, args: &[&str]| {
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                .current_dir(dir)
                .envs(env.iter().cloned())
                .env("PARLEY_BIN_DIR", &bin_dir)
                // playwright-core never fetches a browser; this says so to anything that might.
                .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
            command
        };
        let (install, shown) = npm_install_args(&js);
        step!(
            "npm ci",
            &format!("(cd tests/js && {shown})"),
            in_dir(&js, "npm", install)
        );

        if run_js {
            match node_major().await {
                // Node 20 searches a folder argument for test files (*.test.js, test-*.js, …).
                Some(major) if major <= 20 => {
                    let mut command = in_dir(&js, "node", &["--test", "tests/js/"]);
                    command.current_dir(&ctx.root);
                    step!("node tests", "node --test tests/js/", command);
                }
                // Newer Node takes globs, not folders: let it search tests/js by its defaults.
                Some(_) => step!(
                    "node tests",
                    "(cd tests/js && node --test)",
                    in_dir(&js, "node", &["--test"])
                ),
                None => {
                    section("node tests");
                    steps.fail("node tests", "node is missing or did not say its version");
                }
            }
        }

        // clients/js: @parley/client, built with tsc; the web chat loads its dist/.
        let client = ctx.root.join("clients/js");
        if run_client || run_browser {
            let (install, shown) = npm_install_args(&client);
            step!(
                "client package: npm ci",
                &format!("(cd clients/js && {shown})"),
                in_dir(&client, "npm", install)
            );
            step!(
                "client package: build",
                "(cd clients/js && npm run build)",
                in_dir(&client, "npm", &["run", "build"])
            );
        }
        if run_client {
            step!(
                "client package: typecheck",
                "(cd clients/js && npm run typecheck)",
                in_dir(&client, "npm", &["run", "typecheck"])
            );
            // Named one by one: Node 20 takes no globs, and a folder would run the helpers too.
            let files = test_files(&client.join("test"))?;
            let mut args = vec!["--test".to_owned()];
            args.extend(files.iter().map(|file| format!("test/{file}")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            step!(
                "client package tests",
                &format!("(cd clients/js && node {})", args.join(" ")),
                in_dir(&client, "node", &args)
            );
        }

        // clients/web: the chat in Debian's Chromium (scripts/lib.sh installs it).
        if run_browser {
            let web = ctx.root.join("clients/web");
            let (install, shown) = npm_install_args(&web);
            step!(
                "web: npm ci",
                &format!("(cd clients/web && {shown})"),
                in_dir(&web, "npm", install)
            );
            let name = "browser tests";
            match std::env::var_os("PARLEY_CHROMIUM").filter(|path| Path::new(path).is_file()) {
                Some(chromium) => {
                    let mut command = in_dir(&web, "node", &["--test", "test/browser.test.mjs"]);
                    command
                        .env("PARLEY_CHROMIUM", chromium)
                        .env("PARLEY_SCREENSHOTS", test_dir.join("screenshots"));
                    step!(name, "(cd clients/web && node --test test/browser.test.mjs)", command);
                }
                None => {
                    section(name);
                    steps.fail(
                        name,
                        "Chromium is missing: scripts/lib.sh could not install Debian's chromium (see its messages above)",
                    );
                }
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

/// `npm ci` where a lock file pins the packages, else `npm install`; and how to show it.
fn npm_install_args(dir: &Path) -> (&'static [&'static str], &'static str) {
    if dir.join("package-lock.json").is_file() || dir.join("npm-shrinkwrap.json").is_file() {
        (&["ci", "--no-audit", "--no-fund"], "npm ci --no-audit --no-fund")
    } else {
        (
            &["install", "--no-audit", "--no-fund"],
            "npm install --no-audit --no-fund",
        )
    }
}

/// The `*.test.mjs` files of `dir`, sorted by name.
fn test_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.mjs"))
        .collect();
    files.sort();
    Ok(files)
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
