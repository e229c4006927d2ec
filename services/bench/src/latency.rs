//! Figure 3, end-to-end latency from `message:send` to the recipient's `message:new`, at 10%,
//! 50% and 80% of the sustainable rate with many connected pairs, against a raw JetStream
//! publish → ordered consumer round trip in the same run, with a histogram picture of every step;
//! and figure 6, notification lag (send acknowledged, i.e. durable in JetStream → notification
//! published) under that load, per step, every acknowledged message required to have one.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parley_test_support::sio::Client;
use parley_test_support::{
    ProjectFixture, TEST_JWT_SECRET, consumer_caught_up, conversation_exists, eventually, token_for,
};
use serde_json::json;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;

use crate::figure::percentile;
use crate::fleet::Fleet;
use crate::histogram::{self, Series};
use crate::scrape::{publish_ack_between, scrape};
use crate::stack::{CpuMeter, Infra, ready};
use crate::{Context, Figure};

const TIMEOUT: Duration = Duration::from_secs(30);

/// When each message was sent and acknowledged, by its body.
#[derive(Default)]
struct Clock {
    sent: HashMap<String, Instant>,
    acked: HashMap<String, Instant>,
    /// (body, milliseconds from send to ack): the gateway's share of the latency.
    ack_ms: Vec<(String, f64)>,
}

/// What the recipients saw, recorded by their readers the moment each `message:new` is parsed.
#[derive(Default)]
struct Arrivals {
    /// Deliveries per body: more than one is a duplicate.
    received: HashMap<String, usize>,
    /// (body, milliseconds from its send) in arrival order.
    latencies: Vec<(String, f64)>,
    /// How many of `latencies` each run has: a body is `<run>-…` (`probe`, `10pct`, …).
    timed_per_run: HashMap<String, usize>,
    /// The first out-of-order delivery on a recipient socket, if any.
    disorder: Option<String>,
    /// Who waits for a body's first delivery.
    awaited: HashMap<String, oneshot::Sender<()>>,
}

/// [`Arrivals`] and a wake-up for whoever waits on them.
#[derive(Default)]
struct Recorder {
    arrivals: Mutex<Arrivals>,
    changed: Notify,
}

impl Recorder {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Arrivals> {
        self.arrivals.lock()
    }

    /// Resolves on the first delivery of `body`; to be called before it is sent.
    fn arrival_of(&self, body: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.lock().awaited.insert(body.to_owned(), tx);
        rx
    }

    /// Waits until `count` messages of `run` have arrived, failing on a disorder or after
    /// [`TIMEOUT`] without progress.
    async fn wait_for(&self, run: &str, count: usize) -> anyhow::Result<()> {
        loop {
            let changed = self.changed.notified();
            let arrived = {
                let arrivals = self.lock();
                if let Some(disorder) = &arrivals.disorder {
                    anyhow::bail!("out of order on a recipient socket: {disorder}");
                }
                arrivals.timed_per_run.get(run).copied().unwrap_or(0)
            };
            if arrived >= count {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::timeout(TIMEOUT, changed).await.is_ok(),
                "{run}: {arrived} of {count} messages reached their recipient"
            );
        }
    }
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(shared: &Shared<T>) -> parking_lot::MutexGuard<'_, T> {
    shared.lock()
}

/// The latencies of the messages whose body starts with `prefix`.
fn with_prefix<'a>(timed: impl IntoIterator<Item = &'a (String, f64)>, prefix: &str) -> Vec<f64> {
    timed
        .into_iter()
        .filter(|(body, _)| body.starts_with(prefix))
        .map(|(_, ms)| *ms)
        .collect()
}

/// Latencies in milliseconds, sorted.
fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    json!({ "count": ms.len(), "p50": percentile(&ms, 50.0), "p99": percentile(&ms, 99.0), "p999": percentile(&ms, 99.9), "max": ms.last() })
}

/// The event hook of one recipient socket: times each `message:new` on arrival and checks that
/// its sequence only grows on this socket.
fn recipient_hook(clock: Shared<Clock>, recorder: Arc<Recorder>) -> impl FnMut(String, serde_json::Value) + Send {
    let mut last_seq = 0;
    move |name, data| {
        if name != "message:new" {
            return;
        }
        let now = Instant::now();
        let seq = data["seq"].as_i64().unwrap_or(0);
        let body = data["body"].as_str().unwrap_or_default().to_owned();
        let sent = lock(&clock).sent.get(&body).copied();
        let mut arrivals = recorder.lock();
        if seq <= last_seq && arrivals.disorder.is_none() {
            arrivals.disorder = Some(format!("seq {seq} after {last_seq} ({body})"));
        }
        last_seq = seq;
        *arrivals.received.entry(body.clone()).or_default() += 1;
        if let Some(waiting) = arrivals.awaited.remove(&body) {
            let _ = waiting.send(());
        }
        if let Some(sent) = sent {
            let run = body.split('-').next().unwrap_or_default().to_owned();
            *arrivals.timed_per_run.entry(run).or_default() += 1;
            arrivals
                .latencies
                .push((body, now.saturating_duration_since(sent).as_secs_f64() * 1000.0));
        }
        drop(arrivals);
        recorder.changed.notify_waiters();
    }
}

struct Pair {
    sender: Client,
    conversation: uuid::Uuid,
}

/// Sends `body` from `pair`, timing it from the send to the ack.
async fn send(pair: &Pair, body: String, clock: &Shared<Clock>) -> anyhow::Result<()> {
    let sent = Instant::now();
    lock(clock).sent.insert(body.clone(), sent);
    let ack = pair
        .sender
        .emit_with_ack(
            "message:send",
            json!({ "conversationId": pair.conversation, "body": body }),
            TIMEOUT,
        )
        .await?;
    anyhow::ensure!(ack["ok"] == true, "send refused: {ack}");
    let acked = Instant::now();
    let mut clock = lock(clock);
    clock.ack_ms.push((body.clone(), (acked - sent).as_secs_f64() * 1000.0));
    clock.acked.insert(body, acked);
    Ok(())
}

/// Sends `total` messages at `rate` per second, evenly paced each millisecond, round-robin over
/// the pairs; every send in flight is a future of this one task.
async fn drive(pairs: &[Pair], rate: f64, total: usize, label: &str, clock: &Shared<Clock>) -> anyhow::Result<()> {
    let tick = Duration::from_millis(1);
    let per_tick = rate * tick.as_secs_f64();
    let mut owed = 0.0;
    let mut sent = 0;
    let mut interval = tokio::time::interval(tick);
    let mut in_flight = FuturesUnordered::new();
    while sent < total || !in_flight.is_empty() {
        tokio::select! {
            _ = interval.tick(), if sent < total => {
                owed += per_tick;
                while owed >= 1.0 && sent < total {
                    owed -= 1.0;
                    in_flight.push(send(&pairs[sent % pairs.len()], format!("{label}-{sent}"), clock));
                    sent += 1;
                }
            }
            Some(done) = in_flight.next() => done?,
        }
    }
    Ok(())
}

/// The sustainable rate: as fast as every pair can send, each waiting for its message to reach
/// the recipient before it sends the next, so the traffic has the shape of the steps' and the
/// rate is one the whole path (accept, publish, fan-out, delivery) keeps up with. Paced by the
/// acks alone, the probe measured acceptance, which outruns delivery: its 80% step queued into
/// hundreds of milliseconds. Returns the rate and the messages sent.
async fn sustainable_rate(
    pairs: &[Pair],
    seconds: f64,
    clock: &Shared<Clock>,
    recorder: &Recorder,
) -> anyhow::Result<(f64, usize)> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let lanes = pairs.iter().enumerate().map(|(lane, pair)| async move {
        let mut sent = 0usize;
        while Instant::now() < deadline {
            let body = format!("probe-{lane}-{sent}");
            let delivered = recorder.arrival_of(&body);
            send(pair, body, clock).await?;
            tokio::time::timeout(TIMEOUT, delivered)
                .await
                .map_err(|_| anyhow::anyhow!("probe-{lane}-{sent} did not reach its recipient"))?
                .map_err(|_| anyhow::anyhow!("the recipients' recorder went away"))?;
            sent += 1;
        }
        Ok::<_, anyhow::Error>(sent)
    });
    let sent: usize = futures::future::try_join_all(lanes).await?.into_iter().sum();
    Ok((sent as f64 / started.elapsed().as_secs_f64(), sent))
}

/// Waits until the persistence and notification workers have acknowledged everything sent so
/// far, so that no step is measured while they work through an earlier one's backlog. Returns how
/// long that took: a long wait after the probe says its rate is more than they sustain.
async fn workers_caught_up(js: &async_nats::jetstream::Context) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for definition in [
        parley_nats::PERSISTENCE_CHAT_CONSUMER,
        parley_nats::NOTIFICATION_MESSAGES_CONSUMER,
    ] {
        let name = definition.durable_name()?;
        eventually(&format!("{name} to catch up"), TIMEOUT, || async {
            consumer_caught_up(js, definition.stream, &name).await.then_some(())
        })
        .await;
    }
    Ok(started.elapsed())
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
    let tick = Duration::from_millis(1);
    let per_tick = rate * tick.as_secs_f64();
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

/// Times every notification published from the moment it arrives, on a thread and runtime of its
/// own, so that the recipients' and senders' sockets (the main runtime's work) never delay the
/// reading. Runs until the returned sender is dropped.
async fn watch_notifications(
    url: String,
    notified: tokio::sync::mpsc::UnboundedSender<(String, Instant)>,
) -> anyhow::Result<oneshot::Sender<()>> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, ready) = oneshot::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("notifications".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(error.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let subscribed = async {
                    let nats = parley_nats::connect(&url, "parley-bench").await?;
                    let subscription = nats.subscribe("parley.notification.>").await?;
                    nats.flush().await?;
                    Ok::<_, anyhow::Error>((nats, subscription))
                };
                let (_nats, mut subscription) = match subscribed.await {
                    Ok(subscribed) => {
                        let _ = ready_tx.send(Ok(()));
                        subscribed
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let reading = async {
                    while let Some(message) = subscription.next().await {
                        let now = Instant::now();
                        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
                            continue;
                        };
                        let body = value["message"]["preview"].as_str().unwrap_or_default().to_owned();
                        if notified.send((body, now)).is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = reading => {}
                    _ = stopped => {}
                }
            });
        })?;
    ready.await??;
    Ok(stop)
}

pub async fn run(context: &Context) -> anyhow::Result<Vec<Figure>> {
    let infra = Infra::start(context).await?;
    let (gateway, addr) = infra.gateway(context)?;
    let persistence = infra.worker(context, "parley-persistence-worker", &[])?;
    let notification = infra.worker(context, "parley-notification-worker", &[])?;
    let processes = infra.with_nats(&[
        ("gateway", gateway.child.id()),
        ("persistence-worker", persistence.child.id()),
        ("notification-worker", notification.child.id()),
        ("bench", std::process::id()),
    ]);
    ready(addr).await?;
    let url = format!("http://{addr}");
    let pairs_wanted = context.size(1000, 1000);
    let seconds_per_step = context.size(5.0, 20.0);

    // Notifications, timed on arrival; matched with the acks once every message has one.
    let clock: Shared<Clock> = Arc::default();
    let (notified, mut notified_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let notifications_stop = watch_notifications(infra.nats.url(), notified).await?;

    // The pairs: a sender socket and a recipient socket per conversation, all driven by the
    // fleet's few tasks; each recipient's reader times its arrivals itself.
    let fleet = Fleet::new();
    let recorder: Arc<Recorder> = Arc::default();
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
        let token = |user| json!({ "token": token_for(user, TEST_JWT_SECRET) });
        // A sender's own `message:new` (to every device of its user) is not what is timed.
        let sender = Client::connector(&url, token(project.client())).on_event(|_, _| {});
        let sender = fleet.connect(sender).await?;
        let recipient = Client::connector(&url, token(project.provider()))
            .on_event(recipient_hook(clock.clone(), recorder.clone()));
        recipients.push(fleet.connect(recipient).await?);
        pairs.push(Pair {
            sender,
            conversation: project.conversation_id(),
        });
    }

    let (rate, probes) = sustainable_rate(&pairs, context.size(3.0, 10.0), &clock, &recorder).await?;
    eprintln!("   sustainable rate ≈ {rate:.0} sends/s with {} pairs", pairs.len());
    // The probe's last messages may still be on their way, and the workers may still be working
    // through its backlog; the steps start from a quiet stack.
    recorder.wait_for("probe", probes).await?;
    let probe_backlog = workers_caught_up(&infra.js).await?;
    eprintln!(
        "   the workers caught up {:.2} s after the probe's last delivery",
        probe_backlog.as_secs_f64()
    );
    let mut steps = serde_json::Map::new();
    let mut at_half = json!(null);
    let mut cpu_at_half = json!(null);
    let mut total_sent = 0usize;
    let mut pictured = Vec::new();
    for (label, share) in [("10pct", 0.1), ("50pct", 0.5), ("80pct", 0.8)] {
        let step_rate = rate * share;
        let total = ((step_rate * seconds_per_step) as usize).max(100);
        let metrics_before = scrape(addr).await;
        let meter = CpuMeter::start(&processes);
        drive(&pairs, step_rate, total, label, &clock).await?;
        let cpu = meter.finish(total);
        let publish_ack = publish_ack_between(&metrics_before, &scrape(addr).await);
        // Every message of the step must reach its recipient exactly once.
        recorder.wait_for(label, total).await?;
        let backlog = workers_caught_up(&infra.js).await?;
        total_sent += total;
        let latencies = with_prefix(&recorder.lock().latencies, label);
        pictured.push(Series {
            label: format!("Parley {}%, {step_rate:.0}/s", share * 100.0),
            samples_ms: latencies.clone(),
        });
        let stats = summary(latencies);
        let acks = summary(with_prefix(&lock(&clock).ack_ms, label));
        if label == "50pct" {
            at_half = stats.clone();
            cpu_at_half = cpu.clone();
        }
        steps.insert(
            label.into(),
            json!({ "rate": step_rate, "messages": total, "latencyMs": stats, "sendToAckMs": acks,
                    "gatewayPublishAck": publish_ack, "cpu": cpu,
                    "workersCaughtUpSeconds": backlog.as_secs_f64() }),
        );
    }
    let (duplicates, disorder) = {
        let arrivals = recorder.lock();
        (
            arrivals.received.values().filter(|n| **n > 1).count(),
            arrivals.disorder.clone(),
        )
    };
    if let Some(disorder) = disorder {
        anyhow::bail!("out of order on a recipient socket: {disorder}");
    }
    anyhow::ensure!(
        duplicates == 0,
        "{duplicates} messages reached a recipient more than once"
    );

    let raw = raw_round_trip(&infra, rate * 0.5, ((rate * 0.5 * seconds_per_step) as usize).max(100)).await?;
    pictured.insert(
        0,
        Series {
            label: format!("raw JetStream, {:.0}/s", rate * 0.5),
            samples_ms: raw.clone(),
        },
    );
    let picture = context.artifact("latency", "svg");
    std::fs::write(
        context.out.join(&picture),
        histogram::svg(
            &context.figure_name(&format!("Send → recipient's message:new, {} pairs", pairs.len())),
            &pictured,
        ),
    )?;
    let raw_stats = summary(raw);
    let parley_p99 = at_half["p99"].as_f64().unwrap_or(f64::INFINITY);
    let raw_p99 = raw_stats["p99"].as_f64().unwrap_or(0.0);
    let mut figures = vec![Figure::lower(
        &context.figure_name("End-to-end latency p99 at 50% load"),
        parley_p99,
        "ms",
        "raw JetStream publish → ordered consumer p99",
        raw_p99,
        3.0,
        "p99 ≤ 3× the raw round trip; nothing lost or duplicated (checked)",
        json!({ "pairs": pairs.len(), "sustainableRate": rate,
                "sustainableRateProbe": "closed loop: each pair sends its next once the last reached its recipient",
                "steps": steps, "raw": raw_stats, "messages": total_sent, "picture": picture,
                "cpuAtFigure": cpu_at_half,
                "workersCaughtUpAfterProbeSeconds": probe_backlog.as_secs_f64() }),
    )];

    // Notification lag under the same load, against the same raw round trip: every message
    // acknowledged must have a notification. This subscription sees publishes, before the
    // notification stream's deduplication, so a repeated publish (a redelivered message) is
    // counted, not failed.
    let acked = std::mem::take(&mut lock(&clock).acked);
    let mut first_notified: HashMap<String, Instant> = HashMap::with_capacity(acked.len());
    let mut repeated_publishes = 0usize;
    while first_notified.len() < acked.len() {
        let (body, at) = tokio::time::timeout(TIMEOUT, notified_rx.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} of {} messages got no notification",
                    acked.len() - first_notified.len(),
                    acked.len()
                )
            })?
            .ok_or_else(|| anyhow::anyhow!("the notification subscription ended"))?;
        if acked.contains_key(&body) && first_notified.insert(body, at).is_some() {
            repeated_publishes += 1;
        }
    }
    // Repeats already read count too.
    while let Ok((body, _)) = notified_rx.try_recv() {
        if acked.contains_key(&body) {
            repeated_publishes += 1;
        }
    }
    drop(notifications_stop);
    // A notification can reach the bench before the ack that tells it the send was accepted;
    // its lag counts as zero.
    let before_ack = acked.iter().filter(|(body, at)| first_notified[*body] < **at).count();
    let lags: Vec<(String, f64)> = acked
        .iter()
        .map(|(body, at)| {
            let lag = first_notified[body].saturating_duration_since(*at);
            (body.clone(), lag.as_secs_f64() * 1000.0)
        })
        .collect();
    let mut lag_steps = serde_json::Map::new();
    for label in ["probe", "10pct", "50pct", "80pct"] {
        lag_steps.insert(label.into(), summary(with_prefix(&lags, label)));
    }
    let lag = lag_steps["50pct"].clone();
    figures.push(Figure::lower(
        &context.figure_name("Notification lag p99 at 50% load (send acknowledged → notification published)"),
        lag["p99"].as_f64().unwrap_or(0.0),
        "ms",
        "raw JetStream round trip p99",
        raw_p99,
        f64::INFINITY,
        "reported",
        json!({ "lagMs": lag_steps, "notifiedBeforeTheAckArrived": before_ack,
                "repeatedPublishes": repeated_publishes,
                "checks": ["every acknowledged message has a notification"] }),
    ));
    Ok(figures)
}
