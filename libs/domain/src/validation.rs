//! The rules for every write, as the contract states them. Checked in the gateway before anything
//! is published, and again in the persistence worker, so that a message that breaks them is never
//! stored whoever published it.

use crate::error::{ErrorCode, Refusal};

/// Longest body, counted in Unicode scalar values.
pub const MAX_BODY_CHARS: usize = 5000;
/// Longest `clientMsgId`.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;
/// Longest preview in a conversation's `lastMessage` and in notifications.
pub const PREVIEW_CHARS: usize = 120;

/// Checks a message body: 1..=5000 scalar values, not blank after trimming, no control characters
/// but tab, line feed and carriage return.
pub fn validate_body(body: &str) -> Result<(), Refusal> {
    let invalid = |why: &str| Err(Refusal::new(ErrorCode::InvalidMessage, why));
    if body.trim().is_empty() {
        return invalid("body must not be empty or blank");
    }
    let mut count = 0usize;
    for c in body.chars() {
        count += 1;
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
            return invalid("body must not contain control characters");
        }
    }
    if count > MAX_BODY_CHARS {
        return invalid("body must be at most 5000 characters");
    }
    Ok(())
}

/// Checks a `clientMsgId`: 1..=64 of `A-Za-z0-9_-`.
pub fn validate_client_msg_id(id: &str) -> Result<(), Refusal> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CLIENT_MSG_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::InvalidMessage,
            "clientMsgId must be 1 to 64 of A-Z, a-z, 0-9, '_' and '-'",
        ))
    }
}

/// The body cut to at most [`PREVIEW_CHARS`] scalar values.
pub fn preview(body: &str) -> String {
    body.chars().take(PREVIEW_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_within_the_rules_pass() {
        for body in [
            "hi",
            " a ",
            "line\nbreak\tand\r\n",
            &"x".repeat(5000),
            &"😀".repeat(5000),
        ] {
            assert_eq!(validate_body(body), Ok(()), "{body:?}");
        }
    }

    #[test]
    fn bodies_outside_the_rules_are_invalid_messages() {
        for body in [
            "",
            "   ",
            "\n\t ",
            &"x".repeat(5001),
            &"😀".repeat(5001),
            "a\u{0}b",
            "bell\u{7}",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            let refusal = validate_body(body).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::InvalidMessage, "{body:?}");
        }
    }

    #[test]
    fn client_msg_ids_allow_only_the_contract_alphabet() {
        assert!(validate_client_msg_id("abc-DEF_123").is_ok());
        assert!(validate_client_msg_id(&"a".repeat(64)).is_ok());
        for bad in ["", &"a".repeat(65), "a b", "é", "a/b", "a.b"] {
            assert_eq!(validate_client_msg_id(bad).unwrap_err().code, ErrorCode::InvalidMessage);
        }
    }

    #[test]
    fn previews_are_cut_at_120_scalar_values() {
        assert_eq!(preview(&"😀".repeat(200)).chars().count(), 120);
        assert_eq!(preview("short"), "short");
    }
}
