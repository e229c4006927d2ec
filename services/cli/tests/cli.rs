//! The `parley` binary against a private nats-server: `status` before and after the streams exist,
//! consumer lag, and listing and re-driving dead letters.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream::RawMessageErrorKind};
use chrono::Utc;
use futures::StreamExt as _;
use parley_events::{DeadLetter, subjects};
use parley_test_support::ProjectFixture;
use parley_test_support::stack::TestStack;
use serde_json::Value;
use uuid::Uuid;

/// A private nats-server (no database, no service): what the CLI talks to.
struct Env {
    stack: TestStack,
}

impl std::ops::Deref for Env {
    type Target = TestStack;

    fn deref(&self) -> &TestStack {
        &self.stack
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut TestStack {
        &mut self.stack
    }
}

async fn env() -> Env {
    Env {
        stack: TestStack::builder().without_database().build().await,
    }
}

impl Env {
    async fn with_streams() -> Env {
        Env {
            stack: TestStack::builder().without_database().streams().build().await,
        }
    }

    /// Runs `parley <args> --nats-url <this server>`.
    async fn parley(&self, args: &[&str]) -> Output {
        run(args, &self.nats.url()).await
    }

    /// Runs `parley <args> --json`, expects success and returns the JSON.
    async fn parley_json(&self, args: &[&str]) -> Value {
        let output = self.parley(&[args, &["--json"]].concat()).await;
        assert!(output.status.success(), "{}", describe(&output));
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&output)))
    }

    async fn publish_dead_letter(&self, letter: &DeadLetter) -> u64 {
        self.js
            .publish(
                subjects::dead_letter("persistence"),
                serde_json::to_vec(letter).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    async fn stream_messages(&self, name: &str) -> u64 {
        self.js.get_stream(name).await.unwrap().cached_info().state.messages
    }
}

async fn run(args: &[&str], nats_url: &str) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(args)
        .args(["--nats-url", nats_url])
        .env_remove("NATS_URL")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The whitespace-separated cells of the table line starting with `first`.
fn row(text: &str, first: &str) -> Vec<String> {
    text.lines()
        .find(|line| line.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{text}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn find<'a>(items: &'a Value, key: &str, value: &str) -> &'a Value {
    items
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item[key] == value)
        .unwrap_or_else(|| panic!("no {key} = {value} in {items:#}"))
}

fn letter(subject: &str, stream_seq: u64, reason: &str, payload: String) -> DeadLetter {
    DeadLetter {
        stream: parley_nats::PROJECTS_STREAM.into(),
        stream_seq,
        subject: subject.into(),
        reason: reason.into(),
        payload,
        failed_at: Utc::now(),
    }
}

fn project_started_payload(title: &str) -> String {
    serde_json::to_string(&ProjectFixture::new(title).event).unwrap()
}

#[tokio::test]
async fn status_reports_every_stream_as_missing_before_any_service_created_them() {
    let env = env().await;

    let output = env.parley(&["status"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    for name in [
        "PARLEY_PROJECTS",
        "PARLEY_CHAT",
        "PARLEY_DEADLETTER",
        "PARLEY_NOTIFICATIONS",
        "PARLEY_EMAIL",
    ] {
        assert_eq!(row(&text, name)[1..3], ["stream", "missing"], "{text}");
    }
    assert_eq!(row(&text, "KV_PARLEY_PRESENCE")[1..3], ["kv", "missing"], "{text}");
    assert!(text.contains("No durable consumers yet."), "{text}");

    let json = env.parley_json(&["status"]).await;
    let streams = json["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 8, "five streams and three buckets: {json:#}");
    assert!(
        streams
            .iter()
            .all(|s| s["state"] == "missing" && s["messages"].is_null()),
        "{json:#}"
    );
    assert_eq!(json["consumers"], serde_json::json!([]));
}

#[tokio::test]
async fn status_shows_stream_counts_and_lag_as_pending_plus_ack_pending() {
    let env = Env::with_streams().await;
    let durable = parley_nats::ensure_pull_consumer(&env.js, parley_nats::PERSISTENCE_CHAT_CONSUMER)
        .await
        .unwrap();
    let conversation = Uuid::new_v4();
    for body in ["one", "two", "three"] {
        parley_test_support::publish_json(
            &env.js,
            &subjects::conversation_messages(conversation),
            &serde_json::json!({ "body": body }),
        )
        .await;
    }
    // The worker took two messages and acknowledged only the first: one waits to be delivered,
    // one waits for its ack, and the ack floor is at stream sequence 1.
    let mut batch = durable.fetch().max_messages(2).messages().await.unwrap();
    let first = batch.next().await.unwrap().unwrap();
    first.double_ack().await.unwrap();
    let _second = batch.next().await.unwrap().unwrap();
    // An ephemeral consumer, which status leaves out unless asked.
    let chat = env.js.get_stream(parley_nats::CHAT_STREAM).await.unwrap();
    chat.create_consumer(consumer::pull::Config {
        inactive_threshold: Duration::from_secs(300),
        ..Default::default()
    })
    .await
    .unwrap();

    let output = env.parley(&["status"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let chat_row = row(&text, "PARLEY_CHAT");
    // STREAM KIND STATE MESSAGES BYTES(n unit) FIRST LAST CONSUMERS
    assert_eq!(chat_row[..4], ["PARLEY_CHAT", "stream", "ok", "3"], "{text}");
    assert_eq!(chat_row[6..], ["1", "3", "2"], "{text}");
    assert_eq!(
        row(&text, "parley-persistence-chat"),
        ["parley-persistence-chat", "PARLEY_CHAT", "1", "1", "0", "1", "2"],
        "pending, ack pending, redelivered, ack floor, lag:\n{text}"
    );
    assert!(text.contains("lag = num_pending + num_ack_pending"), "{text}");
    assert!(!text.contains("(ephemeral)"), "{text}");

    let json = env.parley_json(&["status"]).await;
    let chat = find(&json["streams"], "name", "PARLEY_CHAT");
    assert_eq!(chat["state"], "ok");
    assert_eq!(chat["messages"], 3);
    assert!(chat["bytes"].as_u64().unwrap() > 0);
    assert_eq!(chat["firstSeq"], 1);
    assert_eq!(chat["lastSeq"], 3);
    assert_eq!(chat["consumerCount"], 2);
    assert_eq!(find(&json["streams"], "name", "PARLEY_DEADLETTER")["messages"], 0);
    assert_eq!(
        json["consumers"].as_array().unwrap().len(),
        1,
        "only the durable one: {json:#}"
    );
    let persistence = find(&json["consumers"], "name", "parley-persistence-chat");
    assert_eq!(persistence["stream"], "PARLEY_CHAT");
    assert_eq!(persistence["durable"], true);
    assert_eq!(persistence["numPending"], 1);
    assert_eq!(persistence["numAckPending"], 1);
    assert_eq!(persistence["numRedelivered"], 0);
    assert_eq!(persistence["ackFloorStreamSeq"], 1);
    assert_eq!(persistence["lag"], 2);

    let with_ephemeral = env.parley_json(&["status", "--ephemeral"]).await;
    let consumers = with_ephemeral["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 2, "{with_ephemeral:#}");
    assert!(
        consumers.iter().any(|c| c["durable"] == false && c["lag"] == 3),
        "{with_ephemeral:#}"
    );
    let output = env.parley(&["status", "--ephemeral"]).await;
    assert!(stdout(&output).contains("(ephemeral)"), "{}", describe(&output));
}

#[tokio::test]
async fn status_fails_with_one_clear_line_when_nats_is_unreachable() {
    let mut env = env().await;
    let url = env.nats.url();
    env.nats.kill();

    let output = run(&["status"], &url).await;
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("parley: cannot reach NATS at {url}")),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "{}", describe(&output));
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriving_one_republishes_it_and_removes_only_that_letter() {
    let env = Env::with_streams().await;
    let first_payload = project_started_payload("First");
    let second_payload = project_started_payload("Second");
    let first = env
        .publish_dead_letter(&letter(
            subjects::PROJECT_STARTED,
            7,
            "database unavailable\nfor too long",
            first_payload.clone(),
        ))
        .await;
    let second = env
        .publish_dead_letter(&letter(subjects::PROJECT_STARTED, 8, "second reason", second_payload))
        .await;

    let output = env.parley(&["deadletters", "list"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    let first_row = row(&text, &first.to_string());
    assert_eq!(
        first_row[2..4],
        ["PARLEY_PROJECTS/7", subjects::PROJECT_STARTED],
        "{text}"
    );
    assert!(
        text.contains("database unavailable\\nfor too long"),
        "reasons stay on one line: {text}"
    );
    assert_eq!(row(&text, &second.to_string())[2], "PARLEY_PROJECTS/8", "{text}");
    assert!(!text.contains("First"), "no payload unless asked: {text}");
    assert!(text.contains("2 dead letters."), "{text}");
    let with_payload = stdout(&env.parley(&["deadletters", "list", "--show-payload"]).await);
    assert!(
        with_payload.contains("PAYLOAD") && with_payload.contains(r#"{"projectId":"#),
        "{with_payload}"
    );
    let limited = stdout(&env.parley(&["deadletters", "list", "--limit", "1"]).await);
    assert!(limited.contains("1 of 2 dead letters shown"), "{limited}");

    let listed = env.parley_json(&["deadletters", "list"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["seq"], first);
    assert_eq!(listed[0]["stream"], "PARLEY_PROJECTS");
    assert_eq!(listed[0]["streamSeq"], 7);
    assert_eq!(listed[0]["subject"], subjects::PROJECT_STARTED);
    assert_eq!(listed[0]["deadLetterSubject"], "parley.deadletter.persistence");
    assert!(listed[0]["failedAt"].is_string());
    assert!(listed[0].get("payload").is_none());
    assert_eq!(listed[1]["seq"], second);

    let dry = env
        .parley(&["deadletters", "redrive", "--seq", &first.to_string(), "--dry-run"])
        .await;
    assert!(dry.status.success(), "{}", describe(&dry));
    assert!(stdout(&dry).contains("would redrive"), "{}", describe(&dry));
    assert_eq!(env.stream_messages(parley_nats::PROJECTS_STREAM).await, 0);
    assert_eq!(env.stream_messages(parley_nats::DEADLETTER_STREAM).await, 2);

    let output = env
        .parley(&["deadletters", "redrive", "--seq", &first.to_string()])
        .await;
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    assert_eq!(
        row(&text, &first.to_string())[1..3],
        ["redriven", subjects::PROJECT_STARTED],
        "{text}"
    );
    assert!(
        text.contains("republished as PARLEY_PROJECTS/1; letter deleted"),
        "{text}"
    );

    let projects = env.js.get_stream(parley_nats::PROJECTS_STREAM).await.unwrap();
    assert_eq!(projects.cached_info().state.messages, 1);
    let republished = projects.get_raw_message(1).await.unwrap();
    assert_eq!(republished.subject.as_str(), subjects::PROJECT_STARTED);
    assert_eq!(republished.payload, first_payload.as_bytes());

    let dead = env.js.get_stream(parley_nats::DEADLETTER_STREAM).await.unwrap();
    assert_eq!(dead.cached_info().state.messages, 1);
    let gone = dead.get_raw_message(first).await.unwrap_err();
    assert_eq!(gone.kind(), RawMessageErrorKind::NoMessageFound);
    let remaining = env.parley_json(&["deadletters", "list"]).await;
    assert_eq!(remaining.as_array().unwrap().len(), 1);
    assert_eq!(remaining[0]["seq"], second);
}

#[tokio::test]
async fn redriving_an_unknown_sequence_fails_clearly_and_changes_nothing() {
    let env = Env::with_streams().await;
    let known = env
        .publish_dead_letter(&letter(
            subjects::PROJECT_STARTED,
            1,
            "poison",
            project_started_payload("Kept"),
        ))
        .await;

    let output = env
        .parley(&["deadletters", "redrive", "--seq", &known.to_string(), "--seq", "999"])
        .await;
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        "parley: no dead letter with sequence 999 in PARLEY_DEADLETTER (see `parley deadletters list`); \
         nothing was redriven"
    );
    assert!(output.stdout.is_empty(), "{}", describe(&output));
    assert_eq!(env.stream_messages(parley_nats::PROJECTS_STREAM).await, 0);
    assert_eq!(env.stream_messages(parley_nats::DEADLETTER_STREAM).await, 1);
}

#[tokio::test]
async fn redrive_all_keeps_a_letter_whose_republish_fails_and_exits_non_zero() {
    let env = Env::with_streams().await;
    let good = env
        .publish_dead_letter(&letter(
            subjects::PROJECT_STARTED,
            1,
            "poison",
            project_started_payload("Good"),
        ))
        .await;
    let homeless = env
        .publish_dead_letter(&letter("parley.nowhere.at.all", 2, "no stream", "{}".into()))
        .await;

    let output = env.parley(&["deadletters", "redrive", "--all", "--json"]).await;
    assert!(!output.status.success(), "{}", describe(&output));
    let outcomes: Value = serde_json::from_slice(&output.stdout).unwrap();
    let good_outcome = find(&outcomes, "result", "redriven");
    assert_eq!(good_outcome["seq"], good);
    assert_eq!(good_outcome["republished"]["stream"], "PARLEY_PROJECTS");
    let failed = find(&outcomes, "result", "failed");
    assert_eq!(failed["seq"], homeless);
    assert!(
        failed["error"].as_str().unwrap().contains("republish failed"),
        "{outcomes:#}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 of 2 dead letters were not redriven"), "{stderr}");

    assert_eq!(env.stream_messages(parley_nats::PROJECTS_STREAM).await, 1);
    let remaining = env.parley_json(&["deadletters", "list"]).await;
    assert_eq!(remaining.as_array().unwrap().len(), 1);
    assert_eq!(remaining[0]["seq"], homeless);
}

#[tokio::test]
async fn dead_letter_commands_treat_a_missing_stream_as_empty_and_unknown_sequences_as_errors() {
    let env = env().await;

    let output = env.parley(&["deadletters", "list"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stdout(&output).contains("PARLEY_DEADLETTER does not exist yet"));
    assert_eq!(env.parley_json(&["deadletters", "list"]).await, serde_json::json!([]));

    let output = env.parley(&["deadletters", "redrive", "--seq", "1"]).await;
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no dead letter with sequence 1"));
}

#[tokio::test]
async fn project_start_and_token_mint_keep_the_flags_scripts_use() {
    let env = env().await;
    let project = ProjectFixture::new("Flags").event;
    let project_id = project.project_id.to_string();
    let (client_id, provider_id) = (project.client.id.to_string(), project.provider.id.to_string());
    let output = env
        .parley(&[
            "project",
            "start",
            "--project-id",
            &project_id,
            "--title",
            "Flags",
            "--client-id",
            &client_id,
            "--client-name",
            "Ann",
            "--client-email",
            "ann@example.test",
            "--provider-id",
            &provider_id,
            "--provider-name",
            "Bo",
            "--provider-email",
            "bo@example.test",
        ])
        .await;
    assert!(output.status.success(), "{}", describe(&output));
    let conversation = parley_domain::ids::conversation_id_for_project(project.project_id);
    assert_eq!(stdout(&output).trim(), conversation.to_string());
    let output = env.parley(&["project", "close", "--project-id", &project_id]).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(env.stream_messages(parley_nats::PROJECTS_STREAM).await, 2);

    let token = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley"))
        .args([
            "token",
            "mint",
            "--secret=0123456789abcdef0123",
            "--user-id",
            &client_id,
            "--ttl-hours",
            "1",
        ])
        .output()
        .await
        .unwrap();
    assert!(token.status.success(), "{}", describe(&token));
    assert_eq!(
        stdout(&token).trim().split('.').count(),
        3,
        "a JWT: {}",
        describe(&token)
    );
}
