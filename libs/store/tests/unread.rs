//! Unread counts kept by the writes: the other party's messages above each participant's mark,
//! exact under redelivery, late (out-of-order) messages and transactions that overlap on one
//! participant. Each test checks the kept count against a count from the stored messages.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use parley_store::{MessageRow, ReadMarkRow, Store};
use parley_test_support::{ProjectFixture, TestDatabase, eventually};
use tokio::sync::oneshot;
use uuid::Uuid;

struct Conversation {
    store: Store,
    project: ProjectFixture,
}

impl Conversation {
    async fn new(db: &TestDatabase) -> Conversation {
        let store = db.store();
        let project = ProjectFixture::new("Unread");
        store.apply_project_started(&project.event).await.unwrap();
        Conversation { store, project }
    }

    fn message(&self, sender: Uuid, seq: i64) -> MessageRow {
        MessageRow {
            id: Uuid::now_v7(),
            conversation_id: self.project.conversation_id(),
            seq,
            sender_id: sender,
            body: format!("message {seq}"),
            client_msg_id: None,
            created_at: Utc::now(),
        }
    }

    fn mark(&self, user: Uuid, seq: i64) -> ReadMarkRow {
        ReadMarkRow {
            conversation_id: self.project.conversation_id(),
            user_id: user,
            seq,
            read_at: Utc::now(),
        }
    }

    /// The count as kept, as conversation lists show it.
    async fn unread(&self, user: Uuid) -> i64 {
        let conversation = self.store.conversation_of(user, self.project.conversation_id()).await;
        conversation.unwrap().unwrap().unread_count
    }

    /// The count from the stored messages themselves.
    async fn counted(&self, user: Uuid) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM messages m JOIN participants p
                 ON p.conversation_id = m.conversation_id AND p.user_id = $2
              WHERE m.conversation_id = $1 AND m.sender_id <> $2 AND m.seq > p.last_read_seq",
        )
        .bind(self.project.conversation_id())
        .bind(user)
        .fetch_one(self.store.pool())
        .await
        .unwrap()
    }

    async fn assert_unread(&self, user: Uuid, expected: i64, when: &str) {
        assert_eq!(
            self.counted(user).await,
            expected,
            "{when}: the stored messages say {expected}"
        );
        assert_eq!(self.unread(user).await, expected, "{when}: the kept count");
    }
}

/// Waits until another session of this database is blocked on a row lock.
async fn someone_waits_for_a_lock(store: &Store) {
    eventually(
        "a transaction to wait for the row lock",
        Duration::from_secs(30),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(store.pool())
            .await
            .ok()?;
            (waiting > 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn unread_counts_follow_messages_marks_redeliveries_and_late_messages() {
    let db = TestDatabase::create().await;
    let c = Conversation::new(&db).await;
    let (client, provider) = (c.project.client(), c.project.provider());

    c.store
        .insert_messages(&[c.message(provider, 3), c.message(provider, 9), c.message(client, 10)])
        .await
        .unwrap();
    c.assert_unread(client, 2, "two from the provider").await;
    c.assert_unread(provider, 1, "one from the client").await;

    c.store.apply_read_marks(&[c.mark(client, 5)]).await.unwrap();
    c.assert_unread(client, 1, "read up to 5").await;

    // A message below the mark that is stored late (another worker's batch) stays read.
    c.store.insert_messages(&[c.message(provider, 4)]).await.unwrap();
    c.assert_unread(client, 1, "late message below the mark").await;

    // A redelivered message counts once; a new one above the mark counts.
    let twelve = c.message(provider, 12);
    c.store.insert_messages(std::slice::from_ref(&twelve)).await.unwrap();
    c.store
        .insert_messages(&[twelve, c.message(provider, 13)])
        .await
        .unwrap();
    c.assert_unread(client, 3, "9, 12 and 13").await;

    // A mark that does not move changes nothing; one to the latest clears the count.
    c.store.apply_read_marks(&[c.mark(client, 4)]).await.unwrap();
    c.assert_unread(client, 3, "mark not moved").await;
    c.store.apply_read_marks(&[c.mark(client, 13)]).await.unwrap();
    c.assert_unread(client, 0, "all read").await;
    c.assert_unread(provider, 1, "the provider read nothing").await;
}

#[tokio::test]
async fn messages_stored_while_a_mark_commits_count_against_the_committed_mark() {
    let db = TestDatabase::create().await;
    let c = Conversation::new(&db).await;
    let client = c.project.client();
    c.store.insert_messages(&[c.message(client, 1)]).await.unwrap();

    // A batch moves the client's mark to 6 and holds its transaction open.
    let (wrote, statements_done) = oneshot::channel();
    let (release, released) = oneshot::channel::<()>();
    let marking = {
        let (store, mark) = (c.store.clone(), c.mark(client, 6));
        tokio::spawn(async move {
            store
                .write_batch(&[], &[mark], async move {
                    let _ = wrote.send(());
                    let _ = released.await;
                })
                .await
        })
    };
    statements_done.await.unwrap();
    // Meanwhile another batch stores the provider's 5 and 8: it must wait for the client's row.
    let storing = {
        let (store, rows) = (
            c.store.clone(),
            vec![c.message(c.project.provider(), 5), c.message(c.project.provider(), 8)],
        );
        tokio::spawn(async move { store.insert_messages(&rows).await })
    };
    someone_waits_for_a_lock(&c.store).await;
    release.send(()).unwrap();
    marking.await.unwrap().unwrap();
    storing.await.unwrap().unwrap();
    c.assert_unread(client, 1, "only 8 is above the mark").await;
}

#[tokio::test]
async fn a_mark_moved_while_messages_commit_recounts_them() {
    let db = TestDatabase::create().await;
    let c = Conversation::new(&db).await;
    let (client, provider) = (c.project.client(), c.project.provider());

    // A batch stores the provider's 5 and 8 and holds its transaction open.
    let (wrote, statements_done) = oneshot::channel();
    let (release, released) = oneshot::channel::<()>();
    let storing = {
        let (store, rows) = (c.store.clone(), vec![c.message(provider, 5), c.message(provider, 8)]);
        tokio::spawn(async move {
            store
                .write_batch(&rows, &[], async move {
                    let _ = wrote.send(());
                    let _ = released.await;
                })
                .await
        })
    };
    statements_done.await.unwrap();
    // Meanwhile the client's mark moves to 6: it waits for the batch, then sees its messages.
    let marking = {
        let (store, mark) = (c.store.clone(), c.mark(client, 6));
        tokio::spawn(async move { store.apply_read_marks(&[mark]).await })
    };
    someone_waits_for_a_lock(&c.store).await;
    release.send(()).unwrap();
    storing.await.unwrap().unwrap();
    assert_eq!(marking.await.unwrap().unwrap(), 1);
    c.assert_unread(client, 1, "8 is above the mark").await;
}

/// One write the persistence worker may make, in any order the stream's redeliveries allow.
#[derive(Debug, Clone)]
enum Write {
    /// A message at `seq` from the client (`true`) or the provider; the same `seq` again is a
    /// redelivery of the same message.
    Message { from_client: bool, seq: i64 },
    /// A read mark of the client (`true`) or the provider, to `seq`.
    Mark { of_client: bool, seq: i64 },
}

fn write() -> impl proptest::strategy::Strategy<Value = Write> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (any::<bool>(), 1i64..30).prop_map(|(from_client, seq)| Write::Message { from_client, seq }),
        1 => (any::<bool>(), 0i64..32).prop_map(|(of_client, seq)| Write::Mark { of_client, seq }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Whatever order messages, redeliveries and read marks arrive in, each participant's mark
    /// only moves forward and the kept unread count is the other party's messages above it, as
    /// is the count for a mark the worker has not applied yet (`unread_above`).
    #[test]
    fn marks_only_move_forward_and_the_kept_count_is_always_the_model(
        writes in proptest::collection::vec(write(), 1..40)
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let db = TestDatabase::create().await;
            let c = Conversation::new(&db).await;
            let (client, provider) = (c.project.client(), c.project.provider());
            let mut messages: std::collections::BTreeMap<i64, (bool, MessageRow)> = std::collections::BTreeMap::new();
            let mut marks = (0i64, 0i64);
            for w in &writes {
                match *w {
                    Write::Message { from_client, seq } => {
                        let sender = if from_client { client } else { provider };
                        let (_, row) = messages.entry(seq).or_insert_with(|| (from_client, c.message(sender, seq)));
                        c.store.insert_messages(std::slice::from_ref(row)).await.unwrap();
                    }
                    Write::Mark { of_client, seq } => {
                        let user = if of_client { client } else { provider };
                        c.store.apply_read_marks(&[c.mark(user, seq)]).await.unwrap();
                        let mark = if of_client { &mut marks.0 } else { &mut marks.1 };
                        *mark = (*mark).max(seq);
                    }
                }
                for (user, mark, is_client) in [(client, marks.0, true), (provider, marks.1, false)] {
                    let expected = messages.iter().filter(|(seq, (from_client, _))| **seq > mark && *from_client != is_client).count() as i64;
                    assert_eq!(c.store.read_mark(c.project.conversation_id(), user).await.unwrap(), mark, "after {w:?}");
                    assert_eq!(c.unread(user).await, expected, "after {w:?}");
                    let above = c.store.unread_above(c.project.conversation_id(), user, mark).await.unwrap();
                    assert_eq!(above, expected, "unread_above after {w:?}");
                }
            }
            c.store.pool().close().await;
        });
    }
}
