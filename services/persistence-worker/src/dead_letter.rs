//! Dead letters: events that can never apply are recorded in `PARLEY_DEADLETTER` with the reason,
//! then terminated, so one poison message never stalls the consumer behind it.

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use parley_events::{DeadLetter, subjects};
use tracing::warn;

/// Records `message` as dead with `reason`, then terminates it. The record's `Nats-Msg-Id` is the
/// source stream and sequence, so a crash between the two steps cannot record it twice.
pub(crate) async fn bury(js: &jetstream::Context, message: &jetstream::Message, reason: &str) -> anyhow::Result<()> {
    let info = message
        .info()
        .map_err(|e| anyhow::anyhow!("not a JetStream message: {e}"))?;
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
        parley_nats::MSG_ID_HEADER,
        format!("{}-{}", letter.stream, letter.stream_seq).as_str(),
    );
    js.publish_with_headers(
        subjects::dead_letter("persistence"),
        headers,
        serde_json::to_vec(&letter)?.into(),
    )
    .await?
    .await?;
    message
        .ack_with(AckKind::Term)
        .await
        .map_err(|e| anyhow::anyhow!("term failed: {e}"))?;
    Ok(())
}
