//! The gateway's reads: membership, conversation lists with unread counts, history pages. Each
//! takes the caller's id and answers only for conversations the caller belongs to, so a
//! non-participant cannot tell an existing conversation from a missing one.

use parley_domain::{Conversation, ConversationStatus, LastMessage, Message, Participant, Role};
use uuid::Uuid;

use crate::{Store, StoreError};

/// What the gateway needs to authorise and publish a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationAccess {
    pub conversation_id: Uuid,
    pub project_id: Uuid,
    pub status: ConversationStatus,
    pub participants: Vec<Uuid>,
}

/// Bounds of a history page. Both bounds are exclusive.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryQuery {
    pub before_seq: Option<i64>,
    pub after_seq: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Ascending by seq.
    pub messages: Vec<Message>,
    /// Whether more messages lie beyond the page in the direction it was read: older ones when
    /// paging back (no `afterSeq`), newer ones when paging forward from `afterSeq`.
    pub has_more: bool,
}

fn status_of(raw: &str) -> ConversationStatus {
    if raw == "closed" {
        ConversationStatus::Closed
    } else {
        ConversationStatus::Active
    }
}

fn role_of(raw: &str) -> Role {
    if raw == "provider" {
        Role::Provider
    } else {
        Role::Client
    }
}

impl Store {
    /// The conversation's access facts if `user_id` is one of its participants, else `None`.
    pub async fn access(&self, conversation_id: Uuid, user_id: Uuid) -> Result<Option<ConversationAccess>, StoreError> {
        let access = self.conversation_access(conversation_id).await?;
        Ok(access.filter(|a| a.participants.contains(&user_id)))
    }

    /// The conversation's access facts, whoever asks; `None` when it does not exist. Callers
    /// must check membership themselves (see [`Store::access`]).
    pub async fn conversation_access(&self, conversation_id: Uuid) -> Result<Option<ConversationAccess>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT c.project_id, c.status, array_agg(p.user_id ORDER BY p.role) AS "participants!"
                 FROM conversations c
                 JOIN participants p ON p.conversation_id = c.id
                WHERE c.id = $1
                GROUP BY c.id"#,
            conversation_id,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| ConversationAccess {
            conversation_id,
            project_id: r.project_id,
            status: status_of(&r.status),
            participants: r.participants,
        }))
    }

    /// Every conversation of `user_id`, latest activity first, with the caller's unread count.
    pub async fn conversations_of(&self, user_id: Uuid) -> Result<Vec<Conversation>, StoreError> {
        self.load_conversations(user_id, None).await
    }

    /// One conversation as `user_id` sees it, or `None` if it does not exist for them.
    pub async fn conversation_of(
        &self,
        user_id: Uuid,
        conversation_id: Uuid,
    ) -> Result<Option<Conversation>, StoreError> {
        Ok(self
            .load_conversations(user_id, Some(conversation_id))
            .await?
            .into_iter()
            .next())
    }

    /// One query, a row per conversation and participant: a conversation read costs one round
    /// trip, and a join's ack waits on it.
    async fn load_conversations(&self, user_id: Uuid, only: Option<Uuid>) -> Result<Vec<Conversation>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT c.id, c.project_id, c.project_title, c.status, c.updated_at,
                      c.last_message_id, c.last_message_seq, c.last_message_sender,
                      c.last_message_preview, c.last_message_at,
                      me.unread_count, c.transcript_size, c.transcript_head,
                      p.user_id AS participant_id, p.role, p.display_name, p.last_read_seq
                 FROM participants me
                 JOIN conversations c ON c.id = me.conversation_id
                 JOIN participants p ON p.conversation_id = c.id
                WHERE me.user_id = $1 AND ($2::uuid IS NULL OR c.id = $2)
                ORDER BY c.updated_at DESC, c.id, p.role"#,
            user_id,
            only,
        )
        .fetch_all(&self.pool)
        .await?;
        let mut conversations: Vec<Conversation> = Vec::new();
        for r in rows {
            let participant = Participant {
                user_id: r.participant_id,
                role: role_of(&r.role),
                display_name: r.display_name,
                last_read_seq: r.last_read_seq,
            };
            // Rows come grouped by conversation: a new id starts the next one.
            if let Some(current) = conversations.last_mut().filter(|c| c.id == r.id) {
                current.participants.push(participant);
                continue;
            }
            let last_message = match (
                r.last_message_id,
                r.last_message_seq,
                r.last_message_sender,
                r.last_message_at,
            ) {
                (Some(id), Some(seq), Some(sender_id), Some(created_at)) => Some(LastMessage {
                    id,
                    sender_id,
                    preview: r.last_message_preview.unwrap_or_default(),
                    seq,
                    created_at,
                }),
                _ => None,
            };
            conversations.push(Conversation {
                id: r.id,
                project_id: r.project_id,
                project_title: r.project_title,
                status: status_of(&r.status),
                participants: vec![participant],
                last_message,
                unread_count: r.unread_count,
                updated_at: r.updated_at,
                transcript: parley_transcript::summary(r.transcript_size, r.transcript_head.as_deref()),
            });
        }
        Ok(conversations)
    }

    /// A page of the conversation's history; the caller must have checked access.
    pub async fn history(&self, conversation_id: Uuid, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        let limit = query.limit.max(1);
        let forward = query.after_seq.is_some();
        let mut messages = sqlx::query_as!(
            Message,
            r#"SELECT m.id, m.conversation_id, c.project_id, m.sender_id, m.body, m.seq, m.created_at, m.client_msg_id
                 FROM messages m
                 JOIN conversations c ON c.id = m.conversation_id
                WHERE m.conversation_id = $1
                  AND ($2::int8 IS NULL OR m.seq < $2)
                  AND ($3::int8 IS NULL OR m.seq > $3)
                ORDER BY CASE WHEN $4 THEN m.seq END ASC, m.seq DESC
                LIMIT $5"#,
            conversation_id,
            query.before_seq,
            query.after_seq,
            forward,
            limit + 1,
        )
        .fetch_all(&self.pool)
        .await?;
        let has_more = messages.len() as i64 > limit;
        messages.truncate(limit as usize);
        if !forward {
            messages.reverse();
        }
        Ok(HistoryPage { messages, has_more })
    }

    /// A stored message by id, within one conversation.
    pub async fn message(&self, conversation_id: Uuid, message_id: Uuid) -> Result<Option<Message>, StoreError> {
        let message = sqlx::query_as!(
            Message,
            r#"SELECT m.id, m.conversation_id, c.project_id, m.sender_id, m.body, m.seq, m.created_at, m.client_msg_id
                 FROM messages m
                 JOIN conversations c ON c.id = m.conversation_id
                WHERE m.id = $1 AND m.conversation_id = $2"#,
            message_id,
            conversation_id,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(message)
    }
}

impl Store {
    /// The participant's read mark (0 when they have read nothing, or are no participant).
    pub async fn read_mark(&self, conversation_id: Uuid, user_id: Uuid) -> Result<i64, StoreError> {
        let mark = sqlx::query_scalar!(
            "SELECT last_read_seq FROM participants WHERE conversation_id = $1 AND user_id = $2",
            conversation_id,
            user_id,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(mark.unwrap_or(0))
    }

    /// How many of the other party's stored messages lie above `mark`: the unread count of a
    /// participant whose mark moved to `mark` before the worker applied it.
    pub async fn unread_above(&self, conversation_id: Uuid, user_id: Uuid, mark: i64) -> Result<i64, StoreError> {
        let unread = sqlx::query_scalar!(
            r#"SELECT count(*) AS "unread!" FROM messages
                WHERE conversation_id = $1 AND sender_id <> $2 AND seq > $3"#,
            conversation_id,
            user_id,
            mark,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(unread)
    }

    /// The sequence of the conversation's latest stored message, if any.
    pub async fn latest_seq(&self, conversation_id: Uuid) -> Result<Option<i64>, StoreError> {
        let seq = sqlx::query_scalar!(
            "SELECT last_message_seq FROM conversations WHERE id = $1",
            conversation_id
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(seq.flatten())
    }
}
