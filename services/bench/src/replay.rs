//! Figure 5, replay: how fast one reconnecting client receives 10,000 missed messages (joining
//! again from its last seq while `complete` is false), against reading the same range with a raw
//! ordered consumer, in several rounds taking turns (the median of each side is the figure);
//! then many clients reconnecting at once, each with a backlog.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use parley_events::subjects;
use parley_test_support::sio::Client;
use parley_test_support::{ProjectFixture, TEST_JWT_SECRET, conversation_exists, eventually, token_for};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::figure::percentile;
use crate::stack::{Infra, ready};
use crate::{Context, Figure};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Publishes `count` messages of `project` from its provider, many in flight.
async fn backlog(js: &async_nats::jetstream::Context, project: &ProjectFixture, count: usize) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(1000);
    for i in 0..count {
        let event = project.message(project.provider(), &format!("backlog message {i} {}", "x".repeat(60)));
        let subject = subjects::conversation_messages(event.conversation_id);
        acks.push(js.publish(subject, serde_json::to_vec(&event)?.into()).await?);
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Waits until the persistence worker has stored the whole backlog of `project`: a client that
/// reconnects after missing messages finds them stored, with no worker busy beside its replay.
async fn persisted(infra: &Infra, project: &ProjectFixture, count: usize) {
    let store = infra.db.store();
    let (user, id) = (project.client(), project.conversation_id());
    eventually("the backlog to be persisted", TIMEOUT, || async {
        let conversation = store.conversation_of(user, id).await.ok().flatten()?;
        (conversation.unread_count == count as i64).then_some(())
    })
    .await;
}

/// Catches up on `expected` messages the way a client does: joins from `last_seq` again while
/// the replay is incomplete, and takes live `message:new` events as they come (a gateway whose
/// fan-out is still working through a burst delivers some live while the replay runs). Returns
/// every seq received and the time to the first replayed message.
async fn catch_up(
    client: &mut Client,
    conversation: Uuid,
    mut last_seq: i64,
    expected: usize,
) -> anyhow::Result<(Vec<i64>, Duration)> {
    let started = Instant::now();
    let mut first: Option<Duration> = None;
    let mut seqs = Vec::new();
    loop {
        let ack = client
            .emit_with_ack(
                "conversation:join",
                json!({ "conversationId": conversation, "lastSeq": last_seq }),
                TIMEOUT,
            )
            .await?;
        anyhow::ensure!(ack["ok"] == true, "join refused: {ack}");
        let mut replayed = ack["replayed"].as_u64().unwrap_or(0);
        while replayed > 0 {
            let (name, data) = client.next_event(TIMEOUT).await?;
            anyhow::ensure!(name == "message:new", "unexpected {name}: {data}");
            let seq = data["seq"].as_i64().unwrap_or(0);
            seqs.push(seq);
            if data["replayed"] == true {
                first.get_or_insert_with(|| started.elapsed());
                replayed -= 1;
                anyhow::ensure!(seq > last_seq, "replay out of order: {seq} after {last_seq}");
                last_seq = seq;
            }
        }
        if ack["complete"] == true {
            break;
        }
    }
    while seqs.len() < expected {
        let (name, data) = client.next_event(TIMEOUT).await?;
        anyhow::ensure!(name == "message:new", "unexpected {name}: {data}");
        seqs.push(data["seq"].as_i64().unwrap_or(0));
    }
    Ok((seqs, first.unwrap_or_default()))
}

/// Reads `count` messages of `conversation` from the start with a raw ordered consumer, decoding
/// each as the client does; returns how long it took, consumer creation included.
async fn raw_read(js: &async_nats::jetstream::Context, conversation: Uuid, count: usize) -> anyhow::Result<Duration> {
    let stream = js.get_stream(parley_nats::CHAT_STREAM).await?;
    let started = Instant::now();
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects::conversation_messages(conversation),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: 1 },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    for _ in 0..count {
        let message = tokio::time::timeout(TIMEOUT, messages.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("ended"))??;
        let _: Value = serde_json::from_slice(&message.payload)?;
    }
    Ok(started.elapsed())
}

/// Another client catches up on a small backlog of its own conversation.
async fn warm_up(infra: &Infra, url: &str) -> anyhow::Result<()> {
    let project = ProjectFixture::new("Warm-up");
    project.publish_started(&infra.js).await;
    conversation_exists(&infra.db, &project).await;
    backlog(&infra.js, &project, 10).await?;
    let mut client = Client::connect(url, json!({ "token": token_for(project.client(), TEST_JWT_SECRET) })).await?;
    let (seqs, _) = catch_up(&mut client, project.conversation_id(), 0, 10).await?;
    check_sequence(&seqs, 10, "the warm-up client")?;
    client.disconnect().await;
    Ok(())
}

/// The middle of `values` (the upper one of the two middles for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

/// Every message exactly once: `expected` distinct seqs, none twice.
fn check_sequence(seqs: &[i64], expected: usize, who: &str) -> anyhow::Result<()> {
    let distinct: std::collections::HashSet<i64> = seqs.iter().copied().collect();
    anyhow::ensure!(distinct.len() == seqs.len(), "{who}: a message arrived twice");
    anyhow::ensure!(
        seqs.len() == expected,
        "{who}: {} messages received, {expected} expected",
        seqs.len()
    );
    Ok(())
}

pub async fn run(context: &Context) -> anyhow::Result<Vec<Figure>> {
    let infra = Infra::start(context).await?;
    let (_gateway, addr) = infra.gateway(context)?;
    let _worker = infra.worker(context, "parley-persistence-worker", &[])?;
    ready(addr).await?;
    let url = format!("http://{addr}");

    // One client, 10,000 missed messages.
    let missed = 10_000;
    let project = ProjectFixture::new("Replay");
    project.publish_started(&infra.js).await;
    conversation_exists(&infra.db, &project).await;
    backlog(&infra.js, &project, missed).await?;
    persisted(&infra, &project, missed).await;
    // Both sides are timed warm, as on a server that has been running: the range is read once
    // (nats-server loads its blocks and per-subject index), and another client's join opens the
    // gateway's database connection and prepares its statements.
    raw_read(&infra.js, project.conversation_id(), missed).await?;
    warm_up(&infra, &url).await?;
    // A round takes a few tens of milliseconds, where one scheduling hiccup shows: several
    // rounds, each side in turn, and the median of each.
    let rounds = context.size(5, 9);
    let (mut parley_rates, mut raw_rates) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let mut client =
            Client::connect(&url, json!({ "token": token_for(project.client(), TEST_JWT_SECRET) })).await?;
        let started = Instant::now();
        let (seqs, _) = catch_up(&mut client, project.conversation_id(), 0, missed).await?;
        let parley_elapsed = started.elapsed();
        check_sequence(&seqs, missed, "the reconnecting client")?;
        client.disconnect().await;
        parley_rates.push(missed as f64 / parley_elapsed.as_secs_f64());

        // The same range through a raw ordered consumer filtered to the conversation's subject.
        let raw_elapsed = raw_read(&infra.js, project.conversation_id(), missed).await?;
        raw_rates.push(missed as f64 / raw_elapsed.as_secs_f64());
    }
    let (parley_rate, raw_rate) = (median(&parley_rates), median(&raw_rates));
    eprintln!("   replay rounds (messages/s): Parley {parley_rates:.0?}, raw {raw_rates:.0?}");
    let mut figures = vec![Figure::higher(
        "Replay of 10,000 missed messages",
        parley_rate,
        "messages/s",
        "raw ordered consumer",
        raw_rate,
        0.5,
        "≥ 50% of the raw rate",
        json!({ "messages": missed, "joins": missed.div_ceil(1000), "rounds": rounds,
                "figure": "median of the rounds, each side",
                "parleyPerSecond": parley_rates, "rawPerSecond": raw_rates }),
    )];

    // Many clients reconnecting at once, each with a backlog of its own.
    let clients = context.size(500, 2000);
    let each = context.size(10, 20);
    let mut projects = Vec::with_capacity(clients);
    for i in 0..clients {
        let project = ProjectFixture::new(&format!("Crowd {i}"));
        project.publish_started(&infra.js).await;
        projects.push(project);
    }
    for project in &projects {
        conversation_exists(&infra.db, project).await;
        backlog(&infra.js, project, each).await?;
    }
    let mut connected = Vec::with_capacity(clients);
    for project in &projects {
        let client = Client::connect(&url, json!({ "token": token_for(project.client(), TEST_JWT_SECRET) })).await?;
        connected.push((client, project.conversation_id()));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (mut client, conversation) in connected {
        tasks.spawn(async move {
            let result = catch_up(&mut client, conversation, 0, each).await;
            client.disconnect().await;
            result
        });
    }
    let mut firsts = Vec::with_capacity(clients);
    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (seqs, first) = joined??;
        check_sequence(&seqs, each, "a crowd client")?;
        firsts.push(first.as_secs_f64() * 1000.0);
        *outcomes.entry("complete").or_default() += 1;
    }
    let all_done = started.elapsed();
    firsts.sort_by(f64::total_cmp);
    let p99_first = percentile(&firsts, 99.0);
    figures.push(Figure::lower(
        &format!("{clients} clients reconnecting at once: p99 time to first replayed message"),
        p99_first,
        "ms",
        "p50 of the same run",
        percentile(&firsts, 50.0),
        f64::INFINITY,
        "all complete, none duplicated (checked); p99 reported",
        json!({ "clients": clients, "backlogEach": each, "complete": outcomes.get("complete"), "allDoneSeconds": all_done.as_secs_f64(),
                "firstMs": { "p50": percentile(&firsts, 50.0), "p99": p99_first, "max": firsts.last() } }),
    ));
    Ok(figures)
}
