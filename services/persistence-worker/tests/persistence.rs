//! The persistence worker against a real nats-server and a real Postgres database per test.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{SubsecRound, Utc};
use futures::StreamExt;
use parley_events::subjects;
use parley_store::HistoryQuery;
use parley_test_support::stack::{Spec, TestStack};
use parley_test_support::{
    ProjectFixture, TestDatabase, consumer_caught_up, consumer_info, conversation_exists, eventually, publish_message,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(60);

/// NATS with Parley's streams and a fresh database, no worker yet.
type Env = TestStack;

async fn env() -> Env {
    TestStack::builder().streams().build().await
}

/// The worker as these tests run it in-process.
fn config() -> Spec {
    Spec::persistence().batch_size(200)
}

/// A worker in this process, its admin endpoint on a port the system picked.
struct Worker {
    admin: std::net::SocketAddr,
    shutdown: CancellationToken,
    stopped: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_worker(env: &Env) -> Worker {
    let service = env.launch(config()).await;
    let admin = service.addr;
    let (shutdown, stopped) = service.into_in_process().expect("an in-process worker");
    Worker {
        admin,
        shutdown,
        stopped,
    }
}

async fn spawn_worker(env: &Env) -> CancellationToken {
    start_worker(env).await.shutdown
}

/// The worker's binary, as operators run it (kill -9 in the chaos test).
fn worker_binary() -> Spec {
    Spec::persistence().binary().batch_size(50).env("RUST_LOG", "warn")
}

async fn stored_count(db: &TestDatabase, conversation: Uuid) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages WHERE conversation_id = $1")
        .bind(conversation)
        .fetch_one(db.store().pool())
        .await
        .unwrap()
}

/// The first `count` dead letters, waiting for each.
async fn dead_letters(env: &Env, count: usize) -> Vec<parley_events::DeadLetter> {
    let dead = env.js.get_stream(parley_nats::DEADLETTER_STREAM).await.unwrap();
    let consumer = dead
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut letters = consumer.messages().await.unwrap();
    let mut read = Vec::with_capacity(count);
    for _ in 0..count {
        let letter = tokio::time::timeout(PATIENCE, letters.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        read.push(serde_json::from_slice(&letter.payload).unwrap());
    }
    read
}

#[tokio::test]
async fn a_project_started_while_no_worker_runs_is_applied_once_when_one_starts() {
    let env = env().await;
    let project = ProjectFixture::new("Logo design");
    // Published twice, with no worker running.
    project.publish_started(&env.js).await;
    project.publish_started(&env.js).await;

    let shutdown = spawn_worker(&env).await;
    conversation_exists(env.db(), &project).await;
    // Both events are consumed before we count.
    eventually("both started events to be acked", PATIENCE, || async {
        let info = consumer_info(&env.js, parley_nats::PROJECTS_STREAM, "parley-persistence-projects").await?;
        (info.ack_floor.stream_sequence == 2).then_some(())
    })
    .await;

    let pool = env.db().store();
    let conversations: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations")
        .fetch_one(pool.pool())
        .await
        .unwrap();
    let participants: i64 = sqlx::query_scalar("SELECT count(*) FROM participants")
        .fetch_one(pool.pool())
        .await
        .unwrap();
    assert_eq!((conversations, participants), (1, 2));

    let store = env.db().store();
    let id = project.conversation_id();
    let client_view = store
        .access(id, project.client())
        .await
        .unwrap()
        .expect("client sees it");
    assert_eq!(client_view.participants.len(), 2);
    assert!(store.access(id, project.provider()).await.unwrap().is_some());
    assert!(
        store.access(id, Uuid::new_v4()).await.unwrap().is_none(),
        "a stranger must not see it"
    );
    assert!(store.conversations_of(Uuid::new_v4()).await.unwrap().is_empty());
    shutdown.cancel();
}

#[tokio::test]
async fn a_closed_project_turns_its_conversation_read_only_and_closing_twice_is_harmless() {
    let env = env().await;
    let project = ProjectFixture::new("Closing");
    project.publish_started(&env.js).await;
    project.publish_closed(&env.js).await;
    project.publish_closed(&env.js).await;
    let shutdown = spawn_worker(&env).await;
    let store = env.db().store();
    let id = project.conversation_id();
    eventually("the conversation to close", PATIENCE, || async {
        let access = store.access(id, project.client()).await.ok()??;
        (access.status == parley_domain::ConversationStatus::Closed).then_some(())
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn messages_are_stored_once_with_their_stream_sequence_and_update_the_last_message() {
    let env = env().await;
    let project = ProjectFixture::new("Messages");
    project.publish_started(&env.js).await;
    let shutdown = spawn_worker(&env).await;
    conversation_exists(env.db(), &project).await;

    let first = project.message(project.client(), "hello");
    // Tabs, line breaks and backslashes (even a literal `\N`) must come back exactly as sent.
    let mut second = project.message(
        project.provider(),
        &format!("tab\there\nnew line \\N back\\slash\r\n{}", "é".repeat(200)),
    );
    second.client_msg_id = Some("retry-key_7".into());
    let seq1 = publish_message(&env.js, &first).await;
    let seq2 = publish_message(&env.js, &second).await;
    // The same event again on the stream (as after a publish beyond the duplicate window).
    let mut again = first.clone();
    again.body = "a different body must not replace the first".into();
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    client
        .publish(
            subjects::conversation_messages(project.conversation_id()),
            serde_json::to_vec(&again).unwrap().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();

    let store = env.db().store();
    let id = project.conversation_id();
    eventually("both messages stored", PATIENCE, || async {
        (stored_count(env.db(), id).await == 2).then_some(())
    })
    .await;
    let page = store
        .history(
            id,
            HistoryQuery {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![seq1 as i64, seq2 as i64]);
    assert_eq!(page.messages[0].body, "hello");
    assert_eq!(page.messages[0].sender_id, project.client());
    assert_eq!(page.messages[1].body, second.body);
    assert_eq!(page.messages[1].created_at, second.created_at);
    assert_eq!(page.messages[1].client_msg_id, second.client_msg_id);

    let conversation = store.conversation_of(project.client(), id).await.unwrap().unwrap();
    let last = conversation.last_message.expect("a last message");
    assert_eq!(last.id, second.id);
    assert_eq!(last.preview.chars().count(), 120);
    assert_eq!(
        conversation.unread_count, 1,
        "the provider's one message is unread for the client"
    );
    let provider_view = store.conversation_of(project.provider(), id).await.unwrap().unwrap();
    assert_eq!(provider_view.unread_count, 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_message_that_can_never_apply_is_dead_lettered_and_the_consumer_keeps_flowing() {
    let env = env().await;
    let project = ProjectFixture::new("Poison");
    project.publish_started(&env.js).await;
    let shutdown = spawn_worker(&env).await;
    conversation_exists(env.db(), &project).await;

    let intruder = project.message(Uuid::new_v4(), "I am not a participant");
    publish_message(&env.js, &intruder).await;
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    client
        .publish(
            subjects::conversation_messages(project.conversation_id()),
            "not json".into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let good = project.message(project.provider(), "still flowing");
    publish_message(&env.js, &good).await;

    let store = env.db().store();
    let id = project.conversation_id();
    eventually("the good message stored", PATIENCE, || async {
        store.message(id, good.id).await.ok().flatten().map(|_| ())
    })
    .await;
    assert_eq!(stored_count(env.db(), id).await, 1, "only the valid message is stored");

    let reasons: Vec<String> = dead_letters(&env, 2).await.into_iter().map(|l| l.reason).collect();
    assert!(reasons.iter().any(|r| r.contains("not a participant")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("malformed")), "{reasons:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_message_that_arrives_before_its_project_starts_is_stored_once_the_project_starts() {
    let env = env().await;
    let shutdown = spawn_worker(&env).await;
    let project = ProjectFixture::new("Early bird");
    let early = project.message(project.client(), "sent before the start event was applied");
    publish_message(&env.js, &early).await;
    // The worker has had the message in hand, with no conversation to put it in.
    eventually("the worker to hold the early message", PATIENCE, || async {
        let info = consumer_info(&env.js, parley_nats::CHAT_STREAM, "parley-persistence-chat").await?;
        (info.delivered.stream_sequence >= 1).then_some(())
    })
    .await;

    project.publish_started(&env.js).await;
    let store = env.db().store();
    eventually("the early message stored", PATIENCE, || async {
        store
            .message(project.conversation_id(), early.id)
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
    let dead = env.js.get_stream(parley_nats::DEADLETTER_STREAM).await.unwrap();
    assert_eq!(
        dead.cached_info().state.messages,
        0,
        "nothing is dead-lettered for waiting on its conversation"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_message_for_a_conversation_that_never_starts_is_dead_lettered_after_its_retries() {
    let env = env().await;
    let shutdown = spawn_worker(&env).await;
    let project = ProjectFixture::new("Never started");
    let orphan = project.message(project.client(), "nobody will ever store this");
    publish_message(&env.js, &orphan).await;

    // After about twenty retries a second apart.
    let letter = dead_letters(&env, 1).await.remove(0);
    assert!(letter.reason.contains("never started"), "{}", letter.reason);
    // Buried, then settled: it is no longer retried.
    eventually("the buried message to be settled", PATIENCE, || async {
        consumer_caught_up(&env.js, parley_nats::CHAT_STREAM, "parley-persistence-chat")
            .await
            .then_some(())
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_lands_exactly_once_while_workers_are_killed_repeatedly() {
    const ROUNDS: usize = 8;
    const PER_ROUND: usize = 75;
    const MESSAGES: usize = ROUNDS * PER_ROUND;
    let env = env().await;
    let project = ProjectFixture::new("Chaos");
    project.publish_started(&env.js).await;
    let mut workers = vec![env.start(worker_binary()).await, env.start(worker_binary()).await];
    conversation_exists(env.db(), &project).await;

    // Publish in rounds; after each, kill -9 one of the two workers (alternating) and start a
    // fresh one, so workers die with batches in hand while messages keep arriving.
    let conversation = project.conversation_id();
    let mut acked = Vec::with_capacity(MESSAGES);
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let sender = if i % 2 == 0 {
                project.client()
            } else {
                project.provider()
            };
            let event = project.message(sender, &format!("round {round} message {i}"));
            let seq = publish_message(&env.js, &event).await;
            acked.push((event.id, seq));
        }
        let victim = round % 2;
        workers[victim].kill().await;
        workers[victim] = env.start(worker_binary()).await;
    }
    let expected: HashSet<Uuid> = acked.iter().map(|(id, _)| *id).collect();

    eventually(
        "every acknowledged message stored",
        Duration::from_secs(120),
        || async { (stored_count(env.db(), conversation).await as usize == MESSAGES).then_some(()) },
    )
    .await;
    let rows: Vec<(Uuid, i64)> = sqlx::query_as("SELECT id, seq FROM messages WHERE conversation_id = $1 ORDER BY seq")
        .bind(conversation)
        .fetch_all(env.db().store().pool())
        .await
        .unwrap();
    let stored: HashSet<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    assert_eq!(rows.len(), MESSAGES, "no message stored twice");
    assert_eq!(stored, expected, "exactly the acknowledged messages");
    for (id, seq) in &acked {
        assert!(
            rows.contains(&(*id, *seq as i64)),
            "message {id} stored with its stream sequence"
        );
    }
    // History returns them in seq order, across pages.
    let store = env.db().store();
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let page = store
            .history(
                conversation,
                HistoryQuery {
                    after_seq: Some(after),
                    limit: 200,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        paged.extend(page.messages.iter().map(|m| m.seq));
        if !page.has_more {
            break;
        }
        after = *paged.last().unwrap();
    }
    let mut sorted = paged.clone();
    sorted.sort_unstable();
    assert_eq!(paged, sorted);
    assert_eq!(paged.len(), MESSAGES);

    // The shared consumer acknowledged everything the stream holds.
    let last = env
        .js
        .get_stream(parley_nats::CHAT_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    eventually(
        "the ack floor to reach the stream's last sequence",
        Duration::from_secs(60),
        || async {
            let info = consumer_info(&env.js, parley_nats::CHAT_STREAM, "parley-persistence-chat").await?;
            (info.ack_floor.stream_sequence == last).then_some(())
        },
    )
    .await;
    for mut worker in workers {
        worker.kill().await;
    }
}

#[tokio::test]
async fn read_marks_only_move_forward_under_redelivery_and_reordering() {
    let env = env().await;
    let project = ProjectFixture::new("Reads");
    project.publish_started(&env.js).await;
    let shutdown = spawn_worker(&env).await;
    conversation_exists(env.db(), &project).await;
    let conversation = project.conversation_id();
    let read = |seq: i64| parley_events::ReadMarked {
        conversation_id: conversation,
        user_id: project.client(),
        seq,
        message_id: None,
        read_at: Utc::now().trunc_subsecs(3),
        participants: vec![project.client(), project.provider()],
    };
    let subject = subjects::conversation_reads(conversation, project.client());
    // A move, the same move again (a redelivery), an older one arriving late, then a newer one.
    for seq in [5, 5, 3, 9, 9, 7] {
        parley_test_support::publish_json(&env.js, &subject, &read(seq)).await;
    }
    let store = env.db().store();
    eventually("the mark to reach 9", PATIENCE, || async {
        (store.read_mark(conversation, project.client()).await.ok()? == 9).then_some(())
    })
    .await;
    // Everything consumed, and the mark did not move back with the late 7.
    eventually("the read events to be acked", PATIENCE, || async {
        consumer_caught_up(&env.js, parley_nats::CHAT_STREAM, "parley-persistence-chat")
            .await
            .then_some(())
    })
    .await;
    assert_eq!(store.read_mark(conversation, project.client()).await.unwrap(), 9);
    assert_eq!(store.read_mark(conversation, project.provider()).await.unwrap(), 0);
    // At the store level too: a batch holding the same reader twice keeps the highest.
    let row = |seq| parley_store::ReadMarkRow {
        conversation_id: conversation,
        user_id: project.provider(),
        seq,
        read_at: Utc::now(),
    };
    assert_eq!(store.apply_read_marks(&[row(4), row(6), row(6)]).await.unwrap(), 1);
    assert_eq!(
        store.apply_read_marks(&[row(6)]).await.unwrap(),
        0,
        "a redelivered move moves nothing"
    );
    assert_eq!(store.read_mark(conversation, project.provider()).await.unwrap(), 6);
    shutdown.cancel();
}

#[tokio::test]
async fn one_worker_commits_in_stream_order_so_history_never_shows_a_gap() {
    let env = env().await;
    let project = ProjectFixture::new("Ordered commits");
    project.publish_started(&env.js).await;
    // The conversation exists before the worker starts: messages of a conversation not created
    // yet are sent back for later, which reorders them on purpose.
    env.db().store().apply_project_started(&project.event).await.unwrap();
    // A backlog of many batches (the test config's batch is 200), published before the worker
    // starts so that it writes full batches back to back, two in hand at once.
    let total = 3000;
    for i in 0..total {
        publish_message(&env.js, &project.message(project.client(), &format!("backlog {i}"))).await;
    }
    let shutdown = spawn_worker(&env).await;
    let pool = env.db().store();
    let mut observations = 0;
    loop {
        // One snapshot: how many rows, and the highest seq among them.
        let (count, highest): (i64, i64) =
            sqlx::query_as("SELECT count(*), coalesce(max(seq), 0) FROM messages WHERE conversation_id = $1")
                .bind(project.conversation_id())
                .fetch_one(pool.pool())
                .await
                .unwrap();
        assert_eq!(
            count, highest,
            "the messages stored must be exactly seqs 1..={highest}, with no gap below the highest"
        );
        observations += 1;
        if count == total {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(observations > 1, "the backlog was never seen part-way");
    shutdown.cancel();
}

#[tokio::test]
async fn a_worker_built_on_port_zero_serves_its_admin_endpoint_where_it_says() {
    let env = env().await;
    let worker = start_worker(&env).await;
    assert_ne!(worker.admin.port(), 0);
    assert_eq!(
        parley_test_support::http::request(worker.admin, "GET", "/healthz", None, None)
            .await
            .status,
        200
    );
    parley_test_support::ready(worker.admin, PATIENCE).await;
    worker.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), worker.stopped).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

/// Ready means its consumers exist, not just that NATS and Postgres answer (see the same test of
/// the notification worker): a push consumer holds the durable name this worker needs.
#[tokio::test]
async fn a_worker_is_ready_only_once_its_consumers_exist() {
    let env = env().await;
    let blocked = parley_nats::PERSISTENCE_CHAT_CONSUMER;
    parley_test_support::occupy_durable_name(&env.js, blocked).await;
    let worker = start_worker(&env).await;
    parley_test_support::not_ready_for(worker.admin, Duration::from_secs(3)).await;
    parley_test_support::free_durable_name(&env.js, blocked).await;
    parley_test_support::ready(worker.admin, PATIENCE).await;
    worker.shutdown.cancel();
}

#[tokio::test]
async fn a_worker_started_while_nats_is_down_still_stops_when_told() {
    let mut env = env().await;
    env.nats.kill();
    let worker = start_worker(&env).await;
    // It waits for NATS, retrying; then it is told to stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!worker.stopped.is_finished(), "it waits for NATS rather than exit");
    worker.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), worker.stopped).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}
