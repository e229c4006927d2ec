//! The Socket.IO side: authentication as connect middleware, one room per user (`user:<id>`) so
//! fan-out reaches every device of a participant, and `resource:verb` handlers whose acks are
//! always `{ok: true, ...}` or `{ok: false, error: {code, message}}`.

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use uuid::Uuid;

use crate::AppState;
use crate::auth::UserId;
use crate::error::ApiError;
use crate::messaging::{conversation_id_of, message_id_of, parse_history_bounds, parse_send};
use crate::replay::replay;
use crate::session::SocketSession;

/// The room every socket of `user` joins, so that one emit reaches all their devices.
pub fn user_room(user: Uuid) -> String {
    room_name("user:", user)
}

/// The room of the sockets that joined a conversation: they get its typing signals.
pub fn conversation_room(conversation: Uuid) -> String {
    room_name("conv:", conversation)
}

/// `<prefix><id>` in one allocation of its exact size, where `format!` takes two: the fan-out
/// names two rooms for every message it delivers.
fn room_name(prefix: &str, id: Uuid) -> String {
    let mut name = String::with_capacity(prefix.len() + uuid::fmt::Hyphenated::LENGTH);
    name.push_str(prefix);
    name.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    name
}

/// Registers the default namespace.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// The connect error a client sees on a missing, bad or expired token.
#[derive(Debug, thiserror::Error)]
#[error("unauthorized")]
pub struct Unauthorized;

/// How long after connect live messages wait for a join (see [`SocketSession`]).
const CONNECT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Connect middleware: `io(url, { auth: { token } })`, then the socket's whole setup.
///
/// The setup happens here rather than in the connect handler on purpose: socketioxide runs async
/// connect handlers in a task of their own after telling the client it is connected, so a client
/// emitting at once could beat the registration of the handlers (and the room join) there. The
/// middleware completes before that packet is sent. A live message that reaches the socket
/// before it counts as connected is held by its session's grace, not lost.
async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Unauthorized> {
    let token = auth
        .ok()
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let user = token.and_then(|t| state.auth.verify(&t)).ok_or(Unauthorized)?;
    let session = SocketSession::new(user);
    socket.extensions.insert(user);
    socket.extensions.insert(session.clone());
    socket.on("message:send", message_send);
    socket.on("conversation:list", conversation_list);
    socket.on("conversation:history", conversation_history);
    socket.on("conversation:join", conversation_join);
    socket.on("conversation:leave", conversation_leave);
    socket.on("conversation:typing", conversation_typing);
    socket.on("conversation:markRead", conversation_mark_read);
    socket.on_fallback(unknown_event);
    socket.on_disconnect(on_disconnect);
    socket.join(user_room(user.0));
    state.presence.connected(user.0);
    metrics::gauge!("parley_gateway_connected_sockets").increment(1.0);
    let graced = socket.clone();
    tokio::spawn(async move {
        tokio::time::sleep(CONNECT_GRACE).await;
        let mut deliveries = session.lock();
        for message in deliveries.end_grace() {
            crate::fanout::emit_live(&graced, &message);
        }
    });
    Ok(())
}

/// Everything is set up by [`authenticate`]; socketioxide still wants a connect handler.
async fn on_connect() {}

/// A disconnect ends this socket's typing everywhere it was typing.
async fn on_disconnect(Extension(session): Extension<SocketSession>, State(state): State<AppState>) {
    state.presence.disconnected(session.user.0);
    metrics::gauge!("parley_gateway_connected_sockets").decrement(1.0);
    for conversation in session.take_all_typing() {
        let _ = state.typing.signal(session.user.0, conversation, false).await;
    }
}

/// Counts a client event: `parley_gateway_events_received_total{event}`.
fn received(event: &'static str) {
    metrics::counter!("parley_gateway_events_received_total", "event" => event).increment(1);
}

/// Sends the ack, if the client asked for one.
fn answer(ack: AckSender, result: Result<Value, ApiError>) {
    let body = match result {
        Ok(value) => value,
        Err(error) => error.ack(),
    };
    if let Err(error) = ack.send(&body) {
        tracing::debug!(%error, "ack not delivered");
    }
}

/// The event's payload as a JSON object; anything else is an `invalid_request`.
fn object(payload: Result<Value, impl std::fmt::Display>) -> Result<Value, ApiError> {
    match payload {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(ApiError::invalid_request("payload must be a JSON object")),
    }
}

async fn message_send(
    Extension(user): Extension<UserId>,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    received("message:send");
    let result = async {
        let payload = object(payload)?;
        let request = parse_send(&payload, None)?;
        state.messaging.send(user, request).await
    };
    let result = result.await;
    crate::messaging::record_send(&result);
    answer(ack, result.map(|sent| json!({ "ok": true, "message": sent.message })));
}

async fn conversation_list(Extension(user): Extension<UserId>, ack: AckSender, State(state): State<AppState>) {
    received("conversation:list");
    let result = async {
        let conversations = state.messaging.conversations(user).await?;
        Ok(json!({ "ok": true, "conversations": conversations }))
    };
    answer(ack, result.await);
}

/// `not_found` unless the socket's user is a participant; a socket that joined was checked then.
async fn ensure_member(state: &AppState, session: &SocketSession, conversation_id: Uuid) -> Result<(), ApiError> {
    if !session.has_joined(conversation_id) {
        state.messaging.access(session.user, conversation_id).await?;
    }
    Ok(())
}

/// An optional non-negative integer field.
fn optional_seq(payload: &Value, name: &str) -> Result<Option<i64>, ApiError> {
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid_request(format!("{name} must be an integer"))),
    }
}

async fn conversation_history(
    Extension(user): Extension<UserId>,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    received("conversation:history");
    let result = async {
        let payload = object(payload)?;
        let conversation_id = conversation_id_of(&payload)?;
        let query = parse_history_bounds(
            optional_seq(&payload, "beforeSeq")?,
            optional_seq(&payload, "afterSeq")?,
            optional_seq(&payload, "limit")?,
        )?;
        let page = state.messaging.history(user, conversation_id, query).await?;
        Ok(json!({ "ok": true, "messages": page.messages, "hasMore": page.has_more }))
    };
    answer(ack, result.await);
}

/// Checks membership, subscribes the socket to typing, replays what it missed, then acks.
async fn conversation_join(
    socket: SocketRef,
    Extension(session): Extension<SocketSession>,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    received("conversation:join");
    let result = async {
        let payload = object(payload)?;
        let conversation_id = conversation_id_of(&payload)?;
        let last_seq = optional_seq(&payload, "lastSeq")?;
        if last_seq.is_some_and(|s| s < 0) {
            return Err(ApiError::invalid_request("lastSeq must not be negative"));
        }
        let user = session.user;
        state.messaging.access(user, conversation_id).await?;
        socket.join(conversation_room(conversation_id));
        session.joined(conversation_id);
        let _one_join_at_a_time = session.join_lock.lock().await;
        let after_seq = match last_seq {
            Some(seq) => seq,
            None => state.messaging.store.read_mark(conversation_id, user.0).await?,
        };
        // The conversation as the ack shows it is read while the replay runs: its two queries
        // need not wait for the replay, nor the replay for them.
        let (outcome, conversation) = tokio::join!(
            replay(&state.messaging, &socket, &session, conversation_id, after_seq),
            state.messaging.conversation(user, conversation_id)
        );
        let (outcome, conversation) = (outcome?, conversation?);
        Ok(
            json!({ "ok": true, "conversation": conversation, "replayed": outcome.replayed, "complete": outcome.complete }),
        )
    };
    answer(ack, result.await);
}

/// Unsubscribes the socket from the conversation's typing; ends its typing there.
async fn conversation_leave(
    socket: SocketRef,
    Extension(session): Extension<SocketSession>,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    received("conversation:leave");
    let result = async {
        let conversation_id = conversation_id_of(&object(payload)?)?;
        ensure_member(&state, &session, conversation_id).await?;
        socket.leave(conversation_room(conversation_id));
        session.left(conversation_id);
        if session.stop_typing(conversation_id) {
            state.typing.signal(session.user.0, conversation_id, false).await?;
        }
        Ok(json!({ "ok": true }))
    };
    answer(ack, result.await);
}

async fn conversation_typing(
    Extension(session): Extension<SocketSession>,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    received("conversation:typing");
    let result = async {
        let payload = object(payload)?;
        let conversation_id = conversation_id_of(&payload)?;
        let Some(is_typing) = payload.get("isTyping").and_then(Value::as_bool) else {
            return Err(ApiError::invalid_request("isTyping must be a boolean"));
        };
        ensure_member(&state, &session, conversation_id).await?;
        if is_typing {
            session.start_typing(conversation_id);
        } else {
            session.stop_typing(conversation_id);
        }
        state.typing.signal(session.user.0, conversation_id, is_typing).await?;
        Ok(json!({ "ok": true }))
    };
    answer(ack, result.await);
}

async fn conversation_mark_read(
    Extension(user): Extension<UserId>,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    received("conversation:markRead");
    let result = async {
        let payload = object(payload)?;
        let conversation_id = conversation_id_of(&payload)?;
        let message_id = message_id_of(&payload)?;
        let last_read_seq = state.messaging.mark_read(user, conversation_id, message_id).await?;
        Ok(json!({ "ok": true, "lastReadSeq": last_read_seq }))
    };
    answer(ack, result.await);
}

async fn unknown_event(Event(event): Event, ack: AckSender) {
    received("unknown");
    answer(ack, Err(ApiError::invalid_request(format!("unknown event {event:?}"))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_the_prefix_and_the_lowercase_hyphenated_id() {
        let id = Uuid::new_v4();
        assert_eq!(user_room(id), format!("user:{id}"));
        assert_eq!(conversation_room(id), format!("conv:{id}"));
    }
}
