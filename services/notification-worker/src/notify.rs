//! New messages become notifications: exactly one per (message, recipient), published with the
//! `Nats-Msg-Id` `<messageId>.<recipientId>` so that redeliveries and concurrent workers collapse
//! into one stored notification. When email is on, each also queues the recipient's pending
//! digest for the conversation (refused by the stream, harmlessly, while one already waits).

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use parley_domain::ids::notification_id;
use parley_domain::validation::preview;
use parley_events::{EmailDigestJob, MessagePosted, Notification, NotificationMessage, NotificationProject, subjects};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::directory::Directory;

/// How soon a message of a conversation the directory does not know yet comes back.
const UNKNOWN_CONVERSATION_RETRY: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    consumer: PullConsumer,
    js: jetstream::Context,
    directory: Directory,
    email_delay: Option<Duration>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let messages = consumer.messages().await?;
    // Messages are independent (each has its own deduplicated notifications), so several are
    // handled at once; on shutdown the stream ends and those in hand finish and ack.
    messages
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(CONCURRENCY, |next| {
            let (js, directory) = (&js, &directory);
            async move {
                let message = match next {
                    Ok(message) => message,
                    Err(error) => {
                        warn!(%error, "notification consumer hiccup");
                        return;
                    }
                };
                let outcome = notify(js, directory, email_delay, &message).await;
                let acked = match outcome {
                    // A plain ack: if it is lost, the redelivered message publishes the same
                    // notifications again, and their `Nats-Msg-Id` makes that a no-op.
                    Outcome::Done => message.ack().await,
                    Outcome::Retry(delay) => message.ack_with(AckKind::Nak(Some(delay))).await,
                    Outcome::Skip(reason) => {
                        warn!(reason, "skipping a message event");
                        message.ack_with(AckKind::Term).await
                    }
                };
                if let Err(error) = acked {
                    warn!(%error, "ack failed; the message will be redelivered and deduplicated");
                }
            }
        })
        .await;
    Ok(())
}

/// Messages handled at once by one worker. Each mostly waits on a publish acknowledgement, so
/// many in flight keep up with a busy gateway (at 64, a 5k messages/s load queued for 250 ms).
const CONCURRENCY: usize = 256;

enum Outcome {
    Done,
    Retry(Duration),
    Skip(&'static str),
}

async fn notify(
    js: &jetstream::Context,
    directory: &Directory,
    email_delay: Option<Duration>,
    message: &jetstream::Message,
) -> Outcome {
    let Ok(info) = message.info() else {
        return Outcome::Skip("no JetStream metadata");
    };
    let seq = info.stream_sequence;
    let Ok(event) = serde_json::from_slice::<MessagePosted>(&message.payload) else {
        return Outcome::Skip("malformed message event");
    };
    let card = match directory.card(event.conversation_id).await {
        Ok(Some(card)) => card,
        Ok(None) => {
            debug!(conversation = %event.conversation_id, "conversation not known yet; retrying");
            return Outcome::Retry(UNKNOWN_CONVERSATION_RETRY);
        }
        Err(error) => {
            warn!(%error, "directory lookup failed");
            return Outcome::Retry(UNKNOWN_CONVERSATION_RETRY);
        }
    };
    let Some(sender) = card.person(event.sender_id) else {
        return Outcome::Skip("sender is not a participant");
    };
    for recipient in card.participants.iter().filter(|p| p.id != event.sender_id) {
        let notification = Notification {
            id: notification_id(event.id, recipient.id),
            kind: "message.new".into(),
            recipient_id: recipient.id,
            created_at: event.created_at,
            project: NotificationProject {
                id: card.project_id,
                title: card.title.clone(),
            },
            conversation_id: event.conversation_id,
            message: NotificationMessage {
                id: event.id,
                seq: i64::try_from(seq).unwrap_or(i64::MAX),
                sender_id: sender.id,
                sender_name: sender.display_name.clone(),
                preview: preview(&event.body),
                created_at: event.created_at,
            },
        };
        let msg_id = format!("{}.{}", event.id, recipient.id);
        if let Err(error) = publish(js, subjects::notification(recipient.id), &msg_id, &notification).await {
            warn!(%error, "publishing a notification failed; retrying");
            return Outcome::Retry(Duration::from_secs(1));
        }
        metrics::counter!("parley_notifications_published_total").increment(1);
        if let Some(delay) = email_delay {
            let job = EmailDigestJob {
                conversation_id: event.conversation_id,
                recipient_id: recipient.id,
                first_seq: seq,
                due_at: event.created_at + delay,
            };
            let subject = subjects::email_digest(event.conversation_id, recipient.id);
            match publish(js, subject, &format!("email.{msg_id}"), &job).await {
                Ok(()) => {}
                // One digest already waits for this recipient here: this message joins it.
                Err(e)
                    if e.kind() == PublishErrorKind::Other
                        && e.to_string().contains("maximum messages per subject") => {}
                Err(error) => {
                    warn!(%error, "queueing an email digest failed; retrying");
                    return Outcome::Retry(Duration::from_secs(1));
                }
            }
        }
    }
    Outcome::Done
}

async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    value: &impl serde::Serialize,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    let payload = serde_json::to_vec(value).expect("events serialize");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(parley_nats::MSG_ID_HEADER, msg_id);
    js.publish_with_headers(subject, headers, payload.into()).await?.await?;
    Ok(())
}
