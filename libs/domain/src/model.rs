//! The objects of the contract, in their JSON shape (camelCase, RFC 3339 UTC times).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub project_id: Uuid,
    pub sender_id: Uuid,
    pub body: String,
    /// The message's `PARLEY_CHAT` stream sequence: increases in the order sends were accepted.
    pub seq: i64,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    pub client_msg_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Provider,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Provider => "provider",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    Active,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub user_id: Uuid,
    pub role: Role,
    pub display_name: String,
    pub last_read_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastMessage {
    pub id: Uuid,
    pub sender_id: Uuid,
    pub preview: String,
    pub seq: i64,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// A conversation as one of its participants sees it (`unreadCount` is the caller's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: Uuid,
    pub project_id: Uuid,
    pub project_title: String,
    pub status: ConversationStatus,
    pub participants: Vec<Participant>,
    pub last_message: Option<LastMessage>,
    pub unread_count: i64,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// RFC 3339 in UTC with millisecond precision and a `Z`, the one time format on the wire.
pub mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}
