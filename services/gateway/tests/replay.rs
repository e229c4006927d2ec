//! Catch-up on join: exactly the missed messages, in order, then live ones, never twice on a
//! socket; from Postgres where the stream no longer holds them; no consumer left behind.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use common::*;
use parley_events::subjects;
use parley_test_support::sio::Client;
use parley_test_support::{ProjectFixture, http};
use serde_json::{Value, json};
use uuid::Uuid;

async fn consumer_count(js: &jetstream::Context) -> usize {
    js.get_stream(parley_nats::CHAT_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .consumer_count
}

/// Waits until the chat stream has exactly `count` consumers: deletes are asynchronous.
async fn consumers_become(js: &jetstream::Context, count: usize, what: &str, timeout: Duration) {
    parley_test_support::eventually(what, timeout, || async {
        (consumer_count(js).await == count).then_some(())
    })
    .await;
}

/// Joins, collecting what the socket gets before the ack; returns (ack, replayed messages).
async fn join_collect(socket: &mut Client, conversation: Uuid, last_seq: Option<i64>) -> (Value, Vec<Value>) {
    let mut payload = json!({ "conversationId": conversation });
    if let Some(seq) = last_seq {
        payload["lastSeq"] = json!(seq);
    }
    let ack = ask(socket, "conversation:join", payload).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let replayed = ack["replayed"].as_u64().unwrap() as usize;
    let mut messages = Vec::new();
    for _ in 0..replayed {
        let (name, data) = socket.next_event(WAIT).await.expect("a replayed message");
        assert_eq!(name, "message:new");
        assert_eq!(data["replayed"], true, "{data}");
        messages.push(data);
    }
    (ack, messages)
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages.iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_exactly_what_it_missed_then_live_messages_many_times_over() {
    let stack = stack(2).await;
    let project = stack.project("Offline").await;
    let conversation = project.conversation_id();
    let baseline = consumer_count(&stack.js).await;

    // The provider sends continuously, through both gateways, for the whole test.
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let sending = sending.clone();
        let addrs = [stack.gateway(0).addr, stack.gateway(1).addr];
        let token = token(project.provider());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut i = 0;
            while sending.load(Ordering::Relaxed) {
                let path = format!("/v1/conversations/{conversation}/messages");
                let response = http::post(addrs[i % 2], &path, &token, &json!({ "body": format!("m{i}") })).await;
                assert_eq!(response.status, 201, "{}", response.raw);
                sent.push(response.body["message"]["seq"].as_i64().unwrap());
                i += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            sent
        })
    };

    // The client comes and goes: each time it joins from the last seq it saw.
    let mut seen: Vec<i64> = Vec::new();
    let mut random = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..12 {
        random = random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let offline = Duration::from_millis(20 + (random >> 33) % 150);
        tokio::time::sleep(offline).await;
        let mut socket = stack.socket(round % 2, project.client()).await;
        let last = seen.last().copied().unwrap_or(0);
        let (ack, replayed) = join_collect(&mut socket, conversation, Some(last)).await;
        assert_eq!(ack["complete"], true);
        let mut this_socket = seqs(&replayed);
        // Then live ones for a while.
        let live_for = 5 + (random >> 40) % 20;
        for _ in 0..live_for {
            let (name, data) = socket.next_event(WAIT).await.expect("a live message");
            assert_eq!(name, "message:new");
            assert!(data.get("replayed").is_none(), "live messages carry no replayed flag");
            this_socket.push(data["seq"].as_i64().unwrap());
        }
        let unique: HashSet<i64> = this_socket.iter().copied().collect();
        assert_eq!(
            unique.len(),
            this_socket.len(),
            "round {round}: a message twice on one socket: {this_socket:?}"
        );
        assert!(
            this_socket.windows(2).all(|w| w[0] < w[1]),
            "round {round}: out of order: {this_socket:?}"
        );
        assert!(
            this_socket.first().is_none_or(|first| *first > last),
            "round {round}: replayed from below lastSeq"
        );
        seen.extend(this_socket);
        socket.disconnect().await;
    }
    sending.store(false, Ordering::Relaxed);
    let sent = sender.await.unwrap();

    // One last join catches up with everything that was sent.
    let mut socket = stack.socket(0, project.client()).await;
    let (_, replayed) = join_collect(&mut socket, conversation, Some(*seen.last().unwrap())).await;
    seen.extend(seqs(&replayed));
    assert_eq!(
        seen, sent,
        "exactly the sent messages, in order, with no gap and no repeat"
    );

    socket.disconnect().await;
    consumers_become(&stack.js, baseline, "replay consumers to be gone", WAIT).await;
}

#[tokio::test]
async fn join_without_last_seq_replays_above_the_callers_read_mark() {
    let stack = stack(1).await;
    let project = stack.project("Read mark").await;
    let conversation = project.conversation_id();
    let provider = stack.socket(0, project.provider()).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send(&provider, conversation, &format!("m{i}")).await);
    }
    let client = stack.socket(0, project.client()).await;
    ask(
        &client,
        "conversation:markRead",
        json!({ "conversationId": conversation, "messageId": sent[1]["id"] }),
    )
    .await;
    let store = stack.db.store();
    parley_test_support::eventually("the mark to be stored", WAIT, || async {
        (store.read_mark(conversation, project.client()).await.ok()? == sent[1]["seq"].as_i64()?).then_some(())
    })
    .await;
    drop(client);

    let mut socket = stack.socket(0, project.client()).await;
    let (ack, replayed) = join_collect(&mut socket, conversation, None).await;
    assert_eq!(ack["replayed"], 3);
    assert_eq!(ack["complete"], true);
    assert_eq!(ack["conversation"]["id"], json!(conversation));
    assert_eq!(ack["conversation"]["projectTitle"], "Read mark");
    for (got, want) in replayed.iter().zip(&sent[2..]) {
        let mut expected = want.clone();
        expected["replayed"] = json!(true);
        assert_eq!(*got, expected);
    }
}

#[tokio::test]
async fn a_replay_sends_bodies_and_timestamps_exactly_and_skips_what_is_not_a_message() {
    let stack = stack(1).await;
    let project = stack.project("Exact replay").await;
    let conversation = project.conversation_id();
    let subject = subjects::conversation_messages(conversation);
    let publish = |payload: Vec<u8>| {
        let (js, subject) = (stack.js.clone(), subject.clone());
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence as i64
        }
    };
    // Escapes of every kind, which cannot be borrowed from the payload as they are.
    let mut escaped = project.message(project.provider(), "\"quoted\" back\\slash\nnew line\ttab é 🎉 \u{1}");
    escaped.client_msg_id = Some("client \"id\" \\ é".to_owned());
    let escaped_seq = publish(serde_json::to_vec(&escaped).unwrap()).await;
    publish(b"not json".to_vec()).await;
    let mut without_participants =
        serde_json::to_value(project.message(project.provider(), "no participants")).unwrap();
    without_participants.as_object_mut().unwrap().remove("participants");
    publish(serde_json::to_vec(&without_participants).unwrap()).await;
    let mut bad_id = serde_json::to_value(project.message(project.provider(), "bad id")).unwrap();
    bad_id["id"] = json!("not-a-uuid");
    publish(serde_json::to_vec(&bad_id).unwrap()).await;
    // A timestamp with an offset and more digits than milliseconds is sent in UTC, to the ms.
    let plain = project.message(project.client(), "plain");
    let mut offset = serde_json::to_value(&plain).unwrap();
    offset["createdAt"] = json!("2026-11-25T12:42:44.123456+02:00");
    let plain_seq = publish(serde_json::to_vec(&offset).unwrap()).await;

    let mut socket = stack.socket(0, project.client()).await;
    let (ack, replayed) = join_collect(&mut socket, conversation, Some(0)).await;
    assert_eq!(ack["complete"], true, "{ack}");
    assert_eq!(seqs(&replayed), vec![escaped_seq, plain_seq]);
    assert_eq!(
        replayed[0],
        json!({ "id": escaped.id, "conversationId": conversation, "projectId": project.event.project_id,
                "senderId": project.provider(), "body": escaped.body, "seq": escaped_seq,
                "createdAt": serde_json::to_value(&escaped).unwrap()["createdAt"],
                "clientMsgId": escaped.client_msg_id, "replayed": true })
    );
    assert_eq!(replayed[1]["id"], json!(plain.id));
    assert_eq!(replayed[1]["body"], "plain");
    assert_eq!(replayed[1]["clientMsgId"], Value::Null);
    assert_eq!(replayed[1]["createdAt"], "2026-11-25T10:42:44.123Z");
}

#[tokio::test]
async fn replay_serves_what_the_stream_dropped_from_postgres_and_the_rest_from_the_stream() {
    let stack = stack(1).await;
    let project = stack.project("Old history").await;
    let conversation = project.conversation_id();
    let client = stack.socket(0, project.client()).await;
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(send(&client, conversation, &format!("m{i}")).await);
    }
    stack
        .persisted(conversation, serde_json::from_value(sent[29]["id"].clone()).unwrap())
        .await;
    // Limit the stream so that it drops all but the last ten messages.
    let mut config = parley_nats::stream_config(parley_nats::CHAT_STREAM, 1).unwrap();
    config.max_messages = 10;
    stack.js.update_stream(config).await.unwrap();
    let first = stack
        .js
        .get_stream(parley_nats::CHAT_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .first_sequence;
    assert!(
        first as i64 > sent[0]["seq"].as_i64().unwrap(),
        "the stream dropped the oldest"
    );

    let mut socket = stack.socket(0, project.provider()).await;
    let (ack, replayed) = join_collect(&mut socket, conversation, Some(0)).await;
    assert_eq!(
        (ack["replayed"].as_u64(), ack["complete"].as_bool()),
        (Some(30), Some(true))
    );
    assert_eq!(seqs(&replayed), seqs(&sent));
    for (got, want) in replayed.iter().zip(&sent) {
        assert_eq!(got["id"], want["id"]);
        assert_eq!(got["body"], want["body"]);
        assert_eq!(got["createdAt"], want["createdAt"]);
    }
}

#[tokio::test]
async fn a_replay_stops_at_a_thousand_and_says_it_is_incomplete() {
    let stack = stack(1).await;
    let project = stack.project("Big backlog").await;
    let conversation = project.conversation_id();
    publish_backlog(&stack.js, &project, 1003).await;
    let mut socket = stack.socket(0, project.client()).await;
    let (ack, replayed) = join_collect(&mut socket, conversation, Some(0)).await;
    assert_eq!(
        (ack["replayed"].as_u64(), ack["complete"].as_bool()),
        (Some(1000), Some(false))
    );
    let got = seqs(&replayed);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    // Joining again from the last one gets the rest, complete.
    let (ack, rest) = join_collect(&mut socket, conversation, got.last().copied()).await;
    assert_eq!(
        (ack["replayed"].as_u64(), ack["complete"].as_bool()),
        (Some(3), Some(true))
    );
    assert!(rest.iter().all(|m| m["seq"].as_i64().unwrap() > *got.last().unwrap()));
}

#[tokio::test]
async fn paging_through_a_long_backlog_gets_every_message_once_even_with_a_live_one_between_pages() {
    page_with_a_live_message_between_pages(2500).await;
}

#[tokio::test]
async fn a_live_message_the_read_ahead_already_holds_is_not_replayed_on_the_next_page() {
    page_with_a_live_message_between_pages(1200).await;
}

/// Pages through `backlog` messages with one sent live after the first page. With a backlog
/// that leaves the first page's read-ahead room, the feed reads the live message too before the
/// next join (it is waited for), and that join must stop short of it.
async fn page_with_a_live_message_between_pages(backlog: usize) {
    let stack = stack(1).await;
    let project = stack.project("Long backlog").await;
    let conversation = project.conversation_id();
    // The provider's socket sees the backlog go by live: once it has the last message, the
    // fan-out is past the backlog, and none of it can reach the client's socket live later (on
    // a loaded machine the fan-out could otherwise still be delivering it after the first page).
    let mut provider = stack.socket(0, project.provider()).await;
    publish_backlog(&stack.js, &project, backlog).await;
    for _ in 0..backlog {
        next_message(&mut provider).await;
    }
    let mut socket = stack.socket(0, project.client()).await;
    let (ack, first) = join_collect(&mut socket, conversation, Some(0)).await;
    assert_eq!(
        (ack["replayed"].as_u64(), ack["complete"].as_bool()),
        (Some(1000), Some(false))
    );

    // A message sent between pages reaches the joined socket live, and no page repeats it.
    let live = send(&provider, conversation, "while paging").await;
    let (name, data) = socket.next_event(WAIT).await.expect("the live message");
    assert_eq!((name.as_str(), &data["id"]), ("message:new", &live["id"]));
    assert!(data.get("replayed").is_none(), "{data}");
    let live_seq = live["seq"].as_i64().unwrap();
    if backlog < 1500 {
        replay_consumer_delivered(&stack.js, live_seq as u64).await;
    }

    let mut replayed = seqs(&first);
    loop {
        let (ack, page) = join_collect(&mut socket, conversation, replayed.last().copied()).await;
        replayed.extend(seqs(&page));
        if ack["complete"] == true {
            break;
        }
        assert_eq!(ack["replayed"], 1000, "{ack}");
    }
    assert_eq!(replayed.len(), backlog, "every backlog message, none twice");
    assert!(replayed.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(
        replayed.iter().all(|seq| *seq < live_seq),
        "the live message is not replayed"
    );
}

/// Waits until the (one) replay consumer has handed the gateway stream sequence `seq`.
async fn replay_consumer_delivered(js: &jetstream::Context, seq: u64) {
    let stream = js.get_stream(parley_nats::CHAT_STREAM).await.unwrap();
    parley_test_support::eventually("the read-ahead to reach the live message", WAIT, || async {
        let mut names = stream.consumer_names();
        while let Some(name) = futures::StreamExt::next(&mut names).await {
            let name = name.ok()?;
            if name.starts_with("parley-replay-") {
                let info = stream.consumer_info(&name).await.ok()?;
                return (info.delivered.stream_sequence >= seq).then_some(());
            }
        }
        None
    })
    .await;
}

#[tokio::test]
async fn a_replay_that_stops_full_keeps_one_consumer_reading_ahead_until_the_socket_leaves() {
    let stack = stack(1).await;
    let project = stack.project("Read ahead").await;
    let conversation = project.conversation_id();
    publish_backlog(&stack.js, &project, 1500).await;
    let baseline = consumer_count(&stack.js).await;
    let mut socket = stack.socket(0, project.client()).await;
    let (_, first) = join_collect(&mut socket, conversation, Some(0)).await;
    assert_eq!(first.len(), 1000);
    assert_eq!(
        consumer_count(&stack.js).await,
        baseline + 1,
        "the feed for the next page stays"
    );

    // A join from elsewhere replaces it: still one, and it serves that join correctly.
    let (ack, again) = join_collect(&mut socket, conversation, Some(0)).await;
    assert_eq!(seqs(&again), seqs(&first), "{ack}");
    consumers_become(&stack.js, baseline + 1, "the replaced feed's consumer to be gone", WAIT).await;

    // The socket leaves: nothing is left behind.
    socket.disconnect().await;
    consumers_become(&stack.js, baseline, "the parked feed's consumer to be gone", WAIT).await;
}

#[tokio::test]
async fn a_read_ahead_nobody_takes_expires_with_its_consumer() {
    let stack = stack(1).await;
    let project = stack.project("Abandoned paging").await;
    let conversation = project.conversation_id();
    publish_backlog(&stack.js, &project, 1200).await;
    let baseline = consumer_count(&stack.js).await;
    let mut socket = stack.socket(0, project.client()).await;
    let (ack, first) = join_collect(&mut socket, conversation, Some(0)).await;
    assert_eq!(ack["complete"], false);
    assert_eq!(consumer_count(&stack.js).await, baseline + 1);
    // The client stops paging but stays connected: the feed gives up after its idle bound.
    consumers_become(
        &stack.js,
        baseline,
        "the idle feed's consumer to be gone",
        Duration::from_secs(40),
    )
    .await;
    // Paging on still works, from a fresh consumer.
    let (ack, rest) = join_collect(&mut socket, conversation, seqs(&first).last().copied()).await;
    assert_eq!((ack["complete"].as_bool(), rest.len()), (Some(true), 200));
}

/// Publishes `count` messages from the provider straight to JetStream, as a gateway would.
async fn publish_backlog(js: &jetstream::Context, project: &ProjectFixture, count: usize) {
    let mut acks = Vec::new();
    for i in 0..count {
        let event = project.message(project.provider(), &format!("backlog {i}"));
        let subject = subjects::conversation_messages(event.conversation_id);
        acks.push(
            js.publish(subject, serde_json::to_vec(&event).unwrap().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

#[tokio::test]
async fn a_stranger_cannot_join_and_no_consumer_is_created_for_them() {
    let stack = stack(1).await;
    let project = stack.project("Closed door").await;
    let conversation = project.conversation_id();
    let client = stack.socket(0, project.client()).await;
    send(&client, conversation, "private").await;
    let before = consumer_count(&stack.js).await;
    let stranger = stack.socket(0, Uuid::new_v4()).await;
    for payload in [
        json!({ "conversationId": conversation }),
        json!({ "conversationId": conversation, "lastSeq": 0 }),
    ] {
        let ack = ask(&stranger, "conversation:join", payload).await;
        assert_eq!(code(&ack), "not_found");
    }
    let ack = ask(
        &stranger,
        "conversation:join",
        json!({ "conversationId": Uuid::new_v4() }),
    )
    .await;
    assert_eq!(code(&ack), "not_found");
    let ack = ask(
        &client,
        "conversation:join",
        json!({ "conversationId": conversation, "lastSeq": -1 }),
    )
    .await;
    assert_eq!(code(&ack), "invalid_request");
    let ack = ask(
        &client,
        "conversation:join",
        json!({ "conversationId": conversation, "lastSeq": "x" }),
    )
    .await;
    assert_eq!(code(&ack), "invalid_request");
    assert_eq!(consumer_count(&stack.js).await, before);
}
