//! Presence in the `PARLEY_PRESENCE` bucket: online while any socket of the user is connected to
//! any gateway; a gateway killed with -9 stops counting its users within about a minute.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use parley_nats::buckets::is_online;
use parley_test_support::eventually;
use parley_test_support::sio::Client;
use parley_test_support::stack::Spec;
use serde_json::json;
use uuid::Uuid;

async fn online_becomes(stack: &Stack, user: Uuid, expected: bool, within: Duration) {
    eventually(&format!("{user} online = {expected}"), within, || async {
        (is_online(&stack.js, user).await.ok()? == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_user_is_online_while_any_of_their_sockets_is_connected_on_any_gateway() {
    let stack = stack(2).await;
    let user = Uuid::new_v4();
    assert!(!is_online(&stack.js, user).await.unwrap());
    let mut phone = stack.socket(0, user).await;
    online_becomes(&stack, user, true, WAIT).await;
    let mut laptop = stack.socket(1, user).await;
    phone.disconnect().await;
    // Still online through the laptop on the other gateway; prove it after the phone's
    // disconnect was processed: a third socket connects and leaves on the phone's gateway.
    let mut probe = stack.socket(0, user).await;
    probe.disconnect().await;
    let other = Uuid::new_v4();
    let _marker = stack.socket(0, other).await;
    online_becomes(&stack, other, true, WAIT).await;
    assert!(
        is_online(&stack.js, user).await.unwrap(),
        "the laptop keeps the user online"
    );
    laptop.disconnect().await;
    online_becomes(&stack, user, false, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_kill_9_stops_counting_its_users_within_about_a_minute() {
    let stack = stack(0).await;
    let mut gateway = stack.start(Spec::gateway().binary().env("RUST_LOG", "warn")).await;
    let addr = gateway.addr;
    let user = Uuid::new_v4();
    let socket = Client::connect(&format!("http://{addr}"), json!({ "token": token(user) }))
        .await
        .unwrap();
    online_becomes(&stack, user, true, WAIT).await;

    gateway.kill().await;
    let killed = Instant::now();
    online_becomes(&stack, user, false, Duration::from_secs(90)).await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(75),
        "still online {took:?} after the gateway died"
    );
    drop(socket);
}
