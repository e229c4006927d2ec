//! The HTTP API: the same operations as the socket events, for clients that only speak HTTP and
//! for the marketplace's servers. Every route but the probes needs a bearer token.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::UserId;
use crate::error::ApiError;
use crate::messaging::{message_id_of, parse_conversation_id, parse_history_bounds, parse_send};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/conversations", get(list_conversations))
        .route("/v1/conversations/{id}", get(get_conversation))
        .route("/v1/conversations/{id}/messages", get(history).post(send_message))
        .route("/v1/conversations/{id}/read", post(mark_read))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|| async { parley_service::telemetry::metrics().render() }),
        )
        .fallback(|| async {
            ApiError::Refused(parley_domain::error::Refusal::new(
                parley_domain::ErrorCode::NotFound,
                "no such route",
            ))
        })
        .with_state(state)
}

/// The caller, from `Authorization: Bearer <token>`; 401 otherwise.
pub struct Caller(pub UserId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| state.auth.verify_bearer(value))
            .map(Caller)
            .ok_or_else(ApiError::unauthorized)
    }
}

async fn list_conversations(State(state): State<AppState>, Caller(user): Caller) -> Result<Json<Value>, ApiError> {
    let conversations = state.messaging.conversations(user).await?;
    Ok(Json(json!({ "conversations": conversations })))
}

async fn get_conversation(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_conversation_id(&id)?;
    let conversation = state.messaging.conversation(user, id).await?;
    Ok(Json(json!(conversation)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryParams {
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<i64>,
}

async fn history(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_conversation_id(&id)?;
    let Query(params) =
        params.map_err(|_| ApiError::invalid_request("beforeSeq, afterSeq and limit must be integers"))?;
    let query = parse_history_bounds(params.before_seq, params.after_seq, params.limit)?;
    let page = state.messaging.history(user, id, query).await?;
    Ok(Json(json!({ "messages": page.messages, "hasMore": page.has_more })))
}

async fn send_message(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_conversation_id(&id)?;
    let request = body
        .map_err(|_| ApiError::invalid_request("body must be a JSON object"))
        .and_then(|Json(body)| parse_send(&body, Some(id)));
    let request = request.inspect_err(crate::messaging::record_refusal)?;
    let sent = state.messaging.send(user, request).await;
    crate::messaging::record_send(&sent);
    let sent = sent?;
    let status = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "message": sent.message }))))
}

/// `POST /v1/conversations/{id}/read` with an optional `{messageId}`; an empty body marks all.
async fn mark_read(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_conversation_id(&id)?;
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|_| ApiError::invalid_request("body must be a JSON object"))?
    };
    if !body.is_object() {
        return Err(ApiError::invalid_request("body must be a JSON object"));
    }
    let message_id = message_id_of(&body)?;
    let last_read_seq = state.messaging.mark_read(user, id, message_id).await?;
    Ok(Json(json!({ "lastReadSeq": last_read_seq })))
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let postgres = state.messaging.store.ping().await;
    let status = if nats && postgres {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "nats": nats, "postgres": postgres })))
}
