//! Wire-level tests against a scripted websocket peer, for behaviour a real
//! Socket.IO server will not produce on demand: missing heartbeats, malformed
//! packets, binary events, other namespaces, exact bytes sent by the client.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parley_sio_client::{Client, DisconnectReason, Error};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(5);

type Peer = WebSocketStream<TcpStream>;

fn open_packet(ping_interval_ms: u64, ping_timeout_ms: u64) -> String {
    format!(
        r#"0{{"sid":"eio-sid","upgrades":[],"pingInterval":{ping_interval_ms},"pingTimeout":{ping_timeout_ms},"maxPayload":1000000}}"#
    )
}

/// Accepts one websocket connection on an ephemeral port and runs `script` on it.
/// Returns the URL to connect to and the script's task (await it to surface panics).
async fn serve_once<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        script(ws).await;
    });
    (url, task)
}

async fn send(peer: &mut Peer, text: &str) {
    peer.send(Message::text(text)).await.unwrap();
}

async fn recv_text(peer: &mut Peer) -> String {
    loop {
        match tokio::time::timeout(T, peer.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(Message::Close(_))) | None => panic!("peer closed"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("peer error: {e}"),
        }
    }
}

/// Standard happy handshake with long heartbeats; returns the client's CONNECT frame.
async fn accept_connect(peer: &mut Peer) -> String {
    send(peer, &open_packet(60_000, 60_000)).await;
    let connect = recv_text(peer).await;
    send(peer, r#"40{"sid":"sio-sid"}"#).await;
    connect
}

/// Keeps the peer open (and reading) until the client goes away.
async fn idle(peer: &mut Peer) {
    while let Some(Ok(_)) = peer.next().await {}
}

#[tokio::test]
async fn handshake_and_wire_format() {
    let (url, server) = serve_once(async |mut peer| {
        assert_eq!(accept_connect(&mut peer).await, r#"40{"token":"t"}"#);
        send(&mut peer, "2").await;
        assert_eq!(recv_text(&mut peer).await, "3");
        send(&mut peer, "2probe").await;
        assert_eq!(recv_text(&mut peer).await, "3probe");
        // The client waits for this before emitting, so frames cannot interleave.
        send(&mut peer, r#"42["go"]"#).await;
        assert_eq!(recv_text(&mut peer).await, r#"42["plain",{"a":1}]"#);
        assert_eq!(recv_text(&mut peer).await, r#"420["first","x"]"#);
        // An ack for an id nobody waits for is ignored.
        send(&mut peer, r#"399["stray"]"#).await;
        send(&mut peer, r#"430["ok",1]"#).await;
        assert_eq!(recv_text(&mut peer).await, r#"421["second",null]"#);
        send(&mut peer, "431[]").await;
        assert_eq!(recv_text(&mut peer).await, r#"422["raw",{"#);
        send(&mut peer, r#"432[{"error":"bad json"}]"#).await;
        assert_eq!(recv_text(&mut peer).await, "anything at all");
        assert_eq!(recv_text(&mut peer).await, "41");
        idle(&mut peer).await;
    })
    .await;

    let mut client = Client::connect(&url, json!({ "token": "t" })).await.unwrap();
    assert_eq!(client.sid(), "sio-sid");
    assert_eq!(client.next_event(T).await.unwrap().0, "go");
    client.emit("plain", json!({ "a": 1 })).await.unwrap();
    assert_eq!(client.emit_with_ack("first", json!("x"), T).await.unwrap(), json!("ok"));
    assert_eq!(
        client.emit_with_ack("second", Value::Null, T).await.unwrap(),
        Value::Null
    );
    assert_eq!(
        client.emit_raw_with_ack(r#"["raw",{"#, T).await.unwrap(),
        json!({ "error": "bad json" })
    );
    client.emit_raw("anything at all").await.unwrap();
    client.disconnect().await;
    server.await.unwrap();
}

#[tokio::test]
async fn null_auth_sends_bare_connect() {
    let (url, server) = serve_once(async |mut peer| {
        assert_eq!(accept_connect(&mut peer).await, "40");
        idle(&mut peer).await;
    })
    .await;
    let mut client = Client::connect(&url, Value::Null).await.unwrap();
    client.disconnect().await;
    server.await.unwrap();
}

#[tokio::test]
async fn skips_what_it_does_not_support() {
    let (url, server) = serve_once(async |mut peer| {
        accept_connect(&mut peer).await;
        send(&mut peer, r#"451-["bin",{"_placeholder":true,"num":0}]"#).await;
        peer.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        send(&mut peer, r#"42/admin,["other_namespace",1]"#).await;
        send(&mut peer, "6").await;
        send(&mut peer, "3").await;
        send(&mut peer, r#"42["multi",1,2]"#).await;
        send(&mut peer, r#"425["needs_ack",{"x":1}]"#).await;
        send(&mut peer, r#"42["no_args"]"#).await;
        idle(&mut peer).await;
    })
    .await;
    let mut client = Client::connect(&url, Value::Null).await.unwrap();
    assert_eq!(client.next_event(T).await.unwrap(), ("multi".to_owned(), json!(1)));
    assert_eq!(
        client.next_event(T).await.unwrap(),
        ("needs_ack".to_owned(), json!({ "x": 1 }))
    );
    assert_eq!(client.next_event(T).await.unwrap(), ("no_args".to_owned(), Value::Null));
    client.expect_no_event(Duration::from_millis(100)).await.unwrap();
    assert!(client.is_connected());
    client.disconnect().await;
    server.await.unwrap();
}

#[tokio::test]
async fn missing_heartbeat_is_a_ping_timeout() {
    let (url, server) = serve_once(async |mut peer| {
        send(&mut peer, &open_packet(100, 100)).await;
        recv_text(&mut peer).await;
        send(&mut peer, r#"40{"sid":"s"}"#).await;
        send(&mut peer, r#"42["before_silence"]"#).await;
        idle(&mut peer).await;
    })
    .await;
    let mut client = Client::connect(&url, Value::Null).await.unwrap();
    assert_eq!(client.next_event(T).await.unwrap().0, "before_silence");
    let err = client.next_event(T).await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(DisconnectReason::PingTimeout)),
        "{err:?}"
    );
    assert!(!client.is_connected());
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn malformed_packet_closes_connection() {
    let (url, server) = serve_once(async |mut peer| {
        accept_connect(&mut peer).await;
        send(&mut peer, r#"42["good",1]"#).await;
        send(&mut peer, r#"42{"not":"an array"}"#).await;
        idle(&mut peer).await;
    })
    .await;
    let mut client = Client::connect(&url, Value::Null).await.unwrap();
    // A pending ack fails as soon as the connection is declared dead.
    let ack = client.emit_with_ack("waits", Value::Null, T).await;
    assert!(
        matches!(ack, Err(Error::Disconnected(DisconnectReason::ProtocolViolation(_)))),
        "{ack:?}"
    );
    assert_eq!(client.next_event(T).await.unwrap().0, "good");
    let err = client.next_event(T).await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(DisconnectReason::ProtocolViolation(_))),
        "{err:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn engine_io_close_and_websocket_close() {
    let (url, server) = serve_once(async |mut peer| {
        accept_connect(&mut peer).await;
        send(&mut peer, "1").await;
        idle(&mut peer).await;
    })
    .await;
    let mut client = Client::connect(&url, Value::Null).await.unwrap();
    let err = client.next_event(T).await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(DisconnectReason::TransportClosed)),
        "{err:?}"
    );
    server.await.unwrap();

    let (url, server) = serve_once(async |mut peer| {
        accept_connect(&mut peer).await;
        peer.close(None).await.unwrap();
    })
    .await;
    let mut client = Client::connect(&url, Value::Null).await.unwrap();
    let err = client.next_event(T).await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(DisconnectReason::TransportClosed)),
        "{err:?}"
    );
    assert!(!client.is_connected());
    server.await.unwrap();
}

#[tokio::test]
async fn connect_refusals() {
    for (reply, expected) in [
        (
            r#"44{"message":"Not authorized","data":{"code":401}}"#,
            "Not authorized",
        ),
        (r#"44"legacy string""#, "legacy string"),
    ] {
        let (url, server) = serve_once(async move |mut peer| {
            send(&mut peer, &open_packet(60_000, 60_000)).await;
            recv_text(&mut peer).await;
            send(&mut peer, reply).await;
            idle(&mut peer).await;
        })
        .await;
        match Client::connect(&url, Value::Null).await {
            Err(Error::ConnectRefused(message)) => assert_eq!(message, expected),
            other => panic!("expected ConnectRefused, got {other:?}"),
        }
        server.await.unwrap();
    }
}

#[tokio::test]
async fn handshake_protocol_errors() {
    for (first, second) in [
        // Not an open packet.
        (r#"40{"sid":"s"}"#, None),
        // Open packet without heartbeat settings.
        (r#"0{"sid":"x"}"#, None),
        // CONNECT ack without sid.
        (open_packet(60_000, 60_000).as_str(), Some("40{}")),
    ] {
        let first = first.to_owned();
        let (url, server) = serve_once(async move |mut peer| {
            send(&mut peer, &first).await;
            if let Some(second) = second {
                recv_text(&mut peer).await;
                send(&mut peer, second).await;
            }
            idle(&mut peer).await;
        })
        .await;
        let result = Client::connect(&url, Value::Null).await;
        assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
        server.await.unwrap();
    }
}

#[tokio::test]
async fn connect_timeout_and_unreachable() {
    // Accepts the websocket but never sends the open packet.
    let (url, server) = serve_once(async |mut peer| idle(&mut peer).await).await;
    let result = Client::connect_with_timeout(&url, Value::Null, Duration::from_millis(200)).await;
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    server.await.unwrap();

    // Nothing listening.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let result = Client::connect(&format!("http://127.0.0.1:{port}"), Value::Null).await;
    assert!(matches!(result, Err(Error::WebSocket(_))), "{result:?}");

    let result = Client::connect("https://127.0.0.1:1", Value::Null).await;
    assert!(matches!(result, Err(Error::InvalidUrl(_))), "{result:?}");
}

#[tokio::test]
async fn connect_from_binds_the_source_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::from([127, 0, 0, 7]));
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        assert_eq!(accept_connect(&mut ws).await, r#"40{"token":"t"}"#);
        idle(&mut ws).await;
    });
    let mut client = Client::connect_from(&url, json!({ "token": "t" }), [127, 0, 0, 7].into())
        .await
        .unwrap();
    assert_eq!(client.sid(), "sio-sid");
    client.disconnect().await;
    server.await.unwrap();
}

#[tokio::test]
async fn connect_from_rejects_a_local_address_of_another_family() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let local = std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
    match Client::connect_from(&url, Value::Null, local).await {
        Err(Error::WebSocket(e)) => assert!(e.to_string().contains("family"), "{e}"),
        other => panic!("expected a WebSocket error, got {other:?}"),
    }
    match Client::connect_from("https://127.0.0.1:1", Value::Null, [127, 0, 0, 1].into()).await {
        Err(Error::InvalidUrl(_)) => {}
        other => panic!("expected InvalidUrl, got {other:?}"),
    }
}
