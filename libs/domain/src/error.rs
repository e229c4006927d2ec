//! The contract's error codes. One enum, so a code can never be misspelt at a call site and each
//! code carries its HTTP status in one place.

use serde::Serialize;

/// A refusal a client can see. The wire form is the snake_case code of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401: no, bad or expired token.
    Unauthorized,
    /// 404: no such conversation, or the caller is not one of its participants.
    NotFound,
    /// 400: a message body or `clientMsgId` breaks the rules for every write.
    InvalidMessage,
    /// 400: the request itself is malformed (not an object, bad id, bad paging bounds).
    InvalidRequest,
    /// 409: the project is closed; its conversation is read-only.
    ConversationClosed,
    /// 429: the caller sends faster than allowed.
    RateLimited,
    /// 503: a dependency (NATS, Postgres) does not answer; retry later.
    Unavailable,
}

impl ErrorCode {
    /// The code as the contract spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ConversationClosed => "conversation_closed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// The HTTP status the contract maps this code to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::InvalidMessage | ErrorCode::InvalidRequest => 400,
            ErrorCode::ConversationClosed => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal with a human-readable explanation, safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "conversation not found")
    }
}
