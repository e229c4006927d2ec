//! Unread counts kept by the writes: the other party's messages above each participant's mark,
//! exact under redelivery, late (out-of-order) messages and transactions that overlap on one
//! participant. Each test checks the kept count against a count from the stored messages.

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
