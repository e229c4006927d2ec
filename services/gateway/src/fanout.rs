//! Live delivery. Each gateway instance reads the chat stream with its own ordered consumer
//! (deliver new) and emits every event to the rooms of the conversation's participants, so a
//! message reaches every socket of both users whichever instance accepted it, exactly once per
//! socket: one stream message, one emit, and a socket sits only in its own user's room.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt;
use parley_events::MessagePosted;
use parley_events::subjects::{self, ConversationSubject, parse_conversation_subject};
use socketioxide::SocketIo;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::socket::user_room;

/// Subscribes first, so that nothing accepted after this returns is missed, then runs until
/// `shutdown` in a task of its own; a failed consumer is recreated after the last delivered
/// sequence.
pub async fn start(
    js: jetstream::Context,
    io: SocketIo,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let first = subscribe(&js, None).await?;
    Ok(tokio::spawn(async move {
        let mut resume_after: Option<u64> = None;
        let mut messages = Some(first);
        while !shutdown.is_cancelled() {
            let stream = match messages.take() {
                Some(stream) => Ok(stream),
                None => subscribe(&js, resume_after).await,
            };
            let outcome = match stream {
                Ok(stream) => follow(stream, &io, &shutdown, &mut resume_after).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => return,
                Err(error) => {
                    warn!(%error, "fan-out consumer failed; recreating");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }))
}

async fn subscribe(js: &jetstream::Context, resume_after: Option<u64>) -> anyhow::Result<Ordered> {
    let stream = js.get_stream_no_info(parley_nats::CHAT_STREAM).await?;
    let deliver_policy = match resume_after {
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: vec![subjects::ALL_MESSAGES.to_owned()],
            deliver_policy,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

async fn follow(
    mut messages: Ordered,
    io: &SocketIo,
    shutdown: &CancellationToken,
    resume_after: &mut Option<u64>,
) -> anyhow::Result<()> {
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                warn!(%error, "fan-out consumer hiccup");
                continue;
            }
            None => anyhow::bail!("ordered consumer ended"),
        };
        let Ok(info) = message.info() else { continue };
        let seq = info.stream_sequence;
        *resume_after = Some(seq);
        if let Some(ConversationSubject::Message(_)) = parse_conversation_subject(&message.subject) {
            match serde_json::from_slice::<MessagePosted>(&message.payload) {
                Ok(event) => deliver_message(io, event, seq).await,
                Err(error) => debug!(%error, seq, "skipping a malformed message event"),
            }
        }
    }
}

async fn deliver_message(io: &SocketIo, event: MessagePosted, seq: u64) {
    let rooms: Vec<String> = event.participants.iter().map(|p| user_room(*p)).collect();
    let message = event.into_message(seq);
    if let Err(error) = io.to(rooms).emit("message:new", &message).await {
        warn!(%error, "emitting message:new failed");
    }
}
