//! End-to-end tests against a real Socket.IO server: socketioxide, the library the
//! gateway is built on, served by axum on an ephemeral port.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parley_sio_client::{Client, DisconnectReason, Error};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason as ServerReason;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(5);

struct Server {
    url: String,
    disconnects: mpsc::UnboundedReceiver<ServerReason>,
}

#[derive(Debug)]
struct AuthError(&'static str);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

async fn require_token(Data(auth): Data<Value>) -> Result<(), AuthError> {
    match auth.get("token").and_then(Value::as_str) {
        Some("good") => Ok(()),
        _ => Err(AuthError("missing or invalid token")),
    }
}

/// Starts a server with short heartbeats (so idle tests exercise ping/pong):
/// * on connect: emits `welcome` with the auth payload;
/// * `echo`: acks its argument;
/// * `burst` (n): emits `tick` 0..n, then acks `"done"`;
/// * `silent_ack`: acks with no argument;
/// * `kick`: disconnects the socket server-side.
async fn start_server() -> Server {
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(100))
        .ping_timeout(Duration::from_millis(100))
        .build_layer();
    let (tx, disconnects) = mpsc::unbounded_channel();

    let on_connect = async move |s: SocketRef, Data(auth): Data<Value>| {
        s.emit("welcome", &auth).ok();
        s.on("echo", async |ack: AckSender, Data(data): Data<Value>| {
            ack.send(&data).ok();
        });
        s.on("burst", async |s: SocketRef, ack: AckSender, Data(n): Data<u64>| {
            for i in 0..n {
                s.emit("tick", &i).ok();
            }
            ack.send("done").ok();
        });
        s.on("silent_ack", async |ack: AckSender| {
            ack.send(&()).ok();
        });
        s.on("kick", async |s: SocketRef| {
            s.disconnect().ok();
        });
        s.on_disconnect(async move |reason: ServerReason| {
            tx.send(reason).ok();
        });
    };
    io.ns("/", on_connect.with(require_token));

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        url: format!("http://{addr}"),
        disconnects,
    }
}

async fn connect(server: &Server) -> Client {
    Client::connect(&server.url, json!({ "token": "good" })).await.unwrap()
}

#[tokio::test]
async fn connects_and_receives_welcome() {
    let server = start_server().await;
    let mut client = connect(&server).await;
    assert!(client.is_connected());
    assert!(!client.sid().is_empty());
    let (name, data) = client.next_event(T).await.unwrap();
    assert_eq!(name, "welcome");
    assert_eq!(data, json!({ "token": "good" }));
}

#[tokio::test]
async fn refused_without_valid_token() {
    let server = start_server().await;
    for auth in [json!({ "token": "bad" }), json!({}), Value::Null] {
        match Client::connect(&server.url, auth.clone()).await {
            Err(Error::ConnectRefused(message)) => {
                assert_eq!(message, "missing or invalid token", "auth {auth}");
            }
            other => panic!("auth {auth}: expected ConnectRefused, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ack_roundtrip_keeps_events_buffered() {
    let server = start_server().await;
    let mut client = connect(&server).await;
    // The welcome event arrives while we await the ack; it must not be lost.
    let data = json!({ "body": "héllo ✓", "n": [1, 2, 3] });
    let ack = client.emit_with_ack("echo", data.clone(), T).await.unwrap();
    assert_eq!(ack, data);
    assert_eq!(client.next_event(T).await.unwrap().0, "welcome");
    client.expect_no_event(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn events_keep_arrival_order() {
    let server = start_server().await;
    let mut client = connect(&server).await;
    assert_eq!(client.next_event(T).await.unwrap().0, "welcome");
    let ack = client.emit_with_ack("burst", json!(50), T).await.unwrap();
    assert_eq!(ack, json!("done"));
    // All ticks were emitted before the ack, so they are already buffered.
    for i in 0..50 {
        assert_eq!(client.try_next_event(), Some(("tick".to_owned(), json!(i))));
    }
    assert_eq!(client.try_next_event(), None);
}

#[tokio::test]
async fn concurrent_acks_are_matched_by_id() {
    let server = start_server().await;
    let client = connect(&server).await;
    let calls = (0..20).map(|i| client.emit_with_ack("echo", json!(i), T));
    let acks = futures::future::join_all(calls).await;
    for (i, ack) in acks.into_iter().enumerate() {
        assert_eq!(ack.unwrap(), json!(i));
    }
}

#[tokio::test]
async fn ack_without_argument_is_null() {
    let server = start_server().await;
    let client = connect(&server).await;
    let ack = client.emit_with_ack("silent_ack", Value::Null, T).await.unwrap();
    assert_eq!(ack, Value::Null);
}

#[tokio::test]
async fn unanswered_ack_times_out_and_connection_survives() {
    let server = start_server().await;
    let client = connect(&server).await;
    let err = client
        .emit_with_ack("no_such_event", json!(1), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(client.is_connected());
    assert_eq!(client.emit_with_ack("echo", json!(2), T).await.unwrap(), json!(2));
}

#[tokio::test]
async fn raw_packets() {
    let server = start_server().await;
    let mut client = connect(&server).await;
    assert_eq!(client.next_event(T).await.unwrap().0, "welcome");
    let ack = client
        .emit_raw_with_ack(r#"["echo","not an object"]"#, T)
        .await
        .unwrap();
    assert_eq!(ack, json!("not an object"));
    client.emit_raw(r#"42["echo",1]"#).await.unwrap();
    client.emit("echo", json!(1)).await.unwrap();
    client.expect_no_event(Duration::from_millis(100)).await.unwrap();
    assert!(client.is_connected());
}

#[tokio::test]
async fn survives_idle_periods_by_answering_pings() {
    let server = start_server().await;
    let client = connect(&server).await;
    // Ten heartbeat periods without touching the client.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(client.is_connected(), "{:?}", client.disconnect_reason());
    assert_eq!(
        client.emit_with_ack("echo", json!("still here"), T).await.unwrap(),
        json!("still here")
    );
}

#[tokio::test]
async fn server_disconnect_is_detected() {
    let mut server = start_server().await;
    let mut client = connect(&server).await;
    client.emit("kick", Value::Null).await.unwrap();
    // The welcome event is still delivered, then the disconnect is reported.
    assert_eq!(client.next_event(T).await.unwrap().0, "welcome");
    let err = client.next_event(T).await.unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(DisconnectReason::ServerDisconnect)),
        "{err:?}"
    );
    assert!(!client.is_connected());
    assert!(matches!(
        client.emit("echo", json!(1)).await,
        Err(Error::Disconnected(DisconnectReason::ServerDisconnect))
    ));
    assert_eq!(server.disconnects.recv().await, Some(ServerReason::ServerNSDisconnect));
}

#[tokio::test]
async fn client_disconnect_is_seen_by_server() {
    let mut server = start_server().await;
    let mut client = connect(&server).await;
    client.disconnect().await;
    assert!(!client.is_connected());
    assert_eq!(client.disconnect_reason(), Some(DisconnectReason::ClientDisconnect));
    assert_eq!(server.disconnects.recv().await, Some(ServerReason::ClientNSDisconnect));
    assert!(matches!(
        client.emit_with_ack("echo", json!(1), T).await,
        Err(Error::Disconnected(DisconnectReason::ClientDisconnect))
    ));
    // Buffered events survive the disconnect.
    assert_eq!(client.next_event(T).await.unwrap().0, "welcome");
    client.disconnect().await; // idempotent
}

#[tokio::test]
async fn expect_no_event_reports_unexpected_event() {
    let server = start_server().await;
    let mut client = connect(&server).await;
    match client.expect_no_event(T).await {
        Err(Error::UnexpectedEvent { name, data }) => {
            assert_eq!(name, "welcome");
            assert_eq!(data, json!({ "token": "good" }));
        }
        other => panic!("expected UnexpectedEvent, got {other:?}"),
    }
}

#[tokio::test]
async fn many_clients() {
    let server = start_server().await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(connect(&server).await);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.next_event(T).await.unwrap().0, "welcome");
        assert_eq!(client.emit_with_ack("echo", json!(i), T).await.unwrap(), json!(i));
    }
}

#[tokio::test]
async fn clients_from_several_source_addresses() {
    let server = start_server().await;
    let mut clients = Vec::new();
    for last in 2..=4u8 {
        let local = std::net::IpAddr::from([127, 0, 0, last]);
        clients.push(
            Client::connect_from(&server.url, json!({ "token": "good" }), local)
                .await
                .unwrap(),
        );
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.next_event(T).await.unwrap().0, "welcome");
        assert_eq!(client.emit_with_ack("echo", json!(i), T).await.unwrap(), json!(i));
    }
    match Client::connect_from(&server.url, json!({ "token": "bad" }), [127, 0, 0, 2].into()).await {
        Err(Error::ConnectRefused(_)) => {}
        other => panic!("expected ConnectRefused, got {other:?}"),
    }
}

#[tokio::test]
async fn one_task_drives_the_readers_of_many_connections() {
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;
    use parley_sio_client::Driver;

    let server = start_server().await;
    // One task drives every connection it is handed, until all have ended.
    let (adopt, mut incoming) = mpsc::unbounded_channel::<Driver>();
    let fleet = tokio::spawn(async move {
        let mut drivers = FuturesUnordered::new();
        let mut ended = 0;
        loop {
            tokio::select! {
                Some(driver) = incoming.recv() => drivers.push(driver),
                Some(()) = drivers.next() => ended += 1,
                else => return ended,
            }
        }
    });
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (client, driver) = Client::connector(&server.url, json!({ "token": "good" }))
            .connect_driven()
            .await
            .unwrap();
        adopt.send(driver).unwrap();
        clients.push(client);
    }
    // Nothing reads a connection until its driver is polled: this one's ack cannot arrive.
    let (unread, _unpolled) = Client::connector(&server.url, json!({ "token": "good" }))
        .connect_driven()
        .await
        .unwrap();
    assert!(matches!(
        unread
            .emit_with_ack("echo", json!("early"), Duration::from_millis(200))
            .await,
        Err(Error::Timeout)
    ));
    // Several heartbeat periods: the one task answers every connection's pings.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, client) in clients.iter_mut().enumerate() {
        assert!(client.is_connected(), "{:?}", client.disconnect_reason());
        assert_eq!(client.next_event(T).await.unwrap().0, "welcome");
        assert_eq!(client.emit_with_ack("echo", json!(i), T).await.unwrap(), json!(i));
    }
    // Dropping the clients ends their drivers, so the task completes.
    drop((clients, adopt));
    assert_eq!(tokio::time::timeout(T, fleet).await.unwrap().unwrap(), 20);
}

#[tokio::test]
async fn an_event_hook_sees_every_event_in_order_and_the_queue_stays_empty() {
    let server = start_server().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut client = Client::connector(&server.url, json!({ "token": "good" }))
        .on_event(move |name, data| drop(seen_tx.send((name, data))))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.emit_with_ack("burst", json!(50), T).await.unwrap(),
        json!("done")
    );
    let mut next = async || tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    assert_eq!(next().await, ("welcome".to_owned(), json!({ "token": "good" })));
    for i in 0..50 {
        assert_eq!(next().await, ("tick".to_owned(), json!(i)));
    }
    assert!(matches!(
        client.next_event(Duration::from_millis(100)).await,
        Err(Error::Timeout)
    ));
}

#[tokio::test]
async fn dropping_a_driven_client_closes_its_connection() {
    let mut server = start_server().await;
    let (client, driver) = Client::connector(&server.url, json!({ "token": "good" }))
        .connect_driven()
        .await
        .unwrap();
    let driver = tokio::spawn(driver);
    drop(client);
    tokio::time::timeout(T, driver).await.unwrap().unwrap();
    assert!(server.disconnects.recv().await.is_some());
}
