//! Subject names. Every subject is built here from typed ids, so a user-supplied string can never
//! inject a token or wildcard into a subject.

use uuid::Uuid;

pub const PROJECT_STARTED: &str = "parley.project.started";
pub const PROJECT_CLOSED: &str = "parley.project.closed";
/// Every new message of every conversation.
pub const ALL_MESSAGES: &str = "parley.conv.*.msg";
/// Every read-mark move of every conversation.
pub const ALL_READS: &str = "parley.conv.*.read";

pub fn conversation_messages(conversation_id: Uuid) -> String {
    format!("parley.conv.{conversation_id}.msg")
}

pub fn conversation_reads(conversation_id: Uuid) -> String {
    format!("parley.conv.{conversation_id}.read")
}

pub fn conversation_typing(conversation_id: Uuid) -> String {
    format!("parley.conv.{conversation_id}.typing")
}

pub fn notification(recipient_id: Uuid) -> String {
    format!("parley.notification.{recipient_id}")
}

pub fn dead_letter(source: &str) -> String {
    format!("parley.deadletter.{source}")
}

/// What a `parley.conv.<id>.<kind>` subject carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationSubject {
    Message(Uuid),
    Read(Uuid),
    Typing(Uuid),
}

/// Parses a conversation subject; `None` for anything else.
pub fn parse_conversation_subject(subject: &str) -> Option<ConversationSubject> {
    let rest = subject.strip_prefix("parley.conv.")?;
    let (id, kind) = rest.split_once('.')?;
    let id = Uuid::parse_str(id).ok()?;
    match kind {
        "msg" => Some(ConversationSubject::Message(id)),
        "read" => Some(ConversationSubject::Read(id)),
        "typing" => Some(ConversationSubject::Typing(id)),
        _ => None,
    }
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
        assert_eq!(
            parse_conversation_subject(&conversation_reads(id)),
            Some(ConversationSubject::Read(id))
        );
        assert_eq!(
            parse_conversation_subject(&conversation_typing(id)),
            Some(ConversationSubject::Typing(id))
        );
        assert_eq!(parse_conversation_subject("parley.conv.nope.msg"), None);
        assert_eq!(parse_conversation_subject("parley.project.started"), None);
    }
}
