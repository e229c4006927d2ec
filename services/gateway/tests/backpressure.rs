//! A client that cannot keep up never gets a gap it cannot see: once its socket's outgoing queue
//! is full the gateway disconnects it, and the client recovers everything, exactly once, by
//! joining again from the last `seq` it really received. Against real NATS and Postgres.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{WAIT, ask, stack, token};
use parley_test_support::sio::{Client, Driver};
use parley_test_support::{ProjectFixture, publish_message};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Messages flooded at the conversation, and each one's body size: together well over what the
/// socket's queue (4096 packets) and the kernel's buffers hold.
const FLOOD: usize = 8000;
const BODY_CHARS: usize = 2000;

/// Polls `driver` (so the client reads) until `stop` fires, then hands it back unpolled.
fn read_until(mut driver: Driver, stop: oneshot::Receiver<()>) -> tokio::task::JoinHandle<Option<Driver>> {
    tokio::spawn(async move {
        tokio::select! {
            () = &mut driver => panic!("the connection ended while reading"),
            _ = stop => Some(driver),
        }
    })
}

/// Publishes the flood from eight tasks at once; returns every published seq, and each one's
/// message id.
async fn flood(js: &async_nats::jetstream::Context, project: &ProjectFixture) -> BTreeMap<i64, uuid::Uuid> {
    let body = "x".repeat(BODY_CHARS);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (js, events) = (
                js.clone(),
                (0..FLOOD / 8)
                    .map(|_| project.message(project.client(), &body))
                    .collect::<Vec<_>>(),
            );
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for event in &events {
                    seqs.push((i64::try_from(publish_message(&js, event).await).unwrap(), event.id));
                }
                seqs
            })
        })
        .collect();
    let mut seqs = BTreeMap::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    seqs
}

/// Every `message:new` seq a client has buffered, in arrival order, until its connection ended.
async fn drain_events(client: &mut Client) -> Vec<i64> {
    let mut seqs = Vec::new();
    while let Ok((name, data)) = client.next_event(Duration::from_millis(1)).await {
        if name == "message:new" {
            seqs.push(data["seq"].as_i64().unwrap());
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_is_disconnected_and_recovers_every_message_once_by_replay() {
    let stack = stack(1).await;
    let project = stack.project("Slow reader").await;
    let conversation = project.conversation_id();
    let url = stack.gateway(0).url();

    // The slow reader joins while it still reads, then stops reading altogether.
    let (mut slow, driver) = Client::connector(&url, json!({ "token": token(project.provider()) }))
        .connect_driven()
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel();
    let reading = read_until(driver, stopped);
    let joined = ask(
        &slow,
        "conversation:join",
        json!({ "conversationId": conversation, "lastSeq": 0 }),
    )
    .await;
    assert_eq!(joined["ok"], true, "{joined}");
    stop.send(()).unwrap();
    let driver = reading.await.unwrap().unwrap();

    // A healthy socket of the other participant takes the same flood.
    let mut healthy = stack.socket(0, project.client()).await;
    let started = Instant::now();
    let published = flood(&stack.js, &project).await;
    let mut healthy_got = 0;
    while healthy_got < FLOOD {
        let (name, _) = healthy
            .next_event(WAIT)
            .await
            .expect("the healthy socket gets every message");
        if name == "message:new" {
            healthy_got += 1;
        }
    }
    let healthy_took = started.elapsed();

    // The slow reader reads again: what its connection still held, then the end the gateway
    // gave it. Had it kept the connection, this would run until the timeout with every message.
    tokio::time::timeout(WAIT, driver)
        .await
        .expect("the gateway disconnected the socket that stopped reading");
    let received = drain_events(&mut slow).await;
    assert!(
        received.len() < FLOOD,
        "the slow socket got everything: nothing was full"
    );
    assert!(received.windows(2).all(|w| w[0] < w[1]), "live messages out of order");

    // It comes back and joins from the last seq it really got, paging the rest with history.
    let last = received.last().copied().unwrap_or(0);
    let mut back = stack.socket(0, project.provider()).await;
    let rejoined = ask(
        &back,
        "conversation:join",
        json!({ "conversationId": conversation, "lastSeq": last }),
    )
    .await;
    assert_eq!(rejoined["ok"], true, "{rejoined}");
    let replayed_count = usize::try_from(rejoined["replayed"].as_u64().unwrap()).unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < replayed_count {
        let (name, data) = back.next_event(WAIT).await.unwrap();
        if name == "message:new" && data["replayed"] == true {
            replayed.push(data["seq"].as_i64().unwrap());
        }
    }
    let mut after = replayed.last().copied().unwrap_or(last);
    if rejoined["complete"] != true {
        // History reads Postgres: let the worker store the whole flood first.
        let (_, last_id) = published.last_key_value().unwrap();
        stack.persisted(conversation, *last_id).await;
        loop {
            let page = ask(
                &back,
                "conversation:history",
                json!({ "conversationId": conversation, "afterSeq": after, "limit": 200 }),
            )
            .await;
            let messages: Vec<Value> = page["messages"].as_array().unwrap().clone();
            replayed.extend(messages.iter().map(|m| m["seq"].as_i64().unwrap()));
            after = replayed.last().copied().unwrap_or(after);
            if page["hasMore"] != true {
                break;
            }
        }
    }
    let mut all = received.clone();
    all.extend(&replayed);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "a message twice or out of order");
    let published: BTreeSet<i64> = published.into_keys().collect();
    assert_eq!(
        all.into_iter().collect::<BTreeSet<_>>(),
        published,
        "every message exactly once"
    );
    println!(
        "the slow socket got {} of {FLOOD} live before the gateway cut it, and {} by replay and history; \
         the healthy socket took all {FLOOD} in {healthy_took:?}",
        received.len(),
        replayed.len()
    );
}

/// Reads a raw websocket until the gateway closes it; returns the text frames it sent.
async fn until_closed(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Vec<String> {
    use futures::StreamExt as _;
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the gateway closed the connection")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => texts.push(text.to_string()),
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_)) | None => return texts,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_packet_announcing_binary_attachments_closes_its_connection_before_login_and_after() {
    let stack = stack(1).await;
    let project = stack.project("Binary").await;
    let addr = stack.gateway(0).addr;
    let binary_event = r#"451-["message:send",{"_placeholder":true,"num":0}]"#;

    // Before login: an engine.io session that never authenticated.
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let texts = until_closed_after(&mut ws, binary_event).await;
    // The open packet, then at once engine.io's close ("1") and the end of the connection.
    assert!(texts[0].starts_with('0'), "{texts:?}");
    assert_eq!(texts.get(1).map(String::as_str), Some("1"), "closed at once: {texts:?}");

    // After login: an authenticated socket.
    let socket = stack.socket(0, project.client()).await;
    socket.emit_raw(binary_event).await.unwrap();
    let mut socket = socket;
    let ended = loop {
        match socket.next_event(WAIT).await {
            Err(parley_test_support::sio::Error::Disconnected(reason)) => break reason,
            Err(other) => panic!("the socket was not closed: {other}"),
            Ok(_) => {}
        }
    };
    println!("after login the socket ended: {ended}");
    // Nothing was stored for it.
    let history = parley_test_support::http::get(
        addr,
        &format!("/v1/conversations/{}/messages", project.conversation_id()),
        &token(project.client()),
    )
    .await;
    assert_eq!(history.body["messages"], json!([]));
}

/// Waits for the engine.io open packet, sends `text`, then reads until the gateway closes.
async fn until_closed_after(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    text: &str,
) -> Vec<String> {
    use futures::{SinkExt as _, StreamExt as _};
    let open = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    let mut texts = vec![open.to_text().unwrap().to_owned()];
    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .unwrap();
    texts.extend(until_closed(ws).await);
    texts
}

/// A process's resident memory and its peak so far, in bytes, from `/proc/<pid>/status`.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const MIB: u64 = 1024 * 1024;

/// History requests the greedy client makes at most, each asking for a page of 200 messages of
/// [`BODY_CHARS`] characters (about 420 kB of answer): far more than the gateway may hold for a
/// client that never reads them.
const GREEDY_REQUESTS: usize = 2000;

#[tokio::test]
async fn a_client_that_asks_and_never_reads_is_cut_and_leaves_the_gateways_memory_bounded() {
    use futures::{SinkExt as _, StreamExt as _};
    use parley_test_support::stack::{Run, Spec, TestStack};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let stack = TestStack::builder().persistence(Run::InProcess).build().await;
    // A gateway of its own process, so that its memory is its alone; no event rate limit, so
    // every request is admitted but for the bound on requests in hand.
    let gateway = stack
        .start(Spec::gateway().binary().limits(parley_gateway::LimitConfig::OFF))
        .await;
    let project = stack.project("Greedy").await;
    let body = "y".repeat(BODY_CHARS);
    let mut last = None;
    for _ in 0..200 {
        let event = project.message(project.client(), &body);
        publish_message(&stack.js, &event).await;
        last = Some(event.id);
    }
    stack.persisted(project.conversation_id(), last.unwrap()).await;

    let pid = gateway.pid().expect("a gateway process");
    let (before, _) = memory_of(pid);

    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gateway.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let (mut out, mut incoming) = ws.split();
    let open = incoming.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
    let auth = json!({ "token": token(project.client()) });
    out.send(Frame::text(format!("40{auth}"))).await.unwrap();
    // The connect ack (after any engine.io ping that came first, answered).
    loop {
        let frame = incoming.next().await.unwrap().unwrap();
        match frame.to_text().unwrap() {
            "2" => out.send(Frame::text("3")).await.unwrap(),
            text => {
                assert!(text.starts_with("40"), "{open:?} then {text}");
                break;
            }
        }
    }

    // Requests at a steady pace (a load shape, not a wait), none of their answers read, until
    // the gateway cuts the connection. The pace leaves most requests admitted (a request over
    // the socket's bound on requests in hand is refused with a short answer instead).
    let request = json!(["conversation:history", { "conversationId": project.conversation_id(), "limit": 200 }]);
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    for id in 0..GREEDY_REQUESTS {
        pace.tick().await;
        if out.send(Frame::text(format!("42{id}{request}"))).await.is_err() {
            break;
        }
        sent += 1;
    }
    let (_, peak) = memory_of(pid);

    // Whatever the kernel buffered is read, then the connection must end: the gateway cut it.
    let mut answers = 0;
    let cut = loop {
        match tokio::time::timeout(WAIT, incoming.next()).await {
            Err(_) => break false,
            Ok(Some(Ok(Frame::Text(text)))) if text.starts_with("43") => answers += 1,
            Ok(Some(Ok(Frame::Close(_)) | Err(_)) | None) => break true,
            Ok(Some(Ok(_))) => {}
        }
    };
    drop((out, incoming));
    println!(
        "sent {sent} requests, {answers} answers read before the end; resident memory {} MiB before, peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(cut, "the gateway kept feeding a client that never read");
    assert!(
        answers < sent,
        "every answer was read ({answers} of {sent}): the client was never behind"
    );
    // The gateway holds at most its bound (32 MiB) of unread answers.
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 128 * MIB,
        "resident memory grew by {} MiB for one client",
        grew / MIB
    );

    // Once the client is gone its answers are freed, and the memory comes back to the system
    // (the allocator returns freed pages over about ten seconds; the bound is generous).
    let after = parley_test_support::eventually("the memory to come back", Duration::from_secs(60), || async {
        let (now, _) = memory_of(pid);
        (now < before + 16 * MIB).then_some(now)
    })
    .await;
    println!("resident memory after the client left: {} MiB", after / MIB);
    // The gateway still serves everyone else.
    let socket = parley_test_support::stack::connect(&gateway, project.provider()).await;
    let listed = ask(&socket, "conversation:list", json!({})).await;
    assert_eq!(listed["ok"], true, "{listed}");
}

/// Sessions that never log in and announce binary attachments, measured on the gateway's own
/// process: none of it is kept. Before login two things end such a session: the binary rule,
/// and socketioxide itself (with the rule switched off the session is still closed, "1", before
/// any attachment is taken), so this test holds with either; the test above checks the rule
/// after login, where only it applies.
#[tokio::test]
async fn connections_that_announce_binary_attachments_before_login_leave_the_gateways_memory_flat() {
    use futures::{SinkExt as _, StreamExt as _};
    use parley_test_support::stack::{Spec, TestStack};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let stack = TestStack::builder().build().await;
    let gateway = stack.start(Spec::gateway().binary()).await;
    let pid = gateway.pid().expect("a gateway process");
    let (before, _) = memory_of(pid);
    // Twenty engine.io sessions that never log in, each announcing 99 attachments and sending
    // them, 100 kB each (about 200 MB in all, were they kept).
    let attachment = vec![0u8; 100_000];
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gateway.addr);
    let mut closed = 0;
    for _ in 0..20 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let open = ws.next().await.unwrap().unwrap();
        assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
        let announce = r#"4599-["message:send",{"_placeholder":true,"num":0}]"#;
        let mut refused = ws.send(Frame::text(announce)).await.is_err();
        for _ in 0..99 {
            if refused {
                break;
            }
            refused = ws.send(Frame::binary(attachment.clone())).await.is_err();
        }
        // The gateway ends the session; whatever it sent before that is read to the end.
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(Ok(frame)) = ws.next().await {
                if matches!(frame, Frame::Close(_)) {
                    break;
                }
            }
        })
        .await;
        if ended.is_ok() {
            closed += 1;
        }
    }
    let (_, peak) = memory_of(pid);
    println!(
        "resident memory {} MiB before twenty binary-announcing sessions, peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert_eq!(closed, 20, "every such session is closed");
    assert!(
        peak < before + 16 * MIB,
        "resident memory grew by {} MiB",
        peak.saturating_sub(before) / MIB
    );
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket of `user` opened as the official client opens one by default: the engine.io
/// handshake and the namespace connect over long-polling, then the upgrade to a websocket, which
/// is on another connection than the handshake. Returns the websocket, by which every packet
/// leaves from then on.
async fn upgraded_from_polling(addr: std::net::SocketAddr, user: uuid::Uuid) -> Ws {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let polling = |sid: Option<&str>| {
        let sid = sid.map(|sid| format!("&sid={sid}")).unwrap_or_default();
        format!("http://{addr}/socket.io/?EIO=4&transport=polling{sid}")
    };
    let http = reqwest::Client::new();
    let open = http.get(polling(None)).send().await.unwrap().text().await.unwrap();
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("an open packet")).unwrap();
    let sid = handshake["sid"].as_str().unwrap().to_owned();
    let auth = json!({ "token": token(user) });
    let posted = http
        .post(polling(Some(&sid)))
        .body(format!("40{auth}"))
        .send()
        .await
        .unwrap();
    assert!(posted.status().is_success(), "{posted:?}");
    // Packets in one poll are separated by a record separator; the first ping may come first,
    // and is answered, as a client must within the ping timeout.
    let polled = http
        .get(polling(Some(&sid)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let packets: Vec<&str> = polled.split('\u{1e}').collect();
    assert!(packets.iter().any(|packet| packet.starts_with("40")), "{polled:?}");
    if packets.contains(&"2") {
        let pong = http.post(polling(Some(&sid))).body("3").send().await.unwrap();
        assert!(pong.status().is_success(), "{pong:?}");
    }

    // The upgrade: probe, then switch.
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    ws.send(Frame::text("2probe")).await.unwrap();
    let probe = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(probe.to_text().unwrap(), "3probe");
    ws.send(Frame::text("5")).await.unwrap();
    ws
}

/// Reads `ws` until it ends or nothing comes for [`WAIT`]; answers pings. Returns how many
/// `message:new` it read and whether the gateway ended it.
async fn read_to_the_end(ws: &mut Ws) -> (usize, bool) {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let mut received = 0usize;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return (received, false),
            Ok(Some(Ok(Frame::Text(text)))) if text.starts_with("42[\"message:new\"") => received += 1,
            Ok(Some(Ok(Frame::Text(text)))) if text.as_str() == "2" => {
                let _ = ws.send(Frame::text("3")).await;
            }
            Ok(Some(Ok(Frame::Close(_)) | Err(_)) | None) => return (received, true),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A socket that upgraded from polling, then stopped reading, is cut on its websocket.
#[tokio::test]
async fn a_socket_upgraded_from_polling_that_stops_reading_is_cut_on_its_websocket() {
    let stack = stack(1).await;
    let project = stack.project("Upgraded, slow").await;
    let mut ws = upgraded_from_polling(stack.gateway(0).addr, project.provider()).await;
    // It stops reading; the flood fills its queue. Reading again: what the connection held,
    // then its end. Uncut, the websocket would deliver the whole flood and then stay open.
    let published = flood(&stack.js, &project).await;
    let (received, cut) = read_to_the_end(&mut ws).await;
    println!(
        "the upgraded socket read {received} of {} messages before its websocket ended",
        published.len()
    );
    assert!(cut, "the upgraded socket's websocket was never cut");
    assert!(received < published.len(), "it got everything: nothing was full");
}

/// The other side of the byte bound: a socket that upgraded from polling and reads everything
/// is never cut, however much it is sent. Its output is counted on the websocket it uses, not
/// on the connection of its handshake, which writes nothing after the upgrade (counted there,
/// 32 MiB of healthy traffic would look unwritten).
#[tokio::test]
async fn a_socket_upgraded_from_polling_that_reads_everything_is_never_cut_past_the_byte_bound() {
    let stack = stack(1).await;
    let project = stack.project("Upgraded, healthy").await;
    let mut ws = upgraded_from_polling(stack.gateway(0).addr, project.provider()).await;
    // 8,000 messages of 4,500 characters: about 36 MB, over the 32 MiB bound.
    let body = "w".repeat(4_500);
    let reading = tokio::spawn(async move {
        let ended = read_to_the_end(&mut ws).await;
        drop(ws);
        ended
    });
    // Published one after another, each awaiting its ack: a pace a reading client keeps up
    // with (a burst from many publishers would fill its queue of packets instead).
    for _ in 0..8_000 {
        publish_message(&stack.js, &project.message(project.client(), &body)).await;
    }
    let (received, cut) = reading.await.unwrap();
    println!("the healthy upgraded socket read {received} of 8000 messages (about 36 MB)");
    assert!(!cut, "a socket that read everything was cut after {received} messages");
    assert_eq!(received, 8_000);
}
