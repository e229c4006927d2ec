//! Boundaries under abuse, against real NATS and Postgres: sends per user, other events per
//! socket and requests per token, sockets per user, a socket's life bounded by its token's, and a
//! caller reading their own read marks at once, on any gateway.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{WAIT, ask, code, next_message, send, spawn_gateway_with, stack, token};
use futures::future::join_all;
use parley_gateway::LimitConfig;
use parley_test_support::sio::{Client, DisconnectReason, Error as SioError};
use parley_test_support::{TEST_JWT_SECRET, http};
use serde_json::{Value, json};
use uuid::Uuid;

/// A token for `user` with the given claims besides `sub`.
fn token_with(user: Uuid, claims: Value) -> String {
    let mut claims = claims;
    claims["sub"] = json!(user);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// How many notifications `recipient` has in `PARLEY_NOTIFICATIONS`.
async fn notifications_of(js: &async_nats::jetstream::Context, recipient: Uuid) -> u64 {
    let stream = js.get_stream(parley_nats::NOTIFICATIONS_STREAM).await.unwrap();
    let subject = format!("parley.notification.{recipient}");
    let info = stream.info_with_subjects(subject.clone()).await.unwrap();
    let mut subjects = info;
    let mut count = 0;
    while let Some(Ok((name, n))) = futures::StreamExt::next(&mut subjects).await {
        if name == subject {
            count += n as u64;
        }
    }
    count
}

/// Starts the notification worker in-process until the returned token is cancelled.
async fn notification_worker(nats_url: String) -> tokio_util::sync::CancellationToken {
    let config = parley_notification_worker::Config::new(parley_service::config::CommonConfig::local(nats_url));
    let app = parley_notification_worker::Application::build(config).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    stop
}

#[tokio::test]
async fn a_flood_of_sends_gets_about_the_burst_through_and_exactly_those_are_stored_notified_and_delivered() {
    let mut stack = stack(0).await;
    let gateway = spawn_gateway_with(&stack.nats.url(), &stack.db.url, LimitConfig::DEFAULT).await;
    stack.gateways.push(gateway);
    let _notifier = notification_worker(stack.nats.url()).await;
    let project = stack.project("Flood").await;
    let conversation = project.conversation_id();
    let flooder = stack.socket(0, project.client()).await;
    let mut other = stack.socket(0, project.provider()).await;

    let acks = join_all((0..60).map(|i| {
        ask(
            &flooder,
            "message:send",
            json!({ "conversationId": conversation, "body": format!("flood {i}") }),
        )
    }))
    .await;
    let accepted: Vec<&Value> = acks.iter().filter(|ack| ack["ok"] == true).collect();
    let refused: Vec<&Value> = acks.iter().filter(|ack| ack["ok"] != true).collect();
    // The burst, plus what refilled (5 a second) while the 60 were answered.
    assert!((20..=23).contains(&accepted.len()), "{} of 60 accepted", accepted.len());
    for ack in &refused {
        assert_eq!(code(ack), "rate_limited");
        let wait = ack["error"]["retryAfterMs"].as_u64().expect("retryAfterMs");
        assert!((1..=1000).contains(&wait), "retryAfterMs {wait}");
    }

    // The other participant is not slowed by the first.
    let reply = send(&other, conversation, "not slowed").await;

    // After a pause the flooder sends again.
    let wait = refused
        .iter()
        .map(|a| a["error"]["retryAfterMs"].as_u64().unwrap())
        .max()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let last = send(&flooder, conversation, "after the pause").await;

    let mut expected: BTreeSet<String> = accepted.iter().map(|a| a["message"]["id"].to_string()).collect();
    expected.insert(reply["id"].to_string());
    expected.insert(last["id"].to_string());
    // Delivered: exactly those, the last one last (the fan-out keeps stream order).
    let mut delivered = BTreeSet::new();
    loop {
        let message = next_message(&mut other).await;
        delivered.insert(message["id"].to_string());
        if message["id"] == last["id"] {
            break;
        }
    }
    assert_eq!(delivered, expected);

    // Stored: exactly those.
    stack
        .persisted(conversation, last["id"].as_str().unwrap().parse().unwrap())
        .await;
    let history = ask(
        &other,
        "conversation:history",
        json!({ "conversationId": conversation, "limit": 200 }),
    )
    .await;
    let stored: BTreeSet<String> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].to_string())
        .collect();
    assert_eq!(stored, expected);

    // Notified: one per accepted message of the flooder (and the last), to the provider.
    let flooder_sent = (accepted.len() + 1) as u64;
    let notified = parley_test_support::eventually("the notifications", WAIT, || async {
        let n = notifications_of(&stack.js, project.provider()).await;
        (n >= flooder_sent).then_some(n)
    })
    .await;
    assert_eq!(notified, flooder_sent);
}

#[tokio::test]
async fn a_flood_of_http_sends_is_answered_429_with_retry_after_and_changes_nothing() {
    let mut stack = stack(0).await;
    let gateway = spawn_gateway_with(&stack.nats.url(), &stack.db.url, LimitConfig::DEFAULT).await;
    stack.gateways.push(gateway);
    let project = stack.project("HTTP flood").await;
    let conversation = project.conversation_id();
    let addr = stack.gateway(0).addr;
    let path = format!("/v1/conversations/{conversation}/messages");
    let flooder = token(project.client());

    let responses = join_all((0..60).map(|i| {
        let body = json!({ "body": format!("http flood {i}") }).to_string();
        let (path, flooder) = (path.clone(), flooder.clone());
        async move { http::request(addr, "POST", &path, Some(&flooder), Some(&body)).await }
    }))
    .await;
    let created: Vec<&http::Response> = responses.iter().filter(|r| r.status == 201).collect();
    assert!((20..=23).contains(&created.len()), "{} of 60 created", created.len());
    for response in responses.iter().filter(|r| r.status != 201) {
        assert_eq!(response.status, 429, "{}", response.raw);
        assert_eq!(response.body["error"]["code"], "rate_limited");
        let seconds: u64 = response.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!(seconds >= 1, "Retry-After {seconds}");
    }
    // Another user sends at once.
    let other = http::post(addr, &path, &token(project.provider()), &json!({ "body": "me too" })).await;
    assert_eq!(other.status, 201, "{}", other.raw);

    let last: Uuid = other.body["message"]["id"].as_str().unwrap().parse().unwrap();
    stack.persisted(conversation, last).await;
    let history = http::get(addr, &format!("{path}?limit=200"), &token(project.provider())).await;
    assert_eq!(
        history.body["messages"].as_array().unwrap().len(),
        created.len() + 1,
        "exactly the created messages are stored"
    );
}

/// The next `message:new`, past the read receipts a socket may get first.
async fn next_new_message(socket: &mut Client) -> Value {
    loop {
        let (name, data) = socket.next_event(WAIT).await.expect("an event");
        if name == "message:new" {
            return data;
        }
        assert!(name.ends_with(":read"), "unexpected event {name}: {data}");
    }
}

/// The median time of 20 lists one after another; each must be served.
async fn time_lists(socket: &Client) -> Duration {
    let mut took = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let ack = ask(socket, "conversation:list", json!({})).await;
        took.push(started.elapsed());
        assert_eq!(ack["ok"], true, "the calm user is refused: {ack}");
    }
    took.sort();
    took[took.len() / 2]
}

#[tokio::test]
async fn a_flood_of_requests_from_one_socket_is_refused_beyond_its_rate_while_another_user_is_served() {
    let mut stack = stack(0).await;
    let gateway = spawn_gateway_with(&stack.nats.url(), &stack.db.url, LimitConfig::DEFAULT).await;
    stack.gateways.push(gateway);
    let project = stack.project("Requests").await;
    let conversation = project.conversation_id();
    let flooder = stack.socket(0, project.client()).await;
    let calm = stack.socket(0, project.provider()).await;

    let quiet_median = time_lists(&calm).await;

    let events = ["conversation:list", "conversation:history", "conversation:join"];
    let flood = join_all((0..600).map(|i| {
        ask(
            &flooder,
            events[i % 3],
            json!({ "conversationId": conversation, "lastSeq": 0 }),
        )
    }));
    let (acks, flooded_median) = tokio::join!(flood, time_lists(&calm));
    let served = acks.iter().filter(|ack| ack["ok"] == true).count();
    for ack in acks.iter().filter(|ack| ack["ok"] != true) {
        assert_eq!(code(ack), "rate_limited", "{ack}");
    }
    // A burst of twice the rate (200), plus what refilled meanwhile.
    assert!((200..600).contains(&served), "{served} of 600 served");
    println!(
        "another user's list: median {quiet_median:?} before the flood, {flooded_median:?} during it; \
         the flooding socket got {served} of 600 answered"
    );
}

#[tokio::test]
async fn requests_beyond_what_one_socket_may_have_in_hand_are_refused_and_the_rest_answered() {
    // No rate limit: only the bound on requests in hand (256) stands between a socket and the
    // gateway. 2000 requests sent at once arrive far faster than history pages are read.
    let stack = stack(1).await;
    let project = stack.project("In hand").await;
    let conversation = project.conversation_id();
    let socket = stack.socket(0, project.client()).await;
    for i in 0..20 {
        send(&socket, conversation, &format!("message {i} {}", "z".repeat(1000))).await;
    }
    let acks = join_all((0..2000).map(|_| {
        ask(
            &socket,
            "conversation:history",
            json!({ "conversationId": conversation, "limit": 200 }),
        )
    }))
    .await;
    let served = acks.iter().filter(|ack| ack["ok"] == true).count();
    for ack in acks.iter().filter(|ack| ack["ok"] != true) {
        assert_eq!(code(ack), "rate_limited", "{ack}");
        assert!(ack["error"]["retryAfterMs"].as_u64().is_some(), "{ack}");
    }
    assert!(served >= 256, "only {served} of 2000 answered");
    assert!(served < 2000, "all 2000 answered: nothing bounds the requests in hand");
    // The socket itself goes on: the next request is answered.
    let again = ask(&socket, "conversation:list", json!({})).await;
    assert_eq!(again["ok"], true, "{again}");
    println!("one socket's 2000 simultaneous history requests: {served} answered, the rest refused");
}

#[tokio::test]
async fn the_socket_cap_refuses_one_socket_more_and_a_closed_one_makes_room() {
    let mut stack = stack(0).await;
    let limits = LimitConfig {
        max_sockets_per_user: 3,
        ..LimitConfig::DEFAULT
    };
    let gateway = spawn_gateway_with(&stack.nats.url(), &stack.db.url, limits).await;
    stack.gateways.push(gateway);
    let user = Uuid::new_v4();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(stack.socket(0, user).await);
    }
    let url = stack.gateway(0).url();
    let refused = Client::connect(&url, json!({ "token": token(user) })).await;
    match refused {
        Err(SioError::ConnectRefused(message)) => assert!(message.contains("too_many_connections"), "{message}"),
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("a fourth socket connected"),
    }
    // Another user is not counted against this one.
    stack.socket(0, Uuid::new_v4()).await;
    sockets[0].disconnect().await;
    parley_test_support::eventually("a closed socket to make room", WAIT, || async {
        Client::connect(&url, json!({ "token": token(user) })).await.ok()
    })
    .await;
}

#[tokio::test]
async fn the_default_socket_cap_is_twenty() {
    let mut stack = stack(0).await;
    let gateway = spawn_gateway_with(&stack.nats.url(), &stack.db.url, LimitConfig::DEFAULT).await;
    stack.gateways.push(gateway);
    let user = Uuid::new_v4();
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(stack.socket(0, user).await);
    }
    let twenty_first = Client::connect(&stack.gateway(0).url(), json!({ "token": token(user) })).await;
    assert!(matches!(twenty_first, Err(SioError::ConnectRefused(m)) if m.contains("too_many_connections")));
}

#[tokio::test]
async fn a_socket_is_disconnected_within_a_second_of_its_tokens_exp_and_catches_up_with_a_fresh_one() {
    let stack = stack(1).await;
    let project = stack.project("Expiry").await;
    let conversation = project.conversation_id();
    let url = stack.gateway(0).url();
    // Two to three seconds from now, in whole seconds as `exp` is.
    let exp = unix_now() + 3;
    let short = token_with(project.provider(), json!({ "exp": exp }));
    let mut expiring = Client::connect(&url, json!({ "token": short })).await.unwrap();
    let joined = ask(
        &expiring,
        "conversation:join",
        json!({ "conversationId": conversation }),
    )
    .await;
    assert_eq!(joined["ok"], true);

    let ended = loop {
        match expiring.next_event(Duration::from_secs(10)).await {
            Err(SioError::Disconnected(reason)) => break reason,
            Ok(_) => {}
            Err(other) => panic!("no disconnect: {other}"),
        }
    };
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(ended, DisconnectReason::ServerDisconnect);
    let exp_at = Duration::from_secs(exp);
    assert!(
        at >= exp_at,
        "disconnected {:?} before exp",
        exp_at.checked_sub(at).unwrap()
    );
    assert!(
        at.checked_sub(exp_at).unwrap() < Duration::from_secs(1),
        "disconnected {:?} after exp",
        at.checked_sub(exp_at).unwrap()
    );

    // An expired token no longer connects; the client comes back with a fresh one and catches up.
    let expired = Client::connect(&url, json!({ "token": short })).await;
    assert!(matches!(expired, Err(SioError::ConnectRefused(m)) if m.contains("unauthorized")));
    let client = stack.socket(0, project.client()).await;
    let missed = send(&client, conversation, "while you were away").await;
    let mut back = stack.socket(0, project.provider()).await;
    let rejoined = ask(
        &back,
        "conversation:join",
        json!({ "conversationId": conversation, "lastSeq": 0 }),
    )
    .await;
    assert_eq!(rejoined["replayed"], 1, "{rejoined}");
    let replayed = next_message(&mut back).await;
    assert_eq!(replayed["id"], missed["id"]);
    assert_eq!(replayed["replayed"], true);
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused_by_socket_and_http() {
    let stack = stack(1).await;
    let user = Uuid::new_v4();
    let early = token_with(user, json!({ "exp": unix_now() + 3600, "nbf": unix_now() + 60 }));
    let refused = Client::connect(&stack.gateway(0).url(), json!({ "token": early })).await;
    assert!(matches!(refused, Err(SioError::ConnectRefused(m)) if m.contains("unauthorized")));
    let response = http::get(stack.gateway(0).addr, "/v1/conversations", &early).await;
    assert_eq!(response.status, 401);
    let current = token_with(user, json!({ "exp": unix_now() + 3600, "nbf": unix_now() - 1 }));
    assert_eq!(
        http::get(stack.gateway(0).addr, "/v1/conversations", &current)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn right_after_mark_read_the_caller_reads_the_new_mark_on_another_gateway_every_time() {
    let stack = stack(2).await;
    let project = stack.project("Own writes").await;
    let conversation = project.conversation_id();
    let client = stack.socket(0, project.client()).await;
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(send(&client, conversation, &format!("m{i}")).await);
    }
    let last: Uuid = sent.last().unwrap()["id"].as_str().unwrap().parse().unwrap();
    stack.persisted(conversation, last).await;
    // From here on Postgres never learns a mark: whatever the reads show, they took from the
    // acknowledged mark itself.
    stack.worker.cancel();

    let reader = stack.socket(0, project.provider()).await;
    let provider_token = token(project.provider());
    let other_gateway = stack.gateway(1).addr;
    for (k, message) in sent.iter().enumerate() {
        let marked = ask(
            &reader,
            "conversation:markRead",
            json!({ "conversationId": conversation, "messageId": message["id"] }),
        )
        .await;
        let mark = message["seq"].as_i64().unwrap();
        assert_eq!(marked["lastReadSeq"], mark, "{marked}");
        let unread = (sent.len() - k - 1) as i64;

        // At once, on the other gateway: a join without lastSeq replays only what is unread.
        let mut joining = stack.socket(1, project.provider()).await;
        let joined = ask(&joining, "conversation:join", json!({ "conversationId": conversation })).await;
        assert_eq!(joined["replayed"], unread, "after marking {k}: {joined}");
        if unread > 0 {
            assert_eq!(next_new_message(&mut joining).await["id"], sent[k + 1]["id"]);
        }
        let mine = |conversation: &Value| {
            conversation["participants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["userId"] == json!(project.provider()))
                .unwrap()["lastReadSeq"]
                .clone()
        };
        assert_eq!(mine(&joined["conversation"]), mark);
        assert_eq!(joined["conversation"]["unreadCount"], unread);

        let one = http::get(
            other_gateway,
            &format!("/v1/conversations/{conversation}"),
            &provider_token,
        )
        .await;
        assert_eq!(mine(&one.body), mark, "{}", one.raw);
        assert_eq!(one.body["unreadCount"], unread);
        let list = http::get(other_gateway, "/v1/conversations", &provider_token).await;
        let listed = &list.body["conversations"][0];
        assert_eq!(mine(listed), mark);
        assert_eq!(listed["unreadCount"], unread);
    }
}

#[tokio::test]
async fn every_http_refusal_carries_the_contract_error_shape() {
    let stack = stack(1).await;
    let project = stack.project("Shapes").await;
    let addr = stack.gateway(0).addr;
    let t = token(project.client());
    let conversation = project.conversation_id();
    let too_big = format!(r#"{{"body":"{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        ("DELETE", "/v1/conversations".into(), None, 405, "invalid_request"),
        (
            "PUT",
            format!("/v1/conversations/{conversation}/messages"),
            None,
            405,
            "invalid_request",
        ),
        ("GET", "/v1/nowhere".into(), None, 404, "not_found"),
        (
            "POST",
            format!("/v1/conversations/{conversation}/messages"),
            Some(too_big.clone()),
            413,
            "invalid_request",
        ),
        (
            "POST",
            format!("/v1/conversations/{conversation}/read"),
            Some(too_big),
            413,
            "invalid_request",
        ),
        (
            "POST",
            format!("/v1/conversations/{conversation}/messages"),
            Some("{".into()),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("/v1/conversations/{conversation}/read"),
            Some("[".into()),
            400,
            "invalid_request",
        ),
    ];
    for (method, path, body, status, expected) in cases {
        let response = http::request(addr, method, &path, Some(&t), body.as_deref()).await;
        assert_eq!(response.status, status, "{method} {path}: {}", response.raw);
        assert_eq!(
            response.body["error"]["code"], expected,
            "{method} {path}: {}",
            response.raw
        );
        assert!(
            response.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // What hyper answers by itself, before any handler: a request it cannot parse, headers over
    // its limit.
    let many_headers = (0..200).fold(String::new(), |mut headers, i| {
        headers.push_str(&format!("x-h{i}: {i}\r\n"));
        headers
    });
    for (raw, status) in [
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), 400),
        (format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"), 431),
    ] {
        let response = raw_exchange(addr, &raw).await;
        let (head, body) = response.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{response}");
        let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("no JSON body: {response}"));
        assert_eq!(body["error"]["code"], "invalid_request", "{response}");
    }
}

/// Writes `raw` on a new connection and reads the answer until the gateway closes it.
async fn raw_exchange(addr: std::net::SocketAddr, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}
