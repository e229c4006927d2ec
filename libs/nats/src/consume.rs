//! One way to consume a durable JetStream pull consumer, so that acknowledgement policy is
//! spelled once rather than once per loop.
//!
//! A [`Handler`] looks at one message and returns its [`Disposition`]: done ([`Disposition::Ack`]),
//! come back later ([`Disposition::Retry`], a nak with a delay: a consumer's `backoff` does not
//! apply to naks), never ([`Disposition::Terminate`]), or never and keep it for an operator
//! ([`Disposition::Bury`], recorded in `PARLEY_DEADLETTER` with the reason). [`RetryLimit`] is
//! the one spelling of "retry so many deliveries, then bury". [`Runtime`] pulls messages, runs
//! the handler on several at once, settles each as its handler said, and on shutdown stops
//! pulling and finishes the messages in hand. A consumer that needs its own loop (the batching
//! chat writer) settles its messages with the same [`Settler`].
//!
//! Acks are plain, not confirmed by the server (`ack`, not `double_ack`), for every consumer:
//! every handler's effect is idempotent (store writes keyed by id, publishes deduplicated by
//! `Nats-Msg-Id`, key-value puts of the same value), so a lost ack costs one redelivery that
//! changes nothing, while a confirmation costs a round trip per message and serialises a
//! one-at-a-time consumer behind it. What a confirmation would have added, that the ack left
//! before the process did, [`Runtime::run`] gets by flushing the connection when it stops.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::Utc;
use futures::StreamExt;
use parley_events::{DeadLetter, subjects};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::MSG_ID_HEADER;

/// How long a message waits before it comes back after a transient failure (a store or NATS
/// request that failed, something it needs that is not there yet).
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What becomes of one delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done: acknowledge it.
    Ack,
    /// Not now: redeliver it after `after` (a nak with that delay).
    Retry { after: Duration },
    /// It can never apply, and is not worth keeping: terminate it (logged with the reason).
    Terminate { reason: String },
    /// It can never apply: record it in the dead-letter stream with the reason, then terminate
    /// it, so an operator can inspect and re-drive it.
    Bury { reason: String },
}

impl Disposition {
    /// Come back after [`RETRY_DELAY`].
    pub fn retry_soon() -> Self {
        Self::Retry { after: RETRY_DELAY }
    }

    pub fn terminate(reason: impl Into<String>) -> Self {
        Self::Terminate { reason: reason.into() }
    }

    pub fn bury(reason: impl Into<String>) -> Self {
        Self::Bury { reason: reason.into() }
    }
}

/// How many times a message has been delivered, this delivery included; `i64::MAX` when it has
/// no JetStream metadata, so that a limit on deliveries is reached at once.
pub fn deliveries(message: &jetstream::Message) -> i64 {
    message.info().map_or(i64::MAX, |info| info.delivered)
}

/// "Retry every `after`, and bury on delivery `max_deliveries`": for messages waiting on
/// something that should come soon and, past a point, never will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLimit {
    /// The delay of each retry.
    pub after: Duration,
    /// The delivery at which the message is buried instead of retried.
    pub max_deliveries: i64,
}

impl RetryLimit {
    /// Retry `message`, or bury it with `reason` if this is its last allowed delivery.
    pub fn retry_or_bury(self, message: &jetstream::Message, reason: impl Into<String>) -> Disposition {
        self.after_deliveries(deliveries(message), reason)
    }

    /// Retry a message delivered `delivered` times, or bury it with `reason` if that is the
    /// last allowed delivery.
    pub fn after_deliveries(self, delivered: i64, reason: impl Into<String>) -> Disposition {
        if delivered >= self.max_deliveries {
            Disposition::bury(reason)
        } else {
            Disposition::Retry { after: self.after }
        }
    }
}

/// Where buried messages go: `parley.deadletter.<source>` in `PARLEY_DEADLETTER`, each a
/// [`DeadLetter`] with `Nats-Msg-Id` `<stream>-<sequence>` of the buried message (so a crash
/// between recording and terminating cannot record it twice), as the CLI's `deadletters` reads
/// them.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    source: &'static str,
    counter: &'static str,
}

impl DeadLetters {
    /// Letters from `source` (the subject's last token), counted in the counter `counter`.
    pub fn new(js: jetstream::Context, source: &'static str, counter: &'static str) -> Self {
        Self { js, source, counter }
    }

    /// Records `message` as dead with `reason`, then terminates it.
    pub async fn bury(&self, message: &jetstream::Message, reason: &str) -> Result<(), async_nats::Error> {
        let info = message.info().map_err(|e| format!("not a JetStream message: {e}"))?;
        let letter = DeadLetter {
            stream: info.stream.to_owned(),
            stream_seq: info.stream_sequence,
            subject: message.subject.to_string(),
            reason: reason.to_owned(),
            payload: String::from_utf8_lossy(&message.payload).into_owned(),
            failed_at: Utc::now(),
        };
        warn!(
            stream = letter.stream,
            seq = letter.stream_seq,
            reason,
            "dead-lettering an event"
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            MSG_ID_HEADER,
            format!("{}-{}", letter.stream, letter.stream_seq).as_str(),
        );
        self.js
            .publish_with_headers(
                subjects::dead_letter(self.source),
                headers,
                serde_json::to_vec(&letter)?.into(),
            )
            .await?
            .await?;
        message.ack_with(AckKind::Term).await?;
        metrics::counter!(self.counter).increment(1);
        Ok(())
    }
}

/// Settles messages as their [`Disposition`] says: the one place acks, naks, terms and burials
/// are sent. A failure to settle is logged: the message then comes back after the consumer's
/// `ack_wait`, which every handler tolerates.
#[derive(Debug, Clone, Default)]
pub struct Settler {
    dead_letters: Option<DeadLetters>,
}

impl Settler {
    /// A settler that records [`Disposition::Bury`] in `dead_letters`.
    pub fn new(dead_letters: DeadLetters) -> Self {
        Self {
            dead_letters: Some(dead_letters),
        }
    }

    /// A settler for a consumer that buries nothing: a [`Disposition::Bury`] terminates.
    pub fn without_dead_letters() -> Self {
        Self::default()
    }

    pub async fn settle(&self, message: &jetstream::Message, disposition: Disposition) {
        let settled = match disposition {
            Disposition::Ack => message.ack().await,
            Disposition::Retry { after } => message.ack_with(AckKind::Nak(Some(after))).await,
            Disposition::Terminate { reason } => {
                warn!(subject = %message.subject, reason, "terminating a message that can never apply");
                message.ack_with(AckKind::Term).await
            }
            Disposition::Bury { reason } => match &self.dead_letters {
                Some(dead_letters) => dead_letters.bury(message, &reason).await,
                None => {
                    warn!(subject = %message.subject, reason, "terminating a message that can never apply");
                    message.ack_with(AckKind::Term).await
                }
            },
        };
        if let Err(error) = settled {
            warn!(%error, subject = %message.subject, "settling a message failed; it will be redelivered");
        }
    }
}

/// Decides what becomes of one message. Handlers run concurrently (up to
/// [`Runtime::concurrency`]) and must be idempotent: a message may be handled twice.
pub trait Handler: Send + Sync {
    fn handle(&self, message: &jetstream::Message) -> impl Future<Output = Disposition> + Send;
}

/// Runs a [`Handler`] over a durable pull consumer until shutdown.
#[derive(Debug)]
pub struct Runtime {
    js: jetstream::Context,
    consumer: PullConsumer,
    concurrency: usize,
    settler: Settler,
}

impl Runtime {
    /// One message at a time, nothing buried, until set otherwise.
    pub fn new(js: jetstream::Context, consumer: PullConsumer) -> Self {
        Self {
            js,
            consumer,
            concurrency: 1,
            settler: Settler::default(),
        }
    }

    /// Handles up to `concurrency` messages at once (at least one). One at a time keeps the
    /// stream's order; more suit messages that are independent of each other.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Buries [`Disposition::Bury`] messages in `dead_letters`.
    pub fn dead_letters(mut self, dead_letters: DeadLetters) -> Self {
        self.settler = Settler::new(dead_letters);
        self
    }

    /// Pulls, handles and settles messages until `shutdown`; then stops pulling, finishes and
    /// settles the messages in hand, and flushes the connection so their acks leave. Messages
    /// pulled but not handed out yet come back after `ack_wait`, to this or another worker.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), jetstream::consumer::StreamError> {
        let name = self.consumer.cached_info().name.clone();
        let messages = self.consumer.messages().await?;
        let (handler, settler) = (&handler, &self.settler);
        messages
            .take_until(shutdown.cancelled_owned())
            .for_each_concurrent(self.concurrency, |next| {
                let name = &name;
                async move {
                    match next {
                        Ok(message) => {
                            let disposition = handler.handle(&message).await;
                            settler.settle(&message, disposition).await;
                        }
                        Err(error) => warn!(consumer = %name, %error, "consumer hiccup"),
                    }
                }
            })
            .await;
        if let Err(error) = crate::flush(&self.js.client()).await {
            warn!(consumer = %name, %error, "flushing the last acks failed; their messages will be redelivered");
        }
        info!(consumer = %name, "consumer stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_limit_buries_on_its_last_delivery() {
        let limit = RetryLimit {
            after: Duration::from_millis(250),
            max_deliveries: 3,
        };
        let retry = Disposition::Retry {
            after: Duration::from_millis(250),
        };
        assert_eq!(limit.after_deliveries(1, "gone"), retry);
        assert_eq!(limit.after_deliveries(2, "gone"), retry);
        assert_eq!(limit.after_deliveries(3, "gone"), Disposition::bury("gone"));
        assert_eq!(limit.after_deliveries(i64::MAX, "gone"), Disposition::bury("gone"));
    }
}
