//! A whole Parley stack per test: a private nats-server, a fresh database, an in-process
//! persistence worker and any number of real gateways on port 0.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use parley_gateway::{Application, Config};
use parley_test_support::sio::Client;
use parley_test_support::{NatsServer, ProjectFixture, TEST_JWT_SECRET, TestDatabase, conversation_exists, token_for};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(15);

pub struct TestGateway {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
}

impl TestGateway {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Stack {
    pub nats: NatsServer,
    pub db: TestDatabase,
    pub js: jetstream::Context,
    pub gateways: Vec<TestGateway>,
    pub worker: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.worker.cancel();
    }
}

/// Starts a real gateway on port 0 against `nats_url` and `database_url`.
pub async fn spawn_gateway(nats_url: &str, database_url: &str) -> TestGateway {
    let config = Config {
        nats_url: nats_url.to_owned(),
        database_url: database_url.to_owned(),
        jwt_secret: TEST_JWT_SECRET.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        stream_replicas: 1,
        db_pool_size: 8,
    };
    let app = Application::build(config).await.expect("gateway builds");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    // The listener is bound, so this request waits in its backlog until the gateway has applied
    // the streams, subscribed its fan-out and started serving.
    let ready = async {
        while parley_test_support::http::request(addr, "GET", "/readyz", None, None).await.status != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, ready).await.expect("gateway ready");
    TestGateway { addr, shutdown }
}

/// NATS, Postgres, one persistence worker and `gateways` gateways.
pub async fn stack(gateways: usize) -> Stack {
    parley_service::init_test_tracing();
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut started = Vec::new();
    for _ in 0..gateways {
        started.push(spawn_gateway(&nats.url(), &db.url).await);
    }
    let worker = CancellationToken::new();
    let config = parley_persistence_worker::Config {
        nats_url: nats.url(),
        database_url: db.url.clone(),
        batch_size: 100,
        stream_replicas: 1,
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    };
    tokio::spawn(parley_persistence_worker::run(config, worker.clone()));
    Stack {
        nats,
        db,
        js,
        gateways: started,
        worker,
    }
}

impl Stack {
    pub fn gateway(&self, index: usize) -> &TestGateway {
        &self.gateways[index]
    }

    /// Starts a project and waits until its conversation exists.
    pub async fn project(&self, title: &str) -> ProjectFixture {
        let project = ProjectFixture::new(title);
        project.publish_started(&self.js).await;
        conversation_exists(&self.db, &project).await;
        project
    }

    /// A connected socket for `user` on gateway `index`.
    pub async fn socket(&self, index: usize, user: Uuid) -> Client {
        Client::connect(
            &self.gateway(index).url(),
            json!({ "token": token_for(user, TEST_JWT_SECRET) }),
        )
        .await
        .expect("socket connects")
    }

    /// Waits until the message `id` is in Postgres.
    pub async fn persisted(&self, conversation: Uuid, id: Uuid) {
        let store = self.db.store();
        parley_test_support::eventually("the message to be persisted", Duration::from_secs(30), || async {
            store.message(conversation, id).await.ok().flatten().map(|_| ())
        })
        .await;
    }
}

pub fn token(user: Uuid) -> String {
    token_for(user, TEST_JWT_SECRET)
}

/// Emits `event` with `data` and returns the ack.
pub async fn ask(socket: &Client, event: &str, data: Value) -> Value {
    socket.emit_with_ack(event, data, WAIT).await.expect("an ack")
}

/// Sends a message over the socket and returns the acked message.
pub async fn send(socket: &Client, conversation: Uuid, body: &str) -> Value {
    let ack = ask(
        socket,
        "message:send",
        json!({ "conversationId": conversation, "body": body }),
    )
    .await;
    assert_eq!(ack["ok"], true, "send refused: {ack}");
    ack["message"].clone()
}

/// The next event, which must be `message:new`; returns its payload.
pub async fn next_message(socket: &mut Client) -> Value {
    let (name, data) = socket.next_event(WAIT).await.expect("an event");
    assert_eq!(name, "message:new", "unexpected event {name}: {data}");
    data
}

/// The error code of a refused ack.
pub fn code(ack: &Value) -> &str {
    assert_eq!(ack["ok"], false, "expected a refusal: {ack}");
    ack["error"]["code"].as_str().expect("an error code")
}
