//! The event and subject schema shared by every Parley process: which subject carries what, and
//! the JSON each event has on the wire. The gateway publishes these, the workers consume them and
//! the marketplace produces the lifecycle ones, so they live in one place.

pub mod subjects;

use chrono::{DateTime, Utc};
use parley_domain::model::rfc3339;
use parley_domain::{Message, Role};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One side of a project, as the marketplace describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    pub id: Uuid,
    pub display_name: String,
    pub email: String,
}

/// `parley.project.started`: creates the project's conversation with exactly these two people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStarted {
    pub project_id: Uuid,
    pub title: String,
    pub client: Party,
    pub provider: Party,
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<Utc>,
}

impl ProjectStarted {
    /// Checks what serde cannot: two distinct people, non-empty names.
    pub fn validate(&self) -> Result<(), String> {
        if self.client.id == self.provider.id {
            return Err("client and provider must be different users".into());
        }
        if self.title.trim().is_empty() {
            return Err("title must not be blank".into());
        }
        Ok(())
    }

    /// The parties with their roles, client first.
    pub fn parties(&self) -> [(Role, &Party); 2] {
        [(Role::Client, &self.client), (Role::Provider, &self.provider)]
    }
}

/// `parley.project.closed`: the conversation turns read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectClosed {
    pub project_id: Uuid,
    #[serde(with = "rfc3339")]
    pub closed_at: DateTime<Utc>,
}

/// `parley.conv.<id>.msg`: an accepted message. Its `seq` is the stream sequence JetStream gives
/// it, so it is not in the payload. The participants ride along so that fan-out needs no lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePosted {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub project_id: Uuid,
    pub sender_id: Uuid,
    pub body: String,
    pub client_msg_id: Option<String>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    pub participants: Vec<Uuid>,
}

impl MessagePosted {
    /// The message clients see, once the stream has given it its sequence.
    pub fn into_message(self, seq: u64) -> Message {
        Message {
            id: self.id,
            conversation_id: self.conversation_id,
            project_id: self.project_id,
            sender_id: self.sender_id,
            body: self.body,
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            created_at: self.created_at,
            client_msg_id: self.client_msg_id,
        }
    }
}

/// `parley.conv.<id>.read`: a participant's read mark moved forward to `seq`. `message_id` is set
/// when the caller marked one message, absent when they marked the whole conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadMarked {
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    pub seq: i64,
    pub message_id: Option<Uuid>,
    #[serde(with = "rfc3339")]
    pub read_at: DateTime<Utc>,
    pub participants: Vec<Uuid>,
}

/// `parley.conv.<id>.typing` (core NATS): a participant started or stopped typing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingChanged {
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    pub is_typing: bool,
}

/// `parley.notification.<recipientId>`: the contract's notification of a new message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: Uuid,
    /// Always `message.new`.
    #[serde(rename = "type")]
    #[schema(pattern = "^message\\.new$", example = "message.new")]
    pub kind: String,
    pub recipient_id: Uuid,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    pub project: NotificationProject,
    pub conversation_id: Uuid,
    pub message: NotificationMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationProject {
    pub id: Uuid,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationMessage {
    pub id: Uuid,
    pub seq: i64,
    pub sender_id: Uuid,
    pub sender_name: String,
    pub preview: String,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// `parley.email.<conversationId>.<recipientId>`: a pending email digest. The stream keeps at
/// most one per subject, so messages arriving while one waits join that digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailDigestJob {
    pub conversation_id: Uuid,
    pub recipient_id: Uuid,
    /// The message that queued the digest (the digest lists every unread one).
    pub first_seq: u64,
    /// When the recipient's grace is over.
    #[serde(with = "rfc3339")]
    pub due_at: DateTime<Utc>,
}

/// `parley.deadletter.<source>`: an event that can never apply, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The stream the event came from.
    pub stream: String,
    /// Its sequence in that stream.
    pub stream_seq: u64,
    /// The subject it was published on.
    pub subject: String,
    /// Why it can never apply.
    pub reason: String,
    /// The original payload, as UTF-8 (lossy).
    pub payload: String,
    #[serde(with = "rfc3339")]
    pub failed_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_started_reads_the_marketplace_json() {
        let raw = r#"{"projectId":"6f9619ff-8b86-d011-b42d-00c04fc964ff","title":"Logo",
            "client":{"id":"00000000-0000-0000-0000-000000000001","displayName":"Ann","email":"a@x.io"},
            "provider":{"id":"00000000-0000-0000-0000-000000000002","displayName":"Bo","email":"b@x.io"},
            "startedAt":"2026-01-02T03:04:05Z"}"#;
        let event: ProjectStarted = serde_json::from_str(raw).unwrap();
        assert_eq!(event.title, "Logo");
        assert_eq!(event.provider.display_name, "Bo");
        assert!(event.validate().is_ok());
    }

    #[test]
    fn a_project_with_the_same_person_on_both_sides_is_invalid() {
        let party = Party {
            id: Uuid::new_v4(),
            display_name: "A".into(),
            email: "a@x".into(),
        };
        let event = ProjectStarted {
            project_id: Uuid::new_v4(),
            title: "t".into(),
            client: party.clone(),
            provider: party,
            started_at: Utc::now(),
        };
        assert!(event.validate().is_err());
    }
}
