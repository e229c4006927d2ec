//! Running services survive a nats-server restart: they reconnect by themselves and resume.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use parley_test_support::{eventually, http};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_nats_server_restarts_the_gateway_and_worker_reconnect_and_resume() {
    let mut stack = stack(1).await;
    let project = stack.project("Restart").await;
    let conversation = project.conversation_id();
    let mut provider = stack.socket(0, project.provider()).await;
    let client = stack.socket(0, project.client()).await;
    let before = send(&client, conversation, "before the restart").await;
    assert_eq!(next_message(&mut provider).await, before);

    stack.nats.restart();

    // Retry one idempotent send until the gateway is back on NATS.
    let addr = stack.gateway(0).addr;
    let path = format!("/v1/conversations/{conversation}/messages");
    let token = token(project.client());
    let after = eventually(
        "a send to succeed after the restart",
        Duration::from_secs(60),
        || async {
            let response = http::post(
                addr,
                &path,
                &token,
                &json!({ "body": "after the restart", "clientMsgId": "after-restart" }),
            )
            .await;
            assert!(
                response.status == 201 || response.status == 200 || response.status == 503,
                "while NATS is away a send is unavailable, nothing else: {}",
                response.raw
            );
            (response.status != 503).then_some(response.body["message"].clone())
        },
    )
    .await;
    // Live delivery resumed on the socket that stayed connected, and the worker persisted it.
    let (name, delivered) = provider
        .next_event(Duration::from_secs(60))
        .await
        .expect("live delivery resumes");
    assert_eq!((name.as_str(), &delivered), ("message:new", &after));
    stack
        .persisted(conversation, serde_json::from_value(after["id"].clone()).unwrap())
        .await;
    let history = ask(
        &client,
        "conversation:history",
        json!({ "conversationId": conversation }),
    )
    .await;
    assert_eq!(history["messages"], json!([before, after]));
}
