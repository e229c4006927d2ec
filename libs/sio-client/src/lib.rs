//! A small Socket.IO v5 (Engine.IO v4) client, websocket transport only.
//!
//! # Why this exists
//!
//! Parley's integration tests and its load generator need to talk to the gateway
//! exactly like a browser running `socket.io-client` would, but they need things a
//! general-purpose client does not promise:
//!
//! * **Deterministic event buffering.** Every server→client event is queued from the
//!   moment the namespace CONNECT is acknowledged, in arrival order, and stays queued
//!   until the test takes it with [`Client::next_event`]. Nothing is lost while the
//!   test is busy awaiting an acknowledgement, and [`Client::expect_no_event`] makes
//!   negative assertions ("user B must not see this") straightforward.
//! * **Raw access** for malformed-payload tests ([`Client::emit_raw`],
//!   [`Client::emit_raw_with_ack`]).
//! * **Low per-connection cost**, because the load generator holds tens of thousands of
//!   connections: one websocket, one reader (which also answers Engine.IO heartbeats
//!   while the owner is idle, so idle connections are not dropped by the server), an
//!   unbounded event queue and a small map of pending acks. No polling transport, no
//!   reconnection, no TLS. By default the reader is a spawned task;
//!   [`Connector::connect_driven`] hands it back as a [`Driver`] instead, so one task can
//!   drive the readers of many connections (e.g. in a `FuturesUnordered`), and
//!   [`Connector::on_event`] lets that reader handle each event in place rather than
//!   queue it. [`Connector::local`] binds a connection to a chosen local address, so a
//!   load generator can open more connections than one source address has ephemeral
//!   ports.
//!
//! # Protocol scope
//!
//! * Transport: `ws://host:port/socket.io/?EIO=4&transport=websocket`, no HTTP
//!   long-polling and no upgrade. `https://`/`wss://` URLs are rejected.
//! * Only the default namespace `/` is joined; packets for other namespaces are
//!   ignored.
//! * Engine.IO pings (`2`) are answered with pongs (`3`). If the server sends nothing
//!   for `pingInterval + pingTimeout` (values from the open packet), the connection is
//!   considered dead ([`DisconnectReason::PingTimeout`]).
//! * Events and acks carry JSON only. Binary events/acks (Socket.IO types 5 and 6)
//!   and binary websocket frames are ignored.
//! * Events and acks may carry several arguments; this client exposes the **first**
//!   one (or `null` when there is none), which is how Parley uses Socket.IO. In the
//!   other direction `data` is always sent as exactly one argument, even when it is
//!   `null` (a Node handler `(ack) => ...` would receive `null` as `ack`).
//! * The event buffer is unbounded. A load generator that does not care about
//!   events should still drain them ([`Client::try_next_event`]) or memory grows
//!   with the traffic it receives.
//! * If the server asks the client for an ack (`42<id>[...]`), the event is delivered
//!   but no ack is sent back.
//! * A packet the client cannot parse closes the connection with
//!   [`DisconnectReason::ProtocolViolation`], like the reference client does, so server
//!   bugs surface instead of being silently skipped.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use parley_sio_client::Client;
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), parley_sio_client::Error> {
//! let mut client = Client::connect("http://127.0.0.1:8080", json!({ "token": "..." })).await?;
//! let ack = client
//!     .emit_with_ack("message:send", json!({ "body": "hi" }), Duration::from_secs(5))
//!     .await?;
//! let (event, data) = client.next_event(Duration::from_secs(5)).await?;
//! client.expect_no_event(Duration::from_millis(200)).await?;
//! client.disconnect().await;
//! # let _ = (ack, event, data);
//! # Ok(())
//! # }
//! ```

mod packet;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::packet::{EioPacket, SioKind};

/// Websocket settings. tungstenite zero-fills its whole read buffer before every read, so its
/// 128 KiB default costs a load generator with thousands of sockets most of its CPU (by profile);
/// Socket.IO packets here are small, and a larger frame still arrives over several reads.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}
/// Time allowed for the whole handshake by [`Client::connect`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Client::disconnect`] (and the reader, when it gives up on a connection)
/// waits for the websocket close handshake before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WsSink = Arc<AsyncMutex<SplitSink<Ws, Message>>>;
type WsStream = SplitStream<Ws>;

/// A server→client event: its name and its first argument (`null` if it had none).
type Event = (String, Value);

/// Handles each server→client event in place of the event queue; see [`Connector::on_event`].
pub type EventHook = Box<dyn FnMut(String, Value) + Send>;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The server sent a Socket.IO DISCONNECT (`41`) for the default namespace.
    ServerDisconnect,
    /// The server closed the Engine.IO session (`1`) or the websocket.
    TransportClosed,
    /// The websocket failed (I/O error, reset without close handshake, ...).
    TransportError(String),
    /// Nothing arrived from the server for `pingInterval + pingTimeout`.
    PingTimeout,
    /// The server sent a packet this client could not parse.
    ProtocolViolation(String),
    /// [`Client::disconnect`] was called.
    ClientDisconnect,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerDisconnect => f.write_str("server disconnected the socket"),
            Self::TransportClosed => f.write_str("connection closed"),
            Self::TransportError(e) => write!(f, "transport error: {e}"),
            Self::PingTimeout => f.write_str("ping timeout"),
            Self::ProtocolViolation(e) => write!(f, "protocol violation: {e}"),
            Self::ClientDisconnect => f.write_str("client disconnected"),
        }
    }
}

/// Errors returned by [`Client`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not of the form `http://host[:port]` (or `ws://host[:port]`).
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// The websocket could not be opened or written to.
    #[error("websocket error: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),
    /// The server's handshake did not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the namespace CONNECT (`44{"message":...}`), e.g. bad auth.
    #[error("connection refused by server: {0}")]
    ConnectRefused(String),
    /// The operation did not complete within its timeout.
    #[error("timed out")]
    Timeout,
    /// The connection is (or became) closed; buffered events are still readable.
    #[error("disconnected: {0}")]
    Disconnected(DisconnectReason),
    /// Returned by [`Client::expect_no_event`] when an event did arrive.
    #[error("unexpected event {name:?}: {data}")]
    UnexpectedEvent {
        /// Event name.
        name: String,
        /// First event argument.
        data: Value,
    },
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}

/// A connected Socket.IO client on the default namespace.
///
/// Dropping it ends its reader (a spawned task, or the [`Driver`] the caller polls) and
/// closes the TCP connection without a close handshake; call [`Client::disconnect`] for a
/// clean shutdown.
///
/// Sending methods take `&self`, so acks can be awaited concurrently
/// (e.g. with `futures::join!`); reading events takes `&mut self`.
pub struct Client {
    sid: String,
    sink: WsSink,
    events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    next_ack_id: AtomicU64,
    /// The spawned reader, if [`Connector::connect`] spawned it.
    reader: Option<JoinHandle<()>>,
    /// Dropped with the client, which ends its reader (spawned or driven) and the connection.
    _alive: oneshot::Sender<()>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("sid", &self.sid)
            .field("disconnect_reason", &self.disconnect_reason())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// How to connect to the Socket.IO server at `url` (`http://host:port`, no path), sending
    /// `auth` as the CONNECT payload (`Value::Null` sends none): adjust the defaults, then
    /// [`Connector::connect`] or [`Connector::connect_driven`].
    pub fn connector(url: &str, auth: Value) -> Connector {
        Connector {
            url: url.to_owned(),
            auth,
            local: None,
            timeout: DEFAULT_CONNECT_TIMEOUT,
            on_event: None,
        }
    }

    /// Connects to the default namespace of the Socket.IO server at `url`
    /// (`http://host:port`, no path), sending `auth` as the CONNECT payload
    /// (`Value::Null` sends none). Gives up after [`DEFAULT_CONNECT_TIMEOUT`].
    ///
    /// Returns [`Error::ConnectRefused`] with the server's message if the namespace
    /// CONNECT is refused (`44`).
    pub async fn connect(url: &str, auth: Value) -> Result<Self, Error> {
        Self::connector(url, auth).connect().await
    }

    /// [`Client::connect`] with an explicit timeout for the whole handshake
    /// (TCP + websocket + Engine.IO open + Socket.IO CONNECT).
    pub async fn connect_with_timeout(url: &str, auth: Value, timeout: Duration) -> Result<Self, Error> {
        Self::connector(url, auth).timeout(timeout).connect().await
    }

    /// [`Client::connect`] from the local address `local`; see [`Connector::local`].
    pub async fn connect_from(url: &str, auth: Value, local: IpAddr) -> Result<Self, Error> {
        Self::connector(url, auth).local(local).connect().await
    }

    /// [`Client::connect_from`] with an explicit timeout for the whole handshake
    /// (address resolution + TCP + websocket + Engine.IO open + Socket.IO CONNECT).
    pub async fn connect_from_with_timeout(
        url: &str,
        auth: Value,
        local: IpAddr,
        timeout: Duration,
    ) -> Result<Self, Error> {
        Self::connector(url, auth).local(local).timeout(timeout).connect().await
    }

    /// The Socket.IO session id assigned by the server (from `40{"sid":...}`).
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// `false` once the server disconnected the socket, the connection dropped, or
    /// [`Client::disconnect`] was called.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().closed.is_none()
    }

    /// Why the connection ended, or `None` while it is still up.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.shared.lock().closed.clone()
    }

    /// Sends `42["event",data]` (no acknowledgement requested).
    pub async fn emit(&self, event: &str, data: Value) -> Result<(), Error> {
        self.send_text(packet::encode_event(event, &data, None)).await
    }

    /// Sends `42<id>["event",data]` and waits up to `timeout` for the server's
    /// `43<id>[...]`, returning its first argument (`null` if it has none).
    ///
    /// Events that arrive meanwhile are buffered for [`Client::next_event`].
    pub async fn emit_with_ack(&self, event: &str, data: Value, timeout: Duration) -> Result<Value, Error> {
        self.request_ack(|id| packet::encode_event(event, &data, Some(id)), timeout)
            .await
    }

    /// Sends `text` verbatim as one websocket text frame, so it includes the
    /// Engine.IO message prefix: e.g. `42["message:send","not an object"]`.
    pub async fn emit_raw(&self, text: &str) -> Result<(), Error> {
        self.send_text(text.to_owned()).await
    }

    /// Sends `42<id>` followed verbatim by `payload` (which need not be valid JSON,
    /// e.g. `["message:send","not an object"]` or `["message:send",{`) and waits up
    /// to `timeout` for the ack, returning its first argument.
    pub async fn emit_raw_with_ack(&self, payload: &str, timeout: Duration) -> Result<Value, Error> {
        self.request_ack(|id| format!("42{id}{payload}"), timeout).await
    }

    /// Waits up to `timeout` for the next server→client event and returns its name
    /// and first argument, in arrival order.
    ///
    /// Buffered events are returned even after the connection closed; once the buffer
    /// is empty, a closed connection yields [`Error::Disconnected`] immediately.
    /// Returns [`Error::Timeout`] if nothing arrives in time.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<(String, Value), Error> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(self.shared.disconnected()),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Returns the next buffered event, if any, without waiting.
    ///
    /// `None` only means the buffer is empty; use [`Client::is_connected`] to tell
    /// whether more can arrive.
    pub fn try_next_event(&mut self) -> Option<(String, Value)> {
        self.events.try_recv().ok()
    }

    /// Succeeds if no event arrives within `within` (for negative tests).
    ///
    /// Fails with [`Error::UnexpectedEvent`] if one does (it is consumed), or with
    /// [`Error::Disconnected`] if the connection is closed and nothing is buffered:
    /// a dead connection proves nothing about what the server would have sent.
    pub async fn expect_no_event(&mut self, within: Duration) -> Result<(), Error> {
        match self.next_event(within).await {
            Err(Error::Timeout) => Ok(()),
            Ok((name, data)) => Err(Error::UnexpectedEvent { name, data }),
            Err(e) => Err(e),
        }
    }

    /// Sends `41` (DISCONNECT) and closes the websocket, best effort: it never
    /// fails, and waits at most about two seconds for the close handshake.
    /// Afterwards [`Client::is_connected`] is `false`; buffered events remain
    /// readable. Calling it again does nothing.
    pub async fn disconnect(&mut self) {
        if self.shared.close(DisconnectReason::ClientDisconnect) {
            let close = async {
                let mut sink = self.sink.lock().await;
                sink.send(Message::text(packet::DISCONNECT)).await?;
                sink.close().await
            };
            // Errors mean the connection is already gone, which is what we want.
            let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
        }
        if let Some(mut reader) = self.reader.take() {
            // Give the reader a moment to receive the server's close frame.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
            reader.abort();
        }
    }

    async fn send_text(&self, text: String) -> Result<(), Error> {
        self.shared.ensure_open()?;
        let result = self.sink.lock().await.send(Message::text(text)).await;
        result.map_err(|e| match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => self.shared.disconnected(),
            other => other.into(),
        })
    }

    async fn request_ack(&self, encode: impl FnOnce(u64) -> String, timeout: Duration) -> Result<Value, Error> {
        let id = self.next_ack_id.fetch_add(1, Ordering::Relaxed);
        // Registered before sending so a fast ack cannot be missed; the guard
        // unregisters it on every exit path (including the caller dropping us).
        let mut pending = self.shared.register_ack(id)?;
        let exchange = async {
            self.send_text(encode(id)).await?;
            (&mut pending.rx).await.map_err(|_| self.shared.disconnected())
        };
        let args = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout)??;
        Ok(args.into_iter().next().unwrap_or(Value::Null))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

/// How to open a connection; made by [`Client::connector`].
pub struct Connector {
    url: String,
    auth: Value,
    local: Option<IpAddr>,
    timeout: Duration,
    on_event: Option<EventHook>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.url)
            .field("local", &self.local)
            .field("timeout", &self.timeout)
            .field("on_event", &self.on_event.is_some())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Binds the TCP connection to `(local, 0)` before it connects, so the kernel picks the
    /// source port on that address.
    ///
    /// A load generator opening more connections than one source address has ephemeral ports
    /// (about 28k on Linux) spreads them over several, e.g. `127.0.0.2`, `127.0.0.3`, … on
    /// loopback. The server address is resolved from the URL and must be of the same family
    /// (IPv4 or IPv6) as `local`.
    pub fn local(mut self, local: IpAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// Time allowed for the whole handshake (address resolution + TCP + websocket + Engine.IO
    /// open + Socket.IO CONNECT); [`DEFAULT_CONNECT_TIMEOUT`] unless set.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Hands every server→client event received after the CONNECT to `hook`, called by the
    /// reader the moment the frame is parsed, instead of queueing it: the client's
    /// [`Client::next_event`] then never yields an event. A load generator uses it to time
    /// arrivals without a queue and a task of its own per connection. The hook runs inside
    /// the reader, so it must not block.
    pub fn on_event(mut self, hook: impl FnMut(String, Value) + Send + 'static) -> Self {
        self.on_event = Some(Box::new(hook));
        self
    }

    /// Connects, with the reader spawned as a task of its own.
    ///
    /// Returns [`Error::ConnectRefused`] with the server's message if the namespace CONNECT
    /// is refused (`44`).
    pub async fn connect(self) -> Result<Client, Error> {
        let (mut client, driver) = self.connect_driven().await?;
        client.reader = Some(tokio::spawn(driver));
        Ok(client)
    }

    /// Connects, and returns the reader as a [`Driver`] for the caller to poll instead of
    /// spawning it: one task can then drive many connections. Until the driver is polled
    /// nothing is read, so acks are not resolved, events not delivered and Engine.IO pings
    /// not answered (the server drops the connection after its ping timeout).
    pub async fn connect_driven(self) -> Result<(Client, Driver), Error> {
        let url = engine_io_url(&self.url)?;
        let handshake = async {
            let ws = open_websocket(&url, self.local).await?;
            handshake(ws, &self.auth, self.on_event).await
        };
        tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| Error::Timeout)?
    }
}

/// The reader of one connection from [`Connector::connect_driven`]: a future that reads
/// frames, answers Engine.IO pings, resolves acks and delivers events, and completes when the
/// connection ends (the server closed it, it failed, or its [`Client`] was dropped or
/// disconnected).
#[must_use = "nothing is read from the connection until its driver is polled"]
pub struct Driver {
    reader: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.reader.as_mut().poll(cx)
    }
}

/// Opens the websocket, from `local` when given. No Nagle: an emit leaves at once, as a
/// browser's websocket does.
async fn open_websocket(url: &str, local: Option<IpAddr>) -> Result<Ws, Error> {
    let Some(local) = local else {
        let (ws, _response) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
        return Ok(ws);
    };
    let remote = resolve(url, local).await?;
    let socket = match local {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(io_error)?;
    socket.bind(SocketAddr::new(local, 0)).map_err(io_error)?;
    let tcp = socket.connect(remote).await.map_err(io_error)?;
    tcp.set_nodelay(true).map_err(io_error)?;
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(tcp), Some(ws_config())).await?;
    Ok(ws)
}

/// Engine.IO open, then Socket.IO CONNECT, over an open websocket.
async fn handshake(ws: Ws, auth: &Value, on_event: Option<EventHook>) -> Result<(Client, Driver), Error> {
    let (sink, mut stream) = ws.split();

    // Engine.IO: the first packet must be the open packet.
    let open = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => match packet::parse_eio(&text) {
                Ok(EioPacket::Open(payload)) => {
                    break packet::parse_open(payload).map_err(Error::Protocol)?;
                }
                _ => {
                    return Err(Error::Protocol(format!(
                        "expected Engine.IO open packet, got {:?}",
                        text.as_str()
                    )));
                }
            },
            Some(Ok(Message::Close(_))) | None => {
                return Err(Error::Disconnected(DisconnectReason::TransportClosed));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    };

    let (events_tx, events) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let mut dispatcher = Dispatcher {
        sink: Arc::new(AsyncMutex::new(sink)),
        events: events_tx,
        on_event,
        shared: Arc::clone(&shared),
    };

    // Socket.IO: CONNECT to the default namespace and wait for the verdict.
    dispatcher.send(packet::encode_connect(auth)).await?;
    let sid = loop {
        let msg = match stream.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Disconnected(DisconnectReason::TransportClosed)),
        };
        match dispatcher.handle(msg).await {
            Step::Continue => {}
            Step::Connected(sid) => break sid,
            Step::Refused(message) => return Err(Error::ConnectRefused(message)),
            Step::Stop(DisconnectReason::ProtocolViolation(e)) => {
                return Err(Error::Protocol(e));
            }
            Step::Stop(reason) => return Err(Error::Disconnected(reason)),
        }
    };

    let sink = Arc::clone(&dispatcher.sink);
    let idle_limit = open.ping_interval + open.ping_timeout;
    let (alive, dropped) = oneshot::channel();
    let reader = async move {
        // Whichever ends first: the connection, or the client (dropping the stream and the
        // sink closes the TCP connection).
        tokio::select! {
            () = read_loop(stream, dispatcher, idle_limit) => {}
            _ = dropped => {}
        }
    };
    let client = Client {
        sid,
        sink,
        events,
        shared,
        next_ack_id: AtomicU64::new(0),
        reader: None,
        _alive: alive,
    };
    Ok((
        client,
        Driver {
            reader: Box::pin(reader),
        },
    ))
}

/// Builds the Engine.IO websocket URL from `http://host[:port]`.
fn engine_io_url(base: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidUrl(format!("{base:?}: {why}"));
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| invalid("expected http://host[:port]"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => {}
        "https" | "wss" => return Err(invalid("TLS is not supported by this client")),
        _ => return Err(invalid("expected an http:// or ws:// URL")),
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', ' ', '@']) {
        return Err(invalid("expected http://host[:port] without path or query"));
    }
    Ok(format!("ws://{authority}/socket.io/?EIO=4&transport=websocket"))
}

/// The server address of an Engine.IO URL built by [`engine_io_url`], of the same family as
/// `local` (the port defaults to 80).
async fn resolve(url: &str, local: IpAddr) -> Result<SocketAddr, Error> {
    let authority = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| Error::InvalidUrl(format!("{url:?}: expected ws://host[:port]/...")))?;
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    let target = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut candidates = tokio::net::lookup_host(target.as_str()).await.map_err(io_error)?;
    candidates
        .find(|addr| addr.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| {
            io_error(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{authority} has no address of the family of {local}"),
            ))
        })
}

fn io_error(e: std::io::Error) -> Error {
    tungstenite::Error::Io(e).into()
}

/// State shared between the [`Client`] and its reader task.
#[derive(Default)]
struct Shared {
    state: Mutex<SharedState>,
}

#[derive(Default)]
struct SharedState {
    /// Callers waiting for `43<id>[...]`, by ack id.
    acks: HashMap<u64, oneshot::Sender<Vec<Value>>>,
    /// Set once, when the connection ends.
    closed: Option<DisconnectReason>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        // The state stays consistent even if a holder panicked.
        self.state.lock()
    }

    fn disconnected(&self) -> Error {
        let reason = self.lock().closed.clone();
        Error::Disconnected(reason.unwrap_or(DisconnectReason::TransportClosed))
    }

    fn ensure_open(&self) -> Result<(), Error> {
        match &self.lock().closed {
            None => Ok(()),
            Some(reason) => Err(Error::Disconnected(reason.clone())),
        }
    }

    /// Marks the connection closed (the first reason wins) and fails pending acks.
    /// Returns whether this call closed it.
    fn close(&self, reason: DisconnectReason) -> bool {
        let mut state = self.lock();
        if state.closed.is_some() {
            return false;
        }
        state.closed = Some(reason);
        // Dropping the senders wakes the waiters with an error.
        state.acks.clear();
        true
    }
}

/// A registered ack waiter; unregisters itself when dropped.
struct PendingAck<'a> {
    shared: &'a Shared,
    id: u64,
    rx: oneshot::Receiver<Vec<Value>>,
}

impl Drop for PendingAck<'_> {
    fn drop(&mut self) {
        self.shared.lock().acks.remove(&self.id);
    }
}

impl Shared {
    fn register_ack(&self, id: u64) -> Result<PendingAck<'_>, Error> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(Error::Disconnected(reason.clone()));
        }
        let (tx, rx) = oneshot::channel();
        state.acks.insert(id, tx);
        Ok(PendingAck { shared: self, id, rx })
    }

    fn resolve_ack(&self, id: u64, args: Vec<Value>) {
        // Unknown ids (timed-out or never requested) are ignored.
        if let Some(tx) = self.lock().acks.remove(&id) {
            let _ = tx.send(args);
        }
    }
}

/// What the connection should do after a received frame.
enum Step {
    Continue,
    /// `40{"sid":...}` for the default namespace.
    Connected(String),
    /// `44{...}` for the default namespace, with the server's message.
    Refused(String),
    Stop(DisconnectReason),
}

/// Handles incoming frames; owned by the reader task after the handshake.
struct Dispatcher {
    sink: WsSink,
    /// The client's event queue; closed when the reader ends, even with a hook.
    events: mpsc::UnboundedSender<Event>,
    on_event: Option<EventHook>,
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// Sends one text frame. Borrows only the sink, so the hook need not be `Sync`.
    fn send(&self, text: String) -> impl Future<Output = Result<(), tungstenite::Error>> + Send + 'static {
        let sink = Arc::clone(&self.sink);
        async move { sink.lock().await.send(Message::text(text)).await }
    }

    async fn handle(&mut self, msg: Message) -> Step {
        match msg {
            Message::Text(text) => self.handle_text(&text).await,
            Message::Close(_) => Step::Stop(DisconnectReason::TransportClosed),
            // Binary frames are Socket.IO attachments (unsupported, ignored);
            // websocket pings are answered by tungstenite itself.
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Step::Continue,
        }
    }

    async fn handle_text(&mut self, text: &str) -> Step {
        match packet::parse_eio(text) {
            Ok(EioPacket::Ping(payload)) => match self.send(format!("3{payload}")).await {
                Ok(()) => Step::Continue,
                Err(e) => Step::Stop(transport_reason(e)),
            },
            Ok(EioPacket::Message(sio)) => self.handle_sio(sio),
            Ok(EioPacket::Close) => Step::Stop(DisconnectReason::TransportClosed),
            Ok(EioPacket::Open(_) | EioPacket::Pong(_) | EioPacket::Upgrade | EioPacket::Noop) => Step::Continue,
            Err(e) => Step::Stop(DisconnectReason::ProtocolViolation(e)),
        }
    }

    fn handle_sio(&mut self, text: &str) -> Step {
        let packet = match packet::parse_sio(text) {
            Ok(packet) => packet,
            Err(e) => return Step::Stop(DisconnectReason::ProtocolViolation(e)),
        };
        if packet.namespace != "/" {
            return Step::Continue;
        }
        let violation = |e: String| Step::Stop(DisconnectReason::ProtocolViolation(e));
        match packet.kind {
            SioKind::Connect => match packet.data.as_ref().and_then(|d| d.get("sid")) {
                Some(Value::String(sid)) => Step::Connected(sid.clone()),
                _ => violation(format!("CONNECT packet without sid: {text:?}")),
            },
            SioKind::ConnectError => Step::Refused(packet::connect_error_message(packet.data)),
            SioKind::Disconnect => Step::Stop(DisconnectReason::ServerDisconnect),
            SioKind::Event => match packet::event_parts(packet.data) {
                Ok((name, args)) => {
                    let data = args.into_iter().next().unwrap_or(Value::Null);
                    match &mut self.on_event {
                        Some(hook) => hook(name, data),
                        // A send error only means the Client was dropped.
                        None => drop(self.events.send((name, data))),
                    }
                    Step::Continue
                }
                Err(e) => violation(e),
            },
            SioKind::Ack => match (packet.ack_id, packet::ack_args(packet.data)) {
                (Some(id), Ok(args)) => {
                    self.shared.resolve_ack(id, args);
                    Step::Continue
                }
                (None, _) => violation(format!("ACK packet without id: {text:?}")),
                (_, Err(e)) => violation(e),
            },
            SioKind::BinaryEvent | SioKind::BinaryAck => Step::Continue,
        }
    }
}

fn transport_reason(e: tungstenite::Error) -> DisconnectReason {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => DisconnectReason::TransportClosed,
        other => DisconnectReason::TransportError(other.to_string()),
    }
}

/// The reader task: dispatches frames until the connection ends, then records why.
async fn read_loop(mut stream: WsStream, mut dispatcher: Dispatcher, idle_limit: Duration) {
    let reason = loop {
        let msg = match tokio::time::timeout(idle_limit, stream.next()).await {
            Err(_) => break DisconnectReason::PingTimeout,
            Ok(None) => break DisconnectReason::TransportClosed,
            Ok(Some(Err(e))) => break transport_reason(e),
            Ok(Some(Ok(msg))) => msg,
        };
        match dispatcher.handle(msg).await {
            // A repeated CONNECT verdict after the handshake carries no information.
            Step::Continue | Step::Connected(_) | Step::Refused(_) => {}
            Step::Stop(reason) => break reason,
        }
    };
    let Dispatcher {
        sink, events, shared, ..
    } = dispatcher;
    shared.close(reason);
    // Closes the event queue: `next_event` drains it, then reports the disconnect.
    drop(events);
    let _ = tokio::time::timeout(CLOSE_GRACE, async { sink.lock().await.close().await }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn url_building() {
        let expected = "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket";
        assert_eq!(engine_io_url("http://127.0.0.1:8080").unwrap(), expected);
        assert_eq!(engine_io_url("http://127.0.0.1:8080/").unwrap(), expected);
        assert_eq!(engine_io_url("ws://127.0.0.1:8080").unwrap(), expected);
        assert_eq!(engine_io_url("HTTP://127.0.0.1:8080").unwrap(), expected);
        assert_eq!(
            engine_io_url("http://localhost").unwrap(),
            "ws://localhost/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            engine_io_url("http://[::1]:3000").unwrap(),
            "ws://[::1]:3000/socket.io/?EIO=4&transport=websocket"
        );
        for bad in [
            "127.0.0.1:8080",
            "https://example.com",
            "wss://example.com",
            "ftp://example.com",
            "http://",
            "http://host/socket.io",
            "http://host?x=1",
            "http://user@host",
        ] {
            assert!(
                matches!(engine_io_url(bad), Err(Error::InvalidUrl(_))),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn error_is_small() {
        // Keeps `Result<_, Error>` cheap to move around in the load generator.
        assert!(std::mem::size_of::<Error>() <= 64);
    }

    #[test]
    fn shared_state_closes_once_and_fails_pending_acks() {
        let shared = Shared::default();
        let mut pending = shared.register_ack(1).unwrap();
        assert!(shared.close(DisconnectReason::ServerDisconnect));
        assert!(!shared.close(DisconnectReason::ClientDisconnect));
        assert!(pending.rx.try_recv().is_err());
        assert!(matches!(
            shared.register_ack(2),
            Err(Error::Disconnected(DisconnectReason::ServerDisconnect))
        ));
        drop(pending);
        assert!(shared.lock().acks.is_empty());
    }

    #[test]
    fn pending_ack_unregisters_on_drop() {
        let shared = Shared::default();
        let pending = shared.register_ack(7).unwrap();
        assert_eq!(shared.lock().acks.len(), 1);
        drop(pending);
        assert!(shared.lock().acks.is_empty());
        // Late acks for unknown ids are ignored.
        shared.resolve_ack(7, vec![Value::Null]);
    }
}
