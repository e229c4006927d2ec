//! The export's JSON, written in pieces: the opening, one entry at a time, and the closing
//! checkpoint. A conversation of 100k messages is written as its rows arrive, never held whole.
//! Every piece is a pure function of the entry, so the same entry always exports the same bytes.

use uuid::Uuid;

use crate::keys::Checkpoint;
use crate::{Entry, FORMAT, Hash, Value, hex};

/// `{"format":…,"conversationId":…,"entries":[`
pub fn opening(conversation_id: Uuid) -> Vec<u8> {
    format!(r#"{{"format":"{FORMAT}","conversationId":"{conversation_id}","entries":["#).into_bytes()
}

/// One entry's object, preceded by a comma unless it is the export's first.
pub fn entry(n: i64, entry: &Entry<'_>, hash: &Hash, first: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if !first {
        out.push(b',');
    }
    out.extend_from_slice(format!(r#"{{"n":{n},"kind":"{}""#, entry.kind()).as_bytes());
    for (name, value) in entry.fields() {
        out.extend_from_slice(format!(r#","{name}":"#).as_bytes());
        match value {
            Value::Number(number) => out.extend_from_slice(number.to_string().as_bytes()),
            Value::Text(text) => {
                // Writing a `str` into a `Vec` cannot fail.
                let _ = serde_json::to_writer(&mut out, text.as_ref());
            }
            Value::Null => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(format!(r#","hash":"{}"}}"#, hex(hash)).as_bytes());
    out
}

/// `],"checkpoint":{…}}` and a newline.
pub fn closing(checkpoint: &Checkpoint) -> Vec<u8> {
    let mut out = b"],\"checkpoint\":".to_vec();
    // A derived `Serialize` of strings and an integer into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut out, checkpoint);
    out.extend_from_slice(b"}\n");
    out
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    #[test]
    fn an_export_written_in_pieces_is_one_json_document() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let message = Entry::Message {
            seq: 4,
            id: Uuid::nil(),
            sender_id: Uuid::nil(),
            body: "quote \" and\nnewline",
            created_at: at,
            client_msg_id: None,
        };
        let keys = crate::keys::TranscriptKeys::parse("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", None).unwrap();
        let mut out = opening(Uuid::nil());
        out.extend(entry(0, &Entry::Closed { at }, &[1; 32], true));
        out.extend(entry(1, &message, &[2; 32], false));
        out.extend(closing(&keys.sign(Uuid::nil(), 2, &[2; 32])));
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["entries"][1]["body"], "quote \" and\nnewline");
        assert_eq!(parsed["entries"][1]["seq"], 4);
        assert_eq!(parsed["entries"][1]["clientMsgId"], serde_json::Value::Null);
        assert_eq!(parsed["checkpoint"]["size"], 2);
    }
}
