//! The persistence worker's writes. Each is idempotent so that JetStream's at-least-once delivery
//! (redeliveries, two workers racing on a late ack) never doubles a row or moves state back.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use parley_domain::ids::conversation_id_for_project;
use parley_domain::validation::PREVIEW_CHARS;
use parley_events::{MessagePosted, ProjectClosed, ProjectStarted};
use sqlx::{Acquire as _, PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError};

/// One message ready to be written: the event's fields plus its stream sequence.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub sender_id: Uuid,
    pub body: String,
    pub client_msg_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl MessageRow {
    /// The row of a `parley.conversation.<id>.messages` event stored at stream sequence `seq`.
    pub fn from_event(event: MessagePosted, seq: i64) -> Self {
        Self {
            id: event.id,
            conversation_id: event.conversation_id,
            seq,
            sender_id: event.sender_id,
            body: event.body,
            client_msg_id: event.client_msg_id,
            created_at: event.created_at,
        }
    }
}

/// What a `parley.project.closed` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedOutcome {
    Closed,
    AlreadyClosed,
    /// No conversation for that project (yet).
    UnknownProject,
}

impl Store {
    /// Creates the project's conversation and its two participants; does nothing if it exists.
    /// Returns whether it was created now.
    pub async fn apply_project_started(&self, event: &ProjectStarted) -> Result<bool, StoreError> {
        let conversation_id = conversation_id_for_project(event.project_id);
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query!(
            r#"INSERT INTO conversations (id, project_id, project_title, status, started_at, updated_at)
               VALUES ($1, $2, $3, 'active', $4, $4)
               ON CONFLICT DO NOTHING"#,
            conversation_id,
            event.project_id,
            event.title,
            event.started_at,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if created {
            for (role, party) in event.parties() {
                sqlx::query!(
                    r#"INSERT INTO participants (conversation_id, user_id, role, display_name, email)
                       VALUES ($1, $2, $3, $4, $5)
                       ON CONFLICT DO NOTHING"#,
                    conversation_id,
                    party.id,
                    role.as_str(),
                    party.display_name,
                    party.email,
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Turns the project's conversation read-only.
    pub async fn apply_project_closed(&self, event: &ProjectClosed) -> Result<ClosedOutcome, StoreError> {
        let conversation_id = conversation_id_for_project(event.project_id);
        let status = sqlx::query_scalar!(
            r#"WITH closing AS (
                   UPDATE conversations
                      SET status = 'closed', closed_at = $2, updated_at = GREATEST(updated_at, $2)
                    WHERE id = $1 AND status = 'active'
                   RETURNING 1
               )
               SELECT CASE WHEN EXISTS (SELECT 1 FROM closing) THEN 'closed'
                           WHEN EXISTS (SELECT 1 FROM conversations WHERE id = $1) THEN 'already'
                           ELSE 'unknown' END AS "outcome!""#,
            conversation_id,
            event.closed_at,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(match status.as_str() {
            "closed" => ClosedOutcome::Closed,
            "already" => ClosedOutcome::AlreadyClosed,
            _ => ClosedOutcome::UnknownProject,
        })
    }

    /// The participants of each of `conversation_ids` that exists, as (conversation, user) pairs.
    pub async fn participants_of(&self, conversation_ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        let rows = sqlx::query!(
            "SELECT conversation_id, user_id FROM participants WHERE conversation_id = ANY($1)",
            conversation_ids,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.conversation_id, r.user_id)).collect())
    }

    /// Writes one batch in one transaction: its messages, then its read-mark moves, committed
    /// only once `before_commit` resolves. The caller uses that to commit batches in stream
    /// order while the next batch's rows are already being written. See [`Store::insert_messages`]
    /// and [`Store::apply_read_marks`] for what each part does.
    pub async fn write_batch(
        &self,
        rows: &[MessageRow],
        reads: &[ReadMarkRow],
        before_commit: impl std::future::Future<Output = ()>,
    ) -> Result<BatchWritten, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = insert_messages_in(&mut tx, rows).await?;
        let moved = apply_read_marks_on(&mut tx, reads).await?;
        before_commit.await;
        tx.commit().await?;
        Ok(BatchWritten { inserted, moved })
    }

    /// Writes messages in one transaction: a conflict on the message id (or on its stream
    /// sequence) does nothing, and each conversation's last message moves only forward, to the
    /// highest sequence actually inserted. Returns how many rows were new.
    pub async fn insert_messages(&self, rows: &[MessageRow]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = insert_messages_in(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Moves read marks forward only, in one transaction, recounting the unread messages of
    /// those whose mark moved. Returns how many marks actually moved.
    pub async fn apply_read_marks(&self, rows: &[ReadMarkRow]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = apply_read_marks_on(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(moved)
    }
}

/// What one batch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWritten {
    /// Message rows that were new.
    pub inserted: u64,
    /// Read marks that moved forward.
    pub moved: u64,
}

/// The common case, a batch of rows never written before, goes through `COPY`, which costs
/// Postgres a fraction of an `INSERT … ON CONFLICT` (no speculative insertion, no returned rows).
/// A batch holding a row already there (a redelivery after a crash or a lost ack) fails that
/// `COPY` on a unique index, rolls back to a savepoint, and is written idempotently instead.
async fn insert_messages_in(tx: &mut Transaction<'_, Postgres>, rows: &[MessageRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut attempt = tx.begin().await?;
    match copy_new_messages(&mut attempt, rows).await {
        Ok(inserted) => {
            attempt.commit().await?;
            Ok(inserted)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            attempt.rollback().await?;
            insert_messages_idempotently(tx, rows).await
        }
        Err(e) => Err(e),
    }
}

/// `COPY`s rows that must all be new, then moves each conversation's last message forward.
async fn copy_new_messages(conn: &mut PgConnection, rows: &[MessageRow]) -> Result<u64, sqlx::Error> {
    let mut copy = conn
        .copy_in_raw("COPY messages (id, conversation_id, seq, sender_id, body, client_msg_id, created_at) FROM STDIN")
        .await?;
    copy.send(messages_copy_text(rows)).await?;
    let inserted = copy.finish().await?;
    move_last_messages(conn, rows).await?;
    add_unread(conn, rows).await?;
    Ok(inserted)
}

/// The same write for a batch that may hold rows already there: each conflict does nothing, and
/// only the rows actually inserted move a conversation's last message.
async fn insert_messages_idempotently(conn: &mut PgConnection, rows: &[MessageRow]) -> Result<u64, sqlx::Error> {
    let columns = MessageColumns::of(rows);
    let client_ids: Vec<Option<String>> = rows.iter().map(|r| r.client_msg_id.clone()).collect();
    let inserted: HashSet<Uuid> = sqlx::query_scalar!(
        r#"INSERT INTO messages (id, conversation_id, seq, sender_id, body, client_msg_id, created_at)
           SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[], $5::text[], $6::text[], $7::timestamptz[])
           ON CONFLICT DO NOTHING
           RETURNING id"#,
        &columns.ids,
        &columns.conversations,
        &columns.seqs,
        &columns.senders,
        &columns.bodies as &[&str],
        &client_ids as &[Option<String>],
        &columns.created,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let new_rows: Vec<&MessageRow> = rows.iter().filter(|row| inserted.contains(&row.id)).collect();
    move_last_messages(conn, new_rows.iter().copied()).await?;
    add_unread(conn, new_rows).await?;
    Ok(inserted.len() as u64)
}

/// Moves each conversation's last message forward to the latest of `rows`, never back.
async fn move_last_messages<'a>(
    conn: &mut PgConnection,
    rows: impl IntoIterator<Item = &'a MessageRow>,
) -> Result<(), sqlx::Error> {
    let mut latest: HashMap<Uuid, &MessageRow> = HashMap::new();
    for row in rows {
        let entry = latest.entry(row.conversation_id).or_insert(row);
        if row.seq > entry.seq {
            *entry = row;
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let latest = MessageColumns::of(latest.into_values());
    sqlx::query!(
        r#"UPDATE conversations c
                  SET last_message_id = l.id,
                      last_message_seq = l.seq,
                      last_message_sender = l.sender_id,
                      last_message_preview = left(l.body, $7),
                      last_message_at = l.created_at,
                      updated_at = GREATEST(c.updated_at, l.created_at)
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[], $5::text[], $6::timestamptz[])
                      AS l(conversation_id, id, seq, sender_id, body, created_at)
                WHERE c.id = l.conversation_id
                  AND (c.last_message_seq IS NULL OR c.last_message_seq < l.seq)"#,
        &latest.conversations,
        &latest.ids,
        &latest.seqs,
        &latest.senders,
        &latest.bodies as &[&str],
        &latest.created,
        PREVIEW_CHARS as i32,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds newly stored messages to their recipients' unread counts: per participant, the other
/// party's messages above the participant's read mark. The mark is read from the row as it is
/// when updated, so a mark a concurrent transaction moved and committed first is respected.
async fn add_unread<'a>(
    conn: &mut PgConnection,
    rows: impl IntoIterator<Item = &'a MessageRow>,
) -> Result<(), sqlx::Error> {
    let columns = MessageColumns::of(rows);
    if columns.ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"UPDATE participants p
              SET unread_count = p.unread_count
                  + (SELECT count(*) FROM UNNEST(n.seqs, n.senders) AS m(seq, sender_id)
                      WHERE m.sender_id <> p.user_id AND m.seq > p.last_read_seq)
             FROM (SELECT conversation_id, array_agg(seq) AS seqs, array_agg(sender_id) AS senders
                     FROM UNNEST($1::uuid[], $2::int8[], $3::uuid[]) AS r(conversation_id, seq, sender_id)
                    GROUP BY conversation_id) n
            WHERE p.conversation_id = n.conversation_id
              AND NOT p.user_id = ALL (n.senders)"#,
        &columns.conversations,
        &columns.seqs,
        &columns.senders,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The message columns the insert and the last-message update bind, one array per column in the
/// rows' order (the client message id, needed by the insert alone, is left to it).
struct MessageColumns<'a> {
    ids: Vec<Uuid>,
    conversations: Vec<Uuid>,
    seqs: Vec<i64>,
    senders: Vec<Uuid>,
    bodies: Vec<&'a str>,
    created: Vec<DateTime<Utc>>,
}

impl<'a> MessageColumns<'a> {
    fn of(rows: impl IntoIterator<Item = &'a MessageRow>) -> Self {
        let rows = rows.into_iter();
        let n = rows.size_hint().0;
        let mut columns = Self {
            ids: Vec::with_capacity(n),
            conversations: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            senders: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
        };
        for row in rows {
            columns.ids.push(row.id);
            columns.conversations.push(row.conversation_id);
            columns.seqs.push(row.seq);
            columns.senders.push(row.sender_id);
            columns.bodies.push(&row.body);
            columns.created.push(row.created_at);
        }
        columns
    }
}

/// One read-mark move to write.
#[derive(Debug, Clone)]
pub struct ReadMarkRow {
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    pub seq: i64,
    pub read_at: DateTime<Utc>,
}

/// Moves read marks forward only, in one statement for the whole batch, and recounts the unread
/// messages of the participants whose mark moved. Returns how many marks actually moved.
async fn apply_read_marks_on(conn: &mut PgConnection, rows: &[ReadMarkRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let conversations: Vec<Uuid> = rows.iter().map(|r| r.conversation_id).collect();
    let users: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let read_at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.read_at).collect();
    let moved = sqlx::query!(
        r#"UPDATE participants p
                  SET last_read_seq = v.seq, read_at = v.read_at
                 FROM (SELECT DISTINCT ON (conversation_id, user_id) *
                         FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::timestamptz[])
                              AS u(conversation_id, user_id, seq, read_at)
                        ORDER BY conversation_id, user_id, seq DESC) v
                WHERE p.conversation_id = v.conversation_id AND p.user_id = v.user_id
                  AND p.last_read_seq < v.seq
            RETURNING p.conversation_id, p.user_id"#,
        &conversations,
        &users,
        &seqs,
        &read_at,
    )
    .fetch_all(&mut *conn)
    .await?;
    if moved.is_empty() {
        return Ok(0);
    }
    // A statement of its own, after the one that locked the rows: its snapshot includes every
    // message whose transaction added to these counts before (see the migration).
    let conversations: Vec<Uuid> = moved.iter().map(|r| r.conversation_id).collect();
    let users: Vec<Uuid> = moved.iter().map(|r| r.user_id).collect();
    sqlx::query!(
        r#"UPDATE participants p
              SET unread_count = (SELECT count(*) FROM messages m
                                   WHERE m.conversation_id = p.conversation_id
                                     AND m.sender_id <> p.user_id
                                     AND m.seq > p.last_read_seq)
             FROM UNNEST($1::uuid[], $2::uuid[]) AS v(conversation_id, user_id)
            WHERE p.conversation_id = v.conversation_id AND p.user_id = v.user_id"#,
        &conversations,
        &users,
    )
    .execute(&mut *conn)
    .await?;
    Ok(moved.len() as u64)
}

/// The rows in `COPY messages (id, conversation_id, seq, sender_id, body, client_msg_id,
/// created_at) FROM STDIN`'s text format: tab-separated columns, `\N` for null, and backslash, tab,
/// newline and carriage return escaped in text. Times keep microseconds, Postgres's precision,
/// truncated as the binary encoding of the `INSERT` path truncates them.
pub fn messages_copy_text(rows: &[MessageRow]) -> Vec<u8> {
    let mut out = String::with_capacity(rows.iter().map(|r| r.body.len() + 160).sum());
    for row in rows {
        let _ = write!(
            out,
            "{}\t{}\t{}\t{}\t",
            row.id, row.conversation_id, row.seq, row.sender_id
        );
        push_copy_escaped(&mut out, &row.body);
        out.push('\t');
        match &row.client_msg_id {
            Some(id) => push_copy_escaped(&mut out, id),
            None => out.push_str("\\N"),
        }
        out.push('\t');
        out.push_str(&row.created_at.to_rfc3339_opts(SecondsFormat::Micros, true));
        out.push('\n');
    }
    out.into_bytes()
}

fn push_copy_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_copy_text_escapes_what_would_split_a_row_or_a_column() {
        let row = MessageRow {
            id: Uuid::nil(),
            conversation_id: Uuid::nil(),
            seq: 7,
            sender_id: Uuid::nil(),
            body: "a\\b\tc\nd\re \\N".into(),
            client_msg_id: None,
            created_at: DateTime::parse_from_rfc3339("2026-11-25T04:05:06.123456789Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let text = String::from_utf8(messages_copy_text(&[row])).unwrap();
        let nil = Uuid::nil();
        assert_eq!(
            text,
            format!("{nil}\t{nil}\t7\t{nil}\ta\\\\b\\tc\\nd\\re \\\\N\t\\N\t2026-11-25T04:05:06.123456Z\n")
        );
    }
}
