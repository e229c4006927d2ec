//! The `message:new` payload, defined once for both ways a message reaches a socket: live from the
//! fan-out, and replayed on join (the same object plus `"replayed": true`). Both paths encode a
//! message once and hand the same JSON to every socket it goes to, so the encoding is sized up
//! front and the emit takes it pre-encoded.
//!
//! Replay also reads the stream's `MessagePosted` here, borrowing its strings from the payload:
//! little is allocated for a replayed message but its encoding.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use parley_domain::Message;
use parley_domain::model::rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use socketioxide::SendError;
use socketioxide::extract::SocketRef;
use uuid::Uuid;

use crate::connection;

/// The event a delivered message travels as.
pub(crate) const MESSAGE_NEW: &str = "message:new";

/// The `message:new` payload: the contract's Message object, plus `"replayed": true` when a join's
/// replay sends it. Fields are spelled out rather than `#[serde(flatten)]`, which serializes
/// through a map, several times slower.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageNew<'a> {
    id: Uuid,
    conversation_id: Uuid,
    project_id: Uuid,
    sender_id: Uuid,
    body: &'a str,
    seq: i64,
    #[serde(with = "rfc3339")]
    created_at: DateTime<Utc>,
    client_msg_id: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
}

impl<'a> MessageNew<'a> {
    /// `message` as the fan-out delivers it.
    pub(crate) fn live(message: &'a Message) -> Self {
        Self::of(message, false)
    }

    /// `message`, read from Postgres, as a replay delivers it.
    pub(crate) fn replayed(message: &'a Message) -> Self {
        Self::of(message, true)
    }

    fn of(message: &'a Message, replayed: bool) -> Self {
        MessageNew {
            id: message.id,
            conversation_id: message.conversation_id,
            project_id: message.project_id,
            sender_id: message.sender_id,
            body: &message.body,
            seq: message.seq,
            created_at: message.created_at,
            client_msg_id: message.client_msg_id.as_deref(),
            replayed,
        }
    }

    /// The payload's JSON, written into a buffer sized for it up front: one grown as it is written
    /// costs several reallocations per message, and under load the allocator's locks.
    pub(crate) fn encode(&self) -> Option<Box<RawValue>> {
        // Ids, seq, timestamp, names and punctuation take under 300 bytes.
        let mut json = Vec::with_capacity(300 + self.body.len() + self.client_msg_id.map_or(0, str::len));
        serde_json::to_writer(&mut json, self).ok()?;
        RawValue::from_string(String::from_utf8(json).ok()?).ok()
    }
}

/// A stream's `MessagePosted` as a replay reads it, its strings borrowed from the payload. It
/// accepts exactly the payloads `MessagePosted` does, which are the ones the persistence worker
/// stores.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PostedView<'a> {
    id: Uuid,
    conversation_id: Uuid,
    project_id: Uuid,
    sender_id: Uuid,
    #[serde(borrow)]
    body: Cow<'a, str>,
    #[serde(with = "rfc3339")]
    created_at: DateTime<Utc>,
    #[serde(borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    /// Not sent; required as `MessagePosted` requires it.
    #[serde(rename = "participants")]
    _participants: Vec<Uuid>,
}

impl PostedView<'_> {
    /// The replayed `message:new` of this event, stored at stream sequence `seq`, encoded; `None`
    /// for a payload that is not a `MessagePosted`.
    pub(crate) fn encode_replayed(payload: &[u8], seq: i64) -> Option<Box<RawValue>> {
        let posted: PostedView = serde_json::from_slice(payload).ok()?;
        MessageNew {
            id: posted.id,
            conversation_id: posted.conversation_id,
            project_id: posted.project_id,
            sender_id: posted.sender_id,
            body: &posted.body,
            seq,
            created_at: posted.created_at,
            client_msg_id: posted.client_msg_id.as_deref(),
            replayed: true,
        }
        .encode()
    }
}

/// Emits a `message:new` whose payload is already JSON. A one-element tuple is the event's one
/// argument, written as is (a bare value would not be wrapped with the event name). A socket
/// that cannot keep up is disconnected ([`connection::checked`]).
pub(crate) fn emit_encoded(socket: &SocketRef, encoded: &RawValue) -> Result<(), SendError> {
    connection::checked(socket, encoded.get().len(), socket.emit(MESSAGE_NEW, &(encoded,)))
}

/// Emits a `message:new` encoding it for this one socket, under the same rule.
pub(crate) fn emit(socket: &SocketRef, message: &MessageNew<'_>) -> Result<(), SendError> {
    connection::checked(socket, connection::json_len(message), socket.emit(MESSAGE_NEW, message))
}

#[cfg(test)]
mod tests {
    use chrono::SubsecRound as _;
    use parley_events::MessagePosted;
    use serde_json::{Value, json};

    use super::*;

    fn posted() -> MessagePosted {
        MessagePosted {
            id: Uuid::new_v4(),
            conversation_id: Uuid::new_v4(),
            project_id: Uuid::new_v4(),
            sender_id: Uuid::new_v4(),
            body: "hé \"quoted\"".into(),
            client_msg_id: Some("c-1".into()),
            created_at: Utc::now().trunc_subsecs(3),
            participants: vec![Uuid::new_v4(), Uuid::new_v4()],
        }
    }

    fn parsed(raw: &RawValue) -> Value {
        serde_json::from_str(raw.get()).unwrap()
    }

    #[test]
    fn a_live_message_new_is_exactly_the_message_object() {
        let message = posted().into_message(7);
        let encoded = MessageNew::live(&message).encode().unwrap();
        assert_eq!(parsed(&encoded), serde_json::to_value(&message).unwrap());
    }

    #[test]
    fn a_replayed_message_new_is_the_message_object_plus_replayed_whichever_source_it_came_from() {
        let event = posted();
        let payload = serde_json::to_vec(&event).unwrap();
        let message = event.into_message(9);
        let mut expected = serde_json::to_value(&message).unwrap();
        expected["replayed"] = json!(true);
        let from_stream = PostedView::encode_replayed(&payload, 9).unwrap();
        let from_postgres = MessageNew::replayed(&message).encode().unwrap();
        assert_eq!(parsed(&from_stream), expected);
        assert_eq!(parsed(&from_postgres), expected);
    }

    #[test]
    fn a_payload_that_is_not_a_message_posted_is_not_encoded() {
        assert!(PostedView::encode_replayed(br#"{"id":"x"}"#, 1).is_none());
        let mut event = serde_json::to_value(posted()).unwrap();
        event.as_object_mut().unwrap().remove("participants");
        assert!(PostedView::encode_replayed(event.to_string().as_bytes(), 1).is_none());
    }
}
