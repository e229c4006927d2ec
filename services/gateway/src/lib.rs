//! `parley-gateway`: the HTTP API and Socket.IO server clients talk to. It authenticates,
//! authorises against Postgres, validates, publishes client events to JetStream and acknowledges
//! only once JetStream has them, and fans the stream back out to connected sockets.
//!
//! Built as a library so tests start the real thing on port 0: [`Application::build`], then
//! [`Application::local_addr`], then [`Application::run_until_stopped`].
//!
//! The modules come in three layers, and imports only run downwards:
//! - transport: [`socket`] (Socket.IO events) and [`http`] (axum routes) read a typed payload
//!   from [`api`], call one operation and answer; [`listener`] serves the connections;
//! - live delivery: [`subscriptions`] (join, leave, typing), [`replay`], [`fanout`], [`typing`],
//!   [`presence`] and [`lifetimes`] (a socket ends with its token), on the per-socket
//!   [`session`], the [`wire`] shape of `message:new` and the [`rooms`];
//! - operations: [`messaging`] (with [`membership`], [`recent`], [`drain`] and [`limits`]),
//!   [`transcripts`] and [`auth`], the only way to Postgres and to the chat stream.
//!
//! [`error`], [`config`] and [`connection`] (what is done with a socket that cannot keep up) sit
//! beneath all three.

mod api;
pub mod asyncapi;
mod auth;
mod config;
mod connection;
mod drain;
mod error;
mod fanout;
mod http;
mod jwks;
mod lifetimes;
mod limits;
mod listener;
mod membership;
mod messaging;
pub mod openapi;
mod presence;
mod public_keys;
mod recent;
mod replay;
mod rooms;
mod session;
mod socket;
mod subscriptions;
mod transcripts;
mod typing;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use parley_store::Store;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use auth::{AuthConfig, KeyFamily, PublicKey};
pub use config::Config;
pub use limits::LimitConfig;

use crate::auth::Authenticator;
use crate::lifetimes::Lifetimes;
use crate::limits::Limits;
use crate::membership::Membership;
use crate::messaging::Messaging;
use crate::presence::Presence;
use crate::typing::TypingPublisher;

/// Largest Socket.IO packet a client may send: a 5000-character body is at most ~30 KiB of JSON.
pub(crate) const MAX_PACKET_BYTES: usize = 128 * 1024;
/// Packets queued per socket before emits fail: a replay sends up to 1000 at once, plus live
/// traffic. The queue grows only as used, so idle sockets do not pay for the bound.
const SOCKET_BUFFER_PACKETS: usize = 4096;

/// How long an engine.io session may take to connect the namespace (authenticate) once open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long shutdown waits for in-flight writes.
const DRAIN_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// What every handler shares. socketioxide and axum clone the state for every event and request,
/// so it is one `Arc`: cloning the services themselves (the token validation settings, the NATS
/// clients, …) cost a dozen allocations per event, by profile.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Services>);

/// The services behind [`AppState`].
pub(crate) struct Services {
    pub(crate) auth: Authenticator,
    pub(crate) messaging: Messaging,
    pub(crate) typing: TypingPublisher,
    pub(crate) presence: Presence,
    pub(crate) limits: Limits,
    pub(crate) lifetimes: Lifetimes,
    pub(crate) nats: async_nats::Client,
    pub(crate) transcripts: transcripts::Transcripts,
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// Gives a request its own copy of the URI and headers. engineioxide keeps every socket's upgrade
/// request for the socket's whole life, and hyper's parsed head points into the connection's read
/// buffer (8 to 16 KiB), which would stay allocated per idle socket; the copy lets it go.
async fn own_request_head(mut request: axum::extract::Request) -> axum::extract::Request {
    if let Ok(uri) = request.uri().to_string().parse() {
        *request.uri_mut() = uri;
    }
    let headers: axum::http::HeaderMap = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            axum::http::HeaderValue::from_bytes(value.as_bytes())
                .ok()
                .map(|value| (name.clone(), value))
        })
        .collect();
    *request.headers_mut() = headers;
    request
}

/// A gateway bound to its port, ready to run.
pub struct Application {
    config: Config,
    listener: TcpListener,
    store: Store,
    nats: async_nats::Client,
}

impl Application {
    /// Prepares the Postgres pool (connecting lazily), starts connecting to NATS (retrying in the
    /// background while it is down) and binds `config.listen`. Waiting for the two to answer is
    /// [`Application::run_until_stopped`]'s, so that it can be stopped meanwhile.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything records.
        parley_service::telemetry::metrics();
        let store = Store::connect_lazy(&config.database_url, config.db_pool_size).context("DATABASE_URL")?;
        let nats = parley_nats::connect(&config.nats_url, "parley-gateway")
            .await
            .context("NATS_URL")?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("PARLEY_LISTEN: cannot bind {}", config.listen))?;
        Ok(Self {
            config,
            listener,
            store,
            nats,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Applies the streams (retrying while NATS is away, until `shutdown`), then serves until
    /// `shutdown` is cancelled, then closes every socket and drains HTTP requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            store,
            nats,
        } = self;
        let addr = listener.local_addr()?;
        // A server cut off from its cluster is left for another (see `parley_nats::reach`).
        let reach = tokio::spawn(parley_nats::reach::stay_in_reach(nats.clone(), shutdown.clone()));
        let js = parley_nats::jetstream(nats.clone());
        // NATS may come up after us (compose): wait for it rather than exit.
        let replicas = config.stream_replicas;
        let streams = parley_service::retry_until("applying streams", &shutdown, || {
            parley_nats::ensure_streams(&js, replicas)
        });
        let Some(()) = streams.await else {
            return Ok(());
        };
        let presence_kv = parley_service::retry_until("opening the presence bucket", &shutdown, || {
            parley_nats::buckets::presence(&js, replicas)
        });
        let Some(presence_kv) = presence_kv.await else {
            return Ok(());
        };
        let buckets = parley_service::retry_until("opening the directory and sent buckets", &shutdown, || async {
            let directory = parley_nats::buckets::conversations(&js, replicas).await?;
            let sent = parley_nats::buckets::sent(&js, replicas, recent::SENT_TTL).await?;
            Ok::<_, parley_nats::SetupError>((directory, sent))
        });
        let Some((directory, sent)) = buckets.await else {
            return Ok(());
        };
        let background_stop = CancellationToken::new();
        let (presence, presence_writer) = Presence::start(presence_kv, uuid::Uuid::new_v4(), background_stop.clone());
        // Learn closes before serving anyone, so no send slips into a conversation closing now.
        let membership = Membership::default().with_directory(membership::Directory::new(directory, js.clone()));
        let closes = membership.follow_closes(nats.clone(), background_stop.clone()).await?;
        let limits = Limits::new(config.limits);
        let sweeping = limits.start_sweeping(background_stop.clone());
        let (lifetimes, deadlines) = Lifetimes::new();
        let transcripts = transcripts::Transcripts::new(store.clone(), config.transcript_keys.clone());
        let auth = Authenticator::new(&config.auth);
        let jwks_refresher = match auth.jwks() {
            Some(jwks) => {
                // Fetched before serving, so the provider's tokens work from the first request;
                // one that fails is retried by the schedule and by the first unknown `kid`.
                jwks.refresh().await;
                Some(
                    jwks.clone()
                        .start_refreshing(config.auth.jwks_refresh, background_stop.clone()),
                )
            }
            None => None,
        };
        let state = AppState(Arc::new(Services {
            auth,
            messaging: Messaging::new(
                store,
                js.clone(),
                membership,
                limits.clone(),
                recent::SentMessages::new(js, sent),
            ),
            typing: TypingPublisher::new(nats.clone()),
            presence,
            limits,
            lifetimes,
            nats: nats.clone(),
            transcripts,
        }));
        let (layer, io) = SocketIo::builder()
            .with_state(state.clone())
            .max_payload(MAX_PACKET_BYTES as u64)
            .max_buffer_size(SOCKET_BUFFER_PACKETS)
            .ws_max_message_size(MAX_PACKET_BYTES)
            .ws_max_frame_size(MAX_PACKET_BYTES)
            // Client packets are small; a smaller read buffer saves ~3 KiB per idle socket.
            .ws_read_buffer_size(1024)
            // An engine.io session that never connects the namespace is closed then.
            .connect_timeout(CONNECT_TIMEOUT)
            // Parley has no binary events: a packet that announces a binary attachment, before
            // login or after, closes its connection at once instead of having its attachments
            // buffered (by default up to 10 MB for a minute, per connection).
            .with_parser(
                socketioxide::ParserConfig::common()
                    .max_incoming_binaries(0)
                    .max_incoming_binary_buf_size(0),
            )
            .build_layer();
        socket::register(&io);
        let router = http::router(state.clone(), openapi::document())
            .layer(layer)
            .layer(axum::middleware::map_request(own_request_head));

        let fanout = fanout::start(state.messaging.clone(), nats.clone(), io.clone(), shutdown.clone()).await?;
        let typing = typing::start_relay(nats.clone(), io.clone(), shutdown.clone()).await?;
        let expiring = lifetimes::start(deadlines, io.clone(), background_stop.clone());
        info!(%addr, "gateway listening");
        let stopping = shutdown.clone();
        let drain = state.messaging.drain().clone();
        let listener = listener::ShapedListener::new(listener);
        let serving = listener::serve(listener, router, async move {
            stopping.cancelled().await;
            // New connections are no longer accepted. Refuse new writes, let those in flight
            // reach JetStream and answer, then tell clients we are going so they reconnect
            // elsewhere at once.
            if !drain.drain(DRAIN_BOUND).await {
                tracing::warn!("writes still in flight after the drain bound; closing anyway");
            }
            io.close().await;
            info!("gateway drained");
        });
        // Connections that outlive the close (a stuck client) do not hold the process forever.
        let bounded = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_BOUND * 2).await;
        };
        tokio::select! {
            () = serving => {}
            () = bounded => tracing::warn!("connections still open after the shutdown bound"),
        }
        shutdown.cancel();
        let _ = reach.await;
        let _ = fanout.await;
        let _ = typing.await;
        background_stop.cancel();
        let _ = closes.await;
        let _ = presence_writer.await;
        let _ = sweeping.await;
        let _ = expiring.await;
        if let Some(refresher) = jwks_refresher {
            let _ = refresher.await;
        }
        Ok(())
    }
}
