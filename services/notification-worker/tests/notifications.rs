//! The notification worker against a real nats-server and a real SMTP listener.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use chrono::Utc;
use futures::StreamExt;
use parley_events::{Notification, ReadMarked, subjects};
use parley_test_support::smtp::{SmtpServer, free_port};
use parley_test_support::stack::{Spec, TestStack};
use parley_test_support::{
    ProjectFixture, consumer_caught_up, consumer_info, eventually, publish_json, publish_message,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(60);

/// NATS with Parley's streams (no database: the worker needs none), no worker yet.
type Env = TestStack;

async fn env() -> Env {
    TestStack::builder().without_database().streams().build().await
}

/// The worker, emailing through `smtp` after `delay` when given one.
fn config(smtp: Option<String>, delay: Duration) -> Spec {
    match smtp {
        Some(url) => Spec::notification().email(url, delay),
        None => Spec::notification(),
    }
}

/// A worker in this process, its admin endpoint on a port the system picked.
struct Worker {
    admin: std::net::SocketAddr,
    shutdown: CancellationToken,
    stopped: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_worker(env: &Env, config: Spec) -> Worker {
    let service = env.launch(config).await;
    let admin = service.addr;
    let (shutdown, stopped) = service.into_in_process().expect("an in-process worker");
    Worker {
        admin,
        shutdown,
        stopped,
    }
}

async fn spawn_worker(env: &Env, config: Spec) -> CancellationToken {
    start_worker(env, config).await.shutdown
}

/// The worker's binary, as operators run it (kill -9 in the chaos test).
fn worker_binary() -> Spec {
    Spec::notification().binary().env("RUST_LOG", "warn")
}

/// Waits until the worker's message consumer has acknowledged everything in the chat stream.
async fn caught_up(js: &jetstream::Context) {
    eventually("the notification consumer to catch up", PATIENCE, || async {
        consumer_caught_up(js, parley_nats::CHAT_STREAM, "parley-notification-messages")
            .await
            .then_some(())
    })
    .await;
}

/// Every notification stored, with its `Nats-Msg-Id`.
async fn stored_notifications(js: &jetstream::Context) -> Vec<(Notification, String, String)> {
    let mut stream = js.get_stream(parley_nats::NOTIFICATIONS_STREAM).await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    if count == 0 {
        return Vec::new();
    }
    let consumer = stream.create_consumer(OrderedConfig::default()).await.unwrap();
    let mut messages = consumer.messages().await.unwrap().take(count as usize);
    let mut out = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(std::string::ToString::to_string)
            .unwrap_or_default();
        out.push((
            serde_json::from_slice(&message.payload).unwrap(),
            id,
            message.subject.to_string(),
        ));
    }
    out
}

#[tokio::test]
async fn each_message_notifies_each_recipient_once_with_the_project_reference_and_never_the_sender() {
    let env = env().await;
    let mut project = ProjectFixture::new("Logo «Ünïcode» \"quoted\" & <tags>");
    project.event.provider.display_name = "Provider Person".into();
    project.publish_started(&env.js).await;
    let shutdown = spawn_worker(&env, config(None, Duration::from_secs(60))).await;

    let first = project.message(project.client(), "hello provider");
    let second = project.message(project.provider(), &"long reply ".repeat(30));
    let third = project.message(project.client(), "thanks");
    let mut seqs = HashMap::new();
    for event in [&first, &second, &third] {
        seqs.insert(event.id, publish_message(&env.js, event).await);
    }
    // Typing and read marks are not messages: they notify nobody.
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    client
        .publish(subjects::conversation_typing(project.conversation_id()), "{}".into())
        .await
        .unwrap();
    let read = ReadMarked {
        conversation_id: project.conversation_id(),
        user_id: project.provider(),
        seq: 1,
        message_id: None,
        read_at: Utc::now(),
        participants: vec![project.client(), project.provider()],
    };
    publish_json(
        &env.js,
        &subjects::conversation_reads(project.conversation_id(), project.provider()),
        &read,
    )
    .await;
    caught_up(&env.js).await;

    let stored = stored_notifications(&env.js).await;
    assert_eq!(stored.len(), 3, "one per (message, recipient): {stored:#?}");
    for (notification, msg_id, subject) in &stored {
        let event = [&first, &second, &third]
            .into_iter()
            .find(|e| e.id == notification.message.id)
            .unwrap();
        let recipient = if event.sender_id == project.client() {
            project.provider()
        } else {
            project.client()
        };
        assert_eq!(notification.recipient_id, recipient, "never the sender");
        assert_eq!(*subject, format!("parley.notification.{recipient}"));
        assert_eq!(*msg_id, format!("{}.{}", event.id, recipient));
        assert_eq!(notification.kind, "message.new");
        assert_eq!(notification.project.id, project.event.project_id);
        assert_eq!(
            notification.project.title, project.event.title,
            "exactly as the lifecycle event gave it"
        );
        assert_eq!(notification.conversation_id, project.conversation_id());
        assert_eq!(notification.message.seq as u64, seqs[&event.id]);
        assert_eq!(notification.message.sender_id, event.sender_id);
        let sender_name = if event.sender_id == project.client() {
            "Client"
        } else {
            "Provider Person"
        };
        assert_eq!(notification.message.sender_name, sender_name);
        assert_eq!(
            notification.message.preview,
            parley_domain::validation::preview(&event.body)
        );
        assert_eq!(notification.message.created_at, event.created_at);
    }
    // The raw JSON has the contract's field names.
    let raw = serde_json::to_value(&stored[0].0).unwrap();
    for field in [
        "id",
        "type",
        "recipientId",
        "createdAt",
        "project",
        "conversationId",
        "message",
    ] {
        assert!(raw.get(field).is_some(), "missing {field}: {raw}");
    }
    for field in ["id", "seq", "senderId", "senderName", "preview", "createdAt"] {
        assert!(raw["message"].get(field).is_some(), "missing message.{field}: {raw}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_message_of_a_conversation_not_known_yet_is_retried_until_it_is() {
    let env = env().await;
    let project = ProjectFixture::new("Late start");
    let shutdown = spawn_worker(&env, config(None, Duration::from_secs(60))).await;
    let early = project.message(project.client(), "before the project event");
    publish_message(&env.js, &early).await;
    project.publish_started(&env.js).await;
    caught_up(&env.js).await;
    let stored = stored_notifications(&env.js).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0.message.id, early.id);
    assert_eq!(stored[0].0.project.title, "Late start");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_killed_repeatedly_still_notify_exactly_once_per_message() {
    let env = env().await;
    let project = ProjectFixture::new("Chaos");
    project.publish_started(&env.js).await;
    let mut workers = vec![env.start(worker_binary()).await, env.start(worker_binary()).await];
    let mut sent = HashSet::new();
    for round in 0..6 {
        for i in 0..50 {
            let sender = if i % 2 == 0 {
                project.client()
            } else {
                project.provider()
            };
            let event = project.message(sender, &format!("round {round} message {i}"));
            publish_message(&env.js, &event).await;
            sent.insert(event.id);
        }
        let victim = round % 2;
        workers[victim].kill().await;
        workers[victim] = env.start(worker_binary()).await;
    }
    caught_up(&env.js).await;
    let stored = stored_notifications(&env.js).await;
    let ids: HashSet<Uuid> = stored.iter().map(|(n, _, _)| n.message.id).collect();
    assert_eq!(stored.len(), sent.len(), "exactly one notification per message");
    assert_eq!(ids, sent);
    for mut worker in workers {
        worker.kill().await;
    }
}

/// Waits until no email digest is pending.
async fn no_pending_digest(js: &jetstream::Context) {
    eventually("the pending digests to drain", PATIENCE, || async {
        let mut stream = js.get_stream(parley_nats::EMAIL_STREAM).await.ok()?;
        (stream.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
}

const DELAY: Duration = Duration::from_millis(600);

#[tokio::test]
async fn an_offline_recipient_gets_one_email_for_two_messages_sent_within_the_window() {
    let env = env().await;
    let smtp = SmtpServer::start().await;
    let mut project = ProjectFixture::new("Website redesign");
    project.event.client.display_name = "Carla Client".into();
    project.publish_started(&env.js).await;
    let shutdown = spawn_worker(&env, config(Some(smtp.url()), DELAY)).await;
    publish_message(&env.js, &project.message(project.client(), "first question")).await;
    publish_message(&env.js, &project.message(project.client(), "second question")).await;

    let mail = smtp.wait_for(1, PATIENCE).await;
    no_pending_digest(&env.js).await;
    caught_up(&env.js).await;
    let mail = if smtp.received().len() == 1 {
        mail
    } else {
        smtp.received()
    };
    assert_eq!(mail.len(), 1, "one email for both messages");
    let email = &mail[0];
    assert!(email.to[0].contains(&project.event.provider.email), "{:?}", email.to);
    let subject = email.header("Subject").unwrap();
    assert!(
        subject.contains("Website redesign") && subject.contains("Carla Client"),
        "{subject}"
    );
    let text = email.part("text/plain").unwrap();
    assert!(
        text.contains("first question") && text.contains("second question"),
        "{text}"
    );
    assert!(text.contains("Website redesign") && text.contains("Carla Client"));
    let html = email.part("text/html").unwrap();
    assert!(
        html.contains("<li>first question</li>") && html.contains("<li>second question</li>"),
        "{html}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_online_recipient_and_one_who_read_in_time_get_no_email() {
    let env = env().await;
    let smtp = SmtpServer::start().await;
    let online = ProjectFixture::new("Online");
    let reader = ProjectFixture::new("Reader");
    let control = ProjectFixture::new("Control");
    for project in [&online, &reader, &control] {
        project.publish_started(&env.js).await;
    }
    // The provider of `online` has a socket on some gateway.
    let presence = parley_nats::buckets::presence(&env.js, 1).await.unwrap();
    presence
        .put(
            parley_nats::buckets::presence_key(online.provider(), Uuid::new_v4()),
            "1".into(),
        )
        .await
        .unwrap();
    let shutdown = spawn_worker(&env, config(Some(smtp.url()), DELAY)).await;

    publish_message(&env.js, &online.message(online.client(), "you are here")).await;
    let seq = publish_message(&env.js, &reader.message(reader.client(), "read me")).await;
    let read = ReadMarked {
        conversation_id: reader.conversation_id(),
        user_id: reader.provider(),
        seq: seq as i64,
        message_id: None,
        read_at: Utc::now(),
        participants: vec![reader.client(), reader.provider()],
    };
    publish_json(
        &env.js,
        &subjects::conversation_reads(reader.conversation_id(), reader.provider()),
        &read,
    )
    .await;
    publish_message(&env.js, &control.message(control.client(), "nobody reads this")).await;

    smtp.wait_for(1, PATIENCE).await;
    no_pending_digest(&env.js).await;
    let mail = smtp.received();
    assert_eq!(mail.len(), 1, "only the control recipient is emailed");
    assert!(mail[0].to[0].contains(&control.event.provider.email));
    shutdown.cancel();
}

#[tokio::test]
async fn a_hostile_display_name_produces_no_extra_header_and_no_live_markup() {
    let env = env().await;
    let smtp = SmtpServer::start().await;
    let mut project = ProjectFixture::new("Title <i>x</i>\r\nX-Title-Injected: 1");
    project.event.client.display_name = "Eve\r\nBcc: victim@example.test\r\n<b>bold</b>".into();
    project.publish_started(&env.js).await;
    let shutdown = spawn_worker(&env, config(Some(smtp.url()), DELAY)).await;
    publish_message(&env.js, &project.message(project.client(), "<script>alert(1)</script>")).await;

    let mail = smtp.wait_for(1, PATIENCE).await;
    let email = &mail[0];
    for line in email.headers().split("\r\n") {
        let lower = line.to_ascii_lowercase();
        assert!(
            !lower.starts_with("bcc:") && !lower.starts_with("x-title-injected:"),
            "injected: {line}"
        );
    }
    assert_eq!(email.to.len(), 1, "no extra recipient");
    let html = email.part("text/html").unwrap();
    for live in ["<b>", "<i>", "<script"] {
        assert!(!html.contains(live), "live markup {live} in {html}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
    assert!(html.contains("&lt;b&gt;bold&lt;/b&gt;"), "{html}");
    shutdown.cancel();
}

#[tokio::test]
async fn with_smtp_down_for_a_while_the_email_arrives_once_after_it_comes_back() {
    let env = env().await;
    let port = free_port();
    let project = ProjectFixture::new("Outage");
    project.publish_started(&env.js).await;
    let shutdown = spawn_worker(&env, config(Some(format!("smtp://127.0.0.1:{port}")), DELAY)).await;
    publish_message(&env.js, &project.message(project.client(), "are you there?")).await;

    // Notifications do not wait for email.
    caught_up(&env.js).await;
    assert_eq!(stored_notifications(&env.js).await.len(), 1);
    // The digest is attempted and fails at least twice while nothing listens.
    eventually("failed delivery attempts", PATIENCE, || async {
        let info = consumer_info(&env.js, parley_nats::EMAIL_STREAM, "parley-email").await?;
        (info.num_redelivered >= 1 && info.delivered.stream_sequence >= 1).then_some(())
    })
    .await;
    let smtp = SmtpServer::start_on(port).await;
    let mail = smtp.wait_for(1, PATIENCE).await;
    no_pending_digest(&env.js).await;
    assert_eq!(mail.len(), 1);
    assert_eq!(smtp.received().len(), 1, "sent once");
    shutdown.cancel();
}

#[tokio::test]
async fn a_worker_built_on_port_zero_serves_its_admin_endpoint_where_it_says() {
    let env = env().await;
    let worker = start_worker(&env, config(None, Duration::from_secs(60))).await;
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

/// Ready means its consumers exist, not just that NATS answers: on a cluster that has just
/// formed, applying them took long enough that a test (or an orchestrator) trusting an early 200
/// counted on notifications nobody was making yet. Here a push consumer holds the durable name
/// the worker needs: it stays unready while connected, and is ready once it could apply it.
#[tokio::test]
async fn a_worker_is_ready_only_once_its_consumers_exist() {
    let env = env().await;
    let blocked = parley_nats::NOTIFICATION_MESSAGES_CONSUMER;
    parley_test_support::occupy_durable_name(&env.js, blocked).await;
    let worker = start_worker(&env, config(None, Duration::from_secs(60))).await;
    parley_test_support::not_ready_for(worker.admin, Duration::from_secs(3)).await;
    parley_test_support::free_durable_name(&env.js, blocked).await;
    parley_test_support::ready(worker.admin, PATIENCE).await;
    assert!(
        consumer_info(&env.js, blocked.stream, &blocked.durable_name().unwrap())
            .await
            .is_some()
    );
    worker.shutdown.cancel();
}

#[tokio::test]
async fn a_worker_started_while_nats_is_down_still_stops_when_told() {
    let mut env = env().await;
    env.nats.kill();
    let worker = start_worker(&env, config(None, Duration::from_secs(60))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!worker.stopped.is_finished(), "it waits for NATS rather than exit");
    worker.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), worker.stopped).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}
