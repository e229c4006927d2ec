//! The sequences of recently seen messages, filled by the fan-out. `markRead` with a `messageId`
//! needs that message's `seq`; a client usually marks a message it received a moment ago, which
//! the persistence worker may not have written yet, but this gateway's fan-out has seen.
//!
//! And where recently sent messages were stored ([`SentMessages`]), for idempotency without
//! Postgres. A repeat of a `clientMsgId` is recognised by the message id derived from it: within
//! the chat stream's duplicate window (two hours) JetStream itself answers the repeat with the
//! original's sequence; beyond it, the stored row in Postgres does. Were Postgres away beyond the
//! window, the repeat would be published anew: stored once in Postgres (the insert is keyed by
//! the id) but given a second place in the stream, delivered again and acknowledged with another
//! `seq`. So every send with a `clientMsgId` also records its stream sequence in the
//! `PARLEY_SENT` bucket, keyed by the derived id and kept [`SENT_TTL`], which a send reads when
//! Postgres cannot answer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use parking_lot::Mutex;

use uuid::Uuid;

/// How many messages are remembered; the oldest are forgotten first.
const CAPACITY: usize = 100_000;

#[derive(Clone, Default)]
pub(crate) struct RecentMessages {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    seq_of: HashMap<Uuid, (Uuid, i64)>,
    order: VecDeque<Uuid>,
}

impl RecentMessages {
    pub(crate) fn remember(&self, message_id: Uuid, conversation_id: Uuid, seq: i64) {
        let mut inner = self.inner.lock();
        if inner.seq_of.insert(message_id, (conversation_id, seq)).is_none() {
            inner.order.push_back(message_id);
            if inner.order.len() > CAPACITY
                && let Some(oldest) = inner.order.pop_front()
            {
                inner.seq_of.remove(&oldest);
            }
        }
    }

    /// The message's sequence, if it is a recent message of `conversation_id`.
    pub(crate) fn seq_of(&self, message_id: Uuid, conversation_id: Uuid) -> Option<i64> {
        let inner = self.inner.lock();
        inner
            .seq_of
            .get(&message_id)
            .filter(|(c, _)| *c == conversation_id)
            .map(|(_, seq)| *seq)
    }
}

/// How long the `PARLEY_SENT` bucket keeps where a message was stored: a repeat within that time
/// is recognised without Postgres. The contract names no setting for it; a day covers a client
/// that retries after a long time offline, well inside the chat stream's seven days (beyond which
/// the stream no longer holds the original to answer with anyway).
pub(crate) const SENT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a send waits for the bucket to say whether its message was stored already.
const SENT_LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// Where each message sent with a `clientMsgId` was stored, in `PARLEY_SENT`.
#[derive(Clone)]
pub(crate) struct SentMessages {
    js: jetstream::Context,
    kv: kv::Store,
}

/// A `PARLEY_SENT` value.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredAt {
    conversation_id: Uuid,
    seq: u64,
}

impl SentMessages {
    pub(crate) fn new(js: jetstream::Context, kv: kv::Store) -> Self {
        Self { js, kv }
    }

    /// Records, in the background, that message `id` was stored at stream sequence `seq`. The
    /// send is acknowledged meanwhile: a repeat soon after is the stream's duplicate window's
    /// to answer. The write is a publish to the bucket's subject with its own `Nats-Msg-Id`, so
    /// a record made twice (a retried send) is written once.
    pub(crate) fn record(&self, id: Uuid, conversation_id: Uuid, seq: u64) {
        let Ok(value) = serde_json::to_vec(&StoredAt { conversation_id, seq }) else {
            return;
        };
        let js = self.js.clone();
        tokio::spawn(async move {
            let subject = format!("$KV.{}.{id}", parley_nats::buckets::SENT_BUCKET);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(parley_nats::MSG_ID_HEADER, format!("sent.{id}").as_str());
            let written = async { js.publish_with_headers(subject, headers, value.into()).await?.await };
            if let Err(error) = written.await {
                metrics::counter!("parley_gateway_sent_record_failures_total").increment(1);
                tracing::warn!(%error, message_id = %id, "recording a sent message failed");
            }
        });
    }

    /// The stream sequence message `id` of `conversation_id` was stored at, if recorded.
    pub(crate) async fn stream_seq(&self, id: Uuid, conversation_id: Uuid) -> Option<u64> {
        match tokio::time::timeout(SENT_LOOKUP_TIMEOUT, self.kv.get(id.to_string())).await {
            Ok(Ok(Some(bytes))) => serde_json::from_slice::<StoredAt>(&bytes)
                .ok()
                .filter(|stored| stored.conversation_id == conversation_id)
                .map(|stored| stored.seq),
            Ok(Ok(None)) | Err(_) => None,
            Ok(Err(error)) => {
                tracing::debug!(%error, "the sent messages bucket did not answer");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_found_only_in_its_own_conversation() {
        let recent = RecentMessages::default();
        let (id, conv) = (Uuid::new_v4(), Uuid::new_v4());
        recent.remember(id, conv, 42);
        assert_eq!(recent.seq_of(id, conv), Some(42));
        assert_eq!(recent.seq_of(id, Uuid::new_v4()), None);
        assert_eq!(recent.seq_of(Uuid::new_v4(), conv), None);
    }
}
