//! The message path end to end: socket and HTTP sends through a real gateway, JetStream and the
//! persistence worker, out to every socket of both participants on every gateway instance.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use parley_test_support::http;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn every_send_path_delivers_to_all_sockets_of_both_participants_once_on_any_instance() {
    let stack = stack(2).await;
    let project = stack.project("Fan-out").await;
    let conversation = project.conversation_id();
    let client_a = stack.socket(0, project.client()).await;
    let mut client_b = stack.socket(1, project.client()).await;
    let mut provider = stack.socket(1, project.provider()).await;
    let mut stranger = stack.socket(0, Uuid::new_v4()).await;
    let mut client_a = client_a;

    let first = send(&client_a, conversation, "hello over the socket").await;
    let second = http::post(
        stack.gateway(1).addr,
        &format!("/v1/conversations/{conversation}/messages"),
        &token(project.provider()),
        &json!({ "body": "hello over HTTP" }),
    )
    .await;
    assert_eq!(second.status, 201, "{}", second.raw);
    let second = second.body["message"].clone();
    assert!(second["seq"].as_i64().unwrap() > first["seq"].as_i64().unwrap());

    // Each socket sees exactly the two messages, in order, each once: the event after the first
    // is the second, and nothing follows.
    for socket in [&mut client_a, &mut client_b, &mut provider] {
        assert_eq!(next_message(socket).await, first);
        assert_eq!(next_message(socket).await, second);
    }
    for socket in [&mut client_a, &mut client_b, &mut provider, &mut stranger] {
        socket
            .expect_no_event(Duration::from_millis(300))
            .await
            .expect("no further event");
    }
    assert_eq!(first["senderId"], json!(project.client()));
    assert_eq!(first["projectId"], json!(project.event.project_id));
    assert_eq!(first["clientMsgId"], Value::Null);
    assert!(first["createdAt"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn bad_sends_are_refused_with_the_contract_code_store_nothing_and_keep_the_socket() {
    let stack = stack(1).await;
    let project = stack.project("Validation").await;
    let conversation = project.conversation_id();
    let socket = stack.socket(0, project.client()).await;
    let mut provider = stack.socket(0, project.provider()).await;

    let cases: Vec<(Value, &str)> = vec![
        (json!({ "conversationId": conversation, "body": "" }), "invalid_message"),
        (
            json!({ "conversationId": conversation, "body": "  \n\t " }),
            "invalid_message",
        ),
        (
            json!({ "conversationId": conversation, "body": "x".repeat(5001) }),
            "invalid_message",
        ),
        (
            json!({ "conversationId": conversation, "body": "bell\u{7}" }),
            "invalid_message",
        ),
        (
            json!({ "conversationId": conversation, "body": "nul\u{0}" }),
            "invalid_message",
        ),
        (json!({ "conversationId": conversation, "body": 42 }), "invalid_message"),
        (
            json!({ "conversationId": conversation, "body": ["a"] }),
            "invalid_message",
        ),
        (json!({ "conversationId": conversation }), "invalid_message"),
        (
            json!({ "conversationId": conversation, "body": "ok", "clientMsgId": "has space" }),
            "invalid_message",
        ),
        (
            json!({ "conversationId": conversation, "body": "ok", "clientMsgId": "x".repeat(65) }),
            "invalid_message",
        ),
        (
            json!({ "conversationId": "not-a-uuid", "body": "hi" }),
            "invalid_request",
        ),
        (json!({ "conversationId": 7, "body": "hi" }), "invalid_request"),
        (json!({ "body": "hi" }), "invalid_request"),
        (json!("just a string"), "invalid_request"),
        (json!([1, 2]), "invalid_request"),
        (Value::Null, "invalid_request"),
    ];
    for (payload, expected) in &cases {
        let ack = ask(&socket, "message:send", payload.clone()).await;
        assert_eq!(code(&ack), *expected, "payload {payload}");
        assert!(ack["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(socket.is_connected(), "socket dropped after {payload}");
    }
    // A packet with no payload at all.
    let ack = socket.emit_raw_with_ack(r#"["message:send"]"#, WAIT).await.unwrap();
    assert_eq!(code(&ack), "invalid_request");

    // HTTP refuses the same way.
    let path = format!("/v1/conversations/{conversation}/messages");
    let addr = stack.gateway(0).addr;
    let t = token(project.client());
    for (body, status, expected) in [
        (r#"{"body":""}"#, 400, "invalid_message"),
        (r#"{"body":5}"#, 400, "invalid_message"),
        (r"[1]", 400, "invalid_request"),
        (r"not json", 400, "invalid_request"),
    ] {
        let response = http::request(addr, "POST", &path, Some(&t), Some(body)).await;
        assert_eq!(response.status, status, "{body}: {}", response.raw);
        assert_eq!(response.body["error"]["code"], expected, "{body}");
    }
    let response = http::request(
        addr,
        "POST",
        "/v1/conversations/nope/messages",
        Some(&t),
        Some(r#"{"body":"x"}"#),
    )
    .await;
    assert_eq!(
        (response.status, response.body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );

    // The limits themselves pass: 5000 characters, and 5000 emoji.
    let long = send(&socket, conversation, &"x".repeat(5000)).await;
    let emoji = send(&socket, conversation, &"😀".repeat(5000)).await;
    // The recipient got exactly these two: nothing refused was delivered.
    assert_eq!(next_message(&mut provider).await["id"], long["id"]);
    assert_eq!(next_message(&mut provider).await["id"], emoji["id"]);
    provider.expect_no_event(Duration::from_millis(200)).await.unwrap();
    // And nothing refused was stored.
    stack
        .persisted(conversation, serde_json::from_value(emoji["id"].clone()).unwrap())
        .await;
    let history = ask(
        &socket,
        "conversation:history",
        json!({ "conversationId": conversation }),
    )
    .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2, "{history}");
}

#[tokio::test]
async fn a_non_participant_gets_not_found_for_every_operation_exactly_as_for_a_missing_conversation() {
    let stack = stack(1).await;
    let project = stack.project("Private").await;
    let existing = project.conversation_id();
    let missing = Uuid::new_v4();
    let stranger = Uuid::new_v4();
    let socket = stack.socket(0, stranger).await;
    let addr = stack.gateway(0).addr;
    let t = token(stranger);

    let mut answers = Vec::new();
    for conversation in [existing, missing] {
        let send_ack = ask(
            &socket,
            "message:send",
            json!({ "conversationId": conversation, "body": "let me in" }),
        )
        .await;
        let history_ack = ask(
            &socket,
            "conversation:history",
            json!({ "conversationId": conversation }),
        )
        .await;
        let get = http::get(addr, &format!("/v1/conversations/{conversation}"), &t).await;
        let messages = http::get(addr, &format!("/v1/conversations/{conversation}/messages"), &t).await;
        let post = http::post(
            addr,
            &format!("/v1/conversations/{conversation}/messages"),
            &t,
            &json!({ "body": "hi" }),
        )
        .await;
        for status in [get.status, messages.status, post.status] {
            assert_eq!(status, 404);
        }
        assert_eq!(code(&send_ack), "not_found");
        assert_eq!(code(&history_ack), "not_found");
        answers.push((send_ack, history_ack, get.body, messages.body, post.body));
    }
    assert_eq!(
        answers[0], answers[1],
        "an existing conversation must look exactly like a missing one"
    );
    let list = ask(&socket, "conversation:list", json!({})).await;
    assert_eq!(list, json!({ "ok": true, "conversations": [] }));
}

#[tokio::test]
async fn the_stored_sender_is_always_the_token_subject_whatever_the_payload_claims() {
    let stack = stack(1).await;
    let project = stack.project("Spoof").await;
    let conversation = project.conversation_id();
    let socket = stack.socket(0, project.client()).await;
    let ack = ask(
        &socket,
        "message:send",
        json!({ "conversationId": conversation, "body": "who am I", "senderId": project.provider(), "seq": 1 }),
    )
    .await;
    assert_eq!(ack["message"]["senderId"], json!(project.client()));
    let id = serde_json::from_value(ack["message"]["id"].clone()).unwrap();
    stack.persisted(conversation, id).await;
    let stored = stack.db.store().message(conversation, id).await.unwrap().unwrap();
    assert_eq!(stored.sender_id, project.client());
}

#[tokio::test]
async fn a_repeated_client_msg_id_returns_the_first_message_and_delivers_nothing_new() {
    let stack = stack(1).await;
    let project = stack.project("Idempotent").await;
    let conversation = project.conversation_id();
    let socket = stack.socket(0, project.client()).await;
    let mut provider = stack.socket(0, project.provider()).await;
    let payload = json!({ "conversationId": conversation, "body": "once", "clientMsgId": "retry-1" });
    let first = ask(&socket, "message:send", payload.clone()).await;
    let again = ask(&socket, "message:send", payload).await;
    assert_eq!(first["message"], again["message"]);
    assert_eq!(first["message"]["clientMsgId"], "retry-1");
    // Over HTTP, the repeat answers 200 with the same message.
    let path = format!("/v1/conversations/{conversation}/messages");
    let http_repeat = http::post(
        stack.gateway(0).addr,
        &path,
        &token(project.client()),
        &json!({ "body": "changed", "clientMsgId": "retry-1" }),
    )
    .await;
    assert_eq!(http_repeat.status, 200);
    assert_eq!(http_repeat.body["message"], first["message"]);
    // Once persisted (beyond the stream's memory), it is still the same message.
    let id = serde_json::from_value(first["message"]["id"].clone()).unwrap();
    stack.persisted(conversation, id).await;
    let later = ask(
        &socket,
        "message:send",
        json!({ "conversationId": conversation, "body": "x", "clientMsgId": "retry-1" }),
    )
    .await;
    assert_eq!(later["message"], first["message"]);
    // The same clientMsgId from the other participant is a different message.
    let theirs = http::post(
        stack.gateway(0).addr,
        &path,
        &token(project.provider()),
        &json!({ "body": "mine", "clientMsgId": "retry-1" }),
    )
    .await;
    assert_eq!(theirs.status, 201);
    assert_ne!(theirs.body["message"]["id"], first["message"]["id"]);

    assert_eq!(next_message(&mut provider).await, first["message"]);
    assert_eq!(
        next_message(&mut provider).await,
        theirs.body["message"],
        "the repeats delivered nothing"
    );
}

#[tokio::test]
async fn history_pages_are_ascending_complete_and_non_overlapping() {
    let stack = stack(1).await;
    let project = stack.project("History").await;
    let conversation = project.conversation_id();
    let socket = stack.socket(0, project.client()).await;
    let mut sent = Vec::new();
    let mut last = Value::Null;
    for i in 0..24 {
        last = send(&socket, conversation, &format!("message {i}")).await;
        sent.push(last["seq"].as_i64().unwrap());
    }
    stack
        .persisted(conversation, serde_json::from_value(last["id"].clone()).unwrap())
        .await;

    // Backwards from the latest page with beforeSeq.
    let mut backwards = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut query = json!({ "conversationId": conversation, "limit": 5 });
        if let Some(b) = before {
            query["beforeSeq"] = json!(b);
        }
        let page = ask(&socket, "conversation:history", query).await;
        let seqs: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "ascending within a page: {seqs:?}"
        );
        backwards.splice(0..0, seqs.iter().copied());
        if page["hasMore"] != true {
            break;
        }
        before = seqs.first().copied();
    }
    assert_eq!(backwards, sent);

    // Forwards with afterSeq over HTTP.
    let mut forwards: Vec<i64> = Vec::new();
    let mut after = 0;
    loop {
        let page = http::get(
            stack.gateway(0).addr,
            &format!("/v1/conversations/{conversation}/messages?afterSeq={after}&limit=7"),
            &token(project.provider()),
        )
        .await;
        assert_eq!(page.status, 200);
        let seqs: Vec<i64> = page.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        forwards.extend(&seqs);
        if page.body["hasMore"] != true {
            break;
        }
        after = *seqs.last().unwrap();
    }
    assert_eq!(forwards, sent);

    // A window between two bounds.
    let page = ask(
        &socket,
        "conversation:history",
        json!({ "conversationId": conversation, "afterSeq": sent[2], "beforeSeq": sent[6] }),
    )
    .await;
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, sent[3..6].to_vec());

    // Bad bounds are invalid requests.
    for bad in [
        json!({ "limit": 0 }),
        json!({ "limit": 201 }),
        json!({ "beforeSeq": "x" }),
    ] {
        let mut query = bad.clone();
        query["conversationId"] = json!(conversation);
        assert_eq!(
            code(&ask(&socket, "conversation:history", query).await),
            "invalid_request",
            "{bad}"
        );
    }
    let bad = http::get(
        stack.gateway(0).addr,
        &format!("/v1/conversations/{conversation}/messages?limit=abc"),
        &token(project.client()),
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_closed_conversation_refuses_sends_and_keeps_its_history() {
    let stack = stack(1).await;
    let project = stack.project("Closing").await;
    let conversation = project.conversation_id();
    let socket = stack.socket(0, project.client()).await;
    let kept = send(&socket, conversation, "before closing").await;
    stack
        .persisted(conversation, serde_json::from_value(kept["id"].clone()).unwrap())
        .await;
    project.publish_closed(&stack.js).await;
    let store = stack.db.store();
    parley_test_support::eventually("the conversation to close", WAIT, || async {
        let access = store.access(conversation, project.client()).await.ok()??;
        (access.status == parley_domain::ConversationStatus::Closed).then_some(())
    })
    .await;
    let ack = ask(
        &socket,
        "message:send",
        json!({ "conversationId": conversation, "body": "too late" }),
    )
    .await;
    assert_eq!(code(&ack), "conversation_closed");
    let post = http::post(
        stack.gateway(0).addr,
        &format!("/v1/conversations/{conversation}/messages"),
        &token(project.provider()),
        &json!({ "body": "too late" }),
    )
    .await;
    assert_eq!(post.status, 409);
    let history = ask(
        &socket,
        "conversation:history",
        json!({ "conversationId": conversation }),
    )
    .await;
    assert_eq!(history["messages"], json!([kept]));
    let conv = http::get(
        stack.gateway(0).addr,
        &format!("/v1/conversations/{conversation}"),
        &token(project.client()),
    )
    .await;
    assert_eq!(conv.body["status"], "closed");
}

#[tokio::test]
async fn the_conversation_list_shows_title_people_preview_and_unread_count_latest_first() {
    let stack = stack(1).await;
    let older = stack.project("Older project").await;
    // A later project of the same client, with another provider.
    let mut newer = parley_test_support::ProjectFixture::new("Newer project");
    newer.event.client = older.event.client.clone();
    newer.publish_started(&stack.js).await;
    parley_test_support::conversation_exists(&stack.db, &newer).await;
    let client = older.client();
    let provider_socket = stack.socket(0, older.provider()).await;
    let long = "p".repeat(150);
    let mut last = Value::Null;
    for body in ["one", "two", long.as_str()] {
        last = send(&provider_socket, older.conversation_id(), body).await;
    }
    stack
        .persisted(
            older.conversation_id(),
            serde_json::from_value(last["id"].clone()).unwrap(),
        )
        .await;

    let socket = stack.socket(0, client).await;
    let list = ask(&socket, "conversation:list", json!({})).await;
    let conversations = list["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 2);
    let first = &conversations[0];
    assert_eq!(
        first["id"],
        json!(older.conversation_id()),
        "the one with the latest message comes first"
    );
    assert_eq!(first["projectId"], json!(older.event.project_id));
    assert_eq!(first["projectTitle"], "Older project");
    assert_eq!(first["status"], "active");
    assert_eq!(first["unreadCount"], 3);
    assert_eq!(first["lastMessage"]["preview"], "p".repeat(120));
    assert_eq!(first["lastMessage"]["id"], last["id"]);
    assert_eq!(first["lastMessage"]["seq"], last["seq"]);
    assert_eq!(first["lastMessage"]["senderId"], json!(older.provider()));
    let people = first["participants"].as_array().unwrap();
    assert_eq!(people.len(), 2);
    assert!(people.contains(&json!({ "userId": client, "role": "client", "displayName": "Client", "lastReadSeq": 0 })));
    assert!(people.contains(
        &json!({ "userId": older.provider(), "role": "provider", "displayName": "Provider", "lastReadSeq": 0 })
    ));
    assert_eq!(conversations[1]["id"], json!(newer.conversation_id()));
    let people = conversations[1]["participants"].as_array().unwrap();
    assert_eq!(people.len(), 2, "each conversation has its own two participants");
    assert!(people.contains(&json!({ "userId": client, "role": "client", "displayName": "Client", "lastReadSeq": 0 })));
    assert!(people.contains(
        &json!({ "userId": newer.provider(), "role": "provider", "displayName": "Provider", "lastReadSeq": 0 })
    ));
    assert_eq!(conversations[1]["lastMessage"], Value::Null);
    assert_eq!(conversations[1]["unreadCount"], 0);

    // The sender has nothing unread; HTTP shows the same list.
    let theirs = http::get(stack.gateway(0).addr, "/v1/conversations", &token(older.provider())).await;
    assert_eq!(theirs.body["conversations"][0]["unreadCount"], 0);
    let mine = http::get(stack.gateway(0).addr, "/v1/conversations", &token(client)).await;
    assert_eq!(mine.body["conversations"], list["conversations"]);
    let one = http::get(
        stack.gateway(0).addr,
        &format!("/v1/conversations/{}", older.conversation_id()),
        &token(client),
    )
    .await;
    assert_eq!(one.body, list["conversations"][0]);
}
