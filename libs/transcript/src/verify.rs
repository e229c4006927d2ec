//! Offline verification of an export, for `parley transcript verify`: every entry in order
//! (its `n`, its kind's fields, its hash recomputed from the previous one), then the checkpoint
//! (it covers exactly the entries, its head is the last hash, its key is known and its signature
//! holds). The first failure is named: the entry, and why (`order`, `missing field`, `hash`,
//! `signature`, `unknown key`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde_json::{Map, Value as Json};

use crate::keys::{key_id, signed_text};
use crate::{FORMAT, GENESIS, KINDS, hex, next_hash, parse_hex};

/// What a verified export proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub conversation_id: String,
    pub size: u64,
    pub head: String,
    pub key_id: String,
    pub signed_at: String,
}

/// The first thing that failed: an entry (by its position) or the export as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", entry.map_or_else(|| "export".to_owned(), |n| format!("entry {n}")))]
pub struct Failure {
    pub entry: Option<u64>,
    pub reason: String,
}

fn fail<T>(entry: Option<u64>, reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        entry,
        reason: reason.into(),
    })
}

/// Verifies `export` against `keys` (the current and retired public keys the verifier trusts).
pub fn verify(export: &Json, keys: &[VerifyingKey]) -> Result<Verified, Failure> {
    if export.get("format").and_then(Json::as_str) != Some(FORMAT) {
        return fail(None, format!("missing field: format is not {FORMAT:?}"));
    }
    let Some(conversation_id) = export.get("conversationId").and_then(Json::as_str) else {
        return fail(None, "missing field: conversationId");
    };
    let Some(entries) = export.get("entries").and_then(Json::as_array) else {
        return fail(None, "missing field: entries");
    };
    let mut previous = GENESIS;
    for (position, entry) in entries.iter().enumerate() {
        let position = position as u64;
        previous = verify_entry(position, entry, &previous, conversation_id)?;
    }
    let size = entries.len() as u64;
    let Some(checkpoint) = export.get("checkpoint").and_then(Json::as_object) else {
        return fail(None, "missing field: checkpoint");
    };
    let text = |name: &str| -> Result<&str, Failure> {
        checkpoint.get(name).and_then(Json::as_str).ok_or_else(|| Failure {
            entry: None,
            reason: format!("missing field: checkpoint.{name}"),
        })
    };
    if text("conversationId")? != conversation_id {
        return fail(None, "checkpoint: its conversationId is not the export's");
    }
    let Some(covered) = checkpoint.get("size").and_then(Json::as_u64) else {
        return fail(None, "missing field: checkpoint.size");
    };
    if covered > size {
        return fail(
            Some(size),
            format!("missing: the checkpoint covers {covered} entries, the export holds {size}"),
        );
    }
    if covered < size {
        return fail(
            Some(covered),
            format!("order: beyond the checkpoint, which covers {covered} entries"),
        );
    }
    let head = text("head")?;
    if head != hex(&previous) {
        return fail(
            size.checked_sub(1),
            format!("hash: the checkpoint's head {head} is not this entry's hash"),
        );
    }
    let signed_at = text("signedAt")?;
    let key = text("keyId")?;
    let Some(public) = keys.iter().find(|k| key_id(k) == key) else {
        return fail(None, format!("unknown key: {key} is none of the trusted keys"));
    };
    let signature = STANDARD
        .decode(text("signature")?)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes));
    let message = signed_text(conversation_id, covered as i64, head, signed_at);
    match signature {
        Some(signature) if public.verify(message.as_bytes(), &signature).is_ok() => Ok(Verified {
            conversation_id: conversation_id.to_owned(),
            size,
            head: head.to_owned(),
            key_id: key.to_owned(),
            signed_at: signed_at.to_owned(),
        }),
        _ => fail(
            None,
            format!("signature: the checkpoint's signature does not verify with key {key}"),
        ),
    }
}

fn verify_entry(
    position: u64,
    entry: &Json,
    previous: &crate::Hash,
    conversation_id: &str,
) -> Result<crate::Hash, Failure> {
    let at = Some(position);
    let Some(object) = entry.as_object() else {
        return fail(at, "missing field: the entry is not an object");
    };
    match object.get("n").and_then(Json::as_u64) {
        Some(n) if n == position => {}
        Some(n) => return fail(at, format!("order: n is {n}, expected {position}")),
        None => return fail(at, "missing field: n"),
    }
    let Some(kind) = object.get("kind").and_then(Json::as_str) else {
        return fail(at, "missing field: kind");
    };
    let Some((_, names)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        return fail(at, format!("missing field: unknown kind {kind:?}"));
    };
    if (position == 0) != (kind == "started") {
        return fail(
            at,
            format!("order: a {kind} entry at position {position} (entry 0, and only it, is started)"),
        );
    }
    if let Some(extra) = object
        .keys()
        .find(|key| !matches!(key.as_str(), "n" | "kind" | "hash") && !names.contains(&key.as_str()))
    {
        return fail(at, format!("unexpected field {extra:?}"));
    }
    let fields = names
        .iter()
        .map(|name| {
            field(object, name).map_err(|()| Failure {
                entry: at,
                reason: format!("missing field: {name} (absent, or of the wrong type)"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if kind == "started" && object.get("conversationId").and_then(Json::as_str) != Some(conversation_id) {
        return fail(at, "hash: its conversationId is not the export's");
    }
    let Some(stated) = object.get("hash").and_then(Json::as_str) else {
        return fail(at, "missing field: hash");
    };
    let computed = next_hash(previous, kind, fields);
    if parse_hex(stated) != Some(computed) {
        return fail(
            at,
            format!("hash: computed {}, the export says {stated}", hex(&computed)),
        );
    }
    Ok(computed)
}

/// A field's string for the hash (`Ok(None)` for null), or `Err` when it is absent or of the
/// wrong type: `seq` must be an integer, every other field a string or null.
fn field(object: &Map<String, Json>, name: &str) -> Result<Option<String>, ()> {
    let value = object.get(name).ok_or(())?;
    if name == "seq" {
        return value.as_i64().map(|n| Some(n.to_string())).ok_or(());
    }
    match value {
        Json::String(s) => Ok(Some(s.clone())),
        Json::Null => Ok(None),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::Entry;
    use crate::keys::TranscriptKeys;

    fn export() -> (Json, TranscriptKeys) {
        let keys = TranscriptKeys::parse(&STANDARD.encode([3u8; 32]), None).unwrap();
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let conversation = Uuid::from_u128(1);
        let entries = [
            Entry::Started {
                conversation_id: conversation,
                project_id: Uuid::from_u128(2),
                project_title: "Logo",
                client_id: Uuid::from_u128(3),
                client_name: "Ada",
                provider_id: Uuid::from_u128(4),
                provider_name: "Bob",
                at,
            },
            Entry::Message {
                seq: 9,
                id: Uuid::from_u128(5),
                sender_id: Uuid::from_u128(3),
                body: "hello",
                created_at: at,
                client_msg_id: Some("c-1"),
            },
            Entry::Read {
                user_id: Uuid::from_u128(4),
                seq: 9,
                at,
            },
        ];
        let mut out = crate::export::opening(conversation);
        let mut head = GENESIS;
        for (n, entry) in entries.iter().enumerate() {
            head = entry.hash(&head);
            out.extend(crate::export::entry(n as i64, entry, &head, n == 0));
        }
        out.extend(crate::export::closing(&keys.sign(conversation, 3, &head)));
        (serde_json::from_slice(&out).unwrap(), keys)
    }

    #[test]
    fn an_untouched_export_verifies() {
        let (export, keys) = export();
        let verified = verify(&export, &keys.public_keys()).unwrap();
        assert_eq!(verified.size, 3);
    }

    #[test]
    fn each_kind_of_tampering_names_its_entry_and_reason() {
        let (original, keys) = export();
        let keys = keys.public_keys();
        let check = |edit: &dyn Fn(&mut Json), entry: Option<u64>, reason: &str| {
            let mut export = original.clone();
            edit(&mut export);
            let failure = verify(&export, &keys).unwrap_err();
            assert_eq!(failure.entry, entry, "{failure}");
            assert!(failure.reason.starts_with(reason), "{failure}");
        };
        check(&|e| e["entries"][1]["body"] = "bye".into(), Some(1), "hash");
        check(&|e| e["entries"][1]["seq"] = 10.into(), Some(1), "hash");
        check(
            &|e| e["entries"][2]["at"] = "2026-11-25T10:00:01.000Z".into(),
            Some(2),
            "hash",
        );
        check(
            &|e| {
                e["entries"].as_array_mut().unwrap().remove(1);
            },
            Some(1),
            "order",
        );
        check(
            &|e| {
                e["entries"].as_array_mut().unwrap().swap(1, 2);
            },
            Some(1),
            "order",
        );
        check(
            &|e| {
                e["entries"].as_array_mut().unwrap().pop();
            },
            Some(2),
            "missing",
        );
        check(
            &|e| {
                e["entries"][1].as_object_mut().unwrap().remove("clientMsgId");
            },
            Some(1),
            "missing field",
        );
        check(
            &|e| e["checkpoint"]["keyId"] = "0000000000000000".into(),
            None,
            "unknown key",
        );
        check(
            &|e| e["checkpoint"]["signedAt"] = "2030-01-01T00:00:00.000Z".into(),
            None,
            "signature",
        );
    }
}
