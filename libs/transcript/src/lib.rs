//! Verifiable transcripts (the contract's "Transcripts" section), in one place so that the
//! persistence worker that chains entries, the gateway and CLI that export and sign them, and the
//! CLI that verifies an export offline all spell the construction the same way:
//!
//! - [`Entry`] and [`next_hash`]: what an entry is, and `hash(n) = SHA-256(hash(n-1) ‖ enc(kind)
//!   ‖ enc(field₁) ‖ …)`, each field as the exact string the export shows;
//! - [`keys`]: the Ed25519 signing key, retired public keys, key ids and signed checkpoints;
//! - [`export`]: the export's JSON, written entry by entry (a 100k-message export streams);
//! - [`verify`]: an offline verifier that names the first entry that fails and why.
//!
//! It is deliberately small and dependency-light (SHA-256 from `sha2`, Ed25519 from
//! `ed25519-dalek`): the point is that a reviewer can redo all of it from the contract alone.

pub mod export;
pub mod keys;
pub mod verify;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The export's `format`, and the first line of every signed checkpoint text.
pub const FORMAT: &str = "parley-transcript/1";

/// `hash(-1)`: 32 zero bytes.
pub const GENESIS: Hash = [0; 32];

/// One link of the chain: a SHA-256 digest.
pub type Hash = [u8; 32];

/// One transcript entry, with its kind's fields in the contract's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    Started {
        conversation_id: Uuid,
        project_id: Uuid,
        project_title: &'a str,
        client_id: Uuid,
        client_name: &'a str,
        provider_id: Uuid,
        provider_name: &'a str,
        at: DateTime<Utc>,
    },
    Message {
        seq: i64,
        id: Uuid,
        sender_id: Uuid,
        body: &'a str,
        created_at: DateTime<Utc>,
        client_msg_id: Option<&'a str>,
    },
    /// A participant's read mark moved up to `seq`.
    Read {
        user_id: Uuid,
        seq: i64,
        at: DateTime<Utc>,
    },
    Closed {
        at: DateTime<Utc>,
    },
}

/// A field's value as the export shows it: `seq` is a JSON number, everything else a string or
/// null. [`Value::text`] is the string `enc` is taken of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Number(i64),
    Text(std::borrow::Cow<'a, str>),
    Null,
}

impl Value<'_> {
    /// The string the hash encodes (`None` for null): numbers in decimal.
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Value::Number(n) => Some(n.to_string().into()),
            Value::Text(s) => Some(std::borrow::Cow::Borrowed(s)),
            Value::Null => None,
        }
    }
}

/// Kinds and their fields' names, in order: what an export's entry must carry.
pub const KINDS: [(&str, &[&str]); 4] = [
    (
        "started",
        &[
            "conversationId",
            "projectId",
            "projectTitle",
            "clientId",
            "clientName",
            "providerId",
            "providerName",
            "at",
        ],
    ),
    (
        "message",
        &["seq", "id", "senderId", "body", "createdAt", "clientMsgId"],
    ),
    ("read", &["userId", "seq", "at"]),
    ("closed", &["at"]),
];

/// The one spelling of times in a transcript: RFC 3339, UTC, milliseconds, `Z` (as every time
/// on Parley's wire). Postgres keeps microseconds and this cuts to milliseconds, so a time reads
/// back from the database as the same string it was chained with.
pub fn time(at: &DateTime<Utc>) -> String {
    parley_domain::model::rfc3339::format(at)
}

fn uuid(id: Uuid) -> Value<'static> {
    Value::Text(id.hyphenated().to_string().into())
}

impl<'a> Entry<'a> {
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Started { .. } => "started",
            Entry::Message { .. } => "message",
            Entry::Read { .. } => "read",
            Entry::Closed { .. } => "closed",
        }
    }

    /// The fields, named as in the export and in the contract's order.
    pub fn fields(&self) -> Vec<(&'static str, Value<'a>)> {
        match *self {
            Entry::Started {
                conversation_id,
                project_id,
                project_title,
                client_id,
                client_name,
                provider_id,
                provider_name,
                at,
            } => vec![
                ("conversationId", uuid(conversation_id)),
                ("projectId", uuid(project_id)),
                ("projectTitle", Value::Text(project_title.into())),
                ("clientId", uuid(client_id)),
                ("clientName", Value::Text(client_name.into())),
                ("providerId", uuid(provider_id)),
                ("providerName", Value::Text(provider_name.into())),
                ("at", Value::Text(time(&at).into())),
            ],
            Entry::Message {
                seq,
                id,
                sender_id,
                body,
                created_at,
                client_msg_id,
            } => vec![
                ("seq", Value::Number(seq)),
                ("id", uuid(id)),
                ("senderId", uuid(sender_id)),
                ("body", Value::Text(body.into())),
                ("createdAt", Value::Text(time(&created_at).into())),
                (
                    "clientMsgId",
                    client_msg_id.map_or(Value::Null, |id| Value::Text(id.into())),
                ),
            ],
            Entry::Read { user_id, seq, at } => vec![
                ("userId", uuid(user_id)),
                ("seq", Value::Number(seq)),
                ("at", Value::Text(time(&at).into())),
            ],
            Entry::Closed { at } => vec![("at", Value::Text(time(&at).into()))],
        }
    }

    /// `hash(n)` of this entry, given `hash(n-1)`.
    pub fn hash(&self, previous: &Hash) -> Hash {
        let fields = self.fields();
        next_hash(previous, self.kind(), fields.iter().map(|(_, value)| value.text()))
    }
}

/// `SHA-256(previous ‖ enc(kind) ‖ enc(field₁) ‖ …)`, where `enc(s)` is the 4-byte big-endian
/// length of `s`'s UTF-8 bytes then the bytes, and `enc(null)` is `FF FF FF FF`.
pub fn next_hash<S: AsRef<str>>(previous: &Hash, kind: &str, fields: impl IntoIterator<Item = Option<S>>) -> Hash {
    let mut digest = Sha256::new();
    digest.update(previous);
    enc(&mut digest, Some(kind));
    for field in fields {
        enc(&mut digest, field.as_ref().map(AsRef::as_ref));
    }
    digest.finalize().into()
}

fn enc(digest: &mut Sha256, s: Option<&str>) {
    match s {
        Some(s) => {
            // A field longer than 4 GiB cannot be stored (bodies are at most 5000 characters).
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            digest.update(len.to_be_bytes());
            digest.update(s.as_bytes());
        }
        None => digest.update([0xFF; 4]),
    }
}

/// 64 lowercase hex digits.
pub fn hex(hash: &Hash) -> String {
    use std::fmt::Write as _;
    hash.iter().fold(String::with_capacity(64), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// A hash from its 64 lowercase hex digits.
pub fn parse_hex(text: &str) -> Option<Hash> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut hash = [0; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

/// A stored hash column as a [`Hash`] (`None` when it is not 32 bytes).
pub fn from_bytes(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

/// The summary a Conversation carries, from a stored size and head (`hash(-1)` for an empty
/// chain).
pub fn summary(size: i64, head: Option<&[u8]>) -> parley_domain::TranscriptSummary {
    let head = head.and_then(from_bytes).unwrap_or(GENESIS);
    parley_domain::TranscriptSummary { size, head: hex(&head) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enc_is_a_big_endian_length_then_utf8_and_null_is_four_ff() {
        // Computed by hand from the contract's text.
        let mut expected = Vec::new();
        expected.extend_from_slice(&[0; 32]);
        expected.extend_from_slice(&[0, 0, 0, 6]);
        expected.extend_from_slice(b"closed");
        expected.extend_from_slice(&[0, 0, 0, 2]);
        expected.extend_from_slice("é".as_bytes());
        expected.extend_from_slice(&[0xFF; 4]);
        let direct: Hash = Sha256::digest(&expected).into();
        assert_eq!(next_hash(&GENESIS, "closed", [Some("é"), None]), direct);
        assert_ne!(next_hash(&GENESIS, "closed", [Some(""), None]), direct);
    }

    #[test]
    fn hex_round_trips_and_refuses_uppercase_or_short_text() {
        let hash = next_hash::<&str>(&GENESIS, "x", []);
        assert_eq!(parse_hex(&hex(&hash)), Some(hash));
        assert_eq!(parse_hex(&hex(&hash).to_uppercase()), None);
        assert_eq!(parse_hex("00"), None);
    }

    #[test]
    fn kinds_list_each_entrys_fields_in_order() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let entries = [
            Entry::Message {
                seq: 3,
                id: Uuid::nil(),
                sender_id: Uuid::nil(),
                body: "b",
                created_at: at,
                client_msg_id: None,
            },
            Entry::Read {
                user_id: Uuid::nil(),
                seq: 3,
                at,
            },
            Entry::Closed { at },
        ];
        for entry in entries {
            let names: Vec<&str> = entry.fields().iter().map(|(name, _)| *name).collect();
            let (_, expected) = KINDS.iter().find(|(kind, _)| *kind == entry.kind()).unwrap();
            assert_eq!(names, *expected);
        }
        assert_eq!(time(&at), "2026-11-25T10:00:00.123Z");
    }
}
