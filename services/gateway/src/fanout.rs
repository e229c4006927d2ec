//! Live delivery. Each gateway instance reads the chat stream with its own ordered consumer
//! (deliver new) and hands every event to the local sockets of the conversation's participants,
//! so it reaches every socket of both users whichever instance accepted it. Messages pass each
//! socket's [`SocketSession`] gate, which makes them exactly-once per socket even while a replay
//! runs; read-mark moves go to the participants' rooms.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use futures::StreamExt;
use parley_domain::Message;
use parley_domain::model::rfc3339;
use parley_events::subjects::{ConversationSubject, parse_conversation_subject};
use parley_events::{MessagePosted, ReadMarked};
use serde_json::json;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::messaging::Messaging;
use crate::rooms::user_room;
use crate::session::SocketSession;
use crate::wire::{self, MessageNew};

/// How long after connect live messages wait for a join (see [`SocketSession`]).
const CONNECT_GRACE: Duration = Duration::from_millis(500);

/// Subscribes first, so that nothing accepted after this returns is missed, then runs until
/// `shutdown` in a task of its own; a failed consumer is recreated after the last delivered
/// sequence.
pub(crate) async fn start(
    messaging: Messaging,
    nats: async_nats::Client,
    io: SocketIo,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let first = subscribe(&messaging, None).await?;
    let target = Target {
        io,
        client: nats,
        messaging,
    };
    Ok(tokio::spawn(async move {
        let mut resume_after: Option<u64> = None;
        let mut subscription = Some(first);
        while !shutdown.is_cancelled() {
            let next = match subscription.take() {
                Some(subscription) => Ok(subscription),
                None => subscribe(&target.messaging, resume_after).await,
            };
            let outcome = match next {
                Ok(subscription) => follow(subscription, &target, &shutdown, &mut resume_after).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => return,
                Err(error) => {
                    warn!(%error, "fan-out consumer failed; recreating");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }))
}

/// An ordered consumer, and the stream sequence it has delivered up to as it starts.
struct Subscription {
    messages: Ordered,
    delivered: u64,
}

async fn subscribe(messaging: &Messaging, resume_after: Option<u64>) -> anyhow::Result<Subscription> {
    let stream = messaging.chat_stream().await?;
    let deliver_policy = match resume_after {
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            // No filter: the stream holds exactly messages and read marks, and a consumer with
            // subject filters costs nats-server a subject match per message (most of its CPU
            // under load, by profile).
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let delivered = consumer.cached_info().delivered.stream_sequence;
    Ok(Subscription {
        messages: consumer.messages().await?,
        delivered,
    })
}

/// How often the fan-out consumer is checked for having fallen silent (see [`Silence`]).
const SILENCE_CHECK: Duration = Duration::from_secs(5);

async fn follow(
    subscription: Subscription,
    target: &Target,
    shutdown: &CancellationToken,
    resume_after: &mut Option<u64>,
) -> anyhow::Result<()> {
    let Subscription {
        mut messages,
        delivered,
    } = subscription;
    let delivered = *resume_after.get_or_insert(delivered);
    // A reconnect may mean a restarted server that lost this ephemeral consumer; the ordered
    // consumer would notice only after missed heartbeats, so recreate it at once instead.
    let statistics = target.client.statistics();
    let connects = statistics.connects.load(Ordering::Relaxed);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    let mut silence = Silence::new(delivered);
    let mut silence_check = tokio::time::interval_at(tokio::time::Instant::now() + SILENCE_CHECK, SILENCE_CHECK);
    // Checks a full period apart, also after a busy stretch: two at once would see no progress.
    silence_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = check.tick() => {
                if statistics.connects.load(Ordering::Relaxed) != connects {
                    anyhow::bail!("reconnected to NATS");
                }
                continue;
            }
            _ = silence_check.tick() => {
                let delivered = resume_after.unwrap_or(delivered);
                if let Some(stream_last) = silence.stalled_at(delivered) {
                    anyhow::bail!(
                        "the ordered consumer fell silent after {delivered} while the stream had {stream_last}"
                    );
                }
                silence.stream_reached(target.stream_last().await);
                continue;
            }
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                warn!(%error, "fan-out consumer hiccup");
                continue;
            }
            None => anyhow::bail!("ordered consumer ended"),
        };
        let Ok(info) = message.info() else { continue };
        let seq = info.stream_sequence;
        *resume_after = Some(seq);
        match parse_conversation_subject(&message.subject) {
            Some(ConversationSubject::Message(_)) => match serde_json::from_slice::<MessagePosted>(&message.payload) {
                Ok(event) => target.deliver_message(event, seq),
                Err(error) => debug!(%error, seq, "skipping a malformed message event"),
            },
            Some(ConversationSubject::Read(..)) => match serde_json::from_slice::<ReadMarked>(&message.payload) {
                Ok(event) => target.deliver_read(event).await,
                Err(error) => debug!(%error, seq, "skipping a malformed read event"),
            },
            _ => {}
        }
    }
}

/// Ends `socket`'s connect grace after [`CONNECT_GRACE`]: the live messages it held for
/// conversations no join replayed go out then, in order.
pub(crate) fn end_grace_later(socket: SocketRef, session: SocketSession) {
    tokio::spawn(async move {
        tokio::time::sleep(CONNECT_GRACE).await;
        let mut deliveries = session.lock();
        for message in deliveries.end_grace() {
            emit_live(&socket, &message);
        }
    });
}

/// Emits a live `message:new` to one socket and counts it: fan-out deliveries, and the latency
/// from the send being accepted to this emit. A socket that cannot keep up is disconnected (see
/// `connection`): it would otherwise miss this message without knowing. Callers hold the
/// socket's session lock.
pub(crate) fn emit_live(socket: &SocketRef, message: &Message) {
    counted(wire::emit(socket, &MessageNew::live(message)).is_ok(), message);
}

/// [`emit_live`] with the message already encoded, for a message going to several sockets: it is
/// serialized once.
fn emit_live_encoded(socket: &SocketRef, message: &Message, encoded: &RawValue) {
    counted(wire::emit_encoded(socket, encoded).is_ok(), message);
}

fn counted(delivered: bool, message: &Message) {
    if delivered {
        metrics::counter!("parley_gateway_fanout_deliveries_total").increment(1);
        let latency = (chrono::Utc::now() - message.created_at).to_std().unwrap_or_default();
        metrics::histogram!("parley_gateway_delivery_latency_seconds").record(latency.as_secs_f64());
    }
}

/// Whether the fan-out consumer has fallen silent: an ordered consumer whose server died, or came
/// back with its store wiped, can stop delivering with no error while the client library
/// recreates it in the background (seen on a three-node cluster: no message for minutes).
/// Silent means it delivered nothing since the last check although the stream already held a
/// later event then; one that lags but moves is left alone.
#[derive(Debug)]
struct Silence {
    /// What had been delivered at the last check.
    delivered: u64,
    /// The stream's last sequence at the last check, when it answered.
    stream_last: Option<u64>,
}

impl Silence {
    fn new(delivered: u64) -> Self {
        Self {
            delivered,
            stream_last: None,
        }
    }

    /// The stream's last sequence when `delivered` (what has been delivered now) shows a silent
    /// consumer; records `delivered` for the next check otherwise.
    fn stalled_at(&mut self, delivered: u64) -> Option<u64> {
        let stalled = self
            .stream_last
            .filter(|&last| delivered == self.delivered && delivered < last);
        self.delivered = delivered;
        stalled
    }

    /// The stream's last sequence as of now (`None` when it did not answer).
    fn stream_reached(&mut self, last: Option<u64>) {
        self.stream_last = last;
    }
}

/// Where events go: this instance's sockets.
struct Target {
    io: SocketIo,
    client: async_nats::Client,
    messaging: Messaging,
}

impl Target {
    /// The chat stream's last sequence, `None` when it does not answer within a moment.
    async fn stream_last(&self) -> Option<u64> {
        let asked = tokio::time::timeout(Duration::from_secs(2), self.messaging.chat_stream_now()).await;
        Some(asked.ok()?.ok()?.cached_info().state.last_sequence)
    }

    fn deliver_message(&self, event: MessagePosted, seq: u64) {
        let rooms: Vec<String> = event.participants.iter().map(|p| user_room(*p)).collect();
        let message = event.into_message(seq);
        self.messaging
            .recent()
            .remember(message.id, message.conversation_id, message.seq);
        // Encoded once, by the first socket that takes it.
        let mut encoded: Option<Box<RawValue>> = None;
        for socket in self.io.to(rooms).sockets() {
            let Some(session) = socket.extensions.get::<SocketSession>() else {
                continue;
            };
            let mut deliveries = session.lock();
            if !deliveries.admit_live(&message) {
                continue;
            }
            if encoded.is_none() {
                encoded = MessageNew::live(&message).encode();
            }
            match &encoded {
                Some(encoded) => emit_live_encoded(&socket, &message, encoded),
                None => emit_live(&socket, &message),
            }
        }
    }

    async fn deliver_read(&self, event: ReadMarked) {
        let rooms: Vec<String> = event.participants.iter().map(|p| user_room(*p)).collect();
        let read_at = rfc3339::format(&event.read_at);
        let (name, payload) = match event.message_id {
            Some(message_id) => (
                "message:read",
                json!({ "conversationId": event.conversation_id, "messageId": message_id, "seq": event.seq,
                        "userId": event.user_id, "readAt": read_at }),
            ),
            None => (
                "conversation:read",
                json!({ "conversationId": event.conversation_id, "userId": event.user_id,
                        "lastReadSeq": event.seq, "readAt": read_at }),
            ),
        };
        if let Err(error) = self.io.to(rooms).emit(name, &payload).await {
            warn!(%error, "emitting {name} failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Silence;

    #[test]
    fn a_consumer_that_delivered_nothing_while_the_stream_had_more_is_silent() {
        let mut silence = Silence::new(10);
        assert_eq!(silence.stalled_at(10), None, "nothing known of the stream yet");
        silence.stream_reached(Some(12));
        assert_eq!(silence.stalled_at(10), Some(12));
    }

    #[test]
    fn a_consumer_that_lags_but_moves_is_left_alone() {
        let mut silence = Silence::new(10);
        silence.stream_reached(Some(50));
        assert_eq!(silence.stalled_at(11), None);
        silence.stream_reached(Some(90));
        assert_eq!(silence.stalled_at(30), None);
        silence.stream_reached(Some(90));
        assert_eq!(silence.stalled_at(30), Some(90), "then it stops moving");
    }

    #[test]
    fn a_quiet_consumer_level_with_the_stream_is_not_silent() {
        let mut silence = Silence::new(10);
        silence.stream_reached(Some(10));
        assert_eq!(silence.stalled_at(10), None);
        silence.stream_reached(None);
        assert_eq!(
            silence.stalled_at(10),
            None,
            "a stream that does not answer proves nothing"
        );
    }
}
