//! The Socket.IO transport: authentication as connect middleware, one room per user so fan-out
//! reaches every device of a participant, and `resource:verb` handlers. Each handler reads a typed
//! payload, calls one operation and answers through [`respond`], which counts the event, records
//! a refusal and acknowledges `{ok: true, ...}` or `{ok: false, error: {code, message}}`.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;

use crate::AppState;
use crate::api::{
    ConversationPayload, Done, HistoryPayload, HistoryReply, JoinPayload, ListReply, MarkReadPayload, MarkReadReply,
    Object, SendPayload, SendReply, TypingPayload,
};
use crate::auth::UserId;
use crate::connection;
use crate::error::ApiError;
use crate::limits::EventBudget;
use crate::replay::Replays;
use crate::rooms::user_room;
use crate::session::SocketSession;
use crate::{fanout, messaging, subscriptions};

/// Registers the default namespace.
pub(crate) fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// Why a connect is refused; the message is what the client's `connect_error` carries.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectRefused {
    /// A missing, bad, expired or not yet valid token.
    #[error("unauthorized")]
    Unauthorized,
    /// The user holds `PARLEY_MAX_SOCKETS_PER_USER` sockets on this gateway already.
    #[error("too_many_connections")]
    TooManyConnections,
}

/// The `auth` object of a connect: `io(url, { auth: { token } })`.
#[derive(serde::Deserialize)]
struct Handshake {
    token: String,
}

/// Connect middleware: checks the token and the user's socket cap, then sets the socket up.
///
/// The setup happens here rather than in the connect handler on purpose: socketioxide runs async
/// connect handlers in a task of their own after telling the client it is connected, so a client
/// emitting at once could beat the registration of the handlers (and the room join) there. The
/// middleware completes before that packet is sent. A live message that reaches the socket
/// before it counts as connected is held by its session's grace, not lost.
async fn authenticate(
    socket: SocketRef,
    TryData(handshake): TryData<Handshake>,
    State(state): State<AppState>,
) -> Result<(), ConnectRefused> {
    let token = handshake.map_err(|_| ConnectRefused::Unauthorized)?.token;
    let identity = state.auth.verify(&token).await.ok_or(ConnectRefused::Unauthorized)?;
    let user = identity.user;
    // Counted from here on; released by `on_disconnect`, which every socket that gets this far
    // reaches.
    if !state.limits.admit_socket(user.0) {
        return Err(ConnectRefused::TooManyConnections);
    }
    state.lifetimes.expire_at(socket.id, identity.expires_at);
    let session = SocketSession::new(user);
    socket.extensions.insert(user);
    socket.extensions.insert(session.clone());
    socket.extensions.insert(Replays::default());
    socket.extensions.insert(Arc::new(state.limits.event_budget()));
    socket.extensions.insert(InFlight::default());
    socket.on("message:send", message_send);
    socket.on("conversation:list", conversation_list);
    socket.on("conversation:history", conversation_history);
    socket.on("conversation:join", conversation_join);
    socket.on("conversation:leave", conversation_leave);
    socket.on("conversation:typing", conversation_typing);
    socket.on("conversation:markRead", conversation_mark_read);
    socket.on_fallback(unknown_event);
    socket.on_disconnect(on_disconnect);
    socket.join(user_room(user.0));
    state.presence.connected(user.0);
    metrics::gauge!("parley_gateway_connected_sockets").increment(1.0);
    fanout::end_grace_later(socket.clone(), session);
    Ok(())
}

/// Everything is set up by [`authenticate`]; socketioxide still wants a connect handler.
async fn on_connect() {}

async fn on_disconnect(socket: SocketRef, Extension(session): Extension<SocketSession>, State(state): State<AppState>) {
    state.limits.release_socket(session.user.0);
    state.lifetimes.forget(socket.id);
    state.presence.disconnected(session.user.0);
    metrics::gauge!("parley_gateway_connected_sockets").decrement(1.0);
    subscriptions::disconnected(&state, &session).await;
}

/// An acknowledgement of success: `{"ok": true, ...reply}`.
#[derive(Serialize)]
struct Acked<T> {
    ok: bool,
    #[serde(flatten)]
    reply: T,
}

/// The socket's budget of events other than sends (`PARLEY_EVENT_RATE`).
type Budget = Arc<EventBudget>;

/// Requests of one socket that run at once; the others wait their turn. Each running request
/// holds what its operation reads until it answers.
const REQUESTS_RUNNING: usize = 32;

/// Requests a socket may have in hand at once, running or waiting. Above a burst the event rate
/// allows (`PARLEY_EVENT_RATE` twice over, 200 by default), so a client within its rate is
/// never refused for this; past it a request is refused `rate_limited` at once, so a client
/// whose requests arrive faster than they complete holds a bounded amount.
const REQUESTS_IN_HAND: usize = 256;

/// The socket's requests in hand ([`REQUESTS_IN_HAND`]) and running ([`REQUESTS_RUNNING`]).
#[derive(Clone)]
struct InFlight {
    in_hand: Arc<tokio::sync::Semaphore>,
    running: Arc<tokio::sync::Semaphore>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            in_hand: Arc::new(tokio::sync::Semaphore::new(REQUESTS_IN_HAND)),
            running: Arc::new(tokio::sync::Semaphore::new(REQUESTS_RUNNING)),
        }
    }
}

impl InFlight {
    /// Runs `operation` as one of the socket's requests, or refuses it when the socket has
    /// [`REQUESTS_IN_HAND`] already.
    async fn run<T>(&self, operation: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        let Ok(_in_hand) = self.in_hand.clone().try_acquire_owned() else {
            return Err(ApiError::rate_limited(IN_HAND_RETRY));
        };
        // The semaphore is never closed.
        let _running = self.running.acquire().await;
        operation.await
    }
}

/// How long a request refused for [`REQUESTS_IN_HAND`] is told to wait.
const IN_HAND_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// One client event's whole outline: counts it
/// (`parley_gateway_events_received_total{event}`), runs its operation if `admitted`, counts a
/// refusal (`parley_gateway_refusals_total{event, code}`) and acknowledges the outcome, if the
/// client asked for an acknowledgement. The operation runs as one of the socket's requests
/// in hand ([`InFlight`]). A socket that cannot take the ack is disconnected (see `connection`).
async fn respond<T: Serialize>(
    socket: &SocketRef,
    event: &'static str,
    admitted: Result<(), ApiError>,
    ack: AckSender,
    operation: impl Future<Output = Result<T, ApiError>>,
) {
    metrics::counter!("parley_gateway_events_received_total", "event" => event).increment(1);
    let outcome = match (admitted, socket.extensions.get::<InFlight>()) {
        (Err(refused), _) => Err(refused),
        (Ok(()), Some(in_flight)) => in_flight.run(operation).await,
        (Ok(()), None) => operation.await,
    };
    let (bytes, sent) = match outcome {
        Ok(reply) => {
            let acked = Acked { ok: true, reply };
            (connection::json_len(&acked), ack.send(&acked))
        }
        Err(error) => {
            metrics::counter!("parley_gateway_refusals_total", "event" => event, "code" => error.code().as_str())
                .increment(1);
            let refused = error.ack();
            (connection::json_len(&refused), ack.send(&refused))
        }
    };
    if let Err(error) = connection::checked(socket, bytes, sent) {
        tracing::debug!(%error, "ack not delivered");
    }
}

/// The event's payload, which must be a JSON object.
fn object<T>(payload: Result<Object<T>, impl std::fmt::Display>) -> Result<T, ApiError> {
    payload
        .map(|Object(payload)| payload)
        .map_err(|_| ApiError::invalid_request("payload must be a JSON object"))
}

async fn message_send(
    socket: SocketRef,
    Extension(user): Extension<UserId>,
    TryData(payload): TryData<Object<SendPayload>>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    // Sends spend the user's send budget instead (`Messaging::send`).
    respond(&socket, "message:send", Ok(()), ack, async {
        let sent = async { state.messaging.send(user, object(payload)?.into_request(None)?).await }.await;
        messaging::record_send(&sent);
        Ok(SendReply { message: sent?.message })
    })
    .await;
}

async fn conversation_list(
    socket: SocketRef,
    Extension(user): Extension<UserId>,
    Extension(budget): Extension<Budget>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    respond(&socket, "conversation:list", budget.spend(&state.limits), ack, async {
        let conversations = state.messaging.conversations(user).await?;
        Ok(ListReply { conversations })
    })
    .await;
}

async fn conversation_history(
    socket: SocketRef,
    Extension(user): Extension<UserId>,
    Extension(budget): Extension<Budget>,
    TryData(payload): TryData<Object<HistoryPayload>>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    respond(
        &socket,
        "conversation:history",
        budget.spend(&state.limits),
        ack,
        async {
            let (conversation, query) = object(payload)?.into_query()?;
            let page = state.messaging.history(user, conversation, query).await?;
            Ok(HistoryReply {
                messages: page.messages,
                has_more: page.has_more,
            })
        },
    )
    .await;
}

/// Checks membership, subscribes the socket to typing, replays what it missed, then acks.
async fn conversation_join(
    socket: SocketRef,
    Extension(session): Extension<SocketSession>,
    Extension(replays): Extension<Replays>,
    Extension(budget): Extension<Budget>,
    TryData(payload): TryData<Object<JoinPayload>>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    respond(&socket, "conversation:join", budget.spend(&state.limits), ack, async {
        let (conversation, last_seq) = object(payload)?.into_parts()?;
        subscriptions::join(&state, &socket, &session, &replays, conversation, last_seq).await
    })
    .await;
}

async fn conversation_leave(
    socket: SocketRef,
    Extension(session): Extension<SocketSession>,
    Extension(budget): Extension<Budget>,
    TryData(payload): TryData<Object<ConversationPayload>>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    respond(&socket, "conversation:leave", budget.spend(&state.limits), ack, async {
        let conversation = object(payload)?.conversation()?;
        subscriptions::leave(&state, &socket, &session, conversation).await?;
        Ok(Done {})
    })
    .await;
}

/// Typing over the socket's budget is dropped silently, like typing above its throttle: the
/// signal is advisory and the next one carries the state.
async fn conversation_typing(
    socket: SocketRef,
    Extension(session): Extension<SocketSession>,
    Extension(budget): Extension<Budget>,
    TryData(payload): TryData<Object<TypingPayload>>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    respond(&socket, "conversation:typing", Ok(()), ack, async {
        let (conversation, is_typing) = object(payload)?.into_parts()?;
        if budget.spend(&state.limits).is_ok() {
            subscriptions::typing(&state, &session, conversation, is_typing).await?;
        }
        Ok(Done {})
    })
    .await;
}

async fn conversation_mark_read(
    socket: SocketRef,
    Extension(user): Extension<UserId>,
    Extension(budget): Extension<Budget>,
    TryData(payload): TryData<Object<MarkReadPayload>>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    respond(
        &socket,
        "conversation:markRead",
        budget.spend(&state.limits),
        ack,
        async {
            let (conversation, message) = object(payload)?.into_parts(None)?;
            let last_read_seq = state.messaging.mark_read(user, conversation, message).await?;
            Ok(MarkReadReply { last_read_seq })
        },
    )
    .await;
}

async fn unknown_event(
    socket: SocketRef,
    Event(event): Event,
    Extension(budget): Extension<Budget>,
    ack: AckSender,
    State(state): State<AppState>,
) {
    respond(&socket, "unknown", budget.spend(&state.limits), ack, async {
        Err::<Value, _>(ApiError::invalid_request(format!("unknown event {event:?}")))
    })
    .await;
}
