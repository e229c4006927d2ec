//! The gateway tests' stack: a [`TestStack`] with NATS, a fresh database and an in-process
//! persistence worker, plus any number of real gateways on port 0 that a test may add to.
//! Everything is started by `parley_test_support::stack`; this file only keeps the shape and the
//! socket helpers the gateway's tests share.

#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use parley_gateway::LimitConfig;
use parley_test_support::TestDatabase;
use parley_test_support::sio::Client;
use parley_test_support::stack::{self, Endpoints, Run, Service, Spec, TestStack};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(15);

/// A gateway in this process, stopped when dropped.
pub type TestGateway = Service;

/// NATS, Postgres, one persistence worker and the gateways in `gateways` (index order).
pub struct Stack {
    // Fields drop in order: the gateways stop before the stack's NATS goes.
    pub gateways: Vec<TestGateway>,
    /// The persistence worker's token: cancelling it stops the worker.
    pub worker: CancellationToken,
    pub db: TestDatabase,
    inner: TestStack,
}

impl Deref for Stack {
    type Target = TestStack;

    fn deref(&self) -> &TestStack {
        &self.inner
    }
}

impl DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut TestStack {
        &mut self.inner
    }
}

/// Starts a real gateway on port 0 against `nats_url` and `database_url`, without limits.
pub async fn spawn_gateway(nats_url: &str, database_url: &str) -> TestGateway {
    spawn_gateway_with(nats_url, database_url, LimitConfig::OFF).await
}

/// Starts a real gateway on port 0 against `nats_url` and `database_url`, with `limits`, and
/// waits until it is ready.
pub async fn spawn_gateway_with(nats_url: &str, database_url: &str, limits: LimitConfig) -> TestGateway {
    let endpoints = Endpoints::new(nats_url, Some(database_url.to_owned()));
    Service::start(Spec::gateway().limits(limits), &endpoints).await
}

/// NATS, Postgres, one persistence worker and `gateways` gateways.
pub async fn stack(gateways: usize) -> Stack {
    let stack = TestStack::builder()
        .service(Spec::persistence().run(Run::InProcess).batch_size(100))
        .build()
        .await;
    let mut started = Vec::new();
    for _ in 0..gateways {
        started.push(stack.start(Spec::gateway()).await);
    }
    let worker = stack.persistence(0).shutdown_token().expect("an in-process worker");
    Stack {
        gateways: started,
        worker,
        db: stack.db().clone(),
        inner: stack,
    }
}

impl Stack {
    pub fn gateway(&self, index: usize) -> &TestGateway {
        &self.gateways[index]
    }

    /// A connected socket for `user` on gateway `index`.
    pub async fn socket(&self, index: usize, user: Uuid) -> Client {
        stack::connect(self.gateway(index), user).await
    }
}

pub fn token(user: Uuid) -> String {
    parley_test_support::token_for(user, parley_test_support::TEST_JWT_SECRET)
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
