//! Message writes against a real Postgres database per test, through the store alone: a
//! redelivered or duplicated message is stored once, and the last message only moves forward.
//! (The persistence worker's tests cover the same writes arriving through JetStream.)

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use chrono::Utc;
use parley_store::MessageRow;
use parley_test_support::{ProjectFixture, TestDatabase};
use uuid::Uuid;

async fn stored_count(db: &TestDatabase, conversation: Uuid) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages WHERE conversation_id = $1")
        .bind(conversation)
        .fetch_one(db.store().pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_redelivery_inside_one_batch_and_a_duplicate_across_batches_leave_one_row() {
    let db = TestDatabase::create().await;
    let project = ProjectFixture::new("Dedup");
    db.store().apply_project_started(&project.event).await.unwrap();
    let store = db.store();
    let row = |seq: i64, id: Uuid| MessageRow {
        id,
        conversation_id: project.conversation_id(),
        seq,
        sender_id: project.client(),
        body: format!("body {seq}"),
        client_msg_id: None,
        created_at: Utc::now(),
    };
    let id = Uuid::now_v7();
    let inserted = store.insert_messages(&[row(7, id), row(7, id)]).await.unwrap();
    assert_eq!(inserted, 1);
    let inserted = store
        .insert_messages(&[row(7, id), row(9, Uuid::now_v7())])
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    // A late, lower sequence never moves the last message back.
    store.insert_messages(&[row(3, Uuid::now_v7())]).await.unwrap();
    assert_eq!(stored_count(&db, project.conversation_id()).await, 3);
    let conversation = store
        .conversation_of(project.client(), project.conversation_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conversation.last_message.unwrap().seq, 9);
}
