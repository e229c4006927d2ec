//! Messages and read marks, in batches. A batch is whatever the consumer has ready, up to the
//! configured size: under load that amortises one commit over hundreds of rows, when idle a single
//! message is written at once. The order per batch is: classify, write in one transaction, then
//! settle each message as its [`Disposition`] says (ack, retry later, bury what can never apply).
//! This loop is its own rather than the shared consumer runtime's because its unit of work is
//! the batch, not the message; what becomes of each message is spelled the same way, and settled
//! by the same [`Settler`]. Acks are plain, as everywhere (see `parley_nats::consume`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use parley_domain::validation::validate_body;
use parley_events::subjects::{ConversationSubject, parse_conversation_subject};
use parley_events::{MessagePosted, ReadMarked};
use parley_nats::consume::{Disposition, Settler};
use parley_store::{BatchWritten, Heads, MessageRow, ReadMarkRow, Store, StoreError};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::WAITING_FOR_START;

pub(crate) async fn run(
    consumer: PullConsumer,
    store: Store,
    js: jetstream::Context,
    batch_size: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut messages = consumer.stream().max_messages_per_batch(batch_size).messages().await?;
    let members = Members::default();
    let settler = Settler::new(crate::dead_letters(&js));
    let mut in_flight: JoinSet<Totals> = JoinSet::new();
    let mut totals = Totals::default();
    // Each batch commits only once the one before it has: one worker commits in stream order.
    let mut previous_turn = None;
    loop {
        while let Some(done) = in_flight.try_join_next() {
            totals.add(done.context("a batch task panicked")?);
        }
        if in_flight.len() >= BATCHES_IN_FLIGHT
            && let Some(done) = in_flight.join_next().await
        {
            totals.add(done.context("a batch task panicked")?);
            continue;
        }
        let first = tokio::select! {
            // The batches in hand are finished below; what the consumer had buffered but not
            // handed out is redelivered to the other workers.
            () = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let mut batch = Vec::with_capacity(batch_size);
        match first {
            Some(Ok(message)) => batch.push(message),
            Some(Err(error)) => {
                warn!(%error, "chat consumer hiccup");
                continue;
            }
            None => break,
        }
        // Take whatever else is already here; when a batch is filling, linger a moment for more,
        // so a backlog is written in full batches rather than in whatever happened to be buffered.
        let linger_until = tokio::time::Instant::now() + BATCH_LINGER;
        while batch.len() < batch_size {
            let next = match messages.next().now_or_never() {
                Some(next) => next,
                None if batch.len() > 1 => match tokio::time::timeout_at(linger_until, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => break,
            };
            match next {
                Some(Ok(message)) => batch.push(message),
                Some(Err(error)) => warn!(%error, "chat consumer hiccup"),
                None => break,
            }
        }
        let (store, settler, members) = (store.clone(), settler.clone(), members.clone());
        let (turn, next) = WriteTurn::chain(previous_turn.take());
        previous_turn = Some(next);
        in_flight.spawn(async move { process_batch(&store, &settler, &members, turn, batch).await });
    }
    while let Some(done) = in_flight.join_next().await {
        totals.add(done.context("a batch task panicked")?);
    }
    // Acks are published without waiting for the server's confirmation: send them before going.
    if let Err(error) = parley_nats::flush(&js.client()).await {
        warn!(%error, "flushing the last acks failed; their events will be redelivered");
    }
    info!(
        persisted = totals.persisted,
        duplicates = totals.duplicates,
        "chat loop stopped"
    );
    Ok(())
}

/// Batches in hand at once. Two let one batch's rows be written while the previous batch commits
/// (its fsync) and acks, while commits still happen one after the other, in stream order (see
/// [`WriteTurn`]).
const BATCHES_IN_FLIGHT: usize = 2;

/// A batch's place in the write order. Committing in stream order keeps history free of
/// transient gaps for one worker: a reader paging with `afterSeq` never sees message n+1 stored
/// before message n. (Several workers share the stream with no such order between them.)
///
/// A batch starts its statements once the previous one has run all of its own, and commits
/// once the previous one has committed. Starting earlier could deadlock: this batch could lock
/// a conversation row the previous one still has to update, and then wait for its commit.
///
/// The previous batch also hands on the transcript heads it leaves (with those it was handed),
/// so that this batch can copy its messages onto them while that batch commits, rather than
/// wait for the commit to lock and read them (see `Store::write_batch_continuing`).
struct WriteTurn {
    /// Resolves with the heads the previous batch leaves once it ran its statements (or fails,
    /// if that batch gave up).
    may_write: Option<oneshot::Receiver<Heads>>,
    /// Resolves (or fails, if that batch gave up) once the previous batch has committed.
    may_commit: Option<oneshot::Receiver<()>>,
    /// Tells the next batch this one ran its statements (or gave up), with the heads it leaves.
    wrote: oneshot::Sender<Heads>,
    /// Tells the next batch this one has committed (or given up).
    committed: oneshot::Sender<()>,
}

impl WriteTurn {
    /// The first batch's turn, and what the next batch's turn will wait for.
    fn chain(
        previous: Option<(oneshot::Receiver<Heads>, oneshot::Receiver<()>)>,
    ) -> (WriteTurn, (oneshot::Receiver<Heads>, oneshot::Receiver<()>)) {
        let (wrote, next_may_write) = oneshot::channel();
        let (committed, next_may_commit) = oneshot::channel();
        let (may_write, may_commit) = previous.map_or((None, None), |(w, c)| (Some(w), Some(c)));
        let turn = WriteTurn {
            may_write,
            may_commit,
            wrote,
            committed,
        };
        (turn, (next_may_write, next_may_commit))
    }
}

/// Who may write to which conversation. A conversation's participants never change once it
/// exists, so what was read once is kept (up to a bound); a conversation not found yet is asked
/// for again next time, as its project may start meanwhile.
#[derive(Debug, Clone, Default)]
struct Members(Arc<Mutex<HashMap<Uuid, Vec<Uuid>>>>);

impl Members {
    /// Conversations remembered before the memory starts over.
    const MAX_CONVERSATIONS: usize = 100_000;

    /// Every (conversation, participant) pair of `conversations` that exist.
    async fn of(&self, store: &Store, conversations: HashSet<Uuid>) -> Result<HashSet<(Uuid, Uuid)>, StoreError> {
        let mut pairs = HashSet::new();
        let mut unknown = Vec::new();
        {
            let known = self.0.lock();
            for conversation in conversations {
                match known.get(&conversation) {
                    Some(users) => pairs.extend(users.iter().map(|user| (conversation, *user))),
                    None => unknown.push(conversation),
                }
            }
        }
        if unknown.is_empty() {
            return Ok(pairs);
        }
        let found = store.participants_of(&unknown).await?;
        let mut known = self.0.lock();
        if known.len() + unknown.len() > Self::MAX_CONVERSATIONS {
            known.clear();
        }
        for (conversation, user) in found {
            let users = known.entry(conversation).or_default();
            if !users.contains(&user) {
                users.push(user);
            }
            pairs.insert((conversation, user));
        }
        Ok(pairs)
    }
}

/// What this worker wrote: new rows, and rows that were already there (work done twice).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    persisted: u64,
    duplicates: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.persisted += other.persisted;
        self.duplicates += other.duplicates;
    }
}

/// How long a batch that is filling waits for more messages. A lone message is written at once.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// What one delivered event turned out to be.
enum Classified {
    Message(MessageRow),
    Read(ReadMarkRow),
    Dead(String),
}

fn classify(message: &jetstream::Message) -> Classified {
    let seq = match message.info() {
        Ok(info) => i64::try_from(info.stream_sequence).unwrap_or(i64::MAX),
        Err(e) => return Classified::Dead(format!("no JetStream metadata: {e}")),
    };
    match parse_conversation_subject(&message.subject) {
        Some(ConversationSubject::Message(conversation_id)) => {
            let event: MessagePosted = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(e) => return Classified::Dead(format!("malformed message event: {e}")),
            };
            if event.conversation_id != conversation_id {
                return Classified::Dead("conversation id does not match the subject".into());
            }
            if let Err(refusal) = validate_body(&event.body) {
                return Classified::Dead(format!("invalid body: {}", refusal.message));
            }
            Classified::Message(MessageRow::from_event(event, seq))
        }
        Some(ConversationSubject::Read(conversation_id, reader)) => {
            let event: ReadMarked = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(e) => return Classified::Dead(format!("malformed read event: {e}")),
            };
            if event.conversation_id != conversation_id || event.user_id != reader {
                return Classified::Dead("conversation or reader does not match the subject".into());
            }
            if event.seq < 1 {
                return Classified::Dead("a read mark must be a positive sequence".into());
            }
            Classified::Read(ReadMarkRow {
                conversation_id,
                user_id: event.user_id,
                seq: event.seq,
                read_at: event.read_at,
            })
        }
        _ => Classified::Dead(format!("unexpected subject {}", message.subject)),
    }
}

async fn process_batch(
    store: &Store,
    settler: &Settler,
    members: &Members,
    turn: WriteTurn,
    batch: Vec<jetstream::Message>,
) -> Totals {
    metrics::histogram!("parley_persistence_batch_size").record(batch.len() as f64);
    let classified: Vec<Classified> = batch.iter().map(classify).collect();

    // Authorisation at the service layer: the writer must be a participant, whoever published.
    let conversations: HashSet<Uuid> = classified
        .iter()
        .filter_map(|c| match c {
            Classified::Message(row) => Some(row.conversation_id),
            Classified::Read(row) => Some(row.conversation_id),
            Classified::Dead(_) => None,
        })
        .collect();
    let members = match members.of(store, conversations).await {
        Ok(members) => members,
        Err(error) => {
            retry_later(settler, &batch, &error.to_string()).await;
            return Totals::default();
        }
    };

    // What becomes of each message, by its index in the batch: acked unless found otherwise.
    let mut dispositions = vec![Disposition::Ack; batch.len()];
    let mut rows: HashMap<Uuid, MessageRow> = HashMap::new();
    let mut message_count = 0u64;
    let mut reads = Vec::new();
    // A conversation with no participants found is not created yet: its `project.started` may
    // still be on its way (both backlogs drain at once after an outage). Its events come back
    // later, and are buried only once the start has had time to come.
    let known: HashSet<Uuid> = members.iter().map(|(conversation, _)| *conversation).collect();
    let not_started = |index: usize| {
        WAITING_FOR_START.retry_or_bury(
            &batch[index],
            "the conversation does not exist (its project never started)",
        )
    };
    for (index, item) in classified.into_iter().enumerate() {
        dispositions[index] = match item {
            Classified::Message(row) if !known.contains(&row.conversation_id) => not_started(index),
            Classified::Read(row) if !known.contains(&row.conversation_id) => not_started(index),
            Classified::Message(row) if members.contains(&(row.conversation_id, row.sender_id)) => {
                // A redelivery inside one batch carries the same id: keep one.
                message_count += 1;
                rows.entry(row.id).or_insert(row);
                Disposition::Ack
            }
            Classified::Message(_) => Disposition::bury("sender is not a participant of the conversation"),
            Classified::Read(row) if members.contains(&(row.conversation_id, row.user_id)) => {
                reads.push(row);
                Disposition::Ack
            }
            Classified::Read(_) => Disposition::bury("reader is not a participant of the conversation"),
            Classified::Dead(reason) => Disposition::Bury { reason },
        };
    }

    let mut rows: Vec<MessageRow> = rows.into_values().collect();
    rows.sort_unstable_by_key(|row| row.seq);
    let committing = std::time::Instant::now();
    // The rows are written while the previous batch commits; this one commits after it.
    // A batch that gave up hands on nothing: this one then reads its heads under the lock.
    let predicted = match turn.may_write {
        Some(previous) => previous.await.unwrap_or_default(),
        None => Heads::default(),
    };
    let (wrote, may_commit) = (turn.wrote, turn.may_commit);
    let before_commit = |heads| async move {
        let _ = wrote.send(heads);
        if let Some(previous) = may_commit {
            let _ = previous.await;
        }
    };
    let written = store
        .write_batch_continuing(&rows, &reads, predicted, before_commit)
        .await;
    // Sent on failure too: the next batch then goes on (this one comes back later, redelivered).
    let _ = turn.committed.send(());
    let totals = match written {
        Ok(BatchWritten { inserted, moved }) => {
            metrics::histogram!("parley_persistence_commit_seconds").record(committing.elapsed().as_secs_f64());
            metrics::counter!("parley_persistence_messages_persisted_total").increment(inserted);
            let duplicates = message_count.saturating_sub(inserted);
            metrics::counter!("parley_persistence_duplicates_total").increment(duplicates);
            debug!(batch = batch.len(), inserted, moved, "batch committed");
            Totals {
                persisted: inserted,
                duplicates,
            }
        }
        Err(error) => {
            retry_later(settler, &batch, &error.to_string()).await;
            return Totals::default();
        }
    };

    // The rows are committed: a lost ack only means a redelivery, rewritten as a no-op.
    let settled = batch
        .iter()
        .zip(dispositions)
        .map(|(message, disposition)| settler.settle(message, disposition));
    futures::future::join_all(settled).await;
    totals
}

async fn retry_later(settler: &Settler, batch: &[jetstream::Message], error: &str) {
    warn!(error, batch = batch.len(), "writing a batch failed; it will be retried");
    let naks = batch
        .iter()
        .map(|message| settler.settle(message, Disposition::retry_soon()));
    futures::future::join_all(naks).await;
}
