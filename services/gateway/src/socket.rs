//! The Socket.IO side: authentication as connect middleware, one room per user (`user:<id>`) so
//! fan-out reaches every device of a participant, and `resource:verb` handlers whose acks are
//! always `{ok: true, ...}` or `{ok: false, error: {code, message}}`.

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;

use crate::AppState;
use crate::auth::UserId;
use crate::error::ApiError;
use crate::messaging::{parse_conversation_id, parse_history_bounds, parse_send};

/// The room every socket of `user` joins, so that one emit reaches all their devices.
pub fn user_room(user: uuid::Uuid) -> String {
    format!("user:{user}")
}

/// Registers the default namespace.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// The connect error a client sees on a missing, bad or expired token.
#[derive(Debug, thiserror::Error)]
#[error("unauthorized")]
pub struct Unauthorized;

/// Connect middleware: `io(url, { auth: { token } })`.
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
    socket.extensions.insert(user);
    Ok(())
}

async fn on_connect(socket: SocketRef, Extension(user): Extension<UserId>) {
    socket.join(user_room(user.0));
    socket.on("message:send", message_send);
    socket.on("conversation:list", conversation_list);
    socket.on("conversation:history", conversation_history);
    socket.on_fallback(unknown_event);
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
    let result = async {
        let payload = object(payload)?;
        let request = parse_send(&payload, None)?;
        let sent = state.messaging.send(user, request).await?;
        Ok(json!({ "ok": true, "message": sent.message }))
    };
    answer(ack, result.await);
}

async fn conversation_list(Extension(user): Extension<UserId>, ack: AckSender, State(state): State<AppState>) {
    let result = async {
        let conversations = state.messaging.conversations(user).await?;
        Ok(json!({ "ok": true, "conversations": conversations }))
    };
    answer(ack, result.await);
}

async fn conversation_history(
    Extension(user): Extension<UserId>,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    let result = async {
        let payload = object(payload)?;
        let conversation_id = match payload.get("conversationId") {
            Some(Value::String(raw)) => parse_conversation_id(raw)?,
            _ => return Err(ApiError::invalid_request("conversationId must be a UUID string")),
        };
        let bound = |name: &str| -> Result<Option<i64>, ApiError> {
            match payload.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| ApiError::invalid_request(format!("{name} must be an integer"))),
            }
        };
        let query = parse_history_bounds(bound("beforeSeq")?, bound("afterSeq")?, bound("limit")?)?;
        let page = state.messaging.history(user, conversation_id, query).await?;
        Ok(json!({ "ok": true, "messages": page.messages, "hasMore": page.has_more }))
    };
    answer(ack, result.await);
}

async fn unknown_event(Event(event): Event, ack: AckSender) {
    answer(ack, Err(ApiError::invalid_request(format!("unknown event {event:?}"))));
}
