//! Catch-up for a socket that joins a conversation: every message above a sequence, in order,
//! flagged `replayed`, before the join is acknowledged. JetStream serves the range through an
//! ordered consumer filtered to exactly this conversation's subject; what the stream no longer
//! holds (older than its first sequence) comes from Postgres first. Live messages arriving
//! meanwhile are held by the socket's [`SocketSession`] and released after, without overlap.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::DirectGetErrorKind;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use parley_domain::Message;
use parley_events::{MessagePosted, subjects};
use parley_store::HistoryQuery;
use serde::Serialize;
use socketioxide::extract::SocketRef;
use uuid::Uuid;

use crate::error::ApiError;
use crate::messaging::Messaging;
use crate::session::SocketSession;

/// Most messages one join replays; the client pages the rest with history.
pub const MAX_REPLAY: usize = 1000;
/// How long the replay waits for the next message the stream said it holds.
const NEXT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most messages taken from the stream before they are emitted together. Emitting a run of
/// messages at once lets the socket's writer send them in one write rather than one each.
const EMIT_CHUNK: usize = 256;

/// A message as a replay sends it: the Message object's fields plus `"replayed": true`. Spelled
/// out rather than `#[serde(flatten)]`, which serializes through a map, several times slower.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Replayed<'a> {
    id: Uuid,
    conversation_id: Uuid,
    project_id: Uuid,
    sender_id: Uuid,
    body: &'a str,
    seq: i64,
    #[serde(with = "parley_domain::model::rfc3339")]
    created_at: DateTime<Utc>,
    client_msg_id: Option<&'a str>,
    replayed: bool,
}

impl<'a> From<&'a Message> for Replayed<'a> {
    fn from(message: &'a Message) -> Self {
        Replayed {
            id: message.id,
            conversation_id: message.conversation_id,
            project_id: message.project_id,
            sender_id: message.sender_id,
            body: &message.body,
            seq: message.seq,
            created_at: message.created_at,
            client_msg_id: message.client_msg_id.as_deref(),
            replayed: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub replayed: usize,
    pub complete: bool,
}

/// Replays to `socket` every message of `conversation` with `seq > after_seq`, up to
/// [`MAX_REPLAY`], then releases the live messages held meanwhile.
pub async fn replay(
    messaging: &Messaging,
    socket: &SocketRef,
    session: &SocketSession,
    conversation: Uuid,
    after_seq: i64,
) -> Result<ReplayOutcome, ApiError> {
    let live_from = session.lock().begin_replay(conversation);
    let mut cursor = Cursor {
        socket,
        sent: 0,
        through: after_seq,
    };
    let result = cursor.run(messaging, conversation, after_seq, live_from).await;
    // Whatever happened, stop holding and release what was held, in order, under the lock.
    let mut deliveries = session.lock();
    for message in deliveries.end_replay(conversation, cursor.through) {
        crate::fanout::emit_live(socket, &message);
    }
    drop(deliveries);
    let complete = result?;
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
    fn emit(&mut self, message: &Message) {
        let _ = self.socket.emit("message:new", &Replayed::from(message));
        self.sent += 1;
        metrics::counter!("parley_gateway_replayed_messages_total").increment(1);
        self.through = self.through.max(message.seq);
    }

    fn full(&self) -> bool {
        self.sent >= MAX_REPLAY
    }

    /// Sends the range; returns whether it was complete.
    async fn run(
        &mut self,
        messaging: &Messaging,
        conversation: Uuid,
        after_seq: i64,
        live_from: Option<i64>,
    ) -> Result<bool, ApiError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| ApiError::Unavailable(format!("replay {what}: {e}"));
        // Everything from the first live message on already reached this socket.
        let upper = live_from.map_or(i64::MAX, |s| s - 1);
        // Fetched now, so its state is current: no second round trip for the first sequence.
        let stream = messaging
            .js
            .get_stream(parley_nats::CHAT_STREAM)
            .await
            .map_err(|e| unavailable("stream", &e))?;
        let first_in_stream = stream.cached_info().state.first_sequence;
        let first_in_stream = i64::try_from(first_in_stream).unwrap_or(i64::MAX);
        tracing::debug!(%conversation, after_seq, ?live_from, first_in_stream, "replay");

        // 1. What the stream no longer holds, from Postgres.
        if after_seq + 1 < first_in_stream {
            let below = first_in_stream.min(upper.saturating_add(1));
            let page = messaging
                .store
                .history(
                    conversation,
                    HistoryQuery {
                        after_seq: Some(after_seq),
                        before_seq: Some(below),
                        limit: MAX_REPLAY as i64,
                    },
                )
                .await?;
            for message in &page.messages {
                self.emit(message);
            }
            if page.has_more {
                return Ok(false);
            }
        }

        // 2. The rest, from the stream, up to its last message for this conversation now.
        let subject = subjects::conversation_messages(conversation);
        let last = match stream.direct_get_last_for_subject(subject.clone()).await {
            Ok(message) => i64::try_from(message.sequence).unwrap_or(i64::MAX),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(unavailable("last message", &e)),
        };
        let start = (after_seq + 1).max(first_in_stream).max(self.through + 1);
        let end = last.min(upper);
        tracing::debug!(%conversation, start, end, "replay from the stream");
        if start > end {
            return Ok(true);
        }
        if self.full() {
            return Ok(false);
        }
        let name = format!("parley-replay-{}", Uuid::new_v4().simple());
        let consumer = stream
            .create_consumer(OrderedConfig {
                name: Some(name.clone()),
                filter_subject: subject,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start as u64,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("consumer", &e))?;
        let result = self
            .drain(consumer.messages().await.map_err(|e| unavailable("consumer", &e))?, end)
            .await;
        // Ephemeral, but never left to linger: delete it now (the server's inactivity threshold
        // would catch a recreated one), without holding the join's answer for the round trip.
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        result
    }

    async fn drain(
        &mut self,
        mut messages: async_nats::jetstream::consumer::pull::Ordered,
        end: i64,
    ) -> Result<bool, ApiError> {
        let mut ready: Vec<Message> = Vec::with_capacity(EMIT_CHUNK);
        loop {
            let next = tokio::time::timeout(NEXT_MESSAGE_TIMEOUT, messages.next())
                .await
                .map_err(|_| ApiError::Unavailable("replay: the stream stopped answering".into()))?;
            let mut outcome = self.take(next, end, &mut ready)?;
            // Whatever else the consumer already holds joins this chunk.
            while outcome.is_none() && ready.len() < EMIT_CHUNK {
                let Some(next) = messages.next().now_or_never() else {
                    break;
                };
                outcome = self.take(next, end, &mut ready)?;
            }
            for message in ready.drain(..) {
                self.emit(&message);
            }
            if let Some(complete) = outcome {
                return Ok(complete);
            }
        }
    }

    /// Takes one message from the consumer into `ready`. Returns `Some(complete)` once the range
    /// is done (`true`) or the replay is full (`false`), `None` to go on.
    fn take(
        &self,
        next: Option<Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::OrderedError>>,
        end: i64,
        ready: &mut Vec<Message>,
    ) -> Result<Option<bool>, ApiError> {
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(ApiError::Unavailable(format!("replay: {e}"))),
            None => return Err(ApiError::Unavailable("replay: consumer ended".into())),
        };
        let info = message
            .info()
            .map_err(|e| ApiError::Unavailable(format!("replay: {e}")))?;
        let seq = i64::try_from(info.stream_sequence).unwrap_or(i64::MAX);
        if seq > end {
            return Ok(Some(true));
        }
        let pending = info.pending;
        if let Ok(event) = serde_json::from_slice::<MessagePosted>(&message.payload) {
            ready.push(event.into_message(seq as u64));
        }
        if seq == end || pending == 0 {
            return Ok(Some(true));
        }
        if self.sent + ready.len() >= MAX_REPLAY {
            return Ok(Some(false));
        }
        Ok(None)
    }
}
