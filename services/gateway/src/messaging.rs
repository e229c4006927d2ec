//! The gateway's operations on conversations, shared by the HTTP API and the Socket.IO events so
//! that both paths authorise and publish identically, and the one way the gateway reaches the
//! store and the chat stream: live delivery reads the stream through [`Messaging::chat_stream`]
//! and Postgres through the read methods here. Requests arrive already validated (see
//! `payload`): a conversation id is a UUID before a subject is built from it.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use chrono::{SubsecRound, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use parley_domain::error::Refusal;
use parley_domain::{Conversation, ConversationStatus, ErrorCode, Message, ids};
use parley_events::{MessagePosted, ReadMarked, subjects};
use parley_store::{ConversationAccess, HistoryPage, HistoryQuery, Store};
use uuid::Uuid;

use crate::auth::UserId;
use crate::drain::Drain;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::membership::Membership;
use crate::recent::{RecentMessages, SentMessages};

/// A send, after validation.
#[derive(Debug, Clone)]
pub(crate) struct SendRequest {
    pub(crate) conversation_id: Uuid,
    pub(crate) body: String,
    pub(crate) client_msg_id: Option<String>,
}

/// The outcome of a send: the message, and whether it is new (false for an idempotent repeat).
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) message: Message,
    pub(crate) created: bool,
}

/// A read mark as the stream holds it: the mark, and the stream sequence of the event that set it.
struct StreamMark {
    seq: i64,
    subject_seq: u64,
}

/// Everything the operations need. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Messaging {
    store: Store,
    js: jetstream::Context,
    recent: RecentMessages,
    drain: Drain,
    membership: Membership,
    limits: Limits,
    sent: SentMessages,
}

/// How often a read-mark move is retried when another device moved the mark at the same time.
const MARK_ATTEMPTS: usize = 8;
/// How long `markRead` waits for a message it does not know yet (sent a moment ago elsewhere).
const UNKNOWN_MESSAGE_PATIENCE: Duration = Duration::from_secs(2);
/// A list's read-mark lookups in the stream in flight at once.
const OWN_MARK_LOOKUPS: usize = 16;
/// How long a send waits for Postgres to say whether its `clientMsgId` was stored already.
const REPEAT_LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a send keeps publishing until JetStream acknowledges it: about a leader election's
/// length, and within the drain bound of a stopping gateway.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(8);
/// How long a read of one stored message from the stream may take.
const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts a send's outcome: `parley_gateway_sends_total{result="accepted"|<error code>}`.
pub(crate) fn record_send<T>(result: &Result<T, ApiError>) {
    let result = match result {
        Ok(_) => "accepted",
        Err(error) => error.code().as_str(),
    };
    metrics::counter!("parley_gateway_sends_total", "result" => result).increment(1);
}

impl Messaging {
    pub(crate) fn new(
        store: Store,
        js: jetstream::Context,
        membership: Membership,
        limits: Limits,
        sent: SentMessages,
    ) -> Self {
        Self {
            store,
            js,
            recent: RecentMessages::default(),
            drain: Drain::default(),
            membership,
            limits,
            sent,
        }
    }

    /// The sequences the fan-out saw lately, which `markRead` looks up first.
    pub(crate) fn recent(&self) -> &RecentMessages {
        &self.recent
    }

    /// What graceful shutdown drains: the writes in flight.
    pub(crate) fn drain(&self) -> &Drain {
        &self.drain
    }

    /// Whether Postgres answers, for `/readyz`.
    pub(crate) async fn store_ready(&self) -> bool {
        self.store.ping().await
    }

    /// The caller's access to a conversation; `not_found` when it does not exist for them.
    pub(crate) async fn access(&self, user: UserId, conversation_id: Uuid) -> Result<ConversationAccess, ApiError> {
        self.membership
            .get(&self.store, conversation_id)
            .await?
            .filter(|access| access.participants.contains(&user.0))
            .ok_or_else(ApiError::not_found)
    }

    /// Accepts a message: acknowledged only once JetStream has it. A repeat of a `clientMsgId`
    /// returns the first message and publishes nothing new.
    pub(crate) async fn send(&self, user: UserId, request: SendRequest) -> Result<Sent, ApiError> {
        self.limits.spend_send(user.0)?;
        let _in_flight = self.drain.enter()?;
        let access = self.access(user, request.conversation_id).await?;
        if access.status == ConversationStatus::Closed {
            return Err(Refusal::new(
                ErrorCode::ConversationClosed,
                "the project is closed; its conversation is read-only",
            )
            .into());
        }
        let id = match &request.client_msg_id {
            Some(client_msg_id) => {
                let id = ids::message_id_for_client_msg(user.0, request.conversation_id, client_msg_id);
                if let Some(message) = self.stored_repeat(request.conversation_id, id).await {
                    return Ok(Sent {
                        message,
                        created: false,
                    });
                }
                id
            }
            None => ids::new_message_id(),
        };
        let event = MessagePosted {
            id,
            conversation_id: request.conversation_id,
            project_id: access.project_id,
            sender_id: user.0,
            body: request.body,
            client_msg_id: request.client_msg_id,
            created_at: Utc::now().trunc_subsecs(3),
            participants: access.participants,
        };
        let payload = serde_json::to_vec(&event).map_err(ApiError::during("encoding a message"))?;
        let publishing = std::time::Instant::now();
        let (ack, attempts) = self
            .publish_until_acknowledged(subjects::conversation_messages(request.conversation_id), id, payload)
            .await?;
        metrics::histogram!("parley_gateway_publish_ack_seconds").record(publishing.elapsed().as_secs_f64());
        if event.client_msg_id.is_some() {
            self.sent.record(id, request.conversation_id, ack.sequence);
        }
        if ack.duplicate {
            let message = self.original_of(ack.sequence).await?;
            // A duplicate after an attempt of this very send that got no answer is most likely
            // that attempt, stored: new to the client.
            return Ok(Sent {
                message,
                created: attempts > 1,
            });
        }
        Ok(Sent {
            message: event.into_message(ack.sequence),
            created: true,
        })
    }

    /// The stored message a repeated `clientMsgId` names, if Postgres has it. Beyond the stream's
    /// duplicate window (two hours), the stored row is the only memory of a send in Postgres;
    /// within it the stream's deduplication answers a repeat by itself. So a send asks Postgres
    /// briefly, and when it does not answer, the `PARLEY_SENT` bucket (see `recent`), which
    /// remembers where each recent send was stored for longer than the window: sends need only
    /// NATS.
    async fn stored_repeat(&self, conversation_id: Uuid, id: Uuid) -> Option<Message> {
        match tokio::time::timeout(REPEAT_LOOKUP_TIMEOUT, self.store.message(conversation_id, id)).await {
            Ok(Ok(found)) => return found,
            Ok(Err(error)) => tracing::debug!(%error, "repeat lookup failed; asking NATS"),
            Err(_) => tracing::debug!("repeat lookup timed out; asking NATS"),
        }
        let seq = self.sent.stream_seq(id, conversation_id).await?;
        match self.original_of(seq).await {
            Ok(message) if message.id == id => Some(message),
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(?error, "a recorded send not readable from the stream");
                None
            }
        }
    }

    /// Publishes a message with `Nats-Msg-Id: id` until JetStream acknowledges it, or until
    /// [`PUBLISH_DEADLINE`]; returns the ack and how many attempts it took. An attempt that got
    /// no answer (a timeout, a leader election, a reconnect, "duplicate message id is in
    /// process") may have been stored: only the same id again can tell, and JetStream's
    /// duplicate window makes the repeat safe. Past the deadline the outcome is unknown, and the
    /// refusal says so.
    async fn publish_until_acknowledged(
        &self,
        subject: String,
        id: Uuid,
        payload: Vec<u8>,
    ) -> Result<(jetstream::publish::PublishAck, u32), ApiError> {
        let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
        let payload = bytes::Bytes::from(payload);
        let msg_id = id.to_string();
        let mut pause = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(parley_nats::MSG_ID_HEADER, msg_id.as_str());
            let attempt = async {
                self.js
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await?
                    .await
            };
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(ack)) => return Ok((ack, attempts)),
                Ok(Err(error)) => error,
                Err(elapsed) => return Err(ApiError::outcome_unknown(elapsed)),
            };
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(ApiError::outcome_unknown(error));
            }
            tracing::debug!(%error, attempts, "publish not acknowledged; trying again with the same id");
            metrics::counter!("parley_gateway_publish_retries_total").increment(1);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// The first message of a send JetStream found to be a duplicate, read back from the stream.
    async fn original_of(&self, sequence: u64) -> Result<Message, ApiError> {
        let stream = self.chat_stream().await?;
        let during = "reading a duplicate's original";
        let stored = tokio::time::timeout(DIRECT_GET_TIMEOUT, stream.direct_get(sequence))
            .await
            .map_err(ApiError::during(during))?
            .map_err(ApiError::during(during))?;
        let event: MessagePosted = serde_json::from_slice(&stored.payload).map_err(ApiError::during(during))?;
        Ok(event.into_message(sequence))
    }

    /// The caller's conversations, each with the caller's own read mark as acknowledged.
    pub(crate) async fn conversations(&self, user: UserId) -> Result<Vec<Conversation>, ApiError> {
        let stored = self.store.conversations_of(user.0).await?;
        futures::stream::iter(stored)
            .map(|conversation| self.with_own_mark(user, conversation))
            .buffered(OWN_MARK_LOOKUPS)
            .try_collect()
            .await
    }

    /// One conversation as the caller sees it, with their own read mark as acknowledged.
    pub(crate) async fn conversation(&self, user: UserId, conversation_id: Uuid) -> Result<Conversation, ApiError> {
        let stored = self
            .store
            .conversation_of(user.0, conversation_id)
            .await?
            .ok_or_else(ApiError::not_found)?;
        self.with_own_mark(user, stored).await
    }

    /// A caller reads their own writes: a mark they moved is in the stream once acknowledged, but
    /// in Postgres only once the persistence worker applied it. Where the stream's is ahead, the
    /// caller's `lastReadSeq` and unread count are the stream's.
    async fn with_own_mark(&self, user: UserId, mut conversation: Conversation) -> Result<Conversation, ApiError> {
        let Some(mark) = self.stream_mark(conversation.id, user).await? else {
            return Ok(conversation);
        };
        let Some(me) = conversation.participants.iter_mut().find(|p| p.user_id == user.0) else {
            return Ok(conversation);
        };
        if mark.seq > me.last_read_seq {
            me.last_read_seq = mark.seq;
            conversation.unread_count = self.store.unread_above(conversation.id, user.0, mark.seq).await?;
        }
        Ok(conversation)
    }

    /// The caller's read mark as of their last acknowledged `markRead`: what a join without
    /// `lastSeq` replays after.
    pub(crate) async fn read_mark(&self, user: UserId, conversation_id: Uuid) -> Result<i64, ApiError> {
        match self.stream_mark(conversation_id, user).await? {
            Some(mark) => Ok(mark.seq),
            None => Ok(self.store.read_mark(conversation_id, user.0).await?),
        }
    }

    pub(crate) async fn history(
        &self,
        user: UserId,
        conversation_id: Uuid,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ApiError> {
        self.access(user, conversation_id).await?;
        Ok(self.store.history(conversation_id, query).await?)
    }

    /// Moves the caller's read mark forward, to `message_id`'s sequence or to the latest message,
    /// and returns the mark. The mark lives on its own subject in the chat stream; a move is
    /// published only if no other device moved it since it was read (JetStream's expected last
    /// subject sequence), so concurrent reads from two devices never publish a backward or
    /// duplicate move, and a call that does not move the mark publishes (and emits) nothing.
    pub(crate) async fn mark_read(
        &self,
        user: UserId,
        conversation_id: Uuid,
        message_id: Option<Uuid>,
    ) -> Result<i64, ApiError> {
        let _in_flight = self.drain.enter()?;
        let access = self.access(user, conversation_id).await?;
        let target = match message_id {
            Some(id) => self.seq_of_message(conversation_id, id).await?,
            None => self.latest_seq(conversation_id).await?,
        };
        let subject = subjects::conversation_reads(conversation_id, user.0);
        for _ in 0..MARK_ATTEMPTS {
            let (current, subject_seq) = self.current_mark(conversation_id, user).await?;
            if target <= current {
                return Ok(current);
            }
            let event = ReadMarked {
                conversation_id,
                user_id: user.0,
                seq: target,
                message_id,
                read_at: Utc::now().trunc_subsecs(3),
                participants: access.participants.clone(),
            };
            let payload = serde_json::to_vec(&event).map_err(ApiError::during("encoding a read mark"))?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Expected-Last-Subject-Sequence", subject_seq.to_string().as_str());
            let published = self
                .js
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await;
            let acked = match published {
                Ok(ack) => ack.await,
                Err(e) => return Err(ApiError::unavailable("publishing a read mark", e)),
            };
            match acked {
                Ok(_) => return Ok(target),
                // Another device moved the mark meanwhile: read it again.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {}
                Err(e) => return Err(ApiError::unavailable("awaiting a read mark's ack", e)),
            }
        }
        Err(ApiError::unavailable(
            "moving a read mark",
            "another device kept moving it",
        ))
    }

    /// The caller's current mark and the stream sequence of the event that set it (0: none in the
    /// stream, either never marked or aged out, when Postgres holds the mark).
    async fn current_mark(&self, conversation_id: Uuid, user: UserId) -> Result<(i64, u64), ApiError> {
        match self.stream_mark(conversation_id, user).await? {
            Some(mark) => Ok((mark.seq, mark.subject_seq)),
            None => Ok((self.store.read_mark(conversation_id, user.0).await?, 0)),
        }
    }

    /// The caller's mark as its last event in the stream says; `None` when the stream holds none
    /// (never marked, or aged out: then Postgres has it).
    async fn stream_mark(&self, conversation_id: Uuid, user: UserId) -> Result<Option<StreamMark>, ApiError> {
        let stream = self.chat_stream().await?;
        let subject = subjects::conversation_reads(conversation_id, user.0);
        match stream.direct_get_last_for_subject(subject).await {
            Ok(stored) => {
                let event: ReadMarked =
                    serde_json::from_slice(&stored.payload).map_err(ApiError::during("reading a read mark"))?;
                Ok(Some(StreamMark {
                    seq: event.seq,
                    subject_seq: stored.sequence,
                }))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::unavailable("reading a read mark", e)),
        }
    }

    /// The latest message's sequence: the stream knows it first; Postgres once it aged out.
    async fn latest_seq(&self, conversation_id: Uuid) -> Result<i64, ApiError> {
        let stream = self.chat_stream().await?;
        match stream
            .direct_get_last_for_subject(subjects::conversation_messages(conversation_id))
            .await
        {
            Ok(stored) => Ok(i64::try_from(stored.sequence).unwrap_or(i64::MAX)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
                Ok(self.store.latest_seq(conversation_id).await?.unwrap_or(0))
            }
            Err(e) => Err(ApiError::unavailable("reading the latest message", e)),
        }
    }

    /// The sequence of one message of the conversation; `not_found` if it is not one of its.
    async fn seq_of_message(&self, conversation_id: Uuid, message_id: Uuid) -> Result<i64, ApiError> {
        let deadline = tokio::time::Instant::now() + UNKNOWN_MESSAGE_PATIENCE;
        loop {
            if let Some(seq) = self.recent.seq_of(message_id, conversation_id) {
                return Ok(seq);
            }
            if let Some(message) = self.store.message(conversation_id, message_id).await? {
                return Ok(message.seq);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Refusal::new(ErrorCode::NotFound, "message not found").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The chat stream, for reading its messages without its state.
    pub(crate) async fn chat_stream(&self) -> Result<jetstream::stream::Stream<()>, ApiError> {
        self.js
            .get_stream_no_info(parley_nats::CHAT_STREAM)
            .await
            .map_err(ApiError::during("looking up the chat stream"))
    }

    /// The chat stream with its state as of now (its first sequence: what it still holds).
    pub(crate) async fn chat_stream_now(&self) -> Result<jetstream::stream::Stream, ApiError> {
        self.js
            .get_stream(parley_nats::CHAT_STREAM)
            .await
            .map_err(ApiError::during("looking up the chat stream"))
    }

    /// Stored messages of a conversation in a range, without an access check: for a replay, whose
    /// join checked it.
    pub(crate) async fn stored_messages(
        &self,
        conversation_id: Uuid,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ApiError> {
        Ok(self.store.history(conversation_id, query).await?)
    }
}
