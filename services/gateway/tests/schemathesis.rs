//! The gateway fuzzed against its own OpenAPI document: Schemathesis (PyPI, pinned and installed
//! into .parley/venv by scripts/lib.sh) reads `GET /v1/openapi.json` from a running gateway with a
//! real stack behind it (NATS, Postgres, a persistence worker, a project the caller is in) and
//! runs every operation with valid tokens, in every phase, positive and negative cases, a bounded
//! number of examples each. It fails on any 5xx, any answer the document does not describe
//! (status, headers, content type, body schema), and any answer slower than a few seconds.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use parley_test_support::stack::{Run, TestStack};
use parley_test_support::{TEST_JWT_SECRET, token_for};
use uuid::Uuid;

/// Examples per operation and phase.
const MAX_EXAMPLES: &str = "100";
/// The slowest answer allowed, in seconds.
const MAX_RESPONSE_SECONDS: &str = "3";

/// The Schemathesis CLI: `PARLEY_SCHEMATHESIS`, else the one scripts/lib.sh installs in the
/// checkout's .parley/venv.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("PARLEY_SCHEMATHESIS")
        .filter(|path| !path.is_empty())
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.parley/venv/bin/schemathesis"),
            PathBuf::from,
        );
    assert!(
        path.is_file(),
        "Schemathesis is not installed at {}: `bash scripts/test.sh` installs it (scripts/lib.sh, \
         parley_ensure_schemathesis), or set PARLEY_SCHEMATHESIS to its CLI",
        path.display()
    );
    path
}

/// The `N generated` under `Test cases:` in Schemathesis' summary: how many cases ran.
fn cases_run(output: &str) -> Option<u64> {
    let mut lines = output.lines().skip_while(|line| line.trim() != "Test cases:");
    let counts = lines.nth(1)?;
    let (generated, rest) = counts.trim().split_once(' ')?;
    rest.starts_with("generated").then(|| generated.parse().ok()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_the_openapi_document_with_valid_tokens() {
    let cli = schemathesis();
    let stack = TestStack::builder()
        .gateways(1)
        .persistence(Run::InProcess)
        .build()
        .await;
    let project = stack.project("Fuzzed").await;
    let token = token_for(project.client(), TEST_JWT_SECRET);
    let gateway = stack.gateway(0);
    // A conversation with a message in it, so that the caller's list, reads and marks have
    // something to answer with.
    let sent = parley_test_support::http::post(
        gateway.addr,
        &format!("/v1/conversations/{}/messages", project.conversation_id()),
        &token,
        &serde_json::json!({ "body": "before the fuzzing" }),
    )
    .await;
    assert_eq!(sent.status, 201, "{}", sent.raw);

    let workdir = std::env::temp_dir().join(format!("parley-schemathesis-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&workdir).unwrap();
    let run = tokio::process::Command::new(&cli)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", gateway.url()))
        .args(["--checks", "all"])
        .args(["--mode", "all"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-response-time", MAX_RESPONSE_SECONDS])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["--workers", "1"])
        .arg("--no-color")
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .current_dir(&workdir)
        .env("NO_COLOR", "1")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("Schemathesis ran for more than 15 minutes")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    std::fs::remove_dir_all(&workdir).unwrap();
    assert!(output.status.success(), "Schemathesis found problems:\n{text}");
    let cases = cases_run(&text).unwrap_or_else(|| panic!("no test case count in:\n{text}"));
    assert!(cases >= 100, "Schemathesis ran only {cases} cases:\n{text}");
    println!("Schemathesis ran {cases} cases and found nothing:\n{text}");
}
