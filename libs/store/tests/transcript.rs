//! Transcript chains written by the store's own writes, against a real Postgres database per
//! test: every stored entry is chained exactly once (the `COPY` path, its idempotent fallback,
//! concurrent batches), the migration chains rows stored before it exactly as the worker would,
//! and `check_transcript` names a row altered or deleted behind Parley's back.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use parley_events::ProjectClosed;
use parley_store::{Heads, MessageRow, ReadMarkRow, Store};
use parley_test_support::{ProjectFixture, TestDatabase};
use sqlx::Connection as _;
use uuid::Uuid;

fn row(project: &ProjectFixture, seq: i64) -> MessageRow {
    MessageRow {
        id: Uuid::new_v5(&project.conversation_id(), &seq.to_be_bytes()),
        conversation_id: project.conversation_id(),
        seq,
        sender_id: if seq % 2 == 0 {
            project.client()
        } else {
            project.provider()
        },
        body: format!("message {seq}\twith a tab, ünïcode and a \\ backslash"),
        client_msg_id: (seq % 3 == 0).then(|| format!("c-{seq}")),
        created_at: Utc::now() + TimeDelta::microseconds(seq * 1_237),
    }
}

/// Each stored message's place in its conversation's chain.
async fn chained_messages(store: &Store, conversation: Uuid) -> Vec<(i64, i64)> {
    sqlx::query_as::<_, (i64, i64)>("SELECT seq, chain_n FROM messages WHERE conversation_id = $1 ORDER BY chain_n")
        .bind(conversation)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

async fn assert_matches(store: &Store, conversation: Uuid, size: u64) {
    let report = store.check_transcript(conversation).await.unwrap().unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!(report.entries, size);
    let header = store.transcript_header(conversation).await.unwrap().unwrap();
    assert_eq!(header.size, size as i64);
}

#[tokio::test]
async fn copy_and_its_fallback_chain_every_new_row_once_and_a_redelivery_appends_nothing() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let project = ProjectFixture::new("Chained");
    let conversation = project.conversation_id();
    assert!(store.apply_project_started(&project.event).await.unwrap());
    assert!(!store.apply_project_started(&project.event).await.unwrap());
    assert_matches(&store, conversation, 1).await;

    // All new: the COPY path.
    assert_eq!(
        store
            .insert_messages(&[row(&project, 1), row(&project, 2)])
            .await
            .unwrap(),
        2
    );
    // A redelivery of 2 with new 3 and 5, and 3 twice in the batch: the fallback.
    let batch = [row(&project, 2), row(&project, 3), row(&project, 3), row(&project, 5)];
    assert_eq!(store.insert_messages(&batch).await.unwrap(), 2);
    // Everything again: nothing new, nothing chained.
    assert_eq!(store.insert_messages(&batch).await.unwrap(), 0);
    assert_matches(&store, conversation, 5).await;
    assert_eq!(
        chained_messages(&store, conversation).await,
        [(1, 1), (2, 2), (3, 3), (5, 4)]
    );

    // A mark that moves is chained; one that does not move (or moves back) is not.
    let read = |seq: i64| ReadMarkRow {
        conversation_id: conversation,
        user_id: project.client(),
        seq,
        read_at: Utc::now(),
    };
    assert_eq!(store.apply_read_marks(&[read(3), read(2)]).await.unwrap(), 1);
    assert_eq!(store.apply_read_marks(&[read(3), read(1)]).await.unwrap(), 0);
    assert_matches(&store, conversation, 6).await;

    let closed = ProjectClosed {
        project_id: project.event.project_id,
        closed_at: Utc::now(),
    };
    store.apply_project_closed(&closed).await.unwrap();
    store.apply_project_closed(&closed).await.unwrap();
    assert_matches(&store, conversation, 7).await;
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM transcript_entries WHERE conversation_id = $1 ORDER BY n")
            .bind(conversation)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(kinds, ["started", "read", "closed"]);

    // The Conversation object carries the same size and head.
    let seen = store
        .conversation_of(project.client(), conversation)
        .await
        .unwrap()
        .unwrap();
    let header = store.transcript_header(conversation).await.unwrap().unwrap();
    assert_eq!(seen.transcript.size, 7);
    assert_eq!(seen.transcript.head, parley_transcript::hex(&header.head));
}

#[tokio::test]
async fn concurrent_overlapping_batches_never_fork_skip_or_double_an_entry() {
    let db = TestDatabase::create().await;
    let projects: Vec<ProjectFixture> = (0..3).map(|i| ProjectFixture::new(&format!("Race {i}"))).collect();
    let store = db.store();
    for project in &projects {
        store.apply_project_started(&project.event).await.unwrap();
    }
    // Eight writers, each with overlapping batches over all three conversations (so some land
    // on COPY, some on the fallback, and each locks several conversations), plus read marks.
    // Each predicts the heads its own previous batch left, so most predictions are wrong (the
    // others appended meanwhile) and some batches copy onto a prediction that holds.
    let mut tasks = Vec::new();
    for writer in 0..8i64 {
        let store = Store::connect_lazy(&db.url, 2).unwrap();
        let batches: Vec<(Vec<MessageRow>, Vec<ReadMarkRow>)> = (0..6i64)
            .map(|round| {
                let rows = projects
                    .iter()
                    .flat_map(|project| (0..4).map(move |k| row(project, 1 + (writer + round * 3 + k) % 40)))
                    .collect();
                let reads = projects
                    .iter()
                    .map(|project| ReadMarkRow {
                        conversation_id: project.conversation_id(),
                        user_id: project.provider(),
                        seq: 1 + (writer * 7 + round) % 40,
                        read_at: Utc::now(),
                    })
                    .collect();
                (rows, reads)
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut predicted = Heads::default();
            for (mut rows, reads) in batches {
                rows.sort_by_key(|r| r.seq);
                let (left, handed_on) = tokio::sync::oneshot::channel();
                store
                    .write_batch_continuing(&rows, &reads, predicted, |heads| async move {
                        left.send(heads).unwrap();
                    })
                    .await
                    .unwrap();
                predicted = handed_on.await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for project in &projects {
        let conversation = project.conversation_id();
        let messages = chained_messages(&store, conversation).await;
        let mut seqs: Vec<i64> = messages.iter().map(|(seq, _)| *seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), messages.len(), "a message stored twice");
        let mut places: Vec<i64> = messages.iter().map(|(_, n)| *n).collect();
        places.dedup();
        assert_eq!(places.len(), messages.len(), "two messages at one place of the chain");
        let reads: i64 =
            sqlx::query_scalar("SELECT count(*) FROM transcript_entries WHERE conversation_id = $1 AND kind = 'read'")
                .bind(conversation)
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert!(reads >= 1);
        assert_matches(&store, conversation, 1 + messages.len() as u64 + reads as u64).await;
    }
}

/// Writes `rows` onto the heads `predicted` says, and returns the heads the batch hands on.
async fn write_predicted(store: &Store, rows: &[MessageRow], predicted: Heads) -> (u64, Heads) {
    let (left, handed_on) = tokio::sync::oneshot::channel();
    let written = store
        .write_batch_continuing(rows, &[], predicted, |heads| async move {
            left.send(heads).unwrap();
        })
        .await
        .unwrap();
    (written.inserted, handed_on.await.unwrap())
}

#[tokio::test]
async fn a_batch_copied_onto_a_stale_prediction_is_chained_after_what_others_appended() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let project = ProjectFixture::new("Predicted");
    let conversation = project.conversation_id();
    store.apply_project_started(&project.event).await.unwrap();

    // One writer's batches, each predicting from the one before: the prediction holds.
    let (_, predicted) = write_predicted(&store, &[row(&project, 1), row(&project, 2)], Heads::default()).await;
    let (inserted, stale) = write_predicted(&store, &[row(&project, 3)], predicted).await;
    assert_eq!(inserted, 1);
    assert_matches(&store, conversation, 4).await;

    // Another writer appends; the first still predicts the heads it left.
    store
        .insert_messages(&[row(&project, 4), row(&project, 5)])
        .await
        .unwrap();
    let (inserted, handed_on) = write_predicted(&store, &[row(&project, 6), row(&project, 7)], stale).await;
    assert_eq!(inserted, 2);
    assert_matches(&store, conversation, 8).await;
    assert_eq!(
        chained_messages(&store, conversation).await,
        [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7)]
    );
    // What it hands on is the chain as it now stands.
    let header = store.transcript_header(conversation).await.unwrap().unwrap();
    let head = handed_on.0[&conversation];
    assert_eq!((head.size, head.hash), (header.size, header.head));

    // A redelivery copied onto a right prediction: nothing doubled, the new row chained once.
    let (inserted, _) = write_predicted(&store, &[row(&project, 7), row(&project, 8)], handed_on).await;
    assert_eq!(inserted, 1);
    assert_matches(&store, conversation, 9).await;
    assert_eq!(chained_messages(&store, conversation).await.last(), Some(&(8, 8)));
}

#[tokio::test]
async fn check_names_an_altered_or_deleted_message_and_an_altered_read_mark() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let projects: Vec<ProjectFixture> = (0..4).map(|i| ProjectFixture::new(&format!("Tamper {i}"))).collect();
    for project in &projects {
        store.apply_project_started(&project.event).await.unwrap();
        let rows: Vec<MessageRow> = (1..=4).map(|seq| row(project, seq)).collect();
        store.insert_messages(&rows).await.unwrap();
        store
            .apply_read_marks(&[ReadMarkRow {
                conversation_id: project.conversation_id(),
                user_id: project.client(),
                seq: 3,
                read_at: Utc::now(),
            }])
            .await
            .unwrap();
        assert_matches(&store, project.conversation_id(), 6).await;
    }
    let tamper = |sql: &'static str, project: &ProjectFixture| {
        let (pool, conversation) = (store.pool().clone(), project.conversation_id());
        async move {
            let changed = sqlx::query(sql).bind(conversation).execute(&pool).await.unwrap();
            assert_eq!(changed.rows_affected(), 1);
        }
    };
    tamper(
        "UPDATE messages SET body = 'I never said that' WHERE conversation_id = $1 AND seq = 2",
        &projects[0],
    )
    .await;
    tamper(
        "DELETE FROM messages WHERE conversation_id = $1 AND seq = 3",
        &projects[1],
    )
    .await;
    tamper(
        "UPDATE participants SET last_read_seq = 1 WHERE conversation_id = $1 AND role = 'client'",
        &projects[2],
    )
    .await;
    tamper(
        "UPDATE conversations SET project_title = 'Other' WHERE id = $1",
        &projects[3],
    )
    .await;

    let problems = |i: usize| {
        let store = store.clone();
        let conversation = projects[i].conversation_id();
        async move { store.check_transcript(conversation).await.unwrap().unwrap().problems }
    };
    let altered = problems(0).await;
    assert!(altered[0].starts_with("entry 2: hash"), "{altered:?}");
    let deleted = problems(1).await;
    assert!(deleted[0].starts_with("entry 3: missing"), "{deleted:?}");
    let mark = problems(2).await;
    assert!(mark[0].starts_with("read mark of"), "{mark:?}");
    let started = problems(3).await;
    assert!(started[0].starts_with("entry 0: hash"), "{started:?}");
}

/// The migration's SQL chains rows stored before it, and its hashes are the ones the Rust code
/// computes from the same rows: a database migrated with history checks clean, and the worker's
/// next writes continue its chains.
#[tokio::test]
async fn the_migration_chains_existing_history_as_the_worker_would_and_writes_continue_it() {
    let admin = std::env::var("PARLEY_TEST_DATABASE_URL").unwrap();
    let name = format!("parley_test_{}", Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let migrations: Vec<&str> = parley_store::MIGRATOR.iter().map(|m| m.sql.as_ref()).collect();
    let at = migrations
        .iter()
        .position(|sql| sql.contains("CREATE TABLE transcript_entries"))
        .expect("a migration creates the transcript entries");
    let (before, from) = migrations.split_at(at);
    let (transcripts, after) = from.split_first().unwrap();
    for sql in before {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let active = ProjectFixture::new("Before transcripts");
    let closed = ProjectFixture::new("Closed before transcripts");
    let started_at: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    for (project, status) in [(&active, "active"), (&closed, "closed")] {
        sqlx::query(
            "INSERT INTO conversations (id, project_id, project_title, status, started_at, closed_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, CASE WHEN $4 = 'closed' THEN $5 + interval '1 hour' END, $5)",
        )
        .bind(project.conversation_id())
        .bind(project.event.project_id)
        .bind(&project.event.title)
        .bind(status)
        .bind(started_at)
        .execute(&mut conn)
        .await
        .unwrap();
        for (party, role) in [(&project.event.client, "client"), (&project.event.provider, "provider")] {
            let mark = if role == "provider" { 2i64 } else { 0 };
            sqlx::query(
                "INSERT INTO participants (conversation_id, user_id, role, display_name, email, last_read_seq, read_at)
                 VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 > 0 THEN now() END)",
            )
            .bind(project.conversation_id())
            .bind(party.id)
            .bind(role)
            .bind(&party.display_name)
            .bind(&party.email)
            .bind(mark)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        for seq in [1i64, 2, 4] {
            let m = row(project, seq);
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, body, client_msg_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(m.id)
            .bind(m.conversation_id)
            .bind(m.seq)
            .bind(m.sender_id)
            .bind(&m.body)
            .bind(&m.client_msg_id)
            .bind(m.created_at)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    for sql in std::iter::once(transcripts).chain(after) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();

    let store = Store::connect_lazy(&url, 2).unwrap();
    // started, 3 messages, the provider's mark; and closed for the closed one.
    assert_matches(&store, active.conversation_id(), 5).await;
    assert_matches(&store, closed.conversation_id(), 6).await;
    store.insert_messages(&[row(&active, 7)]).await.unwrap();
    assert_matches(&store, active.conversation_id(), 6).await;
}
