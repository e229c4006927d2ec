//! Part 1, persistence throughput. `PARLEY_CHAT` is pre-filled with message events while no
//! worker runs; then three writers turn the same backlog into rows of the same `messages` table,
//! each in a database of its own, with `synchronous_commit` on:
//!
//! - the real `parley-persistence-worker` (one instance, default batch size), timed from its
//!   consumer's first delivery until `SELECT count(*) FROM messages` reaches the backlog (the time
//!   from its spawn is reported too);
//! - a naive worker in the bench: a durable consumer of its own on the same stream, one autocommit
//!   `INSERT` then one `double_ack` per message;
//! - `COPY messages FROM STDIN` of the same rows (text format).
//!
//! Both baselines run half before and half after the real worker, so a shift in the shared
//! machine's load weighs on both sides of a ratio. The naive worker may run on a subset (its cost
//! is per message, so its rate does not depend on the backlog's size).
//!
//! The real worker's rows are checked against what was published: exactly the published ids, each
//! with the stream sequence its publish was acknowledged with, and nothing dead-lettered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::{self, consumer};
use chrono::{SubsecRound, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parley_events::{MessagePosted, subjects};
use parley_store::{Heads, MESSAGES_COPY, MessageRow, messages_copy_data};
use parley_test_support::smtp::free_port;
use parley_test_support::{ProjectFixture, TestDatabase};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::scrape::{metric, scrape};
use crate::stack::Infra;
use crate::{Context, Figure};

/// Conversations the backlog is spread over.
const CONVERSATIONS: usize = 50;
/// Characters per message body.
pub(crate) const BODY_CHARS: usize = 100;
/// Publishes awaiting their ack while pre-filling.
const PREFILL_IN_FLIGHT: usize = 4096;
/// The worker's `PARLEY_BATCH_SIZE` default, which this part runs it with.
const WORKER_BATCH_SIZE: usize = 5000;
/// The naive worker's durable consumer on `PARLEY_CHAT`.
const NAIVE_CONSUMER: &str = "bench-naive-persistence";
/// How often the real worker's progress is polled. The worker drains 50k messages in well under
/// a second, so its end is watched closely: a coarser poll adds up to its whole period to the
/// time measured. Each poll reads one row of the (few) conversations.
const POLL: Duration = Duration::from_millis(5);
/// Polls between two `count(*)`s while the conversations do not show the last message yet.
const POLLS_PER_COUNT: u32 = 200;

/// One published message event, with the stream sequence its publish ack gave it.
struct Published {
    event: MessagePosted,
    seq: i64,
}

pub async fn run(context: &Context) -> anyhow::Result<Vec<Figure>> {
    let n: usize = context.size(50_000, 200_000);
    let naive_n: usize = context.size(3_000, 20_000).min(n);
    let timeout = Duration::from_secs(context.size(180, 1_800));

    let infra = Infra::start(context).await?;
    let fixtures: Vec<ProjectFixture> = (0..CONVERSATIONS)
        .map(|i| ProjectFixture::new(&format!("Bench project {i}")))
        .collect();
    create_conversations(&infra.db, &fixtures).await?;

    // Pre-fill, no worker running.
    let events: Vec<MessagePosted> = (0..n).map(|i| event_for(&fixtures[i % CONVERSATIONS], i)).collect();
    let payloads = events
        .iter()
        .map(|e| {
            Ok((
                subjects::conversation_messages(e.conversation_id),
                e.id,
                serde_json::to_vec(e)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let payload_bytes: usize = payloads.iter().map(|(_, _, p)| p.len()).sum();
    let prefill_started = Instant::now();
    let seqs = publish_all(&infra.js, &payloads, PREFILL_IN_FLIGHT).await?;
    let prefill = prefill_started.elapsed();
    drop(payloads);
    let published: Vec<Published> = events
        .into_iter()
        .zip(seqs)
        .map(|(event, seq)| Published {
            event,
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
        })
        .collect();
    let chat_messages = stream_messages(&infra.js, parley_nats::CHAT_STREAM).await?;
    ensure!(
        chat_messages == n as u64,
        "PARLEY_CHAT holds {chat_messages} messages after pre-filling {n}"
    );
    eprintln!(
        "   pre-filled {n} events in {:.2} s ({:.0}/s)",
        prefill.as_secs_f64(),
        n as f64 / prefill.as_secs_f64()
    );

    // The baselines run half before and half after the real worker, so that a change in the
    // machine's load during the run (it is shared) weighs on both sides of the ratio alike.
    let naive_db = TestDatabase::create().await;
    create_conversations(&naive_db, &fixtures).await?;
    let copy_db = TestDatabase::create().await;
    create_conversations(&copy_db, &fixtures).await?;
    let mut naive = NaiveWorker::start(&infra.js, &naive_db).await?;
    let mut copy_conn = PgConnection::connect(&copy_db.url).await?;
    let (copy_first, copy_second) = published.split_at(n / 2);
    let naive_first = naive.drain(naive_n / 2, timeout).await?;
    // Both halves continue one chain per conversation, as the worker's batches do.
    let mut copy_heads = Heads::default();
    let copy_first = copy_rows(&mut copy_conn, copy_first, &mut copy_heads).await?;

    // (a) The real worker drains the backlog. Progress is polled on the conversation rows (the
    // worker moves each one's last message forward in the same statement as its inserts), and
    // `count(*)` is asked once they show the last message, or every second: a `count(*)` every
    // poll over a table growing to the whole backlog would take a good part of a core (of two)
    // from the worker measured.
    let last_seq = published.iter().map(|p| p.seq).max().unwrap_or(0);
    let mut db = PgConnection::connect(&infra.db.url).await?;
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut db).await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&mut db).await?;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let started = Instant::now();
    let delivering = tokio::spawn(first_delivery(infra.js.clone(), started, timeout));
    let mut worker = infra.worker(
        context,
        "parley-persistence-worker",
        &[
            ("PARLEY_BATCH_SIZE", WORKER_BATCH_SIZE.to_string()),
            ("PARLEY_ADMIN_LISTEN", admin.to_string()),
        ],
    )?;
    let mut first_row = None;
    let mut count_polls = 0u32;
    let mut polls = 0u32;
    loop {
        polls += 1;
        let highest: Option<i64> = sqlx::query_scalar("SELECT max(last_message_seq) FROM conversations")
            .fetch_one(&mut db)
            .await?;
        if highest.is_some() && first_row.is_none() {
            first_row = Some(started.elapsed());
        }
        let mut count = 0;
        if highest >= Some(last_seq) || polls.is_multiple_of(POLLS_PER_COUNT) {
            count_polls += 1;
            count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages")
                .fetch_one(&mut db)
                .await?;
            if count >= n as i64 {
                break;
            }
        }
        if let Some(status) = worker.child.try_wait()? {
            bail!("the persistence worker exited ({status}) before persisting the {n} messages");
        }
        if started.elapsed() > timeout {
            bail!("the persistence worker did not persist the {n} messages in {timeout:?} ({count} counted)");
        }
        tokio::time::sleep(POLL).await;
    }
    let worker_time = started.elapsed();
    let spawn_rate = n as f64 / worker_time.as_secs_f64();
    // The worker's throughput is timed like the baselines': from its first delivery (the naive
    // worker's consumer and COPY's connection are set up before their clocks start), so it does
    // not carry the process's start, its connections and its stream and consumer checks.
    let first_delivery = delivering
        .await?
        .context("the persistence worker's consumer delivered nothing")?;
    let drain = worker_time
        .checked_sub(first_delivery)
        .context("the worker finished before its first delivery")?;
    let worker_rate = n as f64 / drain.as_secs_f64();
    // Steady rate: from the first row seen, without the process's start.
    let first_row = first_row.unwrap_or(worker_time);
    let steady = worker_time.checked_sub(first_row).unwrap_or_default();
    let steady_rate = n as f64 / steady.as_secs_f64().max(POLL.as_secs_f64());
    let worker_metrics = worker_metrics(admin, drain).await;
    eprintln!(
        "   worker: {n} in {:.2} s from its first delivery ({worker_rate:.0}/s; {:.2} s, {spawn_rate:.0}/s from its spawn)",
        drain.as_secs_f64(),
        worker_time.as_secs_f64()
    );
    let expected: HashMap<Uuid, i64> = published.iter().map(|p| (p.event.id, p.seq)).collect();
    check_rows(&mut db, &expected, "the persistence worker").await?;
    let dead = stream_messages(&infra.js, parley_nats::DEADLETTER_STREAM).await?;
    ensure!(
        dead == 0,
        "the persistence worker dead-lettered {dead} of the bench's events"
    );
    drop(worker);
    db.close().await.ok();

    // (b) The naive worker's second half, then its rows.
    let naive_second = naive.drain(naive_n - naive_n / 2, timeout).await?;
    naive.stop(&infra.js).await;
    let naive_time = naive_first + naive_second;
    let naive_rate = naive_n as f64 / naive_time.as_secs_f64();
    eprintln!(
        "   naive: {naive_n} in {:.2} s ({naive_rate:.0}/s)",
        naive_time.as_secs_f64()
    );
    let naive_expected: HashMap<Uuid, i64> = published
        .iter()
        .filter(|p| p.seq <= naive_n as i64)
        .map(|p| (p.event.id, p.seq))
        .collect();
    let mut conn = PgConnection::connect(&naive_db.url).await?;
    check_rows(&mut conn, &naive_expected, "the naive worker").await?;
    conn.close().await.ok();

    // (c) COPY's second half, then its rows.
    let copy_second = copy_rows(&mut copy_conn, copy_second, &mut copy_heads).await?;
    let copy_time = copy_first.elapsed + copy_second.elapsed;
    let copy_bytes = copy_first.bytes + copy_second.bytes;
    check_rows(&mut copy_conn, &expected, "COPY").await?;
    copy_conn.close().await.ok();
    let copy_rate = n as f64 / copy_time.as_secs_f64();
    eprintln!("   COPY: {n} in {:.2} s ({copy_rate:.0}/s)", copy_time.as_secs_f64());

    drop_databases(&[&infra.db, &naive_db, &copy_db]).await;

    let details = json!({
        "messages": n,
        "conversations": CONVERSATIONS,
        "bodyChars": BODY_CHARS,
        "eventBytesAvg": payload_bytes / n.max(1),
        "synchronousCommit": synchronous_commit,
        "fsync": fsync,
        "prefill": {
            "seconds": prefill.as_secs_f64(),
            "publishesPerSecond": n as f64 / prefill.as_secs_f64(),
            "inFlight": PREFILL_IN_FLIGHT,
        },
        "worker": {
            "instances": 1,
            "batchSize": WORKER_BATCH_SIZE,
            "seconds": drain.as_secs_f64(),
            "messagesPerSecond": worker_rate,
            "timedFrom": "its consumer's first delivery (polled from NATS) to count(*) = messages",
            "firstDeliveryAfterSpawnSeconds": first_delivery.as_secs_f64(),
            "messagesPerSecondFromSpawn": spawn_rate,
            "firstRowAfterSeconds": first_row.as_secs_f64(),
            "messagesPerSecondFromFirstRow": steady_rate,
            "pollMillis": POLL.as_millis() as u64,
            "countPolls": count_polls,
            "metrics": worker_metrics,
        },
        "naive": {
            "messages": naive_n,
            "seconds": naive_time.as_secs_f64(),
            "messagesPerSecond": naive_rate,
            "halvesSeconds": [naive_first.as_secs_f64(), naive_second.as_secs_f64()],
            "how": "own durable pull consumer on PARLEY_CHAT; per message: parse, one autocommit INSERT, double_ack",
            "when": "half before the real worker, half after",
            "subset": naive_n < n,
        },
        "copy": {
            "rows": n,
            "seconds": copy_time.as_secs_f64(),
            "rowsPerSecond": copy_rate,
            "bytes": copy_bytes,
            "format": "text",
            "statements": 2,
            "halvesSeconds": [copy_first.elapsed.as_secs_f64(), copy_second.elapsed.as_secs_f64()],
            "when": "half before the real worker, half after",
        },
        "checks": [
            "worker: exactly the published ids, each with its publish-ack stream sequence; nothing dead-lettered",
            "naive: exactly the ids of stream sequences 1..=naive messages",
            "copy: row count and ids",
        ],
    });
    Ok(vec![
        Figure::higher(
            "Persistence throughput vs naive",
            worker_rate,
            "messages/s",
            "naive worker (1 insert + commit + ack per message)",
            naive_rate,
            15.0,
            "≥ 15× the naive worker",
            details.clone(),
        ),
        Figure::higher(
            "Persistence throughput vs COPY",
            worker_rate,
            "messages/s",
            "COPY of the same rows",
            copy_rate,
            0.5,
            "≥ 50% of COPY",
            details,
        ),
    ])
}

/// Creates the conversations of `fixtures` directly in `db`, as the worker would from
/// `parley.project.started`.
pub(crate) async fn create_conversations(db: &TestDatabase, fixtures: &[ProjectFixture]) -> anyhow::Result<()> {
    let store = db.store();
    for fixture in fixtures {
        store.apply_project_started(&fixture.event).await?;
    }
    store.pool().close().await;
    Ok(())
}

/// A message body of exactly [`BODY_CHARS`] characters, different for every `i`.
pub(crate) fn body(i: usize) -> String {
    const FILLER: &str =
        "Here is the latest draft of the logo, with the colours we talked about; tell me what you think. ";
    let mut body = format!("#{i} ");
    let missing = BODY_CHARS.saturating_sub(body.len());
    body.extend(FILLER.chars().cycle().take(missing));
    body
}

/// The `i`-th event of the backlog, alternating senders, as the gateway would publish it.
fn event_for(fixture: &ProjectFixture, i: usize) -> MessagePosted {
    let sender = if (i / CONVERSATIONS).is_multiple_of(2) {
        fixture.client()
    } else {
        fixture.provider()
    };
    MessagePosted {
        id: parley_domain::ids::new_message_id(),
        conversation_id: fixture.conversation_id(),
        project_id: fixture.event.project_id,
        sender_id: sender,
        body: body(i),
        client_msg_id: None,
        created_at: Utc::now().trunc_subsecs(3),
        participants: vec![fixture.client(), fixture.provider()],
    }
}

/// Publishes every `(subject, message id, payload)` with `Nats-Msg-Id`, keeping up to `in_flight`
/// publishes awaiting their ack; returns the stream sequences in the order of `items`. Fails if a
/// publish is refused or found to be a duplicate.
pub(crate) async fn publish_all(
    js: &jetstream::Context,
    items: &[(String, Uuid, Vec<u8>)],
    in_flight: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut seqs = vec![0u64; items.len()];
    let mut pending = FuturesUnordered::new();
    for (index, (subject, id, payload)) in items.iter().enumerate() {
        if pending.len() >= in_flight
            && let Some((index, ack)) = pending.next().await
        {
            seqs[index] = acked(ack)?;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(parley_nats::MSG_ID_HEADER, id.to_string().as_str());
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.clone().into())
            .await
            .context("publish")?;
        pending.push(async move { (index, ack.await) });
    }
    while let Some((index, ack)) = pending.next().await {
        seqs[index] = acked(ack)?;
    }
    Ok(seqs)
}

fn acked(ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>) -> anyhow::Result<u64> {
    let ack = ack.context("publish ack")?;
    ensure!(!ack.duplicate, "publish acked as a duplicate (seq {})", ack.sequence);
    Ok(ack.sequence)
}

/// How many messages `stream` holds now.
pub(crate) async fn stream_messages(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    let info = js.get_stream(stream).await?.get_info().await?;
    Ok(info.state.messages)
}

/// The naive worker: a durable consumer of its own on `PARLEY_CHAT`; per message, one autocommit
/// `INSERT`, then a confirmed ack.
struct NaiveWorker {
    messages: consumer::pull::Stream,
    conn: PgConnection,
    done: usize,
    /// Each conversation's transcript head, for the chain columns of its inserts.
    heads: Heads,
}

impl NaiveWorker {
    async fn start(js: &jetstream::Context, db: &TestDatabase) -> anyhow::Result<NaiveWorker> {
        let stream = js.get_stream(parley_nats::CHAT_STREAM).await?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(NAIVE_CONSUMER.to_owned()),
                filter_subject: subjects::ALL_MESSAGES.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 1_000,
                // What it has fetched waits while the real worker runs: no redelivery meanwhile.
                ack_wait: Duration::from_secs(3_600),
                ..Default::default()
            })
            .await?;
        Ok(NaiveWorker {
            messages: consumer.messages().await?,
            conn: PgConnection::connect(&db.url).await?,
            done: 0,
            heads: Heads::default(),
        })
    }

    /// Persists the next `count` messages; returns the time it took.
    async fn drain(&mut self, count: usize, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        for _ in 0..count {
            let done = self.done;
            let message = match tokio::time::timeout(Duration::from_secs(30), self.messages.next()).await {
                Ok(Some(message)) => message?,
                Ok(None) => bail!("the naive worker's consumer ended after {done} messages"),
                Err(_) => bail!("the naive worker got nothing for 30 s after {done} messages"),
            };
            let seq = i64::try_from(message.info().map_err(|e| anyhow::anyhow!(e))?.stream_sequence)?;
            let event: MessagePosted = serde_json::from_slice(&message.payload)?;
            // Chained as the schema requires, onto heads kept in memory (cheaper than the real
            // worker's locked heads, so the baseline does not lose by it).
            let row = MessageRow::from_event(event.clone(), seq);
            let link = self.heads.link_messages(std::slice::from_ref(&row))[0];
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, body, client_msg_id, created_at, chain_n, \
                 chain_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
            )
            .bind(event.id)
            .bind(event.conversation_id)
            .bind(seq)
            .bind(event.sender_id)
            .bind(&event.body)
            .bind(&event.client_msg_id)
            .bind(event.created_at)
            .bind(link.n)
            .bind(&link.hash[..])
            .execute(&mut self.conn)
            .await?;
            message.double_ack().await.map_err(|e| anyhow::anyhow!(e))?;
            self.done += 1;
            if started.elapsed() > timeout {
                bail!("the naive worker persisted only {done} messages in {timeout:?}");
            }
        }
        Ok(started.elapsed())
    }

    async fn stop(self, js: &jetstream::Context) {
        drop(self.messages);
        self.conn.close().await.ok();
        if let Ok(stream) = js.get_stream(parley_nats::CHAT_STREAM).await {
            stream.delete_consumer(NAIVE_CONSUMER).await.ok();
        }
    }
}

/// What one `COPY` took.
struct Copied {
    elapsed: Duration,
    bytes: usize,
}

/// `COPY messages FROM STDIN` of `rows` (the worker's own text encoding, sent in 1 MiB chunks),
/// timed from the statement to its commit; the text is prepared before.
async fn copy_rows(conn: &mut PgConnection, rows: &[Published], heads: &mut Heads) -> anyhow::Result<Copied> {
    let rows: Vec<MessageRow> = rows
        .iter()
        .map(|p| MessageRow::from_event(p.event.clone(), p.seq))
        .collect();
    // The rows as the worker stores them: each with its place in its conversation's transcript
    // and its hash (computed beforehand, like the text).
    let links = heads.link_messages(&rows);
    let data = messages_copy_data(&rows, &links);
    let started = Instant::now();
    let mut copy = conn.copy_in_raw(MESSAGES_COPY).await?;
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    let copied = copy.finish().await?;
    let elapsed = started.elapsed();
    ensure!(
        copied == rows.len() as u64,
        "COPY wrote {copied} rows, not {}",
        rows.len()
    );
    Ok(Copied {
        elapsed,
        bytes: data.len(),
    })
}

/// What the worker's own `/metrics` say about the drain: batches, their mean size, and the share
/// of the wall time spent in the batch's database write (batches overlap, so the share can pass
/// 1).
async fn worker_metrics(admin: std::net::SocketAddr, wall: Duration) -> serde_json::Value {
    let text = scrape(admin).await;
    let value = |name: &str| metric(&text, name);
    let batches = value("parley_persistence_batch_size_count");
    let batched = value("parley_persistence_batch_size_sum");
    let commits = value("parley_persistence_commit_seconds_sum");
    json!({
        "batches": batches,
        "meanBatch": batched.zip(batches).map(|(sum, count)| sum / count.max(1.0)),
        "writeSeconds": commits,
        "writeShareOfWall": commits.map(|c| c / wall.as_secs_f64()),
        "persisted": value("parley_persistence_messages_persisted_total"),
        "duplicates": value("parley_persistence_duplicates_total"),
    })
}

/// How long after `started` the real worker's chat consumer (which the worker creates at start-up)
/// first delivered a message.
async fn first_delivery(
    js: async_nats::jetstream::Context,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let definition = parley_nats::PERSISTENCE_CHAT_CONSUMER;
    let consumer = definition.durable_name()?;
    let stream = js.get_stream(definition.stream).await?;
    loop {
        if let Ok(info) = stream.consumer_info(&consumer).await
            && info.delivered.stream_sequence > 0
        {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < timeout, "no delivery in {timeout:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `messages` holds exactly the ids of `expected`, each with its sequence.
async fn check_rows(db: &mut PgConnection, expected: &HashMap<Uuid, i64>, writer: &str) -> anyhow::Result<()> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as("SELECT id, seq FROM messages")
        .fetch_all(&mut *db)
        .await?;
    ensure!(
        rows.len() == expected.len(),
        "{writer} stored {} rows, not {}",
        rows.len(),
        expected.len()
    );
    let mut seen = HashSet::with_capacity(rows.len());
    for (id, seq) in rows {
        match expected.get(&id) {
            Some(&published) if published == seq => {}
            Some(&published) => bail!("{writer} stored message {id} with seq {seq}, published as {published}"),
            None => bail!("{writer} stored message {id}, which was not published"),
        }
        ensure!(seen.insert(id), "{writer} stored message {id} twice");
    }
    Ok(())
}

/// Drops the databases a part created (best effort: a leftover database costs disk, not results).
pub(crate) async fn drop_databases(databases: &[&TestDatabase]) {
    let Ok(admin) = std::env::var("PARLEY_TEST_DATABASE_URL") else {
        return;
    };
    let Ok(mut conn) = PgConnection::connect(&admin).await else {
        return;
    };
    for db in databases {
        // `name` comes from TestDatabase (a UUID), never from input.
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name);
        let _ = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await;
    }
    conn.close().await.ok();
}
