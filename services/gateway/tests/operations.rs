//! The processes as an operator runs them: real binaries, stopped with SIGTERM under load,
//! scraped for metrics, and their logs read for anything that must never be there.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use parley_test_support::stack::{Service, Spec, TestStack};
use parley_test_support::{ProjectFixture, TEST_JWT_SECRET, conversation_exists, eventually, http};
use serde_json::{Value, json};
use uuid::Uuid;

/// NATS with Parley's streams and a fresh database; the processes are the tests' to start.
async fn bench() -> TestStack {
    TestStack::builder().streams().build().await
}

/// A gateway binary logging JSON at debug level to `<name>.log`.
fn gateway_binary(name: &str) -> Spec {
    Spec::gateway().binary().named(name).env("RUST_LOG", "debug")
}

/// A worker binary (`spec` says which) logging JSON at debug level to `<name>.log`.
fn worker_binary(spec: Spec, name: &str) -> Spec {
    spec.binary().named(name).batch_size(50).env("RUST_LOG", "debug")
}

fn log_name(process: &Service) -> String {
    process
        .log_path()
        .map_or_else(|| process.name().to_owned(), |path| path.display().to_string())
}

/// Sends through HTTP; `Some(id)` when the gateway acknowledged (201).
async fn try_send(addr: SocketAddr, conversation: Uuid, token: &str, body: &str) -> Option<Uuid> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        drop(stream.set_nodelay(true));
        let payload = json!({ "body": body }).to_string();
        let request = format!(
            "POST /v1/conversations/{conversation}/messages HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        if !raw.starts_with("HTTP/1.1 201") {
            return None;
        }
        let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1)?).ok()?;
        serde_json::from_value(body["message"]["id"].clone()).ok()
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .ok()
        .flatten()
}

fn assert_no_secrets(process: &Service, secrets: &[String]) {
    let raw = process.log_text();
    for secret in secrets {
        assert!(
            !raw.contains(secret.as_str()),
            "{} contains a message body or token",
            log_name(process)
        );
    }
}

/// The `persisted` and `duplicates` a worker reported when its chat loop stopped.
fn stop_report(worker: &Service) -> (u64, u64) {
    let line = worker
        .log_lines()
        .into_iter()
        .find(|l| l["message"] == "chat loop stopped")
        .unwrap_or_else(|| panic!("{} has no stop report", log_name(worker)));
    (
        line["persisted"].as_u64().unwrap(),
        line["duplicates"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_acknowledged_and_doubles_nothing() {
    let bench = bench().await;
    let mut gateway = bench.start(gateway_binary("gateway")).await;
    let addr = gateway.addr;
    let mut workers = vec![
        bench.start(worker_binary(Spec::persistence(), "worker-1")).await,
        bench.start(worker_binary(Spec::persistence(), "worker-2")).await,
    ];
    let project = ProjectFixture::new("Shutdown");
    project.publish_started(&bench.js).await;
    conversation_exists(bench.db(), &project).await;
    let conversation = project.conversation_id();
    let token = parley_test_support::token_for(project.client(), TEST_JWT_SECRET);

    // Four senders keep sending until told to stop; every 201 is recorded.
    let acked: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let marker = format!("secret-body-{}", Uuid::new_v4().simple());
    let mut senders = Vec::new();
    for lane in 0..4 {
        let (acked, stop, token, marker) = (acked.clone(), stop.clone(), token.clone(), marker.clone());
        senders.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                if let Some(id) = try_send(addr, conversation, &token, &format!("{marker} {lane}-{i}")).await {
                    acked.lock().unwrap().push(id);
                }
                i += 1;
            }
        }));
    }
    let acked_count = || acked.lock().unwrap().len();
    let mut finished = Vec::new();
    // Stop each worker gracefully in turn under load, starting a replacement each time.
    for round in 0..2 {
        let target = (round + 1) * 150;
        eventually("sends to flow", Duration::from_secs(60), || async {
            (acked_count() >= target).then_some(())
        })
        .await;
        let mut worker = workers.remove(0);
        let status = worker.stop_within(Duration::from_secs(20)).await;
        assert!(status.success(), "a worker stops cleanly on SIGTERM: {status}");
        finished.push(worker);
        workers.push(
            bench
                .start(worker_binary(Spec::persistence(), &format!("worker-{}", round + 3)))
                .await,
        );
    }
    // Then the gateway, with sends in flight.
    eventually("more sends", Duration::from_secs(60), || async {
        (acked_count() >= 450).then_some(())
    })
    .await;
    let status = gateway.stop_within(Duration::from_secs(30)).await;
    assert!(status.success(), "the gateway stops cleanly on SIGTERM: {status}");
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }
    let acked: HashSet<Uuid> = acked.lock().unwrap().iter().copied().collect();
    assert!(acked.len() >= 450);

    // Every acknowledged message is stored, once.
    let store = bench.db().store();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages WHERE conversation_id = $1")
            .bind(conversation)
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    eventually(
        "every acknowledged message to be stored",
        Duration::from_secs(90),
        || async { (count().await as usize >= acked.len()).then_some(()) },
    )
    .await;
    let stored: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM messages WHERE conversation_id = $1")
        .bind(conversation)
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        acked.is_subset(&stored),
        "{} acknowledged messages lost",
        acked.difference(&stored).count()
    );
    // Stored but unacknowledged ones are sends cut off by the shutdown: published, not answered.
    assert!(
        stored.len() - acked.len() <= 4,
        "at most one in flight per sender went unanswered"
    );

    for worker in &mut workers {
        assert!(worker.stop_within(Duration::from_secs(20)).await.success());
    }
    finished.extend(workers);
    // Nothing was written twice: the workers' own counts add up to the rows, with no duplicate.
    let mut persisted = 0;
    for worker in &finished {
        let (rows, duplicates) = stop_report(worker);
        assert_eq!(duplicates, 0, "{} wrote rows that were already there", log_name(worker));
        persisted += rows;
    }
    assert_eq!(persisted as usize, stored.len());
    let drained = gateway.log_lines().iter().any(|l| l["message"] == "gateway drained");
    assert!(drained, "the gateway drained before exiting");

    let secrets = vec![marker, token];
    for process in finished.iter().chain([&gateway]) {
        assert_no_secrets(process, &secrets);
    }
}

/// The value of the first sample of `metric` whose labels contain `labels`.
fn sample(text: &str, metric: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr) -> String {
    let response = http::request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(response.status, 200);
    response.raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_gateway_promptly_when_nats_is_gone_and_its_sockets_just_left() {
    let mut bench = bench().await;
    let mut gateway = bench.start(gateway_binary("gateway-nats-gone")).await;
    let addr = gateway.addr;
    // Each socket's user goes online here, then offline: a presence write each.
    let url = format!("http://{addr}");
    let mut sockets = Vec::new();
    for _ in 0..100 {
        let token = parley_test_support::token_for(Uuid::new_v4(), TEST_JWT_SECRET);
        sockets.push(
            parley_test_support::sio::Client::connect(&url, json!({ "token": token }))
                .await
                .unwrap(),
        );
    }
    bench.nats.kill();
    for socket in &mut sockets {
        socket.disconnect().await;
    }
    // With NATS away a presence write waits for the JetStream timeout; neither the writes of the
    // departures nor the cleanup may hold the shutdown (its bound on a stuck connection is 20 s).
    let status = gateway.stop_within(Duration::from_secs(15)).await;
    assert!(status.success(), "the gateway stops cleanly on SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_on_every_process_and_move_with_traffic() {
    let bench = bench().await;
    let gateway = bench.start(gateway_binary("gateway")).await;
    let addr = gateway.addr;
    let persistence = bench.start(worker_binary(Spec::persistence(), "persistence")).await;
    let persistence_admin = persistence.addr;
    let notification = bench.start(worker_binary(Spec::notification(), "notification")).await;
    let notification_admin = notification.addr;
    assert_eq!(
        http::request(persistence_admin, "GET", "/healthz", None, None)
            .await
            .status,
        200
    );
    assert_eq!(
        http::request(notification_admin, "GET", "/healthz", None, None)
            .await
            .status,
        200
    );

    let project = ProjectFixture::new("Metrics");
    project.publish_started(&bench.js).await;
    conversation_exists(bench.db(), &project).await;
    let conversation = project.conversation_id();
    let before = scrape(addr).await;
    let client_token = parley_test_support::token_for(project.client(), TEST_JWT_SECRET);
    let mut provider = parley_test_support::sio::Client::connect(
        &format!("http://{addr}"),
        json!({ "token": parley_test_support::token_for(project.provider(), TEST_JWT_SECRET) }),
    )
    .await
    .unwrap();
    let marker = format!("metric-body-{}", Uuid::new_v4().simple());
    for i in 0..5 {
        assert!(
            try_send(addr, conversation, &client_token, &format!("{marker} {i}"))
                .await
                .is_some()
        );
    }
    let refused = http::post(
        addr,
        &format!("/v1/conversations/{conversation}/messages"),
        &client_token,
        &json!({ "body": "" }),
    )
    .await;
    assert_eq!(refused.status, 400);
    let history = provider.emit_with_ack(
        "conversation:history",
        json!({ "conversationId": conversation }),
        Duration::from_secs(10),
    );
    history.await.unwrap();
    for _ in 0..5 {
        provider.next_event(Duration::from_secs(10)).await.unwrap();
    }

    let after = scrape(addr).await;
    let moved = |metric: &str, labels: &str| sample(&after, metric, labels) - sample(&before, metric, labels);
    assert_eq!(
        moved("parley_gateway_sends_total", "result=\"accepted\""),
        5.0,
        "{after}"
    );
    assert_eq!(moved("parley_gateway_sends_total", "result=\"invalid_message\""), 1.0);
    assert!(moved("parley_gateway_events_received_total", "event=\"conversation:history\"") >= 1.0);
    assert!(moved("parley_gateway_fanout_deliveries_total", "") >= 5.0);
    assert!(sample(&after, "parley_gateway_connected_sockets", "") >= 1.0);
    assert!(sample(&after, "parley_gateway_publish_ack_seconds_count", "") >= 5.0);
    assert!(sample(&after, "parley_gateway_delivery_latency_seconds_count", "") >= 5.0);

    eventually("the workers' counters to move", Duration::from_secs(30), || async {
        let persisted = scrape(persistence_admin).await;
        let notified = scrape(notification_admin).await;
        let ok = sample(&persisted, "parley_persistence_messages_persisted_total", "") >= 5.0
            && sample(&persisted, "parley_persistence_batch_size_count", "") >= 1.0
            && sample(&persisted, "parley_persistence_commit_seconds_count", "") >= 1.0
            && sample(&notified, "parley_notifications_published_total", "") >= 5.0
            && persisted.contains("parley_consumer_pending{consumer=\"parley-persistence-chat\"}")
            && notified.contains("parley_consumer_pending{consumer=\"parley-notification-messages\"}");
        ok.then_some(())
    })
    .await;
    let secrets = vec![marker, client_token];
    for process in [&gateway, &persistence, &notification] {
        assert_no_secrets(process, &secrets);
    }
}
