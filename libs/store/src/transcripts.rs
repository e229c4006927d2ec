//! Reading transcripts back (the persistence worker writes them with the rows, see `writes`):
//! a conversation's header and its entries in chain order, streamed so that an export of 100k
//! messages never holds them all, and [`Store::check_transcript`], which recomputes a stored
//! chain from the stored rows for `parley transcript check`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use parley_transcript::{Entry, GENESIS, Hash};
use uuid::Uuid;

use crate::{Store, StoreError};

/// What an export needs besides the entries: the `started` entry's fields, the close time, and
/// the chain's size and head as the conversation's row stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptHeader {
    pub conversation_id: Uuid,
    pub project_id: Uuid,
    pub project_title: String,
    pub client_id: Uuid,
    pub client_name: String,
    pub provider_id: Uuid,
    pub provider_name: String,
    pub started_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub size: i64,
    pub head: Hash,
}

/// One stored entry, as its rows hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub n: i64,
    pub kind: StoredKind,
    /// The hash stored with the entry (`None` if the column does not hold 32 bytes).
    pub hash: Option<Hash>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredKind {
    Started,
    Message {
        seq: i64,
        id: Uuid,
        sender_id: Uuid,
        body: String,
        created_at: DateTime<Utc>,
        client_msg_id: Option<String>,
    },
    Read {
        user_id: Uuid,
        seq: i64,
        at: DateTime<Utc>,
    },
    Closed,
    /// A row that cannot be read as an entry (a kind or a field was altered).
    Unreadable(String),
}

impl StoredEntry {
    /// The entry as the transcript shows it, or why it cannot be shown.
    pub fn entry<'a>(&'a self, header: &'a TranscriptHeader) -> Result<Entry<'a>, String> {
        Ok(match &self.kind {
            StoredKind::Started => Entry::Started {
                conversation_id: header.conversation_id,
                project_id: header.project_id,
                project_title: &header.project_title,
                client_id: header.client_id,
                client_name: &header.client_name,
                provider_id: header.provider_id,
                provider_name: &header.provider_name,
                at: header.started_at,
            },
            StoredKind::Message {
                seq,
                id,
                sender_id,
                body,
                created_at,
                client_msg_id,
            } => Entry::Message {
                seq: *seq,
                id: *id,
                sender_id: *sender_id,
                body,
                created_at: *created_at,
                client_msg_id: client_msg_id.as_deref(),
            },
            StoredKind::Read { user_id, seq, at } => Entry::Read {
                user_id: *user_id,
                seq: *seq,
                at: *at,
            },
            StoredKind::Closed => Entry::Closed {
                at: header
                    .closed_at
                    .ok_or_else(|| "a closed entry, but the conversation has no close time".to_owned())?,
            },
            StoredKind::Unreadable(why) => return Err(why.clone()),
        })
    }
}

/// What [`Store::check_transcript`] found wrong with one conversation (empty: it matches).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub conversation_id: Uuid,
    /// Entries walked.
    pub entries: u64,
    pub problems: Vec<String>,
}

impl Store {
    /// The conversation's transcript header, or `None` when it does not exist (or lost a party).
    pub async fn transcript_header(&self, conversation_id: Uuid) -> Result<Option<TranscriptHeader>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT c.project_id, c.project_title, c.started_at, c.closed_at, c.transcript_size, c.transcript_head,
                      cl.user_id AS client_id, cl.display_name AS client_name,
                      pr.user_id AS provider_id, pr.display_name AS provider_name
                 FROM conversations c
                 JOIN participants cl ON cl.conversation_id = c.id AND cl.role = 'client'
                 JOIN participants pr ON pr.conversation_id = c.id AND pr.role = 'provider'
                WHERE c.id = $1"#,
            conversation_id,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| TranscriptHeader {
            conversation_id,
            project_id: r.project_id,
            project_title: r.project_title,
            client_id: r.client_id,
            client_name: r.client_name,
            provider_id: r.provider_id,
            provider_name: r.provider_name,
            started_at: r.started_at,
            closed_at: r.closed_at,
            size: r.transcript_size,
            head: r
                .transcript_head
                .as_deref()
                .and_then(parley_transcript::from_bytes)
                .unwrap_or(GENESIS),
        }))
    }

    /// The conversation's stored entries with `n < below`, in chain order, as Postgres sends
    /// them (Postgres sorts the conversation's rows by place; nothing is collected here).
    pub fn transcript_entries(
        &self,
        conversation_id: Uuid,
        below: i64,
    ) -> impl Stream<Item = Result<StoredEntry, StoreError>> + Send + '_ {
        sqlx::query!(
            r#"SELECT n AS "n!", kind AS "kind!", seq, id, user_id, body, at, client_msg_id, hash AS "hash!"
                 FROM (SELECT m.chain_n AS n, 'message' AS kind, m.seq, m.id, m.sender_id AS user_id, m.body,
                              m.created_at AS at, m.client_msg_id, m.chain_hash AS hash
                         FROM messages m
                        WHERE m.conversation_id = $1 AND m.chain_n < $2
                       UNION ALL
                       SELECT e.n, e.kind, e.seq, NULL::uuid, e.user_id, NULL::text, e.at, NULL::text, e.hash
                         FROM transcript_entries e
                        WHERE e.conversation_id = $1 AND e.n < $2) t
                ORDER BY n"#,
            conversation_id,
            below,
        )
        .fetch(&self.pool)
        .map_err(StoreError::from)
        .map_ok(|r| {
            let kind = match (r.kind.as_str(), r.seq, r.id, r.user_id, r.body, r.at) {
                ("started", ..) => StoredKind::Started,
                ("closed", ..) => StoredKind::Closed,
                ("message", Some(seq), Some(id), Some(sender_id), Some(body), Some(created_at)) => {
                    StoredKind::Message {
                        seq,
                        id,
                        sender_id,
                        body,
                        created_at,
                        client_msg_id: r.client_msg_id,
                    }
                }
                ("read", Some(seq), _, Some(user_id), _, Some(at)) => StoredKind::Read { user_id, seq, at },
                (kind, ..) => StoredKind::Unreadable(format!("a {kind} row with fields missing")),
            };
            StoredEntry {
                n: r.n,
                kind,
                hash: parley_transcript::from_bytes(&r.hash),
            }
        })
    }

    /// Up to `limit` conversation ids above `after`, ascending: `check --all` walks them a page
    /// at a time.
    pub async fn conversation_ids_after(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar!(
            "SELECT id FROM conversations WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
            after,
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Recomputes the conversation's chain from its stored rows: every entry's hash from the one
    /// before and the row's fields, the places `0, 1, 2, …` without gaps, the conversation's
    /// stored size and head, and each participant's read mark against their last `read` entry.
    /// `None` when the conversation does not exist.
    pub async fn check_transcript(&self, conversation_id: Uuid) -> Result<Option<CheckReport>, StoreError> {
        let Some(header) = self.transcript_header(conversation_id).await? else {
            return Ok(None);
        };
        let mut report = CheckReport {
            conversation_id,
            ..CheckReport::default()
        };
        let mut previous = GENESIS;
        let mut expected = 0i64;
        let mut last_reads: HashMap<Uuid, (i64, DateTime<Utc>)> = HashMap::new();
        let mut chain_ok = true;
        let mut entries = std::pin::pin!(self.transcript_entries(conversation_id, i64::MAX));
        while let Some(stored) = entries.next().await {
            let stored = stored?;
            report.entries += 1;
            if let StoredKind::Read { user_id, seq, at } = &stored.kind {
                last_reads.insert(*user_id, (*seq, *at));
            }
            if !chain_ok {
                continue;
            }
            if stored.n != expected {
                report.problems.push(format!(
                    "entry {expected}: missing (the next stored entry is {})",
                    stored.n
                ));
                chain_ok = false;
                continue;
            }
            if (stored.n == 0) != matches!(stored.kind, StoredKind::Started) {
                report
                    .problems
                    .push(format!("entry {}: order (only entry 0 is started)", stored.n));
                chain_ok = false;
                continue;
            }
            let computed = match stored.entry(&header) {
                Ok(entry) => entry.hash(&previous),
                Err(why) => {
                    report.problems.push(format!("entry {}: {why}", stored.n));
                    chain_ok = false;
                    continue;
                }
            };
            if stored.hash != Some(computed) {
                report.problems.push(format!(
                    "entry {}: hash (the stored {} row no longer matches its chained hash)",
                    stored.n,
                    kind_name(&stored.kind)
                ));
                chain_ok = false;
                continue;
            }
            previous = computed;
            expected += 1;
        }
        if chain_ok && (expected != header.size || previous != header.head) {
            report.problems.push(format!(
                "head: the conversation records {} entries ending in {}, its rows chain {expected} ending in {}",
                header.size,
                parley_transcript::hex(&header.head),
                parley_transcript::hex(&previous)
            ));
        }
        let marks = sqlx::query!(
            "SELECT user_id, last_read_seq, read_at FROM participants WHERE conversation_id = $1 ORDER BY role",
            conversation_id,
        )
        .fetch_all(&self.pool)
        .await?;
        for mark in marks {
            let chained = last_reads.get(&mark.user_id).copied();
            let stored = (mark.last_read_seq > 0).then_some(mark.last_read_seq);
            let matches = match (chained, stored) {
                (None, None) => true,
                (Some((seq, at)), Some(stored_seq)) => {
                    seq == stored_seq
                        && mark.read_at.map(|t| parley_transcript::time(&t)) == Some(parley_transcript::time(&at))
                }
                _ => false,
            };
            if !matches {
                report.problems.push(format!(
                    "read mark of {}: stored at seq {}, the transcript's last read entry says {}",
                    mark.user_id,
                    mark.last_read_seq,
                    chained.map_or_else(|| "none".to_owned(), |(seq, _)| seq.to_string())
                ));
            }
        }
        Ok(Some(report))
    }
}

fn kind_name(kind: &StoredKind) -> &'static str {
    match kind {
        StoredKind::Started => "started (conversation and participants)",
        StoredKind::Message { .. } => "message",
        StoredKind::Read { .. } => "read",
        StoredKind::Closed => "closed (conversation)",
        StoredKind::Unreadable(_) => "unreadable",
    }
}
