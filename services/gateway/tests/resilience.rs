//! Running services survive a nats-server restart: they reconnect by themselves and resume.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use parley_test_support::{eventually, http};
use serde_json::{Value, json};

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

/// Sends `count` messages over HTTP, one after another; returns the acknowledged message ids, in
/// order. With `client_msg_ids`, each send has its own `clientMsgId` and is retried on
/// `unavailable` until acknowledged, as a real client does; without, an `unavailable` fails the
/// test (the gateway must have settled the outcome itself).
async fn send_until_acknowledged(
    addr: std::net::SocketAddr,
    conversation: uuid::Uuid,
    token: String,
    (sender, count, client_msg_ids): (usize, usize, bool),
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<String> {
    let path = format!("/v1/conversations/{conversation}/messages");
    let mut ids = Vec::new();
    for i in 0..count {
        let mut body = json!({ "body": format!("sender {sender} message {i}") });
        if client_msg_ids {
            body["clientMsgId"] = json!(format!("s{sender}-m{i}"));
        }
        let id = eventually("the send to be acknowledged", Duration::from_secs(60), || async {
            let response = http::post(addr, &path, &token, &body).await;
            match response.status {
                200 | 201 => Some(response.body["message"]["id"].as_str().unwrap().to_owned()),
                503 if client_msg_ids => None,
                other => panic!("a send answered {other}: {}", response.raw),
            }
        })
        .await;
        acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ids.push(id);
    }
    ids
}

/// Three senders through a kill -9 of nats-server that lasts `outage`; every acknowledged send
/// is stored exactly once, in order, and nothing else is.
async fn senders_through_a_nats_kill_9(client_msg_ids: bool, outage: Duration) {
    let mut stack = stack(1).await;
    let project = stack.project("Outage").await;
    let conversation = project.conversation_id();
    let addr = stack.gateway(0).addr;
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (senders, per_sender) = (3, 60);
    let sending: Vec<_> = (0..senders)
        .map(|sender| {
            tokio::spawn(send_until_acknowledged(
                addr,
                conversation,
                token(project.client()),
                (sender, per_sender, client_msg_ids),
                acknowledged.clone(),
            ))
        })
        .collect();
    // Mid-load, nats-server dies without a word, stays away a moment, and comes back on its store.
    let counter = acknowledged.clone();
    eventually("a third of the sends", Duration::from_secs(60), || {
        let counter = counter.clone();
        async move { (counter.load(std::sync::atomic::Ordering::SeqCst) >= senders * per_sender / 3).then_some(()) }
    })
    .await;
    stack.nats.kill();
    tokio::time::sleep(outage).await;
    stack.nats.restart();

    let mut acked = std::collections::BTreeSet::new();
    for sending in sending {
        acked.extend(sending.await.unwrap());
    }
    assert_eq!(acked.len(), senders * per_sender, "each send maps to its own message");

    // Every acknowledged message is stored exactly once, and nothing else.
    let last: uuid::Uuid = acked.iter().next_back().unwrap().parse().unwrap();
    stack.persisted(conversation, last).await;
    let stored = eventually("every message stored", Duration::from_secs(60), || async {
        let mut stored = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let query = before.map_or(String::new(), |seq| format!("&beforeSeq={seq}"));
            let page = http::get(
                addr,
                &format!("/v1/conversations/{conversation}/messages?limit=200{query}"),
                &token(project.provider()),
            )
            .await;
            let messages = page.body["messages"].as_array()?.clone();
            before = messages.first().and_then(|m| m["seq"].as_i64());
            stored.splice(0..0, messages);
            if page.body["hasMore"] != true {
                break;
            }
        }
        (stored.len() >= senders * per_sender).then_some(stored)
    })
    .await;
    let ids: Vec<String> = stored.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    let distinct: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), distinct.len(), "a message stored twice");
    assert_eq!(distinct, acked, "stored exactly the acknowledged messages");
    let seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "history in seq order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_retrying_with_their_client_msg_id_through_a_nats_kill_9_get_each_message_stored_once() {
    senders_through_a_nats_kill_9(true, Duration::from_secs(6)).await;
}

/// A send whose publish got no answer may have been stored; the gateway retries it with the same
/// `Nats-Msg-Id` until acknowledged, rather than answer an `unavailable` whose retry would store
/// it again. An outage shorter than its deadline refuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_without_client_msg_id_through_a_short_nats_outage_are_all_acknowledged_and_stored_once() {
    senders_through_a_nats_kill_9(false, Duration::from_secs(3)).await;
}

/// Takes the stack's database away from every client (as a stopped Postgres would be, for this
/// stack alone: the server is shared by the tests running beside it), or gives it back.
async fn database_reachable(database: &str, reachable: bool) {
    use sqlx::Connection as _;
    let admin = std::env::var("PARLEY_TEST_DATABASE_URL").unwrap();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    // `database` is the stack's own, named from a UUID: no input reaches these statements.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS {reachable}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(database)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_away_sends_with_a_client_msg_id_are_acknowledged_and_repeats_answer_the_original() {
    let stack = stack(1).await;
    let project = stack.project("Postgres away").await;
    let conversation = project.conversation_id();
    let client = stack.socket(0, project.client()).await;
    let mut provider = stack.socket(0, project.provider()).await;
    let first = send(&client, conversation, "before").await;
    assert_eq!(next_message(&mut provider).await["id"], first["id"]);

    database_reachable(&stack.db.name, false).await;
    let mut acked = Vec::new();
    let mut slowest = Duration::ZERO;
    let away = Instant::now();
    let mut i = 0;
    while away.elapsed() < Duration::from_secs(10) {
        let started = Instant::now();
        let ack = ask(
            &client,
            "message:send",
            json!({ "conversationId": conversation, "body": format!("while away {i}"), "clientMsgId": format!("away-{i}") }),
        )
        .await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(ack["ok"], true, "a send refused with Postgres away: {ack}");
        acked.push(ack["message"].clone());
        i += 1;
    }
    // A repeat answers the original, id and seq.
    let repeat = ask(
        &client,
        "message:send",
        json!({ "conversationId": conversation, "body": "while away 0", "clientMsgId": "away-0" }),
    )
    .await;
    assert_eq!(repeat["message"]["id"], acked[0]["id"]);
    assert_eq!(repeat["message"]["seq"], acked[0]["seq"]);
    // Live delivery went on: the other party got each once, in order.
    for message in &acked {
        assert_eq!(next_message(&mut provider).await["id"], message["id"]);
    }
    database_reachable(&stack.db.name, true).await;
    println!(
        "{} sends acknowledged during 10 s without Postgres; the slowest took {slowest:?}",
        acked.len()
    );

    // Postgres back: the worker stores every message once, in order. The batches refused while
    // it was away come back after their retry delay, possibly after later ones were written:
    // wait for each, not just the last.
    for message in &acked {
        let id: uuid::Uuid = message["id"].as_str().unwrap().parse().unwrap();
        stack.persisted(conversation, id).await;
    }
    let history = ask(
        &provider,
        "conversation:history",
        json!({ "conversationId": conversation, "limit": 200 }),
    )
    .await;
    let stored: Vec<&Value> = history["messages"].as_array().unwrap().iter().collect();
    let mut all = vec![&first];
    all.extend(acked.iter());
    assert_eq!(stored.len(), all.len().min(200));
    let expected = &all[all.len() - stored.len()..];
    let ids = |messages: &[&Value]| messages.iter().map(|m| m["id"].clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&stored),
        ids(expected),
        "the latest page: stored once each, in order"
    );
}

/// NATS, Postgres, a persistence worker, a notification worker (which keeps the conversation
/// directory) and one gateway.
async fn stack_with_directory() -> parley_test_support::stack::TestStack {
    use parley_test_support::stack::{Run, Spec, TestStack};
    TestStack::builder()
        .gateways(1)
        .service(Spec::persistence().run(Run::InProcess).batch_size(100))
        .notification(Run::InProcess)
        .build()
        .await
}

/// Waits until the directory holds every project event published so far.
async fn directory_caught_up(js: &async_nats::jetstream::Context) {
    let name = parley_nats::NOTIFICATION_DIRECTORY_CONSUMER.durable_name().unwrap();
    eventually("the directory to catch up", Duration::from_secs(30), || async {
        parley_test_support::consumer_caught_up(js, parley_nats::PROJECTS_STREAM, &name)
            .await
            .then_some(())
    })
    .await;
}

/// Every stored message of a conversation, ascending, paged over HTTP.
async fn all_stored(addr: std::net::SocketAddr, conversation: uuid::Uuid, token: &str) -> Vec<Value> {
    let mut stored = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let query = before.map_or(String::new(), |seq| format!("&beforeSeq={seq}"));
        let page = http::get(
            addr,
            &format!("/v1/conversations/{conversation}/messages?limit=200{query}"),
            token,
        )
        .await;
        assert_eq!(page.status, 200, "{}", page.raw);
        let messages = page.body["messages"].as_array().unwrap().clone();
        before = messages.first().and_then(|m| m["seq"].as_i64());
        stored.splice(0..0, messages);
        if page.body["hasMore"] != true {
            return stored;
        }
    }
}

/// Sends with a `clientMsgId` and returns the acknowledged message and how long the ack took.
async fn timed_send(
    socket: &parley_test_support::sio::Client,
    conversation: uuid::Uuid,
    key: &str,
) -> (Value, Duration) {
    let started = Instant::now();
    let ack = ask(
        socket,
        "message:send",
        json!({ "conversationId": conversation, "body": format!("message {key}"), "clientMsgId": key }),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(ack["ok"], true, "send {key} refused: {ack}");
    (ack["message"].clone(), took)
}

/// The median and the largest of some durations.
fn p50_max(mut took: Vec<Duration>) -> (Duration, Duration) {
    took.sort();
    (took[took.len() / 2], *took.last().unwrap())
}

fn ids(messages: &[Value]) -> Vec<Value> {
    messages.iter().map(|m| m["id"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_sends_to_a_conversation_the_gateway_never_looked_up_are_acknowledged_without_a_stall() {
    let stack = stack_with_directory().await;
    let warm = stack.project("Warm").await;
    let cold = stack.project("Cold").await;
    directory_caught_up(&stack.js).await;
    let warm_client = stack.socket(0, warm.client()).await;
    let cold_client = stack.socket(0, cold.client()).await;
    let mut cold_provider = stack.socket(0, cold.provider()).await;

    // Before: sends to the warm conversation only; the gateway never looks the cold one up.
    let mut warm_acked = Vec::new();
    let mut before = Vec::new();
    for i in 0..200 {
        let (message, took) = timed_send(&warm_client, warm.conversation_id(), &format!("w{i}")).await;
        warm_acked.push(message);
        before.push(took);
    }

    database_reachable(&stack.db().name, false).await;
    let away = Instant::now();
    let mut cold_acked = Vec::new();
    let mut during = Vec::new();
    let mut first_cold = None;
    let mut i = 0;
    while away.elapsed() < Duration::from_secs(10) {
        let (message, took) = timed_send(&cold_client, cold.conversation_id(), &format!("c{i}")).await;
        first_cold.get_or_insert(took);
        cold_acked.push(message);
        during.push(took);
        let (message, took) = timed_send(&warm_client, warm.conversation_id(), &format!("w{}", 200 + i)).await;
        warm_acked.push(message);
        during.push(took);
        i += 1;
    }
    // A repeat answers the original, id and seq, and delivers nothing new.
    let (repeat, _) = timed_send(&cold_client, cold.conversation_id(), "c0").await;
    assert_eq!(
        (&repeat["id"], &repeat["seq"]),
        (&cold_acked[0]["id"], &cold_acked[0]["seq"])
    );
    let (last, _) = timed_send(&cold_client, cold.conversation_id(), "c-last").await;
    cold_acked.push(last);
    for message in &cold_acked {
        assert_eq!(
            next_message(&mut cold_provider).await["id"],
            message["id"],
            "live delivery, once, in order"
        );
    }
    // What must read Postgres says it cannot.
    let history = ask(
        &cold_client,
        "conversation:history",
        json!({ "conversationId": cold.conversation_id() }),
    )
    .await;
    assert_eq!(code(&history), "unavailable");
    assert_eq!(
        code(&ask(&cold_client, "conversation:list", json!({})).await),
        "unavailable"
    );
    let list = http::get(stack.gateway(0).addr, "/v1/conversations", &token(cold.client())).await;
    assert_eq!(list.status, 503, "{}", list.raw);
    database_reachable(&stack.db().name, true).await;

    let (before_p50, before_max) = p50_max(before);
    let (during_p50, during_max) = p50_max(during.clone());
    println!(
        "acks before the outage: p50 {before_p50:?}, max {before_max:?} (200 sends); during 10 s without Postgres: \
         p50 {during_p50:?}, max {during_max:?} ({} sends, half to the cold conversation, whose first took {:?})",
        during.len(),
        first_cold.unwrap()
    );
    assert!(during_max < Duration::from_secs(1), "a send stalled: {during_max:?}");

    // Postgres back: every message stored once, in order.
    let addr = stack.gateway(0).addr;
    for (project, acked) in [(&warm, &warm_acked), (&cold, &cold_acked)] {
        // The worker's batches that failed meanwhile come back in their own time: wait for all.
        let token = token(project.client());
        let stored = eventually("every message stored", Duration::from_secs(60), || async {
            let stored = all_stored(addr, project.conversation_id(), &token).await;
            (stored.len() >= acked.len()).then_some(stored)
        })
        .await;
        let (stored_ids, acked_ids) = (ids(&stored), ids(acked));
        let first_difference = stored_ids.iter().zip(&acked_ids).position(|(s, a)| s != a);
        assert!(
            stored_ids == acked_ids,
            "stored once each, in order: {} stored, {} acknowledged, first difference at {first_difference:?}",
            stored_ids.len(),
            acked_ids.len()
        );
        let seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "history in seq order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_a_gateway_refuses_sends_into_a_conversation_it_did_not_see_close_and_does_not_deny_one_the_directory_lacks()
 {
    let mut stack = stack_with_directory().await;
    let closed = stack.project("Closed before").await;
    closed.publish_closed(&stack.js).await;
    directory_caught_up(&stack.js).await;
    // A gateway that starts after the close never hears it live.
    let late = stack.start(parley_test_support::stack::Spec::gateway()).await;
    let closed_client = parley_test_support::stack::connect(&late, closed.client()).await;
    let stranger = parley_test_support::stack::connect(&late, uuid::Uuid::new_v4()).await;
    let send = |socket, conversation: uuid::Uuid| async move {
        ask(
            socket,
            "message:send",
            json!({ "conversationId": conversation, "body": "hello", "clientMsgId": "k1" }),
        )
        .await
    };

    database_reachable(&stack.db().name, false).await;
    assert_eq!(
        code(&send(&closed_client, closed.conversation_id()).await),
        "conversation_closed"
    );
    assert_eq!(code(&send(&stranger, closed.conversation_id()).await), "not_found");

    // A project that just started, while the directory's writer is away: not in it yet.
    stack.notification_mut(0).stop().await;
    let unlisted = parley_test_support::ProjectFixture::new("Not in the directory yet");
    unlisted.publish_started(&stack.js).await;
    let unlisted_client = parley_test_support::stack::connect(&late, unlisted.client()).await;
    assert_eq!(
        code(&send(&unlisted_client, unlisted.conversation_id()).await),
        "unavailable"
    );
    assert_eq!(code(&send(&stranger, unlisted.conversation_id()).await), "unavailable");

    // Its writer back and caught up, the directory answers for the new project.
    stack.notification_mut(0).restart().await;
    directory_caught_up(&stack.js).await;
    let ack = send(&unlisted_client, unlisted.conversation_id()).await;
    assert_eq!(ack["ok"], true, "{ack}");
    database_reachable(&stack.db().name, true).await;
    let id: uuid::Uuid = ack["message"]["id"].as_str().unwrap().parse().unwrap();
    stack.persisted(unlisted.conversation_id(), id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_a_repeat_older_than_the_duplicate_window_returns_the_original_and_stores_nothing_new() {
    let stack = stack(1).await;
    let project = stack.project("Late repeat").await;
    let conversation = project.conversation_id();
    // A duplicate window of a second stands for the real two hours.
    let mut chat = stack.js.get_stream(parley_nats::CHAT_STREAM).await.unwrap();
    let mut config = chat.info().await.unwrap().config.clone();
    config.duplicate_window = Duration::from_secs(1);
    stack.js.update_stream(config).await.unwrap();
    let client = stack.socket(0, project.client()).await;
    let mut provider = stack.socket(0, project.provider()).await;
    let (original, _) = timed_send(&client, conversation, "late").await;
    assert_eq!(next_message(&mut provider).await["id"], original["id"]);
    // The window is a time: nothing to await but its passing (and the server's purge after it).
    tokio::time::sleep(Duration::from_secs(3)).await;

    database_reachable(&stack.db.name, false).await;
    let (repeat, _) = timed_send(&client, conversation, "late").await;
    assert_eq!((&repeat["id"], &repeat["seq"]), (&original["id"], &original["seq"]));
    let (after, _) = timed_send(&client, conversation, "after").await;
    assert_eq!(
        next_message(&mut provider).await["id"],
        after["id"],
        "the repeat delivered nothing"
    );
    database_reachable(&stack.db.name, true).await;

    let last: uuid::Uuid = after["id"].as_str().unwrap().parse().unwrap();
    stack.persisted(conversation, last).await;
    let stored = all_stored(stack.gateway(0).addr, conversation, &token(project.client())).await;
    assert_eq!(ids(&stored), ids(&[original, after]));
}

/// Pauses every consumer of `stream` that has no durable name (the gateways' fan-out and any
/// replay under way) for an hour, and says how many there were.
async fn pause_ephemeral_consumers(client: &async_nats::Client, stream: &str) -> usize {
    let ask = |subject: String, payload: String| async move {
        let reply = client.request(subject, payload.into()).await.unwrap();
        serde_json::from_slice::<Value>(&reply.payload).unwrap()
    };
    let list = ask(format!("$JS.API.CONSUMER.LIST.{stream}"), "{}".into()).await;
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut paused = 0;
    for consumer in list["consumers"].as_array().unwrap() {
        if consumer["config"]["durable_name"].is_string() {
            continue;
        }
        let name = consumer["name"].as_str().unwrap();
        let answer = ask(
            format!("$JS.API.CONSUMER.PAUSE.{stream}.{name}"),
            json!({ "pause_until": until }).to_string(),
        )
        .await;
        assert_eq!(answer["paused"], true, "pausing {name}: {answer}");
        paused += 1;
    }
    paused
}

/// An ordered consumer can stop delivering without an error: on a cluster, one whose node came
/// back with its store wiped stayed silent for minutes while its heartbeats kept coming. Here
/// the gateway's consumer is paused under it, which keeps the heartbeats coming too: the gateway
/// sees the stream move past its consumer, replaces it, and live delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_consumer_that_falls_silent_is_replaced_and_live_delivery_goes_on() {
    let stack = stack(1).await;
    let project = stack.project("Silent consumer").await;
    let conversation = project.conversation_id();
    let client = stack.socket(0, project.client()).await;
    let mut provider = stack.socket(0, project.provider()).await;
    let first = send(&client, conversation, "before").await;
    assert_eq!(next_message(&mut provider).await["id"], first["id"]);

    let paused = pause_ephemeral_consumers(&stack.js.client(), parley_nats::CHAT_STREAM).await;
    assert!(paused >= 1, "the gateway's fan-out consumer was not found");
    let sent = Instant::now();
    let during = send(&client, conversation, "while its consumer is paused").await;
    let (name, delivered) = provider
        .next_event(Duration::from_secs(60))
        .await
        .expect("live delivery goes on");
    assert_eq!((name.as_str(), &delivered["id"]), ("message:new", &during["id"]));
    println!(
        "delivered {:?} after its send, by the consumer that replaced the paused one",
        sent.elapsed()
    );
    // Nothing twice: the next message is the next one.
    let after = send(&client, conversation, "after").await;
    assert_eq!(next_message(&mut provider).await["id"], after["id"]);
}
