//! New messages become notifications: exactly one per (message, recipient), published with the
//! `Nats-Msg-Id` `<messageId>.<recipientId>` so that redeliveries and concurrent workers collapse
//! into one stored notification. When email is on, each also queues the recipient's pending
//! digest for the conversation (refused by the stream, harmlessly, while one already waits).
//!
//! Messages are independent (each has its own deduplicated notifications), so the shared
//! consumer runtime handles [`CONCURRENCY`] of them at once with [`Notifier`]. A lost ack makes
//! the redelivered message publish the same notifications again, which their `Nats-Msg-Id`
//! turns into a no-op.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use parley_domain::ids::notification_id;
use parley_domain::validation::preview;
use parley_events::{EmailDigestJob, MessagePosted, Notification, NotificationMessage, NotificationProject, subjects};
use parley_nats::consume::{Disposition, Handler};
use tracing::{debug, warn};

use crate::directory::Directory;

/// Turns each new message into its notifications (and, when email is on, digest jobs).
pub(crate) struct Notifier {
    pub(crate) js: jetstream::Context,
    pub(crate) directory: Directory,
    /// How long a recipient has to come back or read before the email; `None`: no email.
    pub(crate) email_delay: Option<Duration>,
}

impl Handler for Notifier {
    async fn handle(&self, message: &jetstream::Message) -> Disposition {
        notify(&self.js, &self.directory, self.email_delay, message).await
    }
}

/// Messages handled at once by one worker. Each mostly waits on a publish acknowledgement, so
/// many in flight keep up with a busy gateway (at 64, a 5k messages/s load queued for 250 ms).
pub(crate) const CONCURRENCY: usize = 256;

async fn notify(
    js: &jetstream::Context,
    directory: &Directory,
    email_delay: Option<Duration>,
    message: &jetstream::Message,
) -> Disposition {
    let Ok(info) = message.info() else {
        return Disposition::terminate("no JetStream metadata");
    };
    let seq = info.stream_sequence;
    let Ok(event) = serde_json::from_slice::<MessagePosted>(&message.payload) else {
        return Disposition::terminate("malformed message event");
    };
    let card = match directory.card(event.conversation_id).await {
        Ok(Some(card)) => card,
        Ok(None) => {
            debug!(conversation = %event.conversation_id, "conversation not known yet; retrying");
            return Disposition::retry_soon();
        }
        Err(error) => {
            warn!(%error, "directory lookup failed");
            return Disposition::retry_soon();
        }
    };
    let Some(sender) = card.person(event.sender_id) else {
        return Disposition::terminate("sender is not a participant");
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
            return Disposition::retry_soon();
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
                    return Disposition::retry_soon();
                }
            }
        }
    }
    Disposition::Ack
}

async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    value: &impl serde::Serialize,
) -> Result<(), PublishError> {
    let payload = serde_json::to_vec(value).map_err(|e| PublishError::with_source(PublishErrorKind::Other, e))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(parley_nats::MSG_ID_HEADER, msg_id);
    js.publish_with_headers(subject, headers, payload.into()).await?.await?;
    Ok(())
}
