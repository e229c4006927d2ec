//! The gateway's one error type. Each variant maps to one contract code and HTTP status; internal
//! causes are logged here, once, when the error is answered, and never returned to the caller.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parley_domain::ErrorCode;
use parley_domain::error::Refusal;
use serde_json::{Value, json};

/// Why a dependency did not answer, for the log.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// A refusal the caller caused: 400, 401, 404, 409 or 429 per its code.
    #[error(transparent)]
    Refused(#[from] Refusal),
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

    /// A closure for `map_err`: `.map_err(ApiError::during("publish"))`.
    pub(crate) fn during<E: Into<Cause>>(during: &'static str) -> impl FnOnce(E) -> Self {
        move |cause| Self::unavailable(during, cause)
    }

    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ApiError::Refused(refusal) => refusal.code,
            ApiError::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Refused(refusal) => refusal.message.clone(),
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

    /// The socket acknowledgement for this error.
    pub(crate) fn ack(&self) -> Value {
        json!({ "ok": false, "error": self.body() })
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
        let status = StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({ "error": self.body() }))).into_response()
    }
}
