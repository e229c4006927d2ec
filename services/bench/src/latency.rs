//! Figure 3, end-to-end latency from `message:send` to the recipient's `message:new`, at 10%,
//! 50% and 80% of the sustainable rate with many connected pairs, against a raw JetStream
//! publish → ordered consumer round trip in the same run; and figure 6, notification lag (send
//! acknowledged, i.e. durable in JetStream → notification published) under that load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use parley_test_support::sio::Client;
use parley_test_support::{ProjectFixture, TEST_JWT_SECRET, conversation_exists, token_for};
use serde_json::json;
use tokio::task::JoinSet;

use crate::figure::percentile;
use crate::stack::{Infra, ready};
use crate::{Context, Figure};

const TIMEOUT: Duration = Duration::from_secs(30);

/// When each message was sent and acknowledged, by its body.
#[derive(Default)]
struct Clock {
    sent: HashMap<String, Instant>,
    acked: HashMap<String, Instant>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(shared: &Shared<T>) -> std::sync::MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Latencies in milliseconds, sorted.
fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    json!({ "count": ms.len(), "p50": percentile(&ms, 50.0), "p99": percentile(&ms, 99.0), "p999": percentile(&ms, 99.9), "max": ms.last() })
}

struct Pair {
    sender: Arc<Client>,
    conversation: uuid::Uuid,
}

/// Sends `total` messages at `rate` per second, round-robin over the pairs; each send is timed.
async fn drive(
    pairs: &[Pair],
    rate: f64,
    total: usize,
    label: &str,
    clock: &Shared<Clock>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64()).max(1.0);
    let mut owed = 0.0;
    let mut sent = 0;
    let mut interval = tokio::time::interval(tick);
    while sent < total {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 && sent < total {
            owed -= 1.0;
            let pair = &pairs[sent % pairs.len()];
            let body = format!("{label}-{sent}");
            let (sender, conversation, clock) = (pair.sender.clone(), pair.conversation, clock.clone());
            tasks.spawn(async move {
                lock(&clock).sent.insert(body.clone(), Instant::now());
                let ack = sender
                    .emit_with_ack(
                        "message:send",
                        json!({ "conversationId": conversation, "body": body }),
                        TIMEOUT,
                    )
                    .await?;
                anyhow::ensure!(ack["ok"] == true, "send refused: {ack}");
                lock(&clock).acked.insert(body, Instant::now());
                Ok(())
            });
            sent += 1;
        }
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// The sustainable rate: as fast as the pairs can send with a few sends in flight each.
async fn sustainable_rate(pairs: &[Pair], seconds: f64, clock: &Shared<Clock>) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (lane, pair) in pairs.iter().enumerate().take(64) {
        let (sender, conversation, counter, clock) =
            (pair.sender.clone(), pair.conversation, counter.clone(), clock.clone());
        tasks.spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                let body = format!("probe-{lane}-{i}");
                lock(&clock).sent.insert(body.clone(), Instant::now());
                let ack = sender
                    .emit_with_ack(
                        "message:send",
                        json!({ "conversationId": conversation, "body": body }),
                        TIMEOUT,
                    )
                    .await?;
                anyhow::ensure!(ack["ok"] == true, "send refused: {ack}");
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        });
    }
    let started = Instant::now();
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(counter.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// The raw baseline: JetStream publish → ordered consumer, at `rate` for `total` messages.
async fn raw_round_trip(infra: &Infra, rate: f64, total: usize) -> anyhow::Result<Vec<f64>> {
    let js = &infra.js;
    js.create_or_update_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let stream = js.get_stream("BENCH_RAW").await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let sent: Shared<HashMap<u64, Instant>> = Arc::default();
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total);
            while latencies.len() < total {
                let message = tokio::time::timeout(TIMEOUT, messages.next())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("ended"))??;
                let n: u64 = std::str::from_utf8(&message.payload)?.parse()?;
                let at = lock(&sent)
                    .get(&n)
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("unknown raw message"))?;
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    };
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64()).max(1.0);
    let mut owed = 0.0;
    let mut n = 0u64;
    let mut interval = tokio::time::interval(tick);
    let mut acks = JoinSet::new();
    while (n as usize) < total {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 && (n as usize) < total {
            owed -= 1.0;
            lock(&sent).insert(n, Instant::now());
            let ack = js
                .publish(format!("bench.raw.{}", n % 1000), n.to_string().into())
                .await?;
            acks.spawn(async move { ack.await.map(|_| ()) });
            n += 1;
        }
    }
    while let Some(done) = acks.join_next().await {
        done??;
    }
    receiver.await?
}

pub async fn run(context: &Context) -> anyhow::Result<Vec<Figure>> {
    let infra = Infra::start().await?;
    let (_gateway, addr) = infra.gateway(context)?;
    let _persistence = infra.worker(context, "parley-persistence-worker", &[])?;
    let _notification = infra.worker(context, "parley-notification-worker", &[])?;
    ready(addr).await?;
    let url = format!("http://{addr}");
    let pairs_wanted = context.size(1000, 1000);
    let seconds_per_step = context.size(5.0, 20.0);

    // Notifications, timed on arrival.
    let nats = async_nats::connect(infra.nats.url()).await?;
    let mut notifications = nats.subscribe("parley.notification.>").await?;
    let clock: Shared<Clock> = Arc::default();
    let notified: Shared<Vec<f64>> = Arc::default();
    let notification_task = {
        let (clock, notified) = (clock.clone(), notified.clone());
        tokio::spawn(async move {
            while let Some(message) = notifications.next().await {
                let now = Instant::now();
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
                    continue;
                };
                let body = value["message"]["preview"].as_str().unwrap_or_default().to_owned();
                if let Some(acked) = lock(&clock).acked.get(&body) {
                    lock(&notified).push(now.saturating_duration_since(*acked).as_secs_f64() * 1000.0);
                }
            }
        })
    };

    // The pairs: a sender socket and a recipient socket per conversation.
    let mut pairs = Vec::with_capacity(pairs_wanted);
    let mut recipients = Vec::with_capacity(pairs_wanted);
    let mut projects = Vec::with_capacity(pairs_wanted);
    for i in 0..pairs_wanted {
        let project = ProjectFixture::new(&format!("Latency {i}"));
        project.publish_started(&infra.js).await;
        projects.push(project);
    }
    for project in &projects {
        conversation_exists(&infra.db, project).await;
        let sender = Client::connect(&url, json!({ "token": token_for(project.client(), TEST_JWT_SECRET) })).await?;
        let recipient =
            Client::connect(&url, json!({ "token": token_for(project.provider(), TEST_JWT_SECRET) })).await?;
        pairs.push(Pair {
            sender: Arc::new(sender),
            conversation: project.conversation_id(),
        });
        recipients.push(recipient);
    }
    // Each recipient records arrival latencies and checks order and uniqueness.
    let received: Shared<HashMap<String, usize>> = Arc::default();
    let latencies: Shared<Vec<(String, f64)>> = Arc::default();
    let mut readers = JoinSet::new();
    for mut recipient in recipients {
        let (clock, received, latencies) = (clock.clone(), received.clone(), latencies.clone());
        readers.spawn(async move {
            let mut last_seq = 0;
            loop {
                let Ok((name, data)) = recipient.next_event(Duration::from_secs(3600)).await else {
                    return Ok(());
                };
                if name != "message:new" {
                    continue;
                }
                let now = Instant::now();
                let seq = data["seq"].as_i64().unwrap_or(0);
                anyhow::ensure!(
                    seq > last_seq,
                    "out of order on a recipient socket: {seq} after {last_seq}"
                );
                last_seq = seq;
                let body = data["body"].as_str().unwrap_or_default().to_owned();
                *lock(&received).entry(body.clone()).or_default() += 1;
                if let Some(sent) = lock(&clock).sent.get(&body) {
                    lock(&latencies).push((body, now.saturating_duration_since(*sent).as_secs_f64() * 1000.0));
                }
            }
        });
    }

    let rate = sustainable_rate(&pairs, context.size(3.0, 10.0), &clock).await?;
    eprintln!("   sustainable rate ≈ {rate:.0} sends/s with {} pairs", pairs.len());
    let mut steps = serde_json::Map::new();
    let mut at_half = json!(null);
    let mut total_sent = 0usize;
    for (label, share) in [("10pct", 0.1), ("50pct", 0.5), ("80pct", 0.8)] {
        let step_rate = rate * share;
        let total = ((step_rate * seconds_per_step) as usize).max(100);
        lock(&latencies).clear();
        drive(&pairs, step_rate, total, label, &clock).await?;
        // Every message of the step must reach its recipient exactly once.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let arrived = lock(&latencies).iter().filter(|(b, _)| b.starts_with(label)).count();
            if arrived >= total {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{label}: {arrived} of {total} messages reached their recipient"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        total_sent += total;
        let step: Vec<f64> = lock(&latencies)
            .iter()
            .filter(|(b, _)| b.starts_with(label))
            .map(|(_, ms)| *ms)
            .collect();
        let stats = summary(step);
        if label == "50pct" {
            at_half = stats.clone();
        }
        steps.insert(
            label.into(),
            json!({ "rate": step_rate, "messages": total, "latencyMs": stats }),
        );
    }
    let duplicates = lock(&received).values().filter(|n| **n > 1).count();
    anyhow::ensure!(
        duplicates == 0,
        "{duplicates} messages reached a recipient more than once"
    );

    let raw = raw_round_trip(&infra, rate * 0.5, ((rate * 0.5 * seconds_per_step) as usize).max(100)).await?;
    let raw_stats = summary(raw);
    let parley_p99 = at_half["p99"].as_f64().unwrap_or(f64::INFINITY);
    let raw_p99 = raw_stats["p99"].as_f64().unwrap_or(0.0);
    let mut figures = vec![Figure::lower(
        "End-to-end latency p99 at 50% load",
        parley_p99,
        "ms",
        "raw JetStream publish → ordered consumer p99",
        raw_p99,
        3.0,
        "p99 ≤ 3× the raw round trip; nothing lost or duplicated (checked)",
        json!({ "pairs": pairs.len(), "sustainableRate": rate, "steps": steps, "raw": raw_stats, "messages": total_sent }),
    )];

    // Notification lag under the same load, against the same raw round trip.
    tokio::time::sleep(Duration::from_secs(2)).await;
    notification_task.abort();
    let lag = summary(std::mem::take(&mut *lock(&notified)));
    figures.push(Figure::lower(
        "Notification lag p99 (send acknowledged → notification published)",
        lag["p99"].as_f64().unwrap_or(0.0),
        "ms",
        "raw JetStream round trip p99",
        raw_p99,
        f64::INFINITY,
        "reported",
        json!({ "lagMs": lag }),
    ));
    readers.abort_all();
    Ok(figures)
}
