//! Typing indicators, on core NATS only (never stored).
//!
//! The typer's gateway throttles what reaches NATS: a change of state goes out (a start at most
//! every half second), a continued `true` is refreshed at most once a second, so a client
//! emitting as fast as it can costs at most a few messages per second. Every gateway relays the
//! signals to its own sockets that joined the conversation, except the typer's, and owns the
//! expiry: a `true` not refreshed within five seconds becomes `false`, so typing never sticks,
//! not even when the typer's gateway dies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use parley_events::{TypingChanged, subjects};
use serde_json::json;
use socketioxide::SocketIo;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use crate::error::ApiError;
use crate::socket::{conversation_room, user_room};

/// A `true` not refreshed within this long is over.
pub const TYPING_TTL: Duration = Duration::from_secs(5);
/// A continued `true` reaches NATS at most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// A new `true` reaches NATS at most this soon after the previous signal.
const MIN_GAP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
struct Sent {
    typing: bool,
    at: Instant,
}

/// The typer's side: decides what reaches NATS.
#[derive(Clone)]
pub struct TypingPublisher {
    nats: async_nats::Client,
    sent: Arc<Mutex<HashMap<(Uuid, Uuid), Sent>>>,
}

impl TypingPublisher {
    pub fn new(nats: async_nats::Client) -> Self {
        Self {
            nats,
            sent: Arc::default(),
        }
    }

    /// Publishes `user`'s typing state in `conversation` unless the throttle holds it back.
    pub async fn signal(&self, user: Uuid, conversation: Uuid, typing: bool) -> Result<(), ApiError> {
        let now = Instant::now();
        let publish = {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            let key = (user, conversation);
            let last = sent.get(&key).copied();
            let publish = match (last, typing) {
                (None, true) => true,
                (None, false) => false,
                (Some(last), true) if last.typing => now - last.at >= REFRESH_EVERY,
                (Some(last), true) => now - last.at >= MIN_GAP,
                (Some(last), false) => last.typing,
            };
            if publish {
                sent.insert(key, Sent { typing, at: now });
            }
            // Forget old entries so the map stays small.
            if sent.len() > 10_000 {
                sent.retain(|_, s| now - s.at < TYPING_TTL);
            }
            publish
        };
        if publish {
            let event = TypingChanged {
                conversation_id: conversation,
                user_id: user,
                is_typing: typing,
            };
            let payload = serde_json::to_vec(&event).map_err(|e| ApiError::Unavailable(e.to_string()))?;
            self.nats
                .publish(subjects::conversation_typing(conversation), payload.into())
                .await
                .map_err(|e| ApiError::Unavailable(format!("typing publish: {e}")))?;
        }
        Ok(())
    }
}

/// The receivers' side: relays signals to local sockets and expires them.
#[derive(Clone)]
struct Relay {
    io: SocketIo,
    active: Arc<Mutex<HashMap<(Uuid, Uuid), Instant>>>,
}

impl Relay {
    async fn emit(&self, conversation: Uuid, user: Uuid, typing: bool) {
        let payload = json!({ "conversationId": conversation, "userId": user, "isTyping": typing });
        let to = self.io.to(conversation_room(conversation)).except(user_room(user));
        if let Err(error) = to.emit("conversation:typing", &payload).await {
            warn!(%error, "emitting conversation:typing failed");
        }
    }

    async fn on_signal(&self, event: TypingChanged) {
        let key = (event.conversation_id, event.user_id);
        // Whether the state changed here: a refresh only moves the deadline on.
        let changed = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if event.is_typing {
                active.insert(key, Instant::now() + TYPING_TTL).is_none()
            } else {
                active.remove(&key).is_some()
            }
        };
        if changed {
            self.emit(event.conversation_id, event.user_id, event.is_typing).await;
            if event.is_typing {
                tokio::spawn(self.clone().expire(key));
            }
        }
    }

    /// Waits out the deadline, moved on by each refresh; emits `false` when it passes.
    async fn expire(self, key: (Uuid, Uuid)) {
        loop {
            let deadline = self.active.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
            let Some(deadline) = deadline else { return };
            tokio::time::sleep_until(deadline).await;
            let expired = {
                let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
                match active.get(&key) {
                    Some(deadline) if *deadline <= Instant::now() => active.remove(&key).is_some(),
                    Some(_) => false,
                    None => return,
                }
            };
            if expired {
                self.emit(key.0, key.1, false).await;
                return;
            }
        }
    }
}

/// Subscribes to every conversation's typing subject and relays until `shutdown`.
pub async fn start_relay(
    nats: async_nats::Client,
    io: SocketIo,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let mut subscription = nats.subscribe(subjects::ALL_TYPING).await?;
    let relay = Relay {
        io,
        active: Arc::default(),
    };
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = subscription.next() => message,
            };
            let Some(message) = message else { return };
            match serde_json::from_slice::<TypingChanged>(&message.payload) {
                Ok(event) => relay.on_signal(event).await,
                Err(error) => warn!(%error, "skipping a malformed typing signal"),
            }
        }
    }))
}
