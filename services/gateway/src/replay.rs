//! Catch-up for a socket that joins a conversation: every message above a sequence, in order,
//! flagged `replayed`, before the join is acknowledged. JetStream serves the range through an
//! ordered consumer filtered to exactly this conversation's subject; what the stream no longer
//! holds (older than its first sequence) comes from Postgres first. Live messages arriving
//! meanwhile are held by the socket's [`SocketSession`] and released after, without overlap.
//!
//! The consumer is read by a task of its own ([`Feed`]), which decodes and encodes each message
//! while the join emits the ones before it. A client with more than [`MAX_REPLAY`] missed
//! messages joins again from the last one it got, page after page, each join a round trip it
//! waits for; so a replay that stops full leaves its feed reading on in the socket's session, and
//! the next join from exactly there finds the next messages ready. A socket has at most one
//! feed, holding at most [`READ_AHEAD`] encoded messages, for at most [`FEED_IDLE_TTL`] unused.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig, OrderedError};
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures::StreamExt;
use parking_lot::Mutex;
use parley_domain::Message;
use parley_events::subjects;
use parley_store::HistoryQuery;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use uuid::Uuid;

use crate::error::ApiError;
use crate::messaging::Messaging;
use crate::session::SocketSession;
use crate::wire::{self, MessageNew, PostedView};

/// Most messages one join replays; the client pages the rest with history.
pub(crate) const MAX_REPLAY: usize = 1000;
/// How long the replay waits for the next message the stream said it holds.
const NEXT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages a feed reads ahead of the join that emits them, at most.
const READ_AHEAD: usize = MAX_REPLAY / 2;
/// How long a feed waits, with its buffer full or on a consumer with nothing new, before it
/// drops itself and its consumer: a client that stops paging does not hold either until it
/// disconnects.
const FEED_IDLE_TTL: Duration = Duration::from_secs(10);

/// Most messages taken from the stream before they are emitted together. Emitting a run of
/// messages at once lets the socket's writer send them in one write rather than one each.
const EMIT_CHUNK: usize = 256;

/// What one replay sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayOutcome {
    pub(crate) replayed: usize,
    pub(crate) complete: bool,
}

/// Where a replay stands after taking a message, or a run of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// More of the range is still to come.
    GoOn,
    /// The whole range is sent.
    Complete,
    /// The replay sent [`MAX_REPLAY`] messages; the client asks for the rest with another join.
    Full,
}

/// How a replay ended.
enum Ending {
    /// Everything above the join's sequence was sent.
    Complete,
    /// [`MAX_REPLAY`] messages were sent; `feed`, when the replay stopped in the stream, reads on
    /// for the next join.
    Full { feed: Option<Box<Feed>> },
}

/// Replay's own state on one socket, kept as a socket extension of its own: its joins one at a
/// time, and the feed its last replay left reading when it stopped full.
#[derive(Clone, Default)]
pub(crate) struct Replays(Arc<ReplayState>);

#[derive(Default)]
pub(crate) struct ReplayState {
    /// Serialises joins of one socket, so two replays never interleave.
    one_join_at_a_time: tokio::sync::Mutex<()>,
    /// Boxed: every socket has the slot, few have a feed.
    parked: Mutex<Option<Box<Feed>>>,
}

impl Replays {
    /// Waits for this socket's other joins to finish; the guard keeps the next one waiting.
    pub(crate) async fn one_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.one_join_at_a_time.lock().await
    }
}

/// An ordered consumer on one conversation, read by a task of its own into a bounded channel,
/// each message decoded and encoded for the socket on the way. Dropping it stops the task, whose
/// end deletes the consumer.
pub(crate) struct Feed {
    conversation: Uuid,
    /// The `lastSeq` a join must ask from to go on with this feed: the last seq replayed.
    after_seq: i64,
    stream: async_nats::jetstream::stream::Stream,
    /// The consumer's name, unique: tells this feed apart in the slot.
    consumer: String,
    items: tokio::sync::mpsc::Receiver<Result<Item, ApiError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One message of the range as the feed read it.
struct Item {
    seq: i64,
    /// The `message:new` it becomes; `None` for a payload that does not decode, skipped (the
    /// persistence worker buries it).
    encoded: Option<Box<RawValue>>,
}

/// What the feed's task owns: deletes the consumer when the task ends, however it ends.
struct Reader {
    messages: Ordered,
    stream: async_nats::jetstream::stream::Stream,
    consumer: String,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Ephemeral, but never left to linger: delete it now (the server's inactivity threshold
        // would catch a recreated one), without holding anything up for the round trip.
        let (stream, consumer) = (self.stream.clone(), std::mem::take(&mut self.consumer));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = stream.delete_consumer(&consumer).await;
            });
        }
    }
}

impl Feed {
    /// Creates an ordered consumer on `subject` from `start` and starts reading it.
    async fn open(
        stream: &async_nats::jetstream::stream::Stream,
        conversation: Uuid,
        subject: &str,
        start: i64,
        slot: Weak<ReplayState>,
    ) -> Result<Feed, ApiError> {
        let unavailable = ApiError::during("opening a replay consumer");
        let consumer = format!("parley-replay-{}", Uuid::new_v4().simple());
        let created = stream
            .create_consumer(OrderedConfig {
                name: Some(consumer.clone()),
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start as u64,
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let reader = Reader {
            messages: created
                .messages()
                .await
                .map_err(ApiError::during("opening a replay consumer"))?,
            stream: stream.clone(),
            consumer,
        };
        Ok(Self::start(conversation, reader, slot))
    }

    /// Starts reading `reader`, whose feed may be parked in `slot` between joins.
    fn start(conversation: Uuid, reader: Reader, slot: Weak<ReplayState>) -> Feed {
        let (tx, items) = tokio::sync::mpsc::channel(READ_AHEAD);
        let (stream, consumer) = (reader.stream.clone(), reader.consumer.clone());
        let name = consumer.clone();
        let task = tokio::spawn(async move {
            if Self::read_until_idle(reader, &tx).await {
                // Nobody took from this feed for a while: free its buffer too, if it is the one
                // parked (a join holding it is using it, and drops it itself).
                let parked = slot.upgrade().and_then(|state| {
                    let mut parked = state.parked.lock();
                    let ours = parked.as_ref().is_some_and(|feed| feed.consumer == name);
                    if ours { parked.take() } else { None }
                });
                drop(parked);
            }
        });
        Feed {
            conversation,
            after_seq: 0,
            stream,
            consumer,
            items,
            task,
        }
    }

    /// Reads into `tx` until the feed is dropped, an error is passed on, or it has waited
    /// [`FEED_IDLE_TTL`] on a full buffer or a consumer with nothing new; `true` for the last.
    async fn read_until_idle(mut reader: Reader, tx: &tokio::sync::mpsc::Sender<Result<Item, ApiError>>) -> bool {
        loop {
            let Ok(next) = tokio::time::timeout(FEED_IDLE_TTL, reader.messages.next()).await else {
                return true;
            };
            let item = Self::item(next);
            let failed = item.is_err();
            match tokio::time::timeout(FEED_IDLE_TTL, tx.send(item)).await {
                Err(_) => return true,
                Ok(Err(_)) => return false,
                Ok(Ok(())) if failed => return false,
                Ok(Ok(())) => {}
            }
        }
    }

    fn item(next: Option<Result<async_nats::jetstream::Message, OrderedError>>) -> Result<Item, ApiError> {
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(ApiError::unavailable("replaying", e)),
            None => return Err(ApiError::unavailable("replaying", "the replay consumer ended")),
        };
        let info = message.info().map_err(ApiError::during("replaying"))?;
        let seq = i64::try_from(info.stream_sequence).unwrap_or(i64::MAX);
        let encoded = PostedView::encode_replayed(&message.payload, seq);
        Ok(Item { seq, encoded })
    }

    /// Up to `limit` items, waiting for the first: the range says the stream holds it. `false`
    /// once the feed has ended and given everything it read.
    async fn next_items(&mut self, limit: usize, into: &mut Vec<Result<Item, ApiError>>) -> Result<bool, ApiError> {
        let received = tokio::time::timeout(NEXT_MESSAGE_TIMEOUT, self.items.recv_many(into, limit))
            .await
            .map_err(|_| ApiError::unavailable("replaying", "the stream stopped answering"))?;
        Ok(received > 0)
    }
}

/// Replays to `socket` every message of `conversation` with `seq > after_seq`, up to
/// [`MAX_REPLAY`], then releases the live messages held meanwhile. A feed the socket's last replay
/// parked is used if this join goes on exactly where that one stopped, else dropped; this replay
/// parks its own if it stops full. The caller holds [`Replays::one_at_a_time`].
pub(crate) async fn replay(
    messaging: &Messaging,
    socket: &SocketRef,
    session: &SocketSession,
    replays: &Replays,
    conversation: Uuid,
    after_seq: i64,
) -> Result<ReplayOutcome, ApiError> {
    let live_from = session.lock().begin_replay(conversation);
    let mut cursor = Cursor {
        socket,
        sent: 0,
        through: after_seq,
    };
    let parked = replays
        .0
        .parked
        .lock()
        .take()
        .filter(|feed| feed.conversation == conversation && feed.after_seq == after_seq)
        .map(|feed| *feed);
    let result = cursor
        .run(
            messaging,
            conversation,
            after_seq,
            live_from,
            parked,
            Arc::downgrade(&replays.0),
        )
        .await;
    // Whatever happened, stop holding and release what was held, in order, under the lock.
    let mut deliveries = session.lock();
    for message in deliveries.end_replay(conversation, cursor.through) {
        crate::fanout::emit_live(socket, &message);
    }
    drop(deliveries);
    let complete = match result? {
        Ending::Complete => true,
        Ending::Full { feed } => {
            if let Some(mut feed) = feed {
                feed.after_seq = cursor.through;
                *replays.0.parked.lock() = Some(feed);
            }
            false
        }
    };
    Ok(ReplayOutcome {
        replayed: cursor.sent,
        complete,
    })
}

struct Cursor<'a> {
    socket: &'a SocketRef,
    sent: usize,
    /// The highest sequence sent so far.
    through: i64,
}

impl Cursor<'_> {
    /// Emits messages read from Postgres.
    fn emit_stored(&mut self, messages: &[Message]) -> Result<(), ApiError> {
        for message in messages {
            self.emitted(wire::emit(self.socket, &MessageNew::replayed(message)), message.seq)?;
        }
        Ok(())
    }

    /// Emits messages read from the stream, already encoded.
    fn emit_encoded(&mut self, messages: &mut Vec<(i64, Box<RawValue>)>) -> Result<(), ApiError> {
        for (seq, encoded) in messages.drain(..) {
            self.emitted(wire::emit_encoded(self.socket, &encoded), seq)?;
        }
        Ok(())
    }

    /// Counts one emitted message as sent; one the socket could not take ends the replay, and a
    /// socket whose queue is full is disconnected (its client joins again from what it has).
    fn emitted(&mut self, emit: Result<(), socketioxide::SendError>, seq: i64) -> Result<(), ApiError> {
        emit.map_err(ApiError::during("replaying"))?;
        self.through = self.through.max(seq);
        self.sent += 1;
        metrics::counter!("parley_gateway_replayed_messages_total").increment(1);
        Ok(())
    }

    fn full(&self) -> bool {
        self.sent >= MAX_REPLAY
    }

    /// Sends the range; says how it ended.
    async fn run(
        &mut self,
        messaging: &Messaging,
        conversation: Uuid,
        after_seq: i64,
        live_from: Option<i64>,
        mut parked: Option<Feed>,
        slot: Weak<ReplayState>,
    ) -> Result<Ending, ApiError> {
        // Everything from the first live message on already reached this socket.
        let upper = live_from.map_or(i64::MAX, |s| s - 1);
        let subject = subjects::conversation_messages(conversation);

        // A parked feed reads on from `after_seq` in the stream: nothing to fetch from Postgres.
        let (stream, start) = match &parked {
            Some(feed) => (feed.stream.clone(), after_seq + 1),
            None => {
                // Fetched now, so its state is current: no second round trip for the first sequence.
                let stream = messaging.chat_stream_now().await?;
                let first_in_stream = stream.cached_info().state.first_sequence;
                let first_in_stream = i64::try_from(first_in_stream).unwrap_or(i64::MAX);
                tracing::debug!(%conversation, after_seq, ?live_from, first_in_stream, "replay");

                // 1. What the stream no longer holds, from Postgres.
                if after_seq + 1 < first_in_stream {
                    let below = first_in_stream.min(upper.saturating_add(1));
                    let page = messaging
                        .stored_messages(
                            conversation,
                            HistoryQuery {
                                after_seq: Some(after_seq),
                                before_seq: Some(below),
                                limit: MAX_REPLAY as i64,
                            },
                        )
                        .await?;
                    self.emit_stored(&page.messages)?;
                    if page.has_more || self.full() {
                        return Ok(Ending::Full { feed: None });
                    }
                }
                let start = (after_seq + 1).max(first_in_stream).max(self.through + 1);
                (stream, start)
            }
        };

        // 2. The rest, from the stream, up to its last message for this conversation now. What a
        // parked feed holds goes out while the stream is asked for that: every message it holds
        // was stored before this join began, so none is past the last.
        let lookup = stream.direct_get_last_for_subject(subject.clone());
        let (last, early) = match parked.as_mut() {
            Some(feed) => {
                let (last, early) = tokio::join!(lookup, async { self.emit_ready(feed, upper) });
                (last, early?)
            }
            None => (lookup.await, Progress::GoOn),
        };
        let last = match last {
            Ok(message) => i64::try_from(message.sequence).unwrap_or(i64::MAX),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(Ending::Complete),
            Err(e) => return Err(ApiError::unavailable("replaying", e)),
        };
        let end = last.min(upper);
        tracing::debug!(%conversation, start, end, parked = parked.is_some(), "replay from the stream");
        if start > end || self.through >= end || early == Progress::Complete {
            return Ok(Ending::Complete);
        }
        if early == Progress::Full {
            return Ok(Ending::Full {
                feed: parked.map(Box::new),
            });
        }
        loop {
            let mut feed = match parked.take() {
                Some(feed) => feed,
                // From `start`, or right after what a feed that ended had already given.
                None => {
                    Feed::open(
                        &stream,
                        conversation,
                        &subject,
                        start.max(self.through + 1),
                        slot.clone(),
                    )
                    .await?
                }
            };
            match self.drain(&mut feed, end).await? {
                Progress::Complete => return Ok(Ending::Complete),
                Progress::Full => {
                    return Ok(Ending::Full {
                        feed: Some(Box::new(feed)),
                    });
                }
                // A feed that gave up while idle, just as this join took it: go on afresh.
                Progress::GoOn => {
                    tracing::debug!(%conversation, through = self.through, "replay feed ended; reading afresh");
                }
            }
        }
    }

    /// Emits what the feed already holds, without waiting, up to `upper` and as much as the
    /// replay has room for; returns what [`Self::take`] said last.
    fn emit_ready(&mut self, feed: &mut Feed, upper: i64) -> Result<Progress, ApiError> {
        self.emit_items(std::iter::from_fn(|| feed.items.try_recv().ok()), upper)
    }

    /// Emits what the feed gives up to `end`, chunk by chunk; returns whether the range is
    /// complete or the replay full, or [`Progress::GoOn`] if the feed ended first.
    async fn drain(&mut self, feed: &mut Feed, end: i64) -> Result<Progress, ApiError> {
        let mut items = Vec::with_capacity(EMIT_CHUNK);
        loop {
            // Never more than the replay has room for: what is left stays in the feed.
            if !feed
                .next_items(EMIT_CHUNK.min(MAX_REPLAY - self.sent), &mut items)
                .await?
            {
                return Ok(Progress::GoOn);
            }
            let progress = self.emit_items(items.drain(..), end)?;
            if progress != Progress::GoOn {
                return Ok(progress);
            }
        }
    }

    /// Takes `items` until [`Self::take`] says the range is done or full, then emits them
    /// together; returns what it said last.
    fn emit_items(
        &mut self,
        items: impl Iterator<Item = Result<Item, ApiError>>,
        end: i64,
    ) -> Result<Progress, ApiError> {
        // A drained chunk knows its length; the ready ones are taken as they come.
        let mut ready = Vec::with_capacity(items.size_hint().0);
        let mut progress = Progress::GoOn;
        for item in items {
            progress = self.take(item?, end, &mut ready);
            if progress != Progress::GoOn {
                break;
            }
        }
        self.emit_encoded(&mut ready)?;
        Ok(progress)
    }

    /// Takes one message of the range into `ready`, and says where the replay stands.
    fn take(&self, item: Item, end: i64, ready: &mut Vec<(i64, Box<RawValue>)>) -> Progress {
        if item.seq > end {
            return Progress::Complete;
        }
        if let Some(encoded) = item.encoded {
            ready.push((item.seq, encoded));
        }
        if item.seq == end {
            return Progress::Complete;
        }
        if self.sent + ready.len() >= MAX_REPLAY {
            return Progress::Full;
        }
        Progress::GoOn
    }
}
