//! The API documents in docs/ are what the code generates: docs/openapi.json is the OpenAPI 3.1
//! document the gateway serves at `GET /v1/openapi.json` (from the handlers' annotations and the
//! types they read and answer), and docs/asyncapi.yaml the AsyncAPI 3.0 document of the Socket.IO
//! events and NATS subjects (with the JSON Schemas of the same types), which must also validate
//! against the AsyncAPI 3.0 schema.
//!
//! After a change to the API, `PARLEY_UPDATE_DOCS=1 cargo test -p parley-gateway --test
//! api_documents` rewrites both files; review the diff and commit it.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use parley_test_support::http;
use parley_test_support::stack::{Spec, TestStack};
use serde_json::Value;

fn docs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs").join(name)
}

/// The committed text of `name`, rewritten first from `generated` under `PARLEY_UPDATE_DOCS=1`.
fn committed(name: &str, generated: &str) -> String {
    let path = docs(name);
    if std::env::var("PARLEY_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, generated).unwrap();
    }
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (PARLEY_UPDATE_DOCS=1 writes it)", path.display()))
}

#[tokio::test]
async fn the_committed_openapi_document_is_the_one_the_gateway_generates_and_serves() {
    let generated = parley_gateway::openapi::document();
    let file = committed("openapi.json", generated);
    assert!(
        file == generated,
        "docs/openapi.json differs from what the code generates: run PARLEY_UPDATE_DOCS=1 cargo test -p parley-gateway --test api_documents"
    );

    let stack = TestStack::builder().build().await;
    let gateway = stack.start(Spec::gateway()).await;
    let served = http::request(gateway.addr, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), Some("application/json"));
    assert!(served.raw == file, "GET /v1/openapi.json serves docs/openapi.json");

    let document: Value = serde_json::from_str(&file).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for route in [
        "/v1/conversations",
        "/v1/conversations/{id}",
        "/v1/conversations/{id}/messages",
        "/v1/conversations/{id}/read",
        "/v1/conversations/{id}/transcript",
        "/v1/conversations/{id}/checkpoint",
        "/v1/transcript-keys",
        "/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains(&route), "{route} is documented: {paths:?}");
    }
    assert_eq!(paths.len(), 11, "every route and nothing else: {paths:?}");
}

/// The AsyncAPI document as committed: YAML, generated from `parley_gateway::asyncapi`.
fn asyncapi_yaml() -> String {
    let header = "# Parley's AsyncAPI 3.0 document, generated from the code (services/gateway/src/asyncapi.rs)\n\
                  # by `PARLEY_UPDATE_DOCS=1 cargo test -p parley-gateway --test api_documents`: do not edit.\n";
    format!(
        "{header}{}",
        serde_norway::to_string(&parley_gateway::asyncapi::document()).unwrap()
    )
}

#[test]
fn the_committed_asyncapi_document_is_the_one_the_code_generates() {
    let generated = asyncapi_yaml();
    let file = committed("asyncapi.yaml", &generated);
    assert!(
        file == generated,
        "docs/asyncapi.yaml differs from what the code generates: run PARLEY_UPDATE_DOCS=1 cargo test -p parley-gateway --test api_documents"
    );
    // The YAML reads back as the document (tests/js validates it against the AsyncAPI 3.0 schema).
    let read: Value = serde_norway::from_str(&file).unwrap();
    assert_eq!(read, parley_gateway::asyncapi::document());
    assert_eq!(read["asyncapi"], "3.0.0");
    let messages = read["channels"]["socket"]["messages"].as_object().unwrap();
    let events: Vec<&str> = messages.values().filter_map(|m| m["name"].as_str()).collect();
    for event in [
        "message:send",
        "conversation:join",
        "conversation:leave",
        "conversation:typing",
        "conversation:markRead",
        "conversation:list",
        "conversation:history",
        "message:new",
        "message:read",
        "conversation:read",
    ] {
        assert!(events.contains(&event), "{event} is documented: {events:?}");
    }
    for subject in [
        "parley.project.started",
        "parley.project.closed",
        "parley.notification.{recipientId}",
    ] {
        assert!(
            read["channels"]
                .as_object()
                .unwrap()
                .values()
                .any(|c| c["address"] == subject),
            "{subject} is documented"
        );
    }
}
