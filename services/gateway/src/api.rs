//! The shapes of the client API: what each Socket.IO event and HTTP request carries, read into
//! typed payloads, and what each answers. Both transports share them, so a field means the same
//! thing and is refused with the same code whichever way it came.
//!
//! Fields are read leniently ([`Field`]): absent, present, or of the wrong type. A plain typed
//! field would fail the whole payload with serde's message, but the contract gives fields their
//! own codes (a bad `body` is `invalid_message`, a bad `conversationId` `invalid_request`), so
//! each payload turns a wrong field into its own refusal. A payload must be a JSON object
//! ([`Object`]): serde would otherwise also take a struct from an array, by position.

use std::fmt;
use std::marker::PhantomData;

use parley_domain::validation::{validate_body, validate_client_msg_id};
use parley_domain::{Conversation, Message};
use parley_store::HistoryQuery;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::messaging::SendRequest;

/// Largest history page.
pub(crate) const MAX_PAGE: i64 = 200;
/// History page size when none is asked for.
pub(crate) const DEFAULT_PAGE: i64 = 50;

/// A payload that must be a JSON object.
pub(crate) struct Object<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(PhantomData))
    }
}

/// A payload field as sent: absent (or null), of the expected type, or anything else.
#[derive(Debug, Default, PartialEq)]
pub(crate) enum Field<T> {
    #[default]
    Absent,
    Present(T),
    Invalid,
}

impl<T> Field<T> {
    /// The value; `None` when absent; `refusal` when of the wrong type.
    fn optional(self, refusal: impl FnOnce() -> ApiError) -> Result<Option<T>, ApiError> {
        match self {
            Field::Absent => Ok(None),
            Field::Present(value) => Ok(Some(value)),
            Field::Invalid => Err(refusal()),
        }
    }

    /// The value; `refusal` when absent or of the wrong type.
    fn required(self, refusal: impl FnOnce() -> ApiError) -> Result<T, ApiError> {
        match self {
            Field::Present(value) => Ok(value),
            Field::Absent | Field::Invalid => Err(refusal()),
        }
    }
}

/// The JSON types a [`Field`] may hold, each taking only its own kind of JSON value.
pub(crate) trait FieldType: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_string(value: String) -> Option<Self> {
        Self::from_str(&value)
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(value: u64) -> Option<Self> {
        i64::try_from(value).ok().and_then(Self::from_i64)
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
}

impl FieldType for String {
    fn from_str(value: &str) -> Option<Self> {
        Some(value.to_owned())
    }
    fn from_string(value: String) -> Option<Self> {
        Some(value)
    }
}

impl FieldType for Uuid {
    fn from_str(value: &str) -> Option<Self> {
        Uuid::parse_str(value).ok()
    }
}

impl FieldType for i64 {
    fn from_i64(value: i64) -> Option<Self> {
        Some(value)
    }
}

impl FieldType for bool {
    fn from_bool(value: bool) -> Option<Self> {
        Some(value)
    }
}

impl<'de, T: FieldType> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor<T>(PhantomData<T>);
        fn checked<T>(value: Option<T>) -> Field<T> {
            value.map_or(Field::Invalid, Field::Present)
        }
        impl<'de, T: FieldType> Visitor<'de> for FieldVisitor<T> {
            type Value = Field<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Absent)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Absent)
            }
            fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
                inner.deserialize_any(self)
            }
            fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
                Ok(checked(T::from_str(value)))
            }
            fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
                Ok(checked(T::from_string(value)))
            }
            fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
                Ok(checked(T::from_i64(value)))
            }
            fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
                Ok(checked(T::from_u64(value)))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Field::Invalid)
            }
            fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
                Ok(checked(T::from_bool(value)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Invalid)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Invalid)
            }
        }
        deserializer.deserialize_any(FieldVisitor(PhantomData))
    }
}

fn conversation_id(field: Field<Uuid>) -> Result<Uuid, ApiError> {
    field.required(|| ApiError::invalid_request("conversationId must be a UUID string"))
}

/// Parses a conversation id from a URL; a malformed one is an `invalid_request`.
pub(crate) fn parse_conversation_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid_request("conversationId must be a UUID"))
}

/// `message:send` and `POST /v1/conversations/{id}/messages`:
/// `{conversationId, body, clientMsgId?}` (over HTTP the id is the URL's).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SendPayload {
    #[serde(default)]
    #[schema(value_type = Uuid, required = true)]
    conversation_id: Field<Uuid>,
    /// 1 to 5000 characters, not blank, no control characters but tab, line feed and carriage
    /// return.
    #[serde(default)]
    // The pattern says what `validate_body` checks (see `SendBody`).
    #[schema(value_type = String, required = true, min_length = 1, max_length = 5000, pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*[^\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$")]
    body: Field<String>,
    /// Makes the send idempotent: a repeat returns the first message.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    client_msg_id: Field<String>,
}

/// The body of `POST /v1/conversations/{id}/messages`: a send without its conversation, which is
/// the URL's.
#[derive(ToSchema)]
#[schema(as = SendBody)]
#[allow(dead_code)]
pub(crate) struct SendBody {
    /// 1 to 5000 characters, not blank, no control characters but tab, line feed and carriage
    /// return.
    // The pattern says what `validate_body` checks: no control character but tab, line feed and
    // carriage return, and one character that is not white space.
    #[schema(
        min_length = 1,
        max_length = 5000,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*[^\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    body: String,
    /// Makes the send idempotent: a repeat returns the first message (200 instead of 201).
    #[schema(rename = "clientMsgId", max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    client_msg_id: Option<String>,
}

/// The body of `POST /v1/conversations/{id}/read`, which may also be empty.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct MarkReadBody {
    /// The message to move the read mark up to; without it, the conversation's latest.
    #[schema(rename = "messageId")]
    message_id: Option<Uuid>,
}

impl SendPayload {
    /// The validated send, into `conversation` when the URL names it.
    pub(crate) fn into_request(self, conversation: Option<Uuid>) -> Result<SendRequest, ApiError> {
        let conversation_id = match conversation {
            Some(id) => id,
            None => conversation_id(self.conversation_id)?,
        };
        let body = self
            .body
            .required(|| ApiError::invalid_message("body must be a string"))?;
        validate_body(&body)?;
        let client_msg_id = self
            .client_msg_id
            .optional(|| ApiError::invalid_message("clientMsgId must be a string"))?;
        if let Some(id) = &client_msg_id {
            validate_client_msg_id(id)?;
        }
        Ok(SendRequest {
            conversation_id,
            body,
            client_msg_id,
        })
    }
}

/// A payload naming only a conversation: `conversation:leave`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConversationPayload {
    #[serde(default)]
    #[schema(value_type = Uuid, required = true)]
    conversation_id: Field<Uuid>,
}

impl ConversationPayload {
    pub(crate) fn conversation(self) -> Result<Uuid, ApiError> {
        conversation_id(self.conversation_id)
    }
}

/// `conversation:history`: `{conversationId, beforeSeq?, afterSeq?, limit?}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HistoryPayload {
    #[serde(default)]
    #[schema(value_type = Uuid, required = true)]
    conversation_id: Field<Uuid>,
    /// Messages below this `seq`.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1)]
    before_seq: Field<i64>,
    /// Messages above this `seq`.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0)]
    after_seq: Field<i64>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Field<i64>,
}

fn integer(name: &'static str) -> impl FnOnce() -> ApiError {
    move || ApiError::invalid_request(format!("{name} must be an integer"))
}

impl HistoryPayload {
    pub(crate) fn into_query(self) -> Result<(Uuid, HistoryQuery), ApiError> {
        let conversation = conversation_id(self.conversation_id)?;
        let query = history_query(
            self.before_seq.optional(integer("beforeSeq"))?,
            self.after_seq.optional(integer("afterSeq"))?,
            self.limit.optional(integer("limit"))?,
        )?;
        Ok((conversation, query))
    }
}

/// The query of `GET /v1/conversations/{id}/messages`; without bounds, the latest page.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Messages below this `seq`.
    #[param(minimum = 1)]
    before_seq: Option<i64>,
    /// Messages above this `seq`.
    #[param(minimum = 0)]
    after_seq: Option<i64>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

impl HistoryParams {
    pub(crate) fn into_query(self) -> Result<HistoryQuery, ApiError> {
        history_query(self.before_seq, self.after_seq, self.limit)
    }
}

/// A history page's bounds, checked.
fn history_query(
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<i64>,
) -> Result<HistoryQuery, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_request("limit must be between 1 and 200"));
    }
    if before_seq.is_some_and(|s| s < 1) || after_seq.is_some_and(|s| s < 0) {
        return Err(ApiError::invalid_request(
            "beforeSeq must be positive and afterSeq not negative",
        ));
    }
    Ok(HistoryQuery {
        before_seq,
        after_seq,
        limit,
    })
}

/// `conversation:join`: `{conversationId, lastSeq?}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinPayload {
    #[serde(default)]
    #[schema(value_type = Uuid, required = true)]
    conversation_id: Field<Uuid>,
    /// Replay what came after this `seq`; omitted, after the caller's own `lastReadSeq`.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0)]
    last_seq: Field<i64>,
}

impl JoinPayload {
    /// The conversation, and the sequence to replay after when the client gave one.
    pub(crate) fn into_parts(self) -> Result<(Uuid, Option<i64>), ApiError> {
        let conversation = conversation_id(self.conversation_id)?;
        let last_seq = self.last_seq.optional(integer("lastSeq"))?;
        if last_seq.is_some_and(|s| s < 0) {
            return Err(ApiError::invalid_request("lastSeq must not be negative"));
        }
        Ok((conversation, last_seq))
    }
}

/// `conversation:typing`: `{conversationId, isTyping}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TypingPayload {
    #[serde(default)]
    #[schema(value_type = Uuid, required = true)]
    conversation_id: Field<Uuid>,
    #[serde(default)]
    #[schema(value_type = bool, required = true)]
    is_typing: Field<bool>,
}

impl TypingPayload {
    pub(crate) fn into_parts(self) -> Result<(Uuid, bool), ApiError> {
        let conversation = conversation_id(self.conversation_id)?;
        let is_typing = self
            .is_typing
            .required(|| ApiError::invalid_request("isTyping must be a boolean"))?;
        Ok((conversation, is_typing))
    }
}

/// `conversation:markRead` and `POST /v1/conversations/{id}/read`: `{conversationId, messageId?}`
/// (over HTTP the id is the URL's).
#[derive(Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MarkReadPayload {
    #[serde(default)]
    #[schema(value_type = Uuid, required = true)]
    conversation_id: Field<Uuid>,
    /// The message to move the read mark up to; without it, the conversation's latest.
    #[serde(default)]
    #[schema(value_type = Option<Uuid>)]
    message_id: Field<Uuid>,
}

impl MarkReadPayload {
    /// The conversation (the URL's when given) and the message to mark up to, if one is named.
    pub(crate) fn into_parts(self, conversation: Option<Uuid>) -> Result<(Uuid, Option<Uuid>), ApiError> {
        let conversation = match conversation {
            Some(id) => id,
            None => conversation_id(self.conversation_id)?,
        };
        let message = self
            .message_id
            .optional(|| ApiError::invalid_request("messageId must be a UUID string"))?;
        Ok((conversation, message))
    }
}

/// A send's answer: the stored message (the first one, for a repeated `clientMsgId`).
#[derive(Serialize, ToSchema)]
pub(crate) struct SendReply {
    pub(crate) message: Message,
}

/// `GET /v1/conversations/{id}/checkpoint`.
#[derive(Serialize, ToSchema)]
pub(crate) struct CheckpointReply {
    pub(crate) checkpoint: parley_transcript::keys::Checkpoint,
}

/// `GET /v1/transcript-keys`.
#[derive(Serialize, ToSchema)]
pub(crate) struct TranscriptKeysReply {
    pub(crate) keys: Vec<parley_transcript::keys::ListedKey>,
}

/// `conversation:list` and `GET /v1/conversations`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ListReply {
    pub(crate) conversations: Vec<Conversation>,
}

/// `GET /v1/conversations/{id}/transcript`: the export (contract, "Transcripts"). It is written
/// as it streams from Postgres (see `transcripts`), so this type only describes it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct TranscriptExport {
    /// Always `parley-transcript/1`.
    #[schema(example = "parley-transcript/1")]
    format: String,
    #[schema(rename = "conversationId")]
    conversation_id: Uuid,
    entries: Vec<TranscriptEntry>,
    checkpoint: parley_transcript::keys::Checkpoint,
}

/// One chained entry: `n`, `kind`, the kind's fields (camelCase; `seq` a number, every other a
/// string or null) and `hash`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct TranscriptEntry {
    #[schema(minimum = 0)]
    n: i64,
    kind: EntryKind,
    /// `hash(n)`, 64 lowercase hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    hash: String,
}

/// What an entry records.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum EntryKind {
    Started,
    Message,
    Read,
    Closed,
}

/// `GET /readyz`: whether each dependency answers.
#[derive(Serialize, ToSchema)]
pub(crate) struct ReadyReply {
    pub(crate) nats: bool,
    pub(crate) postgres: bool,
}

/// A history page.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HistoryReply {
    pub(crate) messages: Vec<Message>,
    pub(crate) has_more: bool,
}

/// `conversation:join`: the conversation, and what the replay sent.
#[derive(Serialize, ToSchema)]
pub(crate) struct JoinReply {
    pub(crate) conversation: Conversation,
    /// How many messages the replay emitted before this ack.
    pub(crate) replayed: usize,
    /// False when more remain than one replay sends (1000): page the rest with history.
    pub(crate) complete: bool,
}

/// A read mark's answer: where the caller's mark now is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MarkReadReply {
    pub(crate) last_read_seq: i64,
}

/// An answer with nothing to say but `ok`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Done {}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn send(payload: Value) -> Result<SendRequest, ApiError> {
        serde_json::from_value::<Object<SendPayload>>(payload)
            .map_err(|_| ApiError::invalid_request("not an object"))
            .and_then(|Object(payload)| payload.into_request(None))
    }

    fn code(result: Result<SendRequest, ApiError>) -> &'static str {
        result.err().map_or("ok", |e| e.code().as_str())
    }

    #[test]
    fn a_send_payload_must_be_an_object_even_when_an_array_holds_its_fields_in_order() {
        let conversation = Uuid::new_v4();
        assert_eq!(code(send(json!([conversation, "hi"]))), "invalid_request");
        assert_eq!(code(send(json!("hi"))), "invalid_request");
        assert_eq!(
            code(send(json!({ "conversationId": conversation, "body": "hi" }))),
            "ok"
        );
    }

    #[test]
    fn each_send_field_is_refused_with_its_own_code() {
        let conversation = Uuid::new_v4();
        assert_eq!(
            code(send(json!({ "conversationId": 7, "body": "hi" }))),
            "invalid_request"
        );
        assert_eq!(
            code(send(json!({ "conversationId": "nope", "body": "hi" }))),
            "invalid_request"
        );
        assert_eq!(
            code(send(json!({ "conversationId": conversation, "body": 42 }))),
            "invalid_message"
        );
        assert_eq!(
            code(send(json!({ "conversationId": conversation, "body": {"a": [1]} }))),
            "invalid_message"
        );
        assert_eq!(code(send(json!({ "conversationId": conversation }))), "invalid_message");
        assert_eq!(
            code(send(
                json!({ "conversationId": conversation, "body": "hi", "clientMsgId": 3 })
            )),
            "invalid_message"
        );
        let ok = send(json!({ "conversationId": conversation, "body": "hi", "clientMsgId": null })).unwrap();
        assert_eq!(
            (ok.conversation_id, ok.body.as_str(), ok.client_msg_id),
            (conversation, "hi", None)
        );
    }

    #[test]
    fn integer_fields_take_integers_only() {
        let read = |payload: Value| serde_json::from_value::<HistoryPayload>(payload).unwrap().into_query();
        let conversation = Uuid::new_v4();
        assert!(read(json!({ "conversationId": conversation, "limit": 5.5 })).is_err());
        assert!(read(json!({ "conversationId": conversation, "limit": "5" })).is_err());
        assert!(read(json!({ "conversationId": conversation, "afterSeq": u64::MAX })).is_err());
        let (_, query) = read(json!({ "conversationId": conversation, "limit": 5, "afterSeq": 3 })).unwrap();
        assert_eq!((query.limit, query.after_seq, query.before_seq), (5, Some(3), None));
    }
}

#[cfg(test)]
mod properties {
    //! The payload readers over arbitrary JSON: they never panic, refuse only with the two codes
    //! a payload can earn, read a well-formed payload whatever else it carries, and give a field
    //! of the wrong JSON type its own code.

    use parley_domain::ErrorCode;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z0-9 -]{0,12}".prop_map(Value::from),
            Just(json!(Uuid::nil().to_string())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// An object that may hold any of the payloads' field names, with any values.
    fn payload_object() -> impl Strategy<Value = Value> {
        let names = prop::sample::select(vec![
            "conversationId",
            "body",
            "clientMsgId",
            "beforeSeq",
            "afterSeq",
            "limit",
            "lastSeq",
            "isTyping",
            "messageId",
            "other",
        ]);
        prop::collection::btree_map(names, json_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    fn read<T: serde::de::DeserializeOwned>(payload: &Value) -> Result<T, ApiError> {
        serde_json::from_value::<Object<T>>(payload.clone())
            .map(|Object(payload)| payload)
            .map_err(|_| ApiError::invalid_request("not an object"))
    }

    fn refused_with(result: Result<impl Sized, ApiError>, codes: &[ErrorCode]) -> Result<(), TestCaseError> {
        if let Err(error) = result {
            prop_assert!(codes.contains(&error.code()), "refused with {:?}", error.code());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn every_reader_answers_any_json_with_a_value_or_a_request_refusal(
            payload in prop_oneof![json_value(), payload_object()]
        ) {
            let request = [ErrorCode::InvalidRequest];
            let send = [ErrorCode::InvalidRequest, ErrorCode::InvalidMessage];
            refused_with(read::<SendPayload>(&payload).and_then(|p| p.into_request(None)), &send)?;
            refused_with(read::<HistoryPayload>(&payload).and_then(HistoryPayload::into_query), &request)?;
            refused_with(read::<JoinPayload>(&payload).and_then(JoinPayload::into_parts), &request)?;
            refused_with(read::<TypingPayload>(&payload).and_then(TypingPayload::into_parts), &request)?;
            refused_with(read::<MarkReadPayload>(&payload).and_then(|p| p.into_parts(None)), &request)?;
            refused_with(read::<ConversationPayload>(&payload).and_then(ConversationPayload::conversation), &request)?;
        }

        #[test]
        fn a_well_formed_send_reads_the_same_whatever_else_the_object_carries(
            body in "[a-z][a-z ]{0,40}",
            client_msg_id in proptest::option::of("[A-Za-z0-9_-]{1,64}"),
            extra in prop::collection::btree_map("x[a-z]{0,8}", json_value(), 0..4),
        ) {
            let conversation = Uuid::new_v4();
            let mut payload = json!({ "conversationId": conversation, "body": body, "clientMsgId": client_msg_id });
            for (name, value) in extra {
                payload[name] = value;
            }
            let request = read::<SendPayload>(&payload).and_then(|p| p.into_request(None)).unwrap();
            prop_assert_eq!(request.conversation_id, conversation);
            prop_assert_eq!(request.body, body);
            prop_assert_eq!(request.client_msg_id, client_msg_id);
        }

        #[test]
        fn a_field_of_the_wrong_json_type_earns_its_own_code(wrong in json_value()) {
            let conversation = Uuid::new_v4();
            let body_code = match &wrong {
                Value::String(s) if validate_body(s).is_ok() => None,
                _ => Some(ErrorCode::InvalidMessage),
            };
            let send = read::<SendPayload>(&json!({ "conversationId": conversation, "body": wrong }))
                .and_then(|p| p.into_request(None));
            prop_assert_eq!(send.err().map(|e| e.code()), body_code);
            let id_code = match &wrong {
                Value::String(s) if Uuid::parse_str(s).is_ok() => None,
                _ => Some(ErrorCode::InvalidRequest),
            };
            let leave = read::<ConversationPayload>(&json!({ "conversationId": wrong }))
                .and_then(ConversationPayload::conversation);
            prop_assert_eq!(leave.err().map(|e| e.code()), id_code);
        }
    }
}
