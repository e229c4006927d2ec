//! The persistence worker's writes. Each is idempotent so that JetStream's at-least-once delivery
//! (redeliveries, two workers racing on a late ack) never doubles a row or moves state back.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use parley_domain::ids::conversation_id_for_project;
use parley_domain::validation::PREVIEW_CHARS;
use parley_events::{MessagePosted, ProjectClosed, ProjectStarted};
use parley_transcript::{Entry, GENESIS, Hash};
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
        // Entry 0 of the transcript, chained with the row that creates the conversation.
        let started = Entry::Started {
            conversation_id,
            project_id: event.project_id,
            project_title: &event.title,
            client_id: event.client.id,
            client_name: &event.client.display_name,
            provider_id: event.provider.id,
            provider_name: &event.provider.display_name,
            at: event.started_at,
        }
        .hash(&GENESIS);
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query!(
            r#"INSERT INTO conversations (id, project_id, project_title, status, started_at, updated_at,
                                          transcript_size, transcript_head)
               VALUES ($1, $2, $3, 'active', $4, $4, 1, $5)
               ON CONFLICT DO NOTHING"#,
            conversation_id,
            event.project_id,
            event.title,
            event.started_at,
            &started[..],
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
            sqlx::query!(
                "INSERT INTO transcript_entries (conversation_id, n, kind, hash) VALUES ($1, 0, 'started', $2)",
                conversation_id,
                &started[..],
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Turns the project's conversation read-only, and chains its `closed` entry in the same
    /// transaction (the row's lock orders it among the conversation's other appends).
    pub async fn apply_project_closed(&self, event: &ProjectClosed) -> Result<ClosedOutcome, StoreError> {
        let conversation_id = conversation_id_for_project(event.project_id);
        let mut tx = self.pool.begin().await?;
        let closing = sqlx::query!(
            r#"UPDATE conversations
                  SET status = 'closed', closed_at = $2, updated_at = GREATEST(updated_at, $2)
                WHERE id = $1 AND status = 'active'
            RETURNING transcript_size, transcript_head"#,
            conversation_id,
            event.closed_at,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(closing) = closing else {
            let exists = sqlx::query_scalar!(
                r#"SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1) AS "exists!""#,
                conversation_id,
            )
            .fetch_one(&mut *tx)
            .await?;
            return Ok(if exists {
                ClosedOutcome::AlreadyClosed
            } else {
                ClosedOutcome::UnknownProject
            });
        };
        let mut heads = Heads::default();
        heads.0.insert(
            conversation_id,
            ChainHead::stored(closing.transcript_size, closing.transcript_head.as_deref()),
        );
        let link = heads.append(conversation_id, &Entry::Closed { at: event.closed_at });
        sqlx::query!(
            "INSERT INTO transcript_entries (conversation_id, n, kind, hash) VALUES ($1, $2, 'closed', $3)",
            conversation_id,
            link.n,
            &link.hash[..],
        )
        .execute(&mut *tx)
        .await?;
        heads.save(&mut tx).await?;
        tx.commit().await?;
        Ok(ClosedOutcome::Closed)
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
    /// only once `before_commit` resolves. See [`Store::write_batch_continuing`], of which this
    /// is the case of a writer that predicts nothing.
    pub async fn write_batch(
        &self,
        rows: &[MessageRow],
        reads: &[ReadMarkRow],
        before_commit: impl std::future::Future<Output = ()>,
    ) -> Result<BatchWritten, StoreError> {
        self.write_batch_continuing(rows, reads, Heads::default(), |_| before_commit)
            .await
    }

    /// Writes one batch in one transaction: its messages, then its read-mark moves, committed
    /// only once the future `before_commit` returns resolves. The caller uses that to commit
    /// batches in stream order while the next batch's rows are already being written. See
    /// [`Store::insert_messages`] and [`Store::apply_read_marks`] for what each part does.
    ///
    /// `predicted` are the heads the writer expects its conversations to have: those its own
    /// previous batch left, handed on before that batch committed. When every conversation of
    /// the batch's messages is predicted, the messages are linked onto the prediction and copied
    /// *before* the conversations' rows are locked, so that this `COPY` runs while the previous
    /// batch commits (the lock waits for that commit); the prediction is then checked under the
    /// lock, and a wrong one (the previous batch failed, another worker appended) is undone to a
    /// savepoint and the messages written again onto the heads as locked. Either way nothing is
    /// chained but onto the locked heads. `before_commit` receives `predicted` brought up to
    /// date with every head this batch locked, for the next batch to predict from.
    pub async fn write_batch_continuing<F, Fut>(
        &self,
        rows: &[MessageRow],
        reads: &[ReadMarkRow],
        mut predicted: Heads,
        before_commit: F,
    ) -> Result<BatchWritten, StoreError>
    where
        F: FnOnce(Heads) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut tx = self.pool.begin().await?;
        let conversations: Vec<Uuid> = rows
            .iter()
            .map(|r| r.conversation_id)
            .chain(reads.iter().map(|r| r.conversation_id))
            .collect();
        let (inserted, mut heads) = insert_messages_continuing(&mut tx, rows, &conversations, &predicted).await?;
        let moved = apply_read_marks_on(&mut tx, reads, &mut heads).await?;
        heads.save(&mut tx).await?;
        predicted.remember(&heads);
        before_commit(predicted).await;
        tx.commit().await?;
        Ok(BatchWritten { inserted, moved })
    }

    /// Writes messages in one transaction: a conflict on the message id (or on its stream
    /// sequence) does nothing, and each conversation's last message moves only forward, to the
    /// highest sequence actually inserted. Returns how many rows were new.
    pub async fn insert_messages(&self, rows: &[MessageRow]) -> Result<u64, StoreError> {
        let written = self.write_batch(rows, &[], std::future::ready(())).await?;
        Ok(written.inserted)
    }

    /// Moves read marks forward only, in one transaction, recounting the unread messages of
    /// those whose mark moved. Returns how many marks actually moved.
    pub async fn apply_read_marks(&self, rows: &[ReadMarkRow]) -> Result<u64, StoreError> {
        let written = self.write_batch(&[], rows, std::future::ready(())).await?;
        Ok(written.moved)
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
///
/// Either way each row is chained as it is stored: the rows are linked onto the locked heads
/// assuming all are new, and the `COPY` carries each row's place and hash. If the `COPY` fails,
/// nothing of that attempt is kept (the savepoint, and the heads as they were), and the fallback
/// links only the rows it stores.
async fn insert_messages_in(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[MessageRow],
    heads: &mut Heads,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut attempt = tx.begin().await?;
    let mut linked = heads.clone();
    let links = linked.link_messages(rows);
    match copy_rows(&mut attempt, rows, &links).await {
        Ok(inserted) => {
            attempt.commit().await?;
            *heads = linked;
            finish_messages(tx, rows).await?;
            Ok(inserted)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            attempt.rollback().await?;
            insert_messages_idempotently(tx, rows, heads).await
        }
        Err(e) => Err(e),
    }
}

/// Locks the batch's conversations and writes its messages onto their heads: on the heads as
/// locked, or, when every conversation of the messages is in `predicted`, copied first onto the
/// predicted heads and kept if the lock finds the same (see [`Store::write_batch_continuing`]).
/// A wrong prediction is undone to a savepoint, which also releases the row locks taken inside
/// it, so the conversations are locked again before the messages are written as usual.
/// Returns how many rows were new and the heads as they now are.
async fn insert_messages_continuing(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[MessageRow],
    conversations: &[Uuid],
    predicted: &Heads,
) -> Result<(u64, Heads), sqlx::Error> {
    let mut base = Heads::default();
    for row in rows {
        match predicted.0.get(&row.conversation_id) {
            Some(head) => base.0.insert(row.conversation_id, head.unchanged()),
            None => {
                base.0.clear();
                break;
            }
        };
    }
    let mut duplicate = false;
    if !base.0.is_empty() {
        let mut linked = base.clone();
        let links = linked.link_messages(rows);
        let mut attempt = tx.begin().await?;
        match copy_rows(&mut attempt, rows, &links).await {
            Ok(inserted) => {
                let mut locked = Heads::lock(&mut attempt, conversations).await?;
                if base
                    .0
                    .iter()
                    .all(|(id, head)| locked.0.get(id).is_some_and(|l| l.same_place(head)))
                {
                    attempt.commit().await?;
                    locked.0.extend(linked.0);
                    finish_messages(tx, rows).await?;
                    return Ok((inserted, locked));
                }
                attempt.rollback().await?;
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                attempt.rollback().await?;
                duplicate = true;
            }
            Err(e) => return Err(e),
        }
    }
    let mut heads = Heads::lock(tx, conversations).await?;
    let inserted = if duplicate {
        // The rows are linked only once it is known which of them are new.
        insert_messages_idempotently(tx, rows, &mut heads).await?
    } else {
        insert_messages_in(tx, rows, &mut heads).await?
    };
    Ok((inserted, heads))
}

/// `COPY`s rows that must all be new.
async fn copy_rows(conn: &mut PgConnection, rows: &[MessageRow], links: &[Link]) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(MESSAGES_COPY).await?;
    copy.send(messages_copy_data(rows, links)).await?;
    copy.finish().await
}

/// What storing new messages changes beyond their rows: each conversation's last message and
/// the recipients' unread counts.
async fn finish_messages(conn: &mut PgConnection, rows: &[MessageRow]) -> Result<(), sqlx::Error> {
    move_last_messages(conn, rows).await?;
    add_unread(conn, rows).await
}

/// The same write for a batch that may hold rows already there. The conversations' rows are
/// locked (see [`Heads::lock`]), so every other transaction that stored a message in them has
/// committed or rolled back: which rows are already there is known before inserting, and only
/// the others are linked and stored. A conflict the look-up could not see (a message id reused
/// in a conversation this batch does not lock) fails the batch, which is then retried, rather
/// than chaining a row that was not stored.
async fn insert_messages_idempotently(
    conn: &mut PgConnection,
    rows: &[MessageRow],
    heads: &mut Heads,
) -> Result<u64, sqlx::Error> {
    let columns = MessageColumns::of(rows);
    let stored: HashSet<Uuid> = sqlx::query_scalar!(
        r#"SELECT r.id AS "id!"
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[]) AS r(id, conversation_id, seq)
            WHERE EXISTS (SELECT 1 FROM messages m WHERE m.id = r.id)
               OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = r.conversation_id AND m.seq = r.seq)"#,
        &columns.ids,
        &columns.conversations,
        &columns.seqs,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    // A row repeated within the batch (by id, or by place in the stream) is stored once.
    let mut seen = HashSet::new();
    let new_rows: Vec<MessageRow> = rows
        .iter()
        .filter(|row| !stored.contains(&row.id) && seen.insert(row.id) && seen.insert(row_place(row)))
        .cloned()
        .collect();
    if new_rows.is_empty() {
        return Ok(0);
    }
    let links = heads.link_messages(&new_rows);
    let columns = MessageColumns::of(&new_rows);
    let client_ids: Vec<Option<String>> = new_rows.iter().map(|r| r.client_msg_id.clone()).collect();
    let chain_n: Vec<i64> = links.iter().map(|link| link.n).collect();
    let chain_hash: Vec<Vec<u8>> = links.iter().map(|link| link.hash.to_vec()).collect();
    let inserted = sqlx::query!(
        r#"INSERT INTO messages (id, conversation_id, seq, sender_id, body, client_msg_id, created_at, chain_n, chain_hash)
           SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[], $5::text[], $6::text[],
                                $7::timestamptz[], $8::int8[], $9::bytea[])"#,
        &columns.ids,
        &columns.conversations,
        &columns.seqs,
        &columns.senders,
        &columns.bodies as &[&str],
        &client_ids as &[Option<String>],
        &columns.created,
        &chain_n,
        &chain_hash,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    finish_messages(conn, &new_rows).await?;
    Ok(inserted)
}

/// A stand-in id for a row's place `(conversation, seq)`, so that one set catches a repeat of
/// either key (a v5 uuid cannot collide with the v4/v7/v5-of-other-names message ids).
fn row_place(row: &MessageRow) -> Uuid {
    let mut name = [0u8; 24];
    name[..16].copy_from_slice(row.conversation_id.as_bytes());
    name[16..].copy_from_slice(&row.seq.to_be_bytes());
    Uuid::new_v5(&PLACE_NAMESPACE, &name)
}

const PLACE_NAMESPACE: Uuid = Uuid::from_u128(0x7061_726c_6579_2d70_6c61_6365_0000_0001);

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
/// messages of the participants whose mark moved. Each mark that moved is chained as a `read`
/// entry (its new seq and time); one that did not move appends nothing. Returns how many marks
/// actually moved.
async fn apply_read_marks_on(
    conn: &mut PgConnection,
    rows: &[ReadMarkRow],
    heads: &mut Heads,
) -> Result<u64, sqlx::Error> {
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
            RETURNING p.conversation_id, p.user_id, p.last_read_seq, p.read_at AS "read_at!""#,
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
    let mut moved = moved;
    moved.sort_unstable_by_key(|r| (r.conversation_id, r.last_read_seq, r.user_id));
    let mut entries = ReadEntryColumns::default();
    for r in &moved {
        let link = heads.append(
            r.conversation_id,
            &Entry::Read {
                user_id: r.user_id,
                seq: r.last_read_seq,
                at: r.read_at,
            },
        );
        entries.conversations.push(r.conversation_id);
        entries.n.push(link.n);
        entries.users.push(r.user_id);
        entries.seqs.push(r.last_read_seq);
        entries.at.push(r.read_at);
        entries.hashes.push(link.hash.to_vec());
    }
    sqlx::query!(
        r#"INSERT INTO transcript_entries (conversation_id, n, kind, user_id, seq, at, hash)
           SELECT conversation_id, n, 'read', user_id, seq, at, hash
             FROM UNNEST($1::uuid[], $2::int8[], $3::uuid[], $4::int8[], $5::timestamptz[], $6::bytea[])
                  AS e(conversation_id, n, user_id, seq, at, hash)"#,
        &entries.conversations,
        &entries.n,
        &entries.users,
        &entries.seqs,
        &entries.at,
        &entries.hashes,
    )
    .execute(&mut *conn)
    .await?;
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

/// A message's (or any entry's) place in its conversation's chain, and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub n: i64,
    pub hash: Hash,
}

/// A conversation's chain as a transaction found it, and whether the transaction appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainHead {
    /// Entries chained: the next entry's `n`.
    pub size: i64,
    /// `hash(size-1)`; [`GENESIS`] when empty.
    pub hash: Hash,
    changed: bool,
}

impl ChainHead {
    /// From the conversation row's `transcript_size` and `transcript_head`.
    pub fn stored(size: i64, head: Option<&[u8]>) -> Self {
        Self {
            size,
            hash: head.and_then(parley_transcript::from_bytes).unwrap_or(GENESIS),
            changed: false,
        }
    }

    /// Whether both stand at the same place of the chain.
    fn same_place(&self, other: &ChainHead) -> bool {
        self.size == other.size && self.hash == other.hash
    }

    /// The same place in the chain, not appended to.
    fn unchanged(self) -> Self {
        Self { changed: false, ..self }
    }
}

/// The heads of the conversations one transaction appends to. [`Heads::lock`] reads them with
/// their rows locked; entries are linked onto them in memory; [`Heads::save`] stores those that
/// moved, in the same transaction as the entries' rows.
#[derive(Debug, Clone, Default)]
pub struct Heads(pub HashMap<Uuid, ChainHead>);

impl Heads {
    /// Locks the conversations' rows, in id order (so two transactions locking overlapping sets
    /// never wait on each other in a cycle), and reads their heads. Every later statement of the
    /// transaction that touches these conversations runs under these locks. `FOR NO KEY UPDATE`,
    /// the lock an `UPDATE` of these rows takes anyway: it excludes every other writer of the
    /// heads, yet lets another transaction's insert of messages check its foreign key (`FOR KEY
    /// SHARE`) meanwhile, which a predicted batch's `COPY` does while this one commits.
    async fn lock(conn: &mut PgConnection, conversations: &[Uuid]) -> Result<Self, sqlx::Error> {
        let mut ids: Vec<Uuid> = conversations.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Self::default());
        }
        let rows = sqlx::query!(
            r#"SELECT id, transcript_size, transcript_head FROM conversations
                WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"#,
            &ids,
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(Self(
            rows.into_iter()
                .map(|r| (r.id, ChainHead::stored(r.transcript_size, r.transcript_head.as_deref())))
                .collect(),
        ))
    }

    /// Conversations a writer remembers before its memory starts over.
    const REMEMBERED: usize = 100_000;

    /// Takes the heads of `later` (a batch's, as it leaves them) over these, for the next batch
    /// to predict from. Past [`Heads::REMEMBERED`] conversations it keeps only `later`'s.
    pub fn remember(&mut self, later: &Heads) {
        if self.0.len() + later.0.len() > Self::REMEMBERED {
            self.0.clear();
        }
        self.0.extend(later.0.iter().map(|(id, head)| (*id, head.unchanged())));
    }

    /// Chains `entry` onto its conversation's head.
    fn append(&mut self, conversation_id: Uuid, entry: &Entry<'_>) -> Link {
        let head = self.0.entry(conversation_id).or_default();
        let link = Link {
            n: head.size,
            hash: entry.hash(&head.hash),
        };
        head.size += 1;
        head.hash = link.hash;
        head.changed = true;
        link
    }

    /// Chains messages, in the order given (the batch's, ascending by seq).
    pub fn link_messages(&mut self, rows: &[MessageRow]) -> Vec<Link> {
        rows.iter()
            .map(|row| {
                self.append(
                    row.conversation_id,
                    &Entry::Message {
                        seq: row.seq,
                        id: row.id,
                        sender_id: row.sender_id,
                        body: &row.body,
                        created_at: row.created_at,
                        client_msg_id: row.client_msg_id.as_deref(),
                    },
                )
            })
            .collect()
    }

    /// Stores the heads that moved. A conversation that was not locked (it does not exist) has
    /// no row to update: its entries' inserts already failed on their foreign key.
    async fn save(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let (mut ids, mut sizes, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
        for (id, head) in self.0.iter().filter(|(_, head)| head.changed) {
            ids.push(*id);
            sizes.push(head.size);
            hashes.push(head.hash.to_vec());
        }
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query!(
            r#"UPDATE conversations c
                  SET transcript_size = h.size, transcript_head = h.head
                 FROM UNNEST($1::uuid[], $2::int8[], $3::bytea[]) AS h(id, size, head)
                WHERE c.id = h.id"#,
            &ids,
            &sizes,
            &hashes,
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The `read` entries of one batch, one array per column.
#[derive(Default)]
struct ReadEntryColumns {
    conversations: Vec<Uuid>,
    n: Vec<i64>,
    users: Vec<Uuid>,
    seqs: Vec<i64>,
    at: Vec<DateTime<Utc>>,
    hashes: Vec<Vec<u8>>,
}

/// The statement that copies message rows in, fed with [`messages_copy_data`].
pub const MESSAGES_COPY: &str = "COPY messages (id, conversation_id, seq, sender_id, body, client_msg_id, created_at, \
                                 chain_n, chain_hash) FROM STDIN (FORMAT binary)";

/// The rows in [`MESSAGES_COPY`]'s binary format, each row with its link (`links` in the rows'
/// order). Binary rather than text: Postgres takes each column as it stores it, with no text to
/// parse (three uuids, a time, 64 hex digits of hash per row), and nothing needs escaping.
/// Times keep microseconds, Postgres's precision, truncated as the `INSERT` path truncates them.
pub fn messages_copy_data(rows: &[MessageRow], links: &[Link]) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + rows.iter().map(|r| r.body.len() + 160).sum::<usize>() + 2);
    // Signature, flags (no OIDs), no header extension.
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    for (row, link) in rows.iter().zip(links) {
        out.extend_from_slice(&9i16.to_be_bytes());
        field(&mut out, row.id.as_bytes());
        field(&mut out, row.conversation_id.as_bytes());
        field(&mut out, &row.seq.to_be_bytes());
        field(&mut out, row.sender_id.as_bytes());
        field(&mut out, row.body.as_bytes());
        match &row.client_msg_id {
            Some(id) => field(&mut out, id.as_bytes()),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        field(&mut out, &postgres_micros(&row.created_at).to_be_bytes());
        field(&mut out, &link.n.to_be_bytes());
        field(&mut out, &link.hash);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// One column of a binary `COPY` row: its length, then its bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // A column is at most a 5000-character body: far below `i32::MAX`.
    out.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(i32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A `timestamptz` as Postgres stores it: microseconds since 2000-01-01T00:00:00Z.
fn postgres_micros(at: &DateTime<Utc>) -> i64 {
    const UNIX_TO_POSTGRES_EPOCH_MICROS: i64 = 946_684_800 * 1_000_000;
    at.timestamp_micros() - UNIX_TO_POSTGRES_EPOCH_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_copy_data_is_postgres_binary_copy_format() {
        let row = MessageRow {
            id: Uuid::from_u128(1),
            conversation_id: Uuid::from_u128(2),
            seq: 7,
            sender_id: Uuid::from_u128(3),
            body: "a\tü".into(),
            client_msg_id: None,
            created_at: DateTime::parse_from_rfc3339("2000-01-01T00:00:01.123456789Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let link = Link { n: 3, hash: [0xAB; 32] };
        let data = messages_copy_data(&[row], &[link]);
        let mut expected: Vec<u8> = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&[0, 9]);
        for id in [1u8, 2] {
            expected.extend_from_slice(&[0, 0, 0, 16]);
            expected.extend_from_slice(&[0; 15]);
            expected.push(id);
        }
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend_from_slice(&[0, 0, 0, 16]);
        expected.extend_from_slice(&[0; 15]);
        expected.push(3);
        expected.extend_from_slice(&[0, 0, 0, 4, b'a', b'\t', 0xC3, 0xBC]);
        expected.extend_from_slice(&[0xFF; 4]);
        // 1.123456 s after Postgres's epoch, the nanoseconds cut.
        expected.extend_from_slice(&[0, 0, 0, 8]);
        expected.extend_from_slice(&1_123_456i64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 32]);
        expected.extend_from_slice(&[0xAB; 32]);
        expected.extend_from_slice(&[0xFF, 0xFF]);
        assert_eq!(data, expected);
    }
}
