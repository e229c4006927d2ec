//! The HTTP API: the same operations as the socket events, for clients that only speak HTTP and
//! for the marketplace's servers. Every route but the probes needs a bearer token.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use parley_domain::Conversation;

use crate::AppState;
use crate::api::{
    CheckpointReply, HistoryParams, HistoryReply, ListReply, MarkReadBody, MarkReadPayload, MarkReadReply, Object,
    ReadyReply, SendBody, SendPayload, SendReply, TranscriptExport, TranscriptKeysReply, parse_conversation_id,
};
use crate::auth::{Authenticator, UserId};
use crate::error::{ApiError, ErrorBody};
use crate::messaging::record_send;

/// Largest request body: a send's is at most ~30 KiB of JSON, as on the socket.
pub(crate) const MAX_BODY_BYTES: usize = crate::MAX_PACKET_BYTES;

/// A body that could not be read: over [`MAX_BODY_BYTES`], or not there at all.
fn unreadable(status: StatusCode) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge { limit: MAX_BODY_BYTES }
    } else {
        ApiError::invalid_request("body must be a JSON object")
    }
}

/// How long a request body may take to arrive once its head has: a half-sent body ends then.
pub(crate) const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives the request's body a deadline ([`BODY_TIMEOUT`]): reading it past that fails, as a
/// body that cannot be read (`invalid_request`), and the connection closes with the answer.
async fn body_deadline(request: axum::extract::Request) -> axum::extract::Request {
    request.map(|body| {
        axum::body::Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(BODY_TIMEOUT)),
        })
    })
}

/// A body that fails once its deadline passes.
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(axum::Error::new("the request body did not arrive in time"))));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP API's routes. `openapi_document` is what `GET /v1/openapi.json` answers (see
/// `openapi`, which describes these routes and so is built from them, not below them).
pub(crate) fn router(state: AppState, openapi_document: &'static str) -> Router {
    Router::new()
        .route("/v1/conversations", get(list_conversations))
        .route("/v1/conversations/{id}", get(get_conversation))
        .route("/v1/conversations/{id}/messages", get(history).post(send_message))
        .route("/v1/conversations/{id}/read", post(mark_read))
        .route("/v1/conversations/{id}/transcript", get(transcript))
        .route("/v1/conversations/{id}/checkpoint", get(checkpoint))
        .route("/v1/transcript-keys", get(transcript_keys))
        .route(
            "/v1/openapi.json",
            get(move || std::future::ready(openapi(openapi_document))),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::Refused(parley_domain::error::Refusal::new(
                parley_domain::ErrorCode::NotFound,
                "no such route",
            ))
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move { ApiError::MethodNotAllowed(method) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_request(body_deadline))
        .with_state(state)
}

/// The caller, from `Authorization: Bearer <token>` (401 otherwise), who spends one of the token's
/// requests (`PARLEY_EVENT_RATE`; 429 beyond it).
pub(crate) struct Caller(pub(crate) UserId);

/// The caller of a send, who spends one of the user's sends instead (`Messaging::send`).
pub(crate) struct Sender(pub(crate) UserId);

/// The bearer token's user, and the token.
async fn bearer<'a>(parts: &'a Parts, state: &AppState) -> Result<(UserId, &'a str), ApiError> {
    let token = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(Authenticator::bearer)
        .ok_or_else(ApiError::unauthorized)?;
    let identity = state.auth.verify(token).await.ok_or_else(ApiError::unauthorized)?;
    Ok((identity.user, token))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (user, token) = bearer(parts, state).await?;
        state.limits.spend_request(token)?;
        Ok(Caller(user))
    }
}

impl FromRequestParts<AppState> for Sender {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        bearer(parts, state).await.map(|(user, _)| Sender(user))
    }
}

/// The caller's conversations, latest activity first.
#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's conversations", body = ListReply),
        (status = 401, description = "unauthorized: no, bad or expired token", body = ErrorBody),
        (status = 429, description = "rate_limited (with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "unavailable: NATS or Postgres did not answer; retry", body = ErrorBody),
    )
)]
async fn list_conversations(State(state): State<AppState>, Caller(user): Caller) -> Result<Json<ListReply>, ApiError> {
    let conversations = state.messaging.conversations(user).await?;
    Ok(Json(ListReply { conversations }))
}

/// One conversation of the caller's.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "The conversation", body = Conversation),
        (status = 400, description = "invalid_request (a malformed id or parameter) or invalid_message", body = ErrorBody),
        (status = 401, description = "unauthorized: no, bad or expired token", body = ErrorBody),
        (status = 404, description = "not_found: no such conversation for the caller", body = ErrorBody),
        (status = 429, description = "rate_limited (with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "unavailable: NATS or Postgres did not answer; retry", body = ErrorBody),
    )
)]
async fn get_conversation(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, ApiError> {
    let id = parse_conversation_id(&id)?;
    Ok(Json(state.messaging.conversation(user, id).await?))
}

/// A page of history, ascending by `seq`.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/messages",
    tag = "messages",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id"), HistoryParams),
    responses(
        (status = 200, description = "The page", body = HistoryReply),
        (status = 400, description = "invalid_request (a malformed id or parameter) or invalid_message", body = ErrorBody),
        (status = 401, description = "unauthorized: no, bad or expired token", body = ErrorBody),
        (status = 404, description = "not_found: no such conversation for the caller", body = ErrorBody),
        (status = 429, description = "rate_limited (with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "unavailable: NATS or Postgres did not answer; retry", body = ErrorBody),
    )
)]
async fn history(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<HistoryReply>, ApiError> {
    let id = parse_conversation_id(&id)?;
    let Query(params) =
        params.map_err(|_| ApiError::invalid_request("beforeSeq, afterSeq and limit must be integers"))?;
    let page = state.messaging.history(user, id, params.into_query()?).await?;
    Ok(Json(HistoryReply {
        messages: page.messages,
        has_more: page.has_more,
    }))
}

/// Sends a message; answered once it is durable.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/messages",
    tag = "messages",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id")),
    request_body = SendBody,
    responses(
        (status = 201, description = "Sent", body = SendReply),
        (status = 200, description = "A repeated clientMsgId: the first message", body = SendReply),
        (status = 400, description = "invalid_request (a malformed id or parameter) or invalid_message", body = ErrorBody),
        (status = 401, description = "unauthorized: no, bad or expired token", body = ErrorBody),
        (status = 404, description = "not_found: no such conversation for the caller", body = ErrorBody),
        (status = 409, description = "conversation_closed", body = ErrorBody),
        (status = 413, description = "invalid_request: a body over the limit", body = ErrorBody),
        (status = 429, description = "rate_limited (with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "unavailable: NATS or Postgres did not answer; retry", body = ErrorBody),
    )
)]
async fn send_message(
    State(state): State<AppState>,
    Sender(user): Sender,
    Path(id): Path<String>,
    body: Result<Json<Object<SendPayload>>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let sent = async {
        let id = parse_conversation_id(&id)?;
        let Json(Object(payload)) = body.map_err(|rejection| unreadable(rejection.status()))?;
        state.messaging.send(user, payload.into_request(Some(id))?).await
    }
    .await;
    record_send(&sent);
    let sent = sent?;
    let status = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SendReply { message: sent.message })))
}

/// Moves the caller's read mark.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/read",
    tag = "messages",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id")),
    request_body(content = MarkReadBody, description = "`{}` (or an empty body) marks everything read"),
    responses(
        (status = 200, description = "Where the caller's mark now is", body = MarkReadReply),
        (status = 400, description = "invalid_request (a malformed id or parameter) or invalid_message", body = ErrorBody),
        (status = 401, description = "unauthorized: no, bad or expired token", body = ErrorBody),
        (status = 404, description = "not_found: no such conversation for the caller", body = ErrorBody),
        (status = 413, description = "invalid_request: a body over the limit", body = ErrorBody),
        (status = 429, description = "rate_limited (with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "unavailable: NATS or Postgres did not answer; retry", body = ErrorBody),
    )
)]
/// `POST /v1/conversations/{id}/read` with an optional `{messageId}`; an empty body marks all.
async fn mark_read(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<MarkReadReply>, ApiError> {
    let id = parse_conversation_id(&id)?;
    let body = body.map_err(|rejection| unreadable(rejection.status()))?;
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        MarkReadPayload::default()
    } else {
        let Object(payload) =
            serde_json::from_slice(&body).map_err(|_| ApiError::invalid_request("body must be a JSON object"))?;
        payload
    };
    let (conversation, message) = payload.into_parts(Some(id))?;
    let last_read_seq = state.messaging.mark_read(user, conversation, message).await?;
    Ok(Json(MarkReadReply { last_read_seq }))
}

#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/transcript",
    tag = "transcripts",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "The transcript export, streamed", body = TranscriptExport),
        (status = 400, description = "invalid_request (a malformed id or parameter) or invalid_message", body = ErrorBody),
        (status = 401, description = "unauthorized: no, bad or expired token", body = ErrorBody),
        (status = 404, description = "not_found: no such conversation for the caller", body = ErrorBody),
        (status = 429, description = "rate_limited (with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "unavailable: NATS or Postgres did not answer; retry", body = ErrorBody),
    )
)]
/// `GET /v1/conversations/{id}/transcript`: the export, streamed.
async fn transcript(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_conversation_id(&id)?;
    let body = state.transcripts.export(user, id).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body))
}

#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/checkpoint",
    tag = "transcripts",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "The transcript's current checkpoint, signed now", body = CheckpointReply),
        (status = 400, description = "invalid_request (a malformed id or parameter) or invalid_message", body = ErrorBody),
        (status = 401, description = "unauthorized: no, bad or expired token", body = ErrorBody),
        (status = 404, description = "not_found: no such conversation for the caller", body = ErrorBody),
        (status = 429, description = "rate_limited (with Retry-After)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
        (status = 503, description = "unavailable: NATS or Postgres did not answer; retry", body = ErrorBody),
    )
)]
/// `GET /v1/conversations/{id}/checkpoint`: `{checkpoint}`, signed now.
async fn checkpoint(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<CheckpointReply>, ApiError> {
    let id = parse_conversation_id(&id)?;
    let checkpoint = state.transcripts.checkpoint(user, id).await?;
    Ok(Json(CheckpointReply { checkpoint }))
}

#[utoipa::path(
    get,
    path = "/v1/transcript-keys",
    tag = "transcripts",
    responses((status = 200, description = "The checkpoint signing keys, current and retired", body = TranscriptKeysReply))
)]
/// `GET /v1/transcript-keys`: no token needed.
async fn transcript_keys(State(state): State<AppState>) -> Json<TranscriptKeysReply> {
    Json(TranscriptKeysReply {
        keys: state.transcripts.keys(),
    })
}

/// Whether NATS and Postgres answer now.
async fn readiness(state: &AppState) -> (bool, bool) {
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let postgres = state.messaging.store_ready().await;
    (nats, postgres)
}

/// Whether this gateway can serve: NATS and Postgres answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadyReply),
        (status = 503, description = "NATS or Postgres does not answer", body = ReadyReply)
    )
)]
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (nats, postgres) = readiness(&state).await;
    let status = if nats && postgres {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ReadyReply { nats, postgres }))
}

/// The process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Running", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// This API's OpenAPI 3.1 document (the one in docs/openapi.json).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json"))
)]
fn openapi(document: &'static str) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document)
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain"))
)]
/// `GET /metrics`: Prometheus text, with `parley_gateway_ready` (1 or 0, what `/readyz` would
/// answer) taken at the scrape, so an alert sees a gateway that is up but cannot serve.
async fn metrics(State(state): State<AppState>) -> String {
    let (nats, postgres) = readiness(&state).await;
    metrics::gauge!("parley_gateway_ready").set(if nats && postgres { 1.0 } else { 0.0 });
    parley_service::telemetry::metrics().render()
}
