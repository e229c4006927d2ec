//! Typing indicators: only to the other participant's joined sockets, on any instance, expiring,
//! ended by leave and disconnect, and throttled on the way to NATS.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use parley_test_support::sio::Client;
use serde_json::{Value, json};
use uuid::Uuid;

async fn join(socket: &Client, conversation: Uuid) {
    let ack = ask(socket, "conversation:join", json!({ "conversationId": conversation })).await;
    assert_eq!(ack["ok"], true, "{ack}");
}

async fn typing(socket: &Client, conversation: Uuid, is_typing: bool) {
    let ack = ask(
        socket,
        "conversation:typing",
        json!({ "conversationId": conversation, "isTyping": is_typing }),
    )
    .await;
    assert_eq!(ack, json!({ "ok": true }));
}

async fn expect_typing(socket: &mut Client, conversation: Uuid, user: Uuid, is_typing: bool) {
    let (name, data) = socket
        .next_event(Duration::from_secs(20))
        .await
        .expect("a typing event");
    assert_eq!(name, "conversation:typing", "{data}");
    assert_eq!(
        data,
        json!({ "conversationId": conversation, "userId": user, "isTyping": is_typing })
    );
}

#[tokio::test]
async fn typing_reaches_only_the_other_participants_joined_sockets_across_instances() {
    let stack = stack(2).await;
    let project = stack.project("Typing").await;
    let conversation = project.conversation_id();
    let typist = stack.socket(0, project.client()).await;
    let mut typist_other_device = stack.socket(1, project.client()).await;
    let mut watcher = stack.socket(1, project.provider()).await;
    let mut not_joined = stack.socket(1, project.provider()).await;
    let stranger = stack.socket(0, Uuid::new_v4()).await;
    for socket in [&typist, &typist_other_device, &watcher] {
        join(socket, conversation).await;
    }

    typing(&typist, conversation, true).await;
    expect_typing(&mut watcher, conversation, project.client(), true).await;
    typing(&typist, conversation, false).await;
    expect_typing(&mut watcher, conversation, project.client(), false).await;
    // Neither the typist's own other device nor a socket that did not join got anything.
    typist_other_device
        .expect_no_event(Duration::from_millis(300))
        .await
        .unwrap();
    not_joined.expect_no_event(Duration::from_millis(50)).await.unwrap();

    let ack = ask(
        &stranger,
        "conversation:typing",
        json!({ "conversationId": conversation, "isTyping": true }),
    )
    .await;
    assert_eq!(code(&ack), "not_found");
    let ack = ask(
        &typist,
        "conversation:typing",
        json!({ "conversationId": conversation, "isTyping": "yes" }),
    )
    .await;
    assert_eq!(code(&ack), "invalid_request");
    watcher.expect_no_event(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn typing_that_is_not_refreshed_expires_after_about_five_seconds() {
    let stack = stack(1).await;
    let project = stack.project("Expiry").await;
    let conversation = project.conversation_id();
    let typist = stack.socket(0, project.client()).await;
    let mut watcher = stack.socket(0, project.provider()).await;
    join(&typist, conversation).await;
    join(&watcher, conversation).await;

    typing(&typist, conversation, true).await;
    expect_typing(&mut watcher, conversation, project.client(), true).await;
    let started = Instant::now();
    expect_typing(&mut watcher, conversation, project.client(), false).await;
    assert!(
        started.elapsed() >= Duration::from_millis(4500),
        "expired early: {:?}",
        started.elapsed()
    );

    // Refreshing keeps it alive past five seconds.
    typing(&typist, conversation, true).await;
    expect_typing(&mut watcher, conversation, project.client(), true).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        // A client refreshing every 1.5 s, as a typing client does.
        watcher
            .expect_no_event(Duration::from_millis(1500))
            .await
            .expect("no expiry while refreshed");
        typing(&typist, conversation, true).await;
    }
}

#[tokio::test]
async fn leaving_and_disconnecting_end_typing() {
    let stack = stack(2).await;
    let project = stack.project("Ending").await;
    let conversation = project.conversation_id();
    let typist = stack.socket(0, project.client()).await;
    let mut watcher = stack.socket(1, project.provider()).await;
    join(&typist, conversation).await;
    join(&watcher, conversation).await;

    typing(&typist, conversation, true).await;
    expect_typing(&mut watcher, conversation, project.client(), true).await;
    let ack = ask(&typist, "conversation:leave", json!({ "conversationId": conversation })).await;
    assert_eq!(ack, json!({ "ok": true }));
    let left = Instant::now();
    expect_typing(&mut watcher, conversation, project.client(), false).await;
    assert!(
        left.elapsed() < Duration::from_secs(4),
        "the leave ended it, not the expiry"
    );

    // The typist left, so it no longer sees the watcher typing.
    let mut typist = typist;
    typing(&watcher, conversation, true).await;
    typist.expect_no_event(Duration::from_millis(300)).await.unwrap();
    typing(&watcher, conversation, false).await;

    join(&typist, conversation).await;
    typing(&typist, conversation, true).await;
    expect_typing(&mut watcher, conversation, project.client(), true).await;
    typist.disconnect().await;
    let gone = Instant::now();
    expect_typing(&mut watcher, conversation, project.client(), false).await;
    assert!(
        gone.elapsed() < Duration::from_secs(4),
        "the disconnect ended it, not the expiry"
    );
}

#[tokio::test]
async fn a_flood_of_typing_emits_is_throttled_before_nats() {
    let stack = stack(1).await;
    let project = stack.project("Flood").await;
    let conversation = project.conversation_id();
    let typist = stack.socket(0, project.client()).await;
    join(&typist, conversation).await;
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let mut signals = nats
        .subscribe(parley_events::subjects::conversation_typing(conversation))
        .await
        .unwrap();
    nats.flush().await.unwrap();

    let started = Instant::now();
    for i in 0..300 {
        typing(&typist, conversation, i % 3 != 2).await;
    }
    typing(&typist, conversation, false).await;
    let elapsed = started.elapsed();
    // Collect what reached NATS, until it has been quiet for a while (a deferred signal may
    // still be on its way right after the last emit).
    let mut received: Vec<Value> = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), signals.next()).await {
        received.push(serde_json::from_slice(&message.payload).unwrap());
    }
    // A change at most every 300 ms and a refresh at most every second.
    let bound = 5 * (elapsed.as_secs() as usize + 2);
    assert!(
        received.len() <= bound,
        "{} signals for 301 emits in {elapsed:?} (bound {bound})",
        received.len()
    );
    assert!(received.len() < 100, "throttled far below the 301 emits");
    assert_eq!(
        received.last().unwrap()["isTyping"],
        false,
        "the last state always gets through"
    );
}
