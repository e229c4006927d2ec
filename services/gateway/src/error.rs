//! The gateway's one error type. Each variant maps to one contract code and HTTP status; internal
//! causes are logged here and never returned to the caller.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parley_domain::ErrorCode;
use parley_domain::error::Refusal;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refusal the caller caused: 400, 401, 404, 409 or 429 per its code.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// 503 `unavailable`: NATS or Postgres did not answer. The cause is logged, not returned.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Refused(refusal) => refusal.code,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Refused(refusal) => refusal.message.clone(),
            ApiError::Unavailable(cause) => {
                tracing::warn!(cause, "answering unavailable");
                "service temporarily unavailable, retry later".into()
            }
        }
    }

    /// `{"code", "message"}`, the error object of HTTP bodies and socket acks.
    pub fn body(&self) -> Value {
        json!({ "code": self.code().as_str(), "message": self.public_message() })
    }

    /// The socket acknowledgement for this error.
    pub fn ack(&self) -> Value {
        json!({ "ok": false, "error": self.body() })
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        ApiError::Refused(Refusal::new(ErrorCode::InvalidRequest, message))
    }

    pub fn unauthorized() -> Self {
        ApiError::Refused(Refusal::new(
            ErrorCode::Unauthorized,
            "missing, invalid or expired token",
        ))
    }

    pub fn not_found() -> Self {
        ApiError::Refused(Refusal::not_found())
    }
}

impl From<parley_store::StoreError> for ApiError {
    fn from(error: parley_store::StoreError) -> Self {
        ApiError::Unavailable(format!("postgres: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({ "error": self.body() }))).into_response()
    }
}
