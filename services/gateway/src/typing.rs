//! Typing indicators, on core NATS only (never stored).
//!
//! The typer's gateway throttles what reaches NATS: a change of state goes out at most every
//! 300 ms (a later one is deferred, never dropped), a continued `true` is refreshed at most once
//! a second, so a client emitting as fast as it can costs at most a few messages per second. Every gateway relays the
//! signals to its own sockets that joined the conversation, except the typer's, and owns the
//! expiry: a `true` not refreshed within five seconds becomes `false`, so typing never sticks,
//! not even when the typer's gateway dies.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
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
use crate::rooms::{conversation_room, user_room};

/// A `true` not refreshed within this long is over.
pub(crate) const TYPING_TTL: Duration = Duration::from_secs(5);
/// A continued `true` reaches NATS at most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// A change of state reaches NATS at most this soon after the previous signal.
const MIN_GAP: Duration = Duration::from_millis(300);

/// What one user's typing in one conversation looks like from NATS, and what they want it to be.
struct Throttle {
    sent: bool,
    sent_at: Instant,
    wanted: bool,
    flush_scheduled: bool,
}

/// The typer's side: decides what reaches NATS. A change within [`MIN_GAP`] of the previous
/// signal is not dropped but deferred, and the latest wish goes out when the gap has passed, so
/// the receivers always end up with the typist's real state.
#[derive(Clone)]
pub(crate) struct TypingPublisher {
    nats: async_nats::Client,
    state: Arc<Mutex<HashMap<(Uuid, Uuid), Throttle>>>,
}

enum Decision {
    Publish(bool),
    Defer(Instant),
    Nothing,
}

impl TypingPublisher {
    pub(crate) fn new(nats: async_nats::Client) -> Self {
        Self {
            nats,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<(Uuid, Uuid), Throttle>> {
        self.state.lock()
    }

    /// Publishes `user`'s typing state in `conversation`, now or once the throttle allows.
    pub(crate) async fn signal(&self, user: Uuid, conversation: Uuid, typing: bool) -> Result<(), ApiError> {
        let now = Instant::now();
        let key = (user, conversation);
        let decision = {
            let mut state = self.lock();
            if state.len() > 10_000 {
                state.retain(|_, t| t.flush_scheduled || now - t.sent_at < TYPING_TTL);
            }
            match state.get_mut(&key) {
                None if !typing => Decision::Nothing,
                None => {
                    state.insert(
                        key,
                        Throttle {
                            sent: true,
                            sent_at: now,
                            wanted: true,
                            flush_scheduled: false,
                        },
                    );
                    Decision::Publish(true)
                }
                Some(throttle) => {
                    throttle.wanted = typing;
                    if throttle.flush_scheduled {
                        Decision::Nothing
                    } else if typing == throttle.sent {
                        if typing && now - throttle.sent_at >= REFRESH_EVERY {
                            throttle.sent_at = now;
                            Decision::Publish(true)
                        } else {
                            Decision::Nothing
                        }
                    } else if now - throttle.sent_at >= MIN_GAP {
                        throttle.sent = typing;
                        throttle.sent_at = now;
                        Decision::Publish(typing)
                    } else {
                        throttle.flush_scheduled = true;
                        Decision::Defer(throttle.sent_at + MIN_GAP)
                    }
                }
            }
        };
        match decision {
            Decision::Publish(typing) => self.publish(user, conversation, typing).await,
            Decision::Defer(at) => {
                let publisher = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    publisher.flush(key).await;
                });
                Ok(())
            }
            Decision::Nothing => Ok(()),
        }
    }

    /// Sends the deferred wish, if it still differs from what NATS last heard.
    async fn flush(&self, key: (Uuid, Uuid)) {
        let wanted = {
            let mut state = self.lock();
            let Some(throttle) = state.get_mut(&key) else { return };
            throttle.flush_scheduled = false;
            if throttle.wanted == throttle.sent {
                return;
            }
            throttle.sent = throttle.wanted;
            throttle.sent_at = Instant::now();
            throttle.wanted
        };
        if let Err(error) = self.publish(key.0, key.1, wanted).await {
            warn!(%error, "deferred typing signal lost");
        }
    }

    async fn publish(&self, user: Uuid, conversation: Uuid, typing: bool) -> Result<(), ApiError> {
        let event = TypingChanged {
            conversation_id: conversation,
            user_id: user,
            is_typing: typing,
        };
        let payload = serde_json::to_vec(&event).map_err(ApiError::during("encoding a typing signal"))?;
        self.nats
            .publish(subjects::conversation_typing(conversation), payload.into())
            .await
            .map_err(ApiError::during("publishing a typing signal"))
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
            let mut active = self.active.lock();
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
            let deadline = self.active.lock().get(&key).copied();
            let Some(deadline) = deadline else { return };
            tokio::time::sleep_until(deadline).await;
            let expired = {
                let mut active = self.active.lock();
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
pub(crate) async fn start_relay(
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
                () = shutdown.cancelled() => return,
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
