//! Transcripts under the worker's worst day: two persistence worker binaries share the chat
//! consumer, one of them is killed with -9 after each round (batches in hand, rows committed but
//! not acked), and every round also re-publishes earlier messages past JetStream's duplicate
//! window (a redelivery the store must absorb through its idempotent fallback) and moves read
//! marks. At the end every conversation's chain recomputes from its rows and holds each stored
//! message exactly once.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use parley_events::{ReadMarked, subjects};
use parley_test_support::stack::{Spec, TestStack};
use parley_test_support::{ProjectFixture, conversation_exists, eventually, publish_json, publish_message};
use uuid::Uuid;

fn worker_binary() -> Spec {
    Spec::persistence().binary().batch_size(40).env("RUST_LOG", "warn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chain_verifies_and_holds_each_stored_message_once_while_workers_are_killed() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 60;
    let env = TestStack::builder().streams().build().await;
    let projects: Vec<ProjectFixture> = (0..3).map(|i| ProjectFixture::new(&format!("Chaos {i}"))).collect();
    for project in &projects {
        project.publish_started(&env.js).await;
    }
    let mut workers = vec![env.start(worker_binary()).await, env.start(worker_binary()).await];
    for project in &projects {
        conversation_exists(env.db(), project).await;
    }

    let mut published = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let project = &projects[i % projects.len()];
            let sender = if i % 2 == 0 {
                project.client()
            } else {
                project.provider()
            };
            let event = project.message(sender, &format!("round {round} message {i}"));
            let seq = publish_message(&env.js, &event).await;
            published.push((event, seq));
        }
        // The same events again, without `Nats-Msg-Id`: new stream messages carrying stored ids.
        for (event, _) in published.iter().rev().take(10) {
            publish_json(&env.js, &subjects::conversation_messages(event.conversation_id), event).await;
        }
        for project in &projects {
            let (_, seq) = published
                .iter()
                .rev()
                .find(|(event, _)| event.conversation_id == project.conversation_id())
                .unwrap();
            let reader = if round % 2 == 0 {
                project.client()
            } else {
                project.provider()
            };
            let read = ReadMarked {
                conversation_id: project.conversation_id(),
                user_id: reader,
                seq: *seq as i64 - 3,
                message_id: None,
                read_at: Utc::now(),
                participants: vec![project.client(), project.provider()],
            };
            publish_json(
                &env.js,
                &subjects::conversation_reads(project.conversation_id(), reader),
                &read,
            )
            .await;
        }
        let victim = round % 2;
        workers[victim].kill().await;
        workers[victim] = env.start(worker_binary()).await;
    }

    let store = env.db().store();
    let expected: HashSet<Uuid> = published.iter().map(|(event, _)| event.id).collect();
    eventually("every published message stored", Duration::from_secs(120), || async {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(store.pool())
            .await
            .unwrap();
        (stored as usize == expected.len()).then_some(())
    })
    .await;
    // The read marks are published after each round's messages: wait for the last ones.
    for project in &projects {
        eventually("the last read marks stored", Duration::from_secs(60), || async {
            let marks: Vec<i64> =
                sqlx::query_scalar("SELECT last_read_seq FROM participants WHERE conversation_id = $1")
                    .bind(project.conversation_id())
                    .fetch_all(store.pool())
                    .await
                    .unwrap();
            marks.iter().all(|mark| *mark > 0).then_some(())
        })
        .await;
    }
    for mut worker in workers {
        worker.kill().await;
    }

    for project in &projects {
        let conversation = project.conversation_id();
        let report = store.check_transcript(conversation).await.unwrap().unwrap();
        assert_eq!(report.problems, Vec::<String>::new(), "{conversation}");
        let chained: Vec<(Uuid, i64)> =
            sqlx::query_as("SELECT id, chain_n FROM messages WHERE conversation_id = $1 ORDER BY chain_n")
                .bind(conversation)
                .fetch_all(store.pool())
                .await
                .unwrap();
        let ids: HashSet<Uuid> = chained.iter().map(|(id, _)| *id).collect();
        let mine: HashSet<Uuid> = published
            .iter()
            .filter(|(event, _)| event.conversation_id == conversation)
            .map(|(event, _)| event.id)
            .collect();
        assert_eq!(ids, mine, "exactly the conversation's messages, each chained once");
        let places: HashSet<i64> = chained.iter().map(|(_, n)| *n).collect();
        assert_eq!(places.len(), chained.len(), "two messages at one place");
        let header = store.transcript_header(conversation).await.unwrap().unwrap();
        let others: i64 = sqlx::query_scalar("SELECT count(*) FROM transcript_entries WHERE conversation_id = $1")
            .bind(conversation)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(header.size, chained.len() as i64 + others);
        assert_eq!(report.entries, header.size as u64);
    }
}
