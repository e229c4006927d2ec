//! Read receipts and unread counts, across devices and gateway instances.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use parley_test_support::{eventually, http};
use serde_json::{Value, json};
use uuid::Uuid;

/// The next event, which must be `name`.
async fn expect_event(socket: &mut parley_test_support::sio::Client, name: &str) -> Value {
    let (got, data) = socket.next_event(WAIT).await.expect("an event");
    assert_eq!(got, name, "expected {name}, got {got}: {data}");
    data
}

#[tokio::test]
async fn marking_read_on_one_device_updates_the_other_device_and_the_sender_and_never_moves_back() {
    let stack = stack(2).await;
    let project = stack.project("Receipts").await;
    let conversation = project.conversation_id();
    let mut phone = stack.socket(0, project.client()).await;
    let mut laptop = stack.socket(1, project.client()).await;
    let mut provider = stack.socket(1, project.provider()).await;
    let mut sent = Vec::new();
    for body in ["one", "two", "three"] {
        sent.push(send(&provider, conversation, body).await);
    }
    for socket in [&mut phone, &mut laptop, &mut provider] {
        for message in &sent {
            assert_eq!(next_message(socket).await, *message);
        }
    }

    let ack = ask(
        &phone,
        "conversation:markRead",
        json!({ "conversationId": conversation, "messageId": sent[1]["id"] }),
    )
    .await;
    assert_eq!(ack, json!({ "ok": true, "lastReadSeq": sent[1]["seq"] }));
    for socket in [&mut phone, &mut laptop, &mut provider] {
        let read = expect_event(socket, "message:read").await;
        assert_eq!(read["conversationId"], json!(conversation));
        assert_eq!(read["messageId"], sent[1]["id"]);
        assert_eq!(read["seq"], sent[1]["seq"]);
        assert_eq!(read["userId"], json!(project.client()));
        assert!(read["readAt"].as_str().unwrap().ends_with('Z'));
    }

    // Everything, over HTTP from the laptop's owner: conversation:read.
    let response = http::request(
        stack.gateway(1).addr,
        "POST",
        &format!("/v1/conversations/{conversation}/read"),
        Some(&token(project.client())),
        None,
    )
    .await;
    assert_eq!(
        (response.status, response.body.clone()),
        (200, json!({ "lastReadSeq": sent[2]["seq"] }))
    );
    for socket in [&mut phone, &mut laptop, &mut provider] {
        let read = expect_event(socket, "conversation:read").await;
        assert_eq!(read["lastReadSeq"], sent[2]["seq"]);
        assert_eq!(read["userId"], json!(project.client()));
        assert!(read.get("messageId").is_none());
    }

    // Marking an older message, or everything again, moves nothing and emits nothing.
    let back = ask(
        &laptop,
        "conversation:markRead",
        json!({ "conversationId": conversation, "messageId": sent[0]["id"] }),
    )
    .await;
    assert_eq!(back["lastReadSeq"], sent[2]["seq"]);
    let again = ask(
        &laptop,
        "conversation:markRead",
        json!({ "conversationId": conversation }),
    )
    .await;
    assert_eq!(again["lastReadSeq"], sent[2]["seq"]);
    let marker = send(&provider, conversation, "after the no-op reads").await;
    for socket in [&mut phone, &mut laptop, &mut provider] {
        assert_eq!(
            next_message(socket).await,
            marker,
            "no read event may precede the marker"
        );
    }

    // The query model agrees once the worker caught up with both the mark and the marker.
    let store = stack.db.store();
    let view = eventually("the read mark and the marker to be stored", WAIT, || async {
        let view = store.conversation_of(project.client(), conversation).await.ok()??;
        let me = view.participants.iter().find(|p| p.user_id == project.client())?;
        let caught_up = Some(me.last_read_seq) == sent[2]["seq"].as_i64()
            && view.last_message.as_ref().map(|m| m.seq) == marker["seq"].as_i64();
        caught_up.then_some(view)
    })
    .await;
    assert_eq!(view.unread_count, 1, "only the marker is unread");
}

#[tokio::test]
async fn mark_read_refuses_bad_input_and_strangers() {
    let stack = stack(1).await;
    let project = stack.project("Refusals").await;
    let conversation = project.conversation_id();
    let client = stack.socket(0, project.client()).await;
    let stranger = stack.socket(0, Uuid::new_v4()).await;
    let message = send(&client, conversation, "hello").await;

    let ack = ask(
        &stranger,
        "conversation:markRead",
        json!({ "conversationId": conversation }),
    )
    .await;
    assert_eq!(code(&ack), "not_found");
    let ack = ask(
        &client,
        "conversation:markRead",
        json!({ "conversationId": conversation, "messageId": "nope" }),
    )
    .await;
    assert_eq!(code(&ack), "invalid_request");
    let ack = ask(&client, "conversation:markRead", json!({ "conversationId": "nope" })).await;
    assert_eq!(code(&ack), "invalid_request");
    let ack = ask(
        &client,
        "conversation:markRead",
        json!({ "conversationId": conversation, "messageId": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(code(&ack), "not_found");
    // A message of another conversation is not found here.
    let other = stack.project("Other").await;
    let elsewhere = send(
        &stack.socket(0, other.client()).await,
        other.conversation_id(),
        "elsewhere",
    )
    .await;
    let ack = ask(
        &client,
        "conversation:markRead",
        json!({ "conversationId": conversation, "messageId": elsewhere["id"] }),
    )
    .await;
    assert_eq!(code(&ack), "not_found");
    let path = format!("/v1/conversations/{conversation}/read");
    let response = http::request(
        stack.gateway(0).addr,
        "POST",
        &path,
        Some(&token(project.client())),
        Some("[1]"),
    )
    .await;
    assert_eq!(response.status, 400);
    let response = http::post(stack.gateway(0).addr, &path, &token(Uuid::new_v4()), &json!({})).await;
    assert_eq!(response.status, 404);
    let ok = ask(
        &client,
        "conversation:markRead",
        json!({ "conversationId": conversation, "messageId": message["id"] }),
    )
    .await;
    assert_eq!(ok["lastReadSeq"], message["seq"]);
}

#[tokio::test]
async fn concurrent_reads_from_two_devices_move_the_mark_once() {
    let stack = stack(2).await;
    let project = stack.project("Concurrent").await;
    let conversation = project.conversation_id();
    let phone = stack.socket(0, project.client()).await;
    let laptop = stack.socket(1, project.client()).await;
    let mut provider = stack.socket(0, project.provider()).await;
    let message = send(&provider, conversation, "read me").await;
    assert_eq!(next_message(&mut provider).await, message);

    let payload = json!({ "conversationId": conversation, "messageId": message["id"] });
    let mut acks = Vec::new();
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            ask(&phone, "conversation:markRead", payload.clone()),
            ask(&laptop, "conversation:markRead", payload.clone())
        );
        acks.push(a);
        acks.push(b);
    }
    for ack in &acks {
        assert_eq!(ack["lastReadSeq"], message["seq"], "{ack}");
    }
    // Exactly one message:read reached the sender: the next event after it is the marker.
    let read = socket_event(&mut provider).await;
    assert_eq!(read.0, "message:read");
    let marker = send(&phone, conversation, "marker").await;
    assert_eq!(socket_event(&mut provider).await, ("message:new".to_owned(), marker));
}

async fn socket_event(socket: &mut parley_test_support::sio::Client) -> (String, Value) {
    socket.next_event(WAIT).await.expect("an event")
}

/// A small deterministic generator, so a failing sequence can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

#[tokio::test]
async fn unread_counts_match_a_count_from_history_after_every_step_of_random_sends_and_reads() {
    let stack = stack(2).await;
    let project = stack.project("Random").await;
    let conversation = project.conversation_id();
    let users = [project.client(), project.provider()];
    // Two devices per user, on different gateways.
    let devices = [
        [stack.socket(0, users[0]).await, stack.socket(1, users[0]).await],
        [stack.socket(0, users[1]).await, stack.socket(1, users[1]).await],
    ];
    let mut random = Lcg(0x5eed);
    let mut sent: Vec<Value> = Vec::new();
    let mut marks = [0i64, 0i64];
    for step in 0..40 {
        let who = random.next(2) as usize;
        let device = &devices[who][random.next(2) as usize];
        match random.next(3) {
            0 | 1 => sent.push(send(device, conversation, &format!("step {step}")).await),
            _ => {
                let payload = if !sent.is_empty() && random.next(2) == 0 {
                    let pick = &sent[random.next(sent.len() as u64) as usize];
                    json!({ "conversationId": conversation, "messageId": pick["id"] })
                } else {
                    json!({ "conversationId": conversation })
                };
                let ack = ask(device, "conversation:markRead", payload).await;
                let mark = ack["lastReadSeq"].as_i64().expect("a mark");
                assert!(mark >= marks[who], "a mark never moves back");
                marks[who] = mark;
            }
        }
        // Both views, from the API, once the worker caught up, agree with history.
        for (me, token_user) in users.iter().enumerate() {
            let addr = stack.gateway(me).addr;
            let t = token(*token_user);
            eventually(&format!("step {step}: user {me}'s view to be right"), WAIT, || async {
                let history = http::get(
                    addr,
                    &format!("/v1/conversations/{conversation}/messages?limit=200"),
                    &t,
                )
                .await;
                let messages = history.body["messages"].as_array()?.clone();
                if messages.len() != sent.len() {
                    return None;
                }
                let expected_unread = messages
                    .iter()
                    .filter(|m| m["senderId"] != json!(token_user) && m["seq"].as_i64().unwrap() > marks[me])
                    .count() as i64;
                let view = http::get(addr, &format!("/v1/conversations/{conversation}"), &t).await;
                let mine = view.body["participants"]
                    .as_array()?
                    .iter()
                    .find(|p| p["userId"] == json!(token_user))?
                    .clone();
                let list = http::get(addr, "/v1/conversations", &t).await;
                let ok = view.body["unreadCount"] == json!(expected_unread)
                    && mine["lastReadSeq"] == json!(marks[me])
                    && list.body["conversations"][0]["unreadCount"] == json!(expected_unread);
                ok.then_some(())
            })
            .await;
        }
    }
    // And over the socket, conversation:list says the same as HTTP.
    let list = ask(&devices[0][0], "conversation:list", json!({})).await;
    let over_http = http::get(stack.gateway(0).addr, "/v1/conversations", &token(users[0])).await;
    assert_eq!(list["conversations"], over_http.body["conversations"]);
}
