//! Part 2, ingest: sends per second one real gateway accepts (acknowledged to the Socket.IO
//! client, which means JetStream has them), against async JetStream publishes of the same
//! payloads straight from the bench, with as many in flight as the clients keep.
//!
//! The raw baseline runs twice, before the gateway starts and after it stopped, so nothing else
//! consumes the stream meanwhile; the better of the two is the baseline. Conversations are
//! created directly in Postgres (what the persistence worker does with `parley.project.started`),
//! and no worker runs during the measurement, so the gateway and the baseline have the machine to
//! themselves. Every ack must be `ok`, every message id and sequence unique, and the stream must
//! have grown by exactly the sends acknowledged.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use chrono::{SubsecRound, Utc};
use parley_events::{MessagePosted, subjects};
use parley_test_support::sio::Client;
use parley_test_support::{ProjectFixture, TEST_JWT_SECRET, token_for};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::figure::percentile;
use crate::fleet::Fleet;
use crate::persistence::{body, create_conversations, drop_databases, publish_all, stream_messages};
use crate::scrape::{publish_ack_between, scrape};
use crate::stack::{self, CpuMeter, Infra};
use crate::{Context, Figure};

/// Conversations, and Socket.IO clients: one per conversation, its client party sending.
const CONVERSATIONS: usize = 100;
/// Sends each client keeps in flight.
const PER_CLIENT_IN_FLIGHT: usize = 8;
/// Concurrent HTTP requests of the optional HTTP measurement.
const HTTP_IN_FLIGHT: usize = 32;
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What one way of sending achieved.
struct Run {
    sends: usize,
    elapsed: Duration,
    /// Per-send latency in milliseconds, when measured per send.
    latencies_ms: Vec<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.sends as f64 / self.elapsed.as_secs_f64()
    }

    fn summary(&self) -> Value {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let mut summary = json!({
            "sends": self.sends,
            "seconds": self.elapsed.as_secs_f64(),
            "perSecond": self.rate(),
        });
        if !sorted.is_empty() {
            summary["ackMillis"] = json!({
                "p50": percentile(&sorted, 50.0),
                "p99": percentile(&sorted, 99.0),
                "max": sorted[sorted.len() - 1],
            });
        }
        summary
    }
}

pub async fn run(context: &Context) -> anyhow::Result<Vec<Figure>> {
    let sends: usize = context.size(20_000, 200_000);
    let http_sends: usize = context.size(2_000, 10_000);
    let in_flight = CONVERSATIONS * PER_CLIENT_IN_FLIGHT;

    let infra = Infra::start(context).await?;
    let fixtures: Vec<ProjectFixture> = (0..CONVERSATIONS)
        .map(|i| ProjectFixture::new(&format!("Ingest project {i}")))
        .collect();
    create_conversations(&infra.db, &fixtures).await?;

    let bench_pid = std::process::id();
    let meter = CpuMeter::start(&infra.with_nats(&[("bench", bench_pid)]));
    let raw_before = raw_publish(&infra.js, &fixtures, sends, in_flight).await?;
    let raw_before_cpu = meter.finish(sends);
    eprintln!(
        "   raw publish: {sends} in {:.2} s ({:.0}/s)",
        raw_before.elapsed.as_secs_f64(),
        raw_before.rate()
    );

    let (gateway, addr) = infra.gateway(context)?;
    stack::ready(addr).await?;
    let url = format!("http://{addr}");
    let fleet = Fleet::new();
    let clients = futures::future::try_join_all(fixtures.iter().map(|fixture| {
        let token = token_for(fixture.client(), TEST_JWT_SECRET);
        // The sender's own `message:new` events are not part of ingest.
        let connector = Client::connector(&url, json!({ "token": token })).on_event(|_, _| {});
        let fleet = &fleet;
        async move { fleet.connect(connector).await.map(Arc::new) }
    }))
    .await
    .context("connecting the Socket.IO clients")?;
    // Warm-up: one send per client (connections, pools, statement caches), not counted.
    futures::future::try_join_all(
        clients
            .iter()
            .zip(&fixtures)
            .map(|(client, fixture)| async move { send_one(client, fixture.conversation_id(), usize::MAX).await }),
    )
    .await
    .context("warm-up sends")?;

    let before = stream_messages(&infra.js, parley_nats::CHAT_STREAM).await?;
    let metrics_before = scrape(addr).await;
    let meter = CpuMeter::start(&infra.with_nats(&[("gateway", gateway.child.id()), ("bench", bench_pid)]));
    let gateway_run = socket_sends(&clients, &fixtures, sends).await?;
    let gateway_cpu = meter.finish(sends);
    let metrics_after = scrape(addr).await;
    let after = stream_messages(&infra.js, parley_nats::CHAT_STREAM).await?;
    ensure!(
        after - before == sends as u64,
        "the gateway acknowledged {sends} sends but PARLEY_CHAT grew by {}",
        after - before
    );
    eprintln!(
        "   gateway (Socket.IO): {sends} in {:.2} s ({:.0}/s)",
        gateway_run.elapsed.as_secs_f64(),
        gateway_run.rate()
    );
    let http_run = http_posts(addr, &fixtures, http_sends).await?;
    let after_http = stream_messages(&infra.js, parley_nats::CHAT_STREAM).await?;
    ensure!(
        after_http - after == http_sends as u64,
        "the gateway answered {http_sends} HTTP sends but PARLEY_CHAT grew by {}",
        after_http - after
    );
    drop(clients);
    drop(gateway);

    let meter = CpuMeter::start(&infra.with_nats(&[("bench", bench_pid)]));
    let raw_after = raw_publish(&infra.js, &fixtures, sends, in_flight).await?;
    let raw_after_cpu = meter.finish(sends);
    eprintln!("   raw publish again: {:.0}/s", raw_after.rate());
    let raw_rate = raw_before.rate().max(raw_after.rate());
    drop_databases(&[&infra.db]).await;

    let details = json!({
        "conversations": CONVERSATIONS,
        "socketIoClients": CONVERSATIONS,
        "inFlightPerClient": PER_CLIENT_IN_FLIGHT,
        "inFlight": in_flight,
        "bodyChars": crate::persistence::BODY_CHARS,
        "gateway": gateway_run.summary(),
        "cpuAtFigure": gateway_cpu,
        "gatewayPublishAck": publish_ack_between(&metrics_before, &metrics_after),
        "raw": {
            "inFlight": in_flight,
            "before": raw_before.summary(),
            "beforeCpu": raw_before_cpu,
            "after": raw_after.summary(),
            "afterCpu": raw_after_cpu,
            "baseline": "the better of before (no gateway yet) and after (gateway stopped)",
        },
        "http": {
            "inFlight": HTTP_IN_FLIGHT,
            "connection": "one request per connection (Connection: close)",
            "result": http_run.summary(),
        },
        "persistenceWorker": "not running during the measurement; conversations created directly in Postgres",
        "checks": [
            "every ack ok, message ids and sequences unique",
            "PARLEY_CHAT grew by exactly the acknowledged sends",
        ],
    });
    Ok(vec![Figure::higher(
        &context.figure_name("Ingest (one gateway)"),
        gateway_run.rate(),
        "sends/s",
        "async JetStream publish of the same payloads",
        raw_rate,
        0.5,
        "≥ 50% of the raw rate",
        details,
    )])
}

/// `count` events like the gateway's, published straight to JetStream.
async fn raw_publish(
    js: &async_nats::jetstream::Context,
    fixtures: &[ProjectFixture],
    count: usize,
    in_flight: usize,
) -> anyhow::Result<Run> {
    let items = (0..count)
        .map(|i| {
            let fixture = &fixtures[i % fixtures.len()];
            let event = MessagePosted {
                id: parley_domain::ids::new_message_id(),
                conversation_id: fixture.conversation_id(),
                project_id: fixture.event.project_id,
                sender_id: fixture.client(),
                body: body(i),
                client_msg_id: None,
                created_at: Utc::now().trunc_subsecs(3),
                participants: vec![fixture.client(), fixture.provider()],
            };
            Ok((
                subjects::conversation_messages(event.conversation_id),
                event.id,
                serde_json::to_vec(&event)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let before = stream_messages(js, parley_nats::CHAT_STREAM).await?;
    let started = Instant::now();
    let seqs = publish_all(js, &items, in_flight).await?;
    let elapsed = started.elapsed();
    let after = stream_messages(js, parley_nats::CHAT_STREAM).await?;
    ensure!(
        after - before == count as u64,
        "raw publish: {count} acks but PARLEY_CHAT grew by {}",
        after - before
    );
    ensure!(
        seqs.iter().collect::<HashSet<_>>().len() == count,
        "raw publish: sequences are not unique"
    );
    Ok(Run {
        sends: count,
        elapsed,
        latencies_ms: Vec::new(),
    })
}

/// One `message:send` with an ack; returns the accepted message's id and sequence.
async fn send_one(client: &Client, conversation_id: Uuid, i: usize) -> anyhow::Result<(Uuid, i64)> {
    let ack = client
        .emit_with_ack(
            "message:send",
            json!({ "conversationId": conversation_id, "body": body(i) }),
            ACK_TIMEOUT,
        )
        .await?;
    if ack["ok"] != json!(true) {
        bail!("message:send refused: {ack}");
    }
    accepted(&ack["message"])
}

fn accepted(message: &Value) -> anyhow::Result<(Uuid, i64)> {
    let id = message["id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .with_context(|| format!("no message id in {message}"))?;
    let seq = message["seq"]
        .as_i64()
        .with_context(|| format!("no seq in {message}"))?;
    Ok((id, seq))
}

/// `count` sends over the clients, each keeping [`PER_CLIENT_IN_FLIGHT`] in flight.
async fn socket_sends(clients: &[Arc<Client>], fixtures: &[ProjectFixture], count: usize) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (client, fixture) in clients.iter().zip(fixtures) {
        for _ in 0..PER_CLIENT_IN_FLIGHT {
            let (client, next, conversation_id) = (client.clone(), next.clone(), fixture.conversation_id());
            tasks.spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, anyhow::Error>(done);
                    }
                    let sent = Instant::now();
                    let (id, seq) = send_one(&client, conversation_id, i).await?;
                    done.push((id, seq, sent.elapsed().as_secs_f64() * 1e3));
                }
            });
        }
    }
    let accepted = collect(tasks).await?;
    let elapsed = started.elapsed();
    check_unique(&accepted, count, "Socket.IO")?;
    Ok(Run {
        sends: count,
        elapsed,
        latencies_ms: accepted.iter().map(|(_, _, ms)| *ms).collect(),
    })
}

/// `count` `POST /v1/conversations/{id}/messages`, [`HTTP_IN_FLIGHT`] at a time.
async fn http_posts(addr: SocketAddr, fixtures: &[ProjectFixture], count: usize) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let targets: Arc<Vec<(Uuid, String)>> = Arc::new(
        fixtures
            .iter()
            .map(|f| (f.conversation_id(), token_for(f.client(), TEST_JWT_SECRET)))
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..HTTP_IN_FLIGHT {
        let (next, targets) = (next.clone(), targets.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(done);
                }
                let (conversation_id, token) = &targets[i % targets.len()];
                let sent = Instant::now();
                let path = format!("/v1/conversations/{conversation_id}/messages");
                let response = parley_test_support::http::post(addr, &path, token, &json!({ "body": body(i) })).await;
                ensure!(
                    response.status == 201,
                    "HTTP send answered {}: {}",
                    response.status,
                    response.raw
                );
                let (id, seq) = accepted(&response.body["message"])?;
                done.push((id, seq, sent.elapsed().as_secs_f64() * 1e3));
            }
        });
    }
    let accepted = collect(tasks).await?;
    let elapsed = started.elapsed();
    check_unique(&accepted, count, "HTTP")?;
    Ok(Run {
        sends: count,
        elapsed,
        latencies_ms: accepted.iter().map(|(_, _, ms)| *ms).collect(),
    })
}

type Accepted = Vec<(Uuid, i64, f64)>;

async fn collect(mut tasks: tokio::task::JoinSet<anyhow::Result<Accepted>>) -> anyhow::Result<Accepted> {
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("a sender task panicked")??);
    }
    Ok(all)
}

fn check_unique(accepted: &Accepted, count: usize, path: &str) -> anyhow::Result<()> {
    ensure!(
        accepted.len() == count,
        "{path}: {} of {count} sends acknowledged",
        accepted.len()
    );
    let ids: HashSet<Uuid> = accepted.iter().map(|(id, _, _)| *id).collect();
    ensure!(
        ids.len() == count,
        "{path}: {} duplicate message ids",
        count - ids.len()
    );
    let seqs: HashSet<i64> = accepted.iter().map(|(_, seq, _)| *seq).collect();
    ensure!(
        seqs.len() == count,
        "{path}: {} duplicate sequences",
        count - seqs.len()
    );
    Ok(())
}
