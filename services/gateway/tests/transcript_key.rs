//! `PARLEY_TRANSCRIPT_KEY` is required: without it, or with a value that is not base64 of a
//! 32-byte seed (or a retired key that is not a public key), the gateway stops at start with one
//! line naming the variable and exit code 2, like every other configuration error.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley-gateway"));
    command
        .env("PARLEY_JWT_SECRET", "x".repeat(32))
        .env_remove("PARLEY_TRANSCRIPT_KEY")
        .env_remove("PARLEY_TRANSCRIPT_RETIRED_KEYS")
        // Were the key accepted, the gateway would bind this and wait for NATS: the test would
        // hang rather than pass by accident.
        .env("PARLEY_LISTEN", "127.0.0.1:0");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

#[test]
fn the_gateway_refuses_to_start_without_a_usable_transcript_key_in_one_line_naming_it() {
    let seed = parley_test_support::stack::TEST_TRANSCRIPT_KEY;
    for (env, variable) in [
        (vec![], "PARLEY_TRANSCRIPT_KEY"),
        (vec![("PARLEY_TRANSCRIPT_KEY", "c2hvcnQ=")], "PARLEY_TRANSCRIPT_KEY"),
        (
            vec![("PARLEY_TRANSCRIPT_KEY", "not base64 at all")],
            "PARLEY_TRANSCRIPT_KEY",
        ),
        (
            vec![
                ("PARLEY_TRANSCRIPT_KEY", seed),
                ("PARLEY_TRANSCRIPT_RETIRED_KEYS", "AAAA"),
            ],
            "PARLEY_TRANSCRIPT_RETIRED_KEYS",
        ),
    ] {
        let (code, stderr) = start(&env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{env:?}: {stderr}");
    }
}
