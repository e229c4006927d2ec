//! The gateway's one error type. Each variant maps to one contract code and HTTP status; internal
//! causes are logged here, once, when the error is answered, and never returned to the caller.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parley_domain::ErrorCode;
use parley_domain::error::Refusal;
use serde_json::{Value, json};
use std::time::Duration;

/// An HTTP error body: `{"error": {"code", "message"}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorObject,
}

/// The error object of HTTP bodies and (with `retryAfterMs` when rate-limited) socket acks.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorObject {
    pub(crate) code: ErrorCode,
    /// For people: what went wrong, never an internal cause.
    pub(crate) message: String,
    /// Socket acks only, when `rate_limited`: how long to wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub(crate) retry_after_ms: Option<u64>,
}

/// Why a dependency did not answer, for the log.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// A refusal the caller caused: 400, 401, 404, 409 or 429 per its code.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// 429 `rate_limited`: the caller is over a limit; it may try again after `retry_after`
    /// (HTTP `Retry-After` in whole seconds, `retryAfterMs` in a socket ack).
    #[error("rate limited for {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// 405 `invalid_request`: a route asked with a method it does not answer.
    #[error("method {0} not allowed")]
    MethodNotAllowed(axum::http::Method),
    /// 413 `invalid_request`: a request body over the gateway's limit, refused unread.
    #[error("request body over {limit} bytes")]
    TooLarge { limit: usize },
    /// 503 `unavailable`, for a send whose publish may have reached JetStream: the message may or
    /// may not be stored, and a retry with the same `clientMsgId` settles it.
    #[error("send outcome unknown: {0}")]
    OutcomeUnknown(#[source] Cause),
    /// 503 `unavailable`: NATS or Postgres did not answer, or this gateway is draining. `during`
    /// says what the gateway was doing; the cause is logged, not returned.
    #[error("unavailable during {during}: {cause}")]
    Unavailable {
        during: &'static str,
        #[source]
        cause: Cause,
    },
}

impl ApiError {
    /// An `unavailable` refusal: `cause` stopped the gateway while it was doing `during`.
    pub(crate) fn unavailable(during: &'static str, cause: impl Into<Cause>) -> Self {
        ApiError::Unavailable {
            during,
            cause: cause.into(),
        }
    }

    /// An `unavailable` refusal of a send that may have been stored.
    pub(crate) fn outcome_unknown(cause: impl Into<Cause>) -> Self {
        ApiError::OutcomeUnknown(cause.into())
    }

    /// A closure for `map_err`: `.map_err(ApiError::during("publish"))`.
    pub(crate) fn during<E: Into<Cause>>(during: &'static str) -> impl FnOnce(E) -> Self {
        move |cause| Self::unavailable(during, cause)
    }

    pub(crate) fn rate_limited(retry_after: Duration) -> Self {
        ApiError::RateLimited { retry_after }
    }

    /// How long a rate-limited caller should wait.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ApiError::Refused(refusal) => refusal.code,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::TooLarge { .. } | ApiError::MethodNotAllowed(_) => ErrorCode::InvalidRequest,
            ApiError::Unavailable { .. } | ApiError::OutcomeUnknown(_) => ErrorCode::Unavailable,
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Refused(refusal) => refusal.message.clone(),
            ApiError::RateLimited { .. } => "too many requests; retry later".into(),
            ApiError::TooLarge { limit } => format!("the request body is over {limit} bytes"),
            ApiError::MethodNotAllowed(method) => format!("this route does not answer {method}"),
            ApiError::OutcomeUnknown(cause) => {
                tracing::warn!(%cause, "answering a send whose outcome is unknown");
                "the send may or may not have been stored; retry it with the same clientMsgId".into()
            }
            ApiError::Unavailable { during, cause } => {
                tracing::warn!(during, %cause, "answering unavailable");
                "service temporarily unavailable, retry later".into()
            }
        }
    }

    /// `{"code", "message"}`, the error object of HTTP bodies and socket acks.
    pub(crate) fn body(&self) -> Value {
        json!({ "code": self.code().as_str(), "message": self.public_message() })
    }

    /// The socket acknowledgement for this error; a rate-limited one also says when to retry.
    pub(crate) fn ack(&self) -> Value {
        let mut error = self.body();
        if let Some(wait) = self.retry_after() {
            error["retryAfterMs"] = json!(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        }
        json!({ "ok": false, "error": error })
    }

    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        ApiError::Refused(Refusal::new(ErrorCode::InvalidRequest, message))
    }

    pub(crate) fn invalid_message(message: impl Into<String>) -> Self {
        ApiError::Refused(Refusal::new(ErrorCode::InvalidMessage, message))
    }

    pub(crate) fn unauthorized() -> Self {
        ApiError::Refused(Refusal::new(
            ErrorCode::Unauthorized,
            "missing, invalid or expired token",
        ))
    }

    pub(crate) fn not_found() -> Self {
        ApiError::Refused(Refusal::not_found())
    }
}

impl From<parley_store::StoreError> for ApiError {
    fn from(error: parley_store::StoreError) -> Self {
        ApiError::unavailable("a Postgres query", error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code(),
                message: self.public_message(),
                retry_after_ms: None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up: a client retrying then finds the bucket refilled.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.max(1).into());
        }
        response
    }
}
