//! Real infrastructure for tests, one private instance per test so tests run in parallel: a
//! nats-server with JetStream in its own folder on its own port, a fresh Postgres database with
//! Parley's schema, signed tokens, project fixtures, and a plain HTTP/1.1 client.
//!
//! It needs `PARLEY_TEST_NATS_SERVER` (a nats-server ≥ 2.10 binary; `nats-server` on `PATH`
//! otherwise) and `PARLEY_TEST_DATABASE_URL` (a Postgres superuser URL); `scripts/test.sh` sets
//! both.

pub mod cluster;
pub mod http;
pub mod nats;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod smtp;
#[cfg(feature = "stack")]
pub mod stack;

use std::future::Future;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use parley_events::{MessagePosted, Party, ProjectClosed, ProjectStarted, subjects};
use sqlx::Connection;
use uuid::Uuid;

pub use nats::NatsServer;
pub use parley_sio_client as sio;

/// The secret test tokens are signed with.
pub const TEST_JWT_SECRET: &str = "parley-test-secret-0123456789abcdef";

/// A fresh, migrated database of its own.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub url: String,
    pub name: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let admin = std::env::var("PARLEY_TEST_DATABASE_URL")
            .expect("PARLEY_TEST_DATABASE_URL must point at a Postgres superuser (scripts/test.sh sets it)");
        let name = format!("parley_test_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to PARLEY_TEST_DATABASE_URL");
        // `name` is built from a UUID above: no caller input reaches this statement.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        let store = parley_store::Store::connect_lazy(&url, 2).expect("database url");
        store.migrate().await.expect("migrate test database");
        store.pool().close().await;
        TestDatabase { url, name }
    }

    /// A store on this database.
    pub fn store(&self) -> parley_store::Store {
        parley_store::Store::connect_lazy(&self.url, 4).expect("database url")
    }
}

/// An HS256 token for `user`, valid for an hour, signed with `secret`.
pub fn token_for(user: Uuid, secret: &str) -> String {
    let claims = serde_json::json!({ "sub": user, "exp": Utc::now().timestamp() + 3600 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// A project with a fresh client and provider.
#[derive(Debug, Clone)]
pub struct ProjectFixture {
    pub event: ProjectStarted,
}

impl ProjectFixture {
    pub fn new(title: &str) -> Self {
        let party = |name: &str| Party {
            id: Uuid::new_v4(),
            display_name: name.to_owned(),
            email: format!("{}@example.test", name.to_lowercase()),
        };
        Self {
            event: ProjectStarted {
                project_id: Uuid::new_v4(),
                title: title.to_owned(),
                client: party("Client"),
                provider: party("Provider"),
                started_at: Utc::now(),
            },
        }
    }

    pub fn client(&self) -> Uuid {
        self.event.client.id
    }

    pub fn provider(&self) -> Uuid {
        self.event.provider.id
    }

    pub fn conversation_id(&self) -> Uuid {
        parley_domain::ids::conversation_id_for_project(self.event.project_id)
    }

    /// Publishes `parley.project.started` through JetStream and waits for the ack.
    pub async fn publish_started(&self, js: &async_nats::jetstream::Context) {
        publish_json(js, subjects::PROJECT_STARTED, &self.event).await;
    }

    /// A message event of this project from `sender`, as the gateway would publish it.
    pub fn message(&self, sender: Uuid, body: &str) -> MessagePosted {
        MessagePosted {
            id: Uuid::now_v7(),
            conversation_id: self.conversation_id(),
            project_id: self.event.project_id,
            sender_id: sender,
            body: body.to_owned(),
            client_msg_id: None,
            created_at: Utc::now().trunc_subsecs(3),
            participants: vec![self.client(), self.provider()],
        }
    }

    /// Publishes `parley.project.closed`.
    pub async fn publish_closed(&self, js: &async_nats::jetstream::Context) {
        let event = ProjectClosed {
            project_id: self.event.project_id,
            closed_at: Utc::now(),
        };
        publish_json(js, subjects::PROJECT_CLOSED, &event).await;
    }
}

/// Publishes a message event the way the gateway does (with `Nats-Msg-Id`); returns its stream
/// sequence, the message's `seq`.
pub async fn publish_message(js: &async_nats::jetstream::Context, event: &MessagePosted) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
    let subject = subjects::conversation_messages(event.conversation_id);
    js.publish_with_headers(subject, headers, serde_json::to_vec(event).expect("json").into())
        .await
        .expect("publish")
        .await
        .expect("publish ack")
        .sequence
}

/// Publishes `value` as JSON on `subject` through JetStream and waits for the ack.
pub async fn publish_json(js: &async_nats::jetstream::Context, subject: &str, value: &impl serde::Serialize) {
    js.publish(subject.to_owned(), serde_json::to_vec(value).expect("json").into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

/// Polls `check` until it returns `Some`, for state that has no event to await (a row landing in
/// Postgres). Panics with `what` after `timeout`: a generous bound, not a speed assertion.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() <= deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A durable consumer's info, `None` while it (or its stream) cannot be read: for polling.
pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Option<async_nats::jetstream::consumer::Info> {
    js.get_stream_no_info(stream)
        .await
        .ok()?
        .consumer_info(consumer)
        .await
        .ok()
}

/// Whether the durable consumer `name` on `stream` has acknowledged everything in it: nothing
/// pending, nothing awaiting its ack. `false` while it cannot be read: for polling.
pub async fn consumer_caught_up(js: &async_nats::jetstream::Context, stream: &str, name: &str) -> bool {
    consumer_info(js, stream, name)
        .await
        .is_some_and(|info| info.num_pending == 0 && info.num_ack_pending == 0)
}

/// Every message `stream` holds when called, in order, each with its `Nats-Msg-Id` (empty when
/// it has none): what a test checks a stream against once the work is done. Read by an ordered
/// consumer, so nothing is acknowledged or left behind.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<(String, async_nats::jetstream::Message)> {
    use futures::StreamExt as _;
    let stream = js.get_stream(stream).await.expect("the stream exists");
    let count = stream.get_info().await.expect("the stream's info").state.messages;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("the consumer's messages");
    let mut out = Vec::new();
    for _ in 0..count {
        let message = messages
            .next()
            .await
            .expect("the stream ended early")
            .expect("a message");
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(parley_nats::MSG_ID_HEADER))
            .map(ToString::to_string)
            .unwrap_or_default();
        out.push((id, message));
    }
    out
}

/// Takes the durable name of `definition` with a push consumer, so that a service cannot apply
/// its consumer (a setup that cannot finish yet) until [`free_durable_name`].
pub async fn occupy_durable_name(js: &async_nats::jetstream::Context, definition: parley_nats::ConsumerDefinition) {
    let stream = js.get_stream(definition.stream).await.expect("the stream exists");
    stream
        .create_consumer(async_nats::jetstream::consumer::push::Config {
            durable_name: Some(definition.durable_name().expect("a durable name")),
            deliver_subject: format!("parley.test.occupied.{}", Uuid::new_v4().simple()),
            ..Default::default()
        })
        .await
        .expect("a push consumer under the name");
}

/// Gives back what [`occupy_durable_name`] took.
pub async fn free_durable_name(js: &async_nats::jetstream::Context, definition: parley_nats::ConsumerDefinition) {
    let stream = js.get_stream(definition.stream).await.expect("the stream exists");
    stream
        .delete_consumer(&definition.durable_name().expect("a durable name"))
        .await
        .expect("the push consumer deleted");
}

/// Waits until `admin`'s `/readyz` answers 200.
pub async fn ready(admin: std::net::SocketAddr, patience: Duration) {
    eventually("the service to be ready", patience, || async {
        (http::request(admin, "GET", "/readyz", None, None).await.status == 200).then_some(())
    })
    .await;
}

/// Asks `admin`'s `/readyz` every 50 ms for `window` and panics at the first 200: for a service
/// that must not say it is ready yet. (A wrong 200 comes within milliseconds of connecting.)
pub async fn not_ready_for(admin: std::net::SocketAddr, window: Duration) {
    let until = tokio::time::Instant::now() + window;
    let mut asked = 0;
    while tokio::time::Instant::now() < until {
        let ready = http::request(admin, "GET", "/readyz", None, None).await;
        assert_ne!(ready.status, 200, "ready before its consumers exist (ask {asked})");
        asked += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the conversation of `project` exists in `db`.
pub async fn conversation_exists(db: &TestDatabase, project: &ProjectFixture) {
    let store = db.store();
    let user = project.client();
    let id = project.conversation_id();
    eventually("the conversation to be created", Duration::from_secs(30), || async {
        store.access(id, user).await.ok().flatten().map(|_| ())
    })
    .await;
}

/// A binary of another workspace package, built beside the test executable (`cargo test
/// --workspace` builds every package's binaries).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (or cargo test --workspace) first",
        path.display()
    );
    path
}
