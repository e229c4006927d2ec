//! Identity with the shared secret: HS256 tokens with `exp` and a UUID `sub`, for sockets and HTTP
//! alike (the identity provider's asymmetric tokens: identity_provider.rs).

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use chrono::Utc;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use parley_test_support::TEST_JWT_SECRET;
use parley_test_support::http;
use parley_test_support::sio::{Client, Error};
use serde_json::{Value, json};
use uuid::Uuid;

fn signed(algorithm: Algorithm, secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The tokens that must never get in.
fn bad_tokens(user: Uuid) -> Vec<(&'static str, Value)> {
    let now = Utc::now().timestamp();
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(json!({ "sub": user, "exp": now + 3600 }).to_string().as_bytes())
    );
    vec![
        ("no token", json!({})),
        ("not a string", json!({ "token": 42 })),
        ("garbage", json!({ "token": "not.a.jwt" })),
        ("alg none", json!({ "token": unsigned })),
        (
            "HS512",
            json!({ "token": signed(Algorithm::HS512, TEST_JWT_SECRET, &json!({ "sub": user, "exp": now + 3600 })) }),
        ),
        (
            "other secret",
            json!({ "token": signed(Algorithm::HS256, "another-secret-0123456789", &json!({ "sub": user, "exp": now + 3600 })) }),
        ),
        (
            "expired",
            json!({ "token": signed(Algorithm::HS256, TEST_JWT_SECRET, &json!({ "sub": user, "exp": now - 10 })) }),
        ),
        (
            "no exp",
            json!({ "token": signed(Algorithm::HS256, TEST_JWT_SECRET, &json!({ "sub": user })) }),
        ),
        (
            "sub not a uuid",
            json!({ "token": signed(Algorithm::HS256, TEST_JWT_SECRET, &json!({ "sub": "alice", "exp": now + 3600 })) }),
        ),
    ]
}

#[tokio::test]
async fn sockets_without_a_valid_hs256_token_get_an_unauthorized_connect_error() {
    let stack = stack(1).await;
    let user = Uuid::new_v4();
    for (why, auth) in bad_tokens(user) {
        match Client::connect(&stack.gateway(0).url(), auth).await {
            Err(Error::ConnectRefused(message)) => assert_eq!(message, "unauthorized", "{why}"),
            other => panic!("{why}: expected a connect error, got {other:?}"),
        }
    }
    let good = Client::connect(&stack.gateway(0).url(), json!({ "token": token(user) })).await;
    assert!(good.is_ok(), "a valid token connects");
}

#[tokio::test]
async fn http_without_a_valid_token_is_401_with_the_error_body() {
    let stack = stack(1).await;
    let addr = stack.gateway(0).addr;
    let user = Uuid::new_v4();
    let missing = http::request(addr, "GET", "/v1/conversations", None, None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body["error"]["code"], "unauthorized");
    assert!(missing.body["error"]["message"].is_string());
    for (why, auth) in bad_tokens(user) {
        let Some(token) = auth["token"].as_str() else { continue };
        let response = http::get(addr, "/v1/conversations", token).await;
        assert_eq!(response.status, 401, "{why}");
        assert_eq!(response.body["error"]["code"], "unauthorized", "{why}");
    }
    let ok = http::get(addr, "/v1/conversations", &token(user)).await;
    assert_eq!((ok.status, ok.body.clone()), (200, json!({ "conversations": [] })));
    // Probes need no token.
    assert_eq!(http::request(addr, "GET", "/healthz", None, None).await.status, 200);
    let ready = http::request(addr, "GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.raw);
    let unknown = http::get(addr, "/v2/nothing", &token(user)).await;
    assert_eq!(
        (unknown.status, unknown.body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[test]
fn the_gateway_refuses_to_start_without_a_jwt_secret_in_one_line_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_parley-gateway"))
        .env_remove("PARLEY_JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("PARLEY_JWT_SECRET"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_parley-gateway"))
        .env("PARLEY_JWT_SECRET", "x".repeat(32))
        .env("PARLEY_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("PARLEY_LISTEN"),
        "{stderr}"
    );
}
