//! Subject names. Every subject is built here from typed ids, so a user-supplied string can never
//! inject a token or wildcard into a subject.

use uuid::Uuid;

pub const PROJECT_STARTED: &str = "parley.project.started";
pub const PROJECT_CLOSED: &str = "parley.project.closed";
/// Every new message of every conversation.
pub const ALL_MESSAGES: &str = "parley.conv.*.msg";
/// Every read-mark move of every conversation (the last token is the reader).
pub const ALL_READS: &str = "parley.conv.*.read.*";
/// Every typing signal (core NATS, never stored).
pub const ALL_TYPING: &str = "parley.conv.*.typing";

pub fn conversation_messages(conversation_id: Uuid) -> String {
    format!("parley.conv.{conversation_id}.msg")
}

/// One reader's read marks in one conversation: a subject of its own, so that the last message
/// on it is that reader's current mark and a move can be made conditional on it.
pub fn conversation_reads(conversation_id: Uuid, reader_id: Uuid) -> String {
    format!("parley.conv.{conversation_id}.read.{reader_id}")
}

pub fn conversation_typing(conversation_id: Uuid) -> String {
    format!("parley.conv.{conversation_id}.typing")
}

pub fn notification(recipient_id: Uuid) -> String {
    format!("parley.notification.{recipient_id}")
}

pub fn email_digest(conversation_id: Uuid, recipient_id: Uuid) -> String {
    format!("parley.email.{conversation_id}.{recipient_id}")
}

pub fn dead_letter(source: &str) -> String {
    format!("parley.deadletter.{source}")
}

/// What a `parley.conv.<id>.<kind>` subject carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationSubject {
    Message(Uuid),
    /// Conversation and reader.
    Read(Uuid, Uuid),
    Typing(Uuid),
}

/// Parses a conversation subject; `None` for anything else.
pub fn parse_conversation_subject(subject: &str) -> Option<ConversationSubject> {
    let rest = subject.strip_prefix("parley.conv.")?;
    let mut tokens = rest.split('.');
    let id = Uuid::parse_str(tokens.next()?).ok()?;
    let parsed = match (tokens.next()?, tokens.next()) {
        ("msg", None) => ConversationSubject::Message(id),
        ("read", Some(reader)) => ConversationSubject::Read(id, Uuid::parse_str(reader).ok()?),
        ("typing", None) => ConversationSubject::Typing(id),
        _ => return None,
    };
    tokens.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_subjects_round_trip() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse_conversation_subject(&conversation_messages(id)),
            Some(ConversationSubject::Message(id))
        );
        let reader = Uuid::new_v4();
        assert_eq!(
            parse_conversation_subject(&conversation_reads(id, reader)),
            Some(ConversationSubject::Read(id, reader))
        );
        assert_eq!(parse_conversation_subject(&format!("parley.conv.{id}.read")), None);
        assert_eq!(parse_conversation_subject(&format!("parley.conv.{id}.msg.extra")), None);
        assert_eq!(
            parse_conversation_subject(&conversation_typing(id)),
            Some(ConversationSubject::Typing(id))
        );
        assert_eq!(parse_conversation_subject("parley.conv.nope.msg"), None);
        assert_eq!(parse_conversation_subject("parley.project.started"), None);
    }
}
