//! What one socket has been sent, per conversation, so that replay and live delivery together
//! give it every message exactly once and in order.
//!
//! Live delivery reaches a participant's socket from the moment it connects, in stream order; so
//! the messages a socket got live are exactly those from its first live one onwards. A replay
//! therefore only sends what lies before that point, and while it runs, live messages for that
//! conversation are held and released after it, minus whatever the replay already covered. All
//! decisions happen under one lock per socket, so the fan-out and a replay never both send a seq.
//!
//! A reconnecting client joins right after it connects. So that a message arriving in between
//! does not overtake the replay (live seq 240 before replayed 230..239), live messages of a
//! conversation the socket has not had anything of yet are held for a short grace after connect:
//! a join releases them in order after its replay, and the end of the grace releases the rest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use parley_domain::Message;
use uuid::Uuid;

use crate::auth::UserId;

/// Per-socket state, shared by the socket's handlers and the fan-out. (Replay keeps its own
/// per-socket state beside it, as a socket extension of its own.)
#[derive(Clone)]
pub(crate) struct SocketSession {
    pub(crate) user: UserId,
    inner: Arc<Mutex<Deliveries>>,
    rooms: Arc<Mutex<Rooms>>,
}

/// The conversations this socket joined, and those it is typing in.
#[derive(Default)]
struct Rooms {
    joined: HashSet<Uuid>,
    typing: HashSet<Uuid>,
}

pub(crate) struct Deliveries {
    conversations: HashMap<Uuid, Delivery>,
    /// Within the grace after connect.
    warming: bool,
}

#[derive(Default)]
struct Delivery {
    /// The first message this socket got live; every later one it got live too.
    first_live: Option<i64>,
    /// The highest sequence this socket got, live or replayed.
    last_delivered: i64,
    /// Live messages held while a replay runs, or during the grace after connect.
    held: Option<Vec<Message>>,
    replaying: bool,
    /// A join replayed this conversation: live messages flow from then on, grace or not.
    joined: bool,
}

impl SocketSession {
    pub(crate) fn new(user: UserId) -> Self {
        Self {
            user,
            inner: Arc::new(Mutex::new(Deliveries {
                conversations: HashMap::new(),
                warming: true,
            })),
            rooms: Arc::default(),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, Rooms> {
        self.rooms.lock()
    }

    pub(crate) fn joined(&self, conversation: Uuid) {
        self.rooms().joined.insert(conversation);
    }

    pub(crate) fn left(&self, conversation: Uuid) {
        self.rooms().joined.remove(&conversation);
    }

    /// Whether this socket joined (and so was checked as a participant of) `conversation`.
    pub(crate) fn has_joined(&self, conversation: Uuid) -> bool {
        self.rooms().joined.contains(&conversation)
    }

    pub(crate) fn start_typing(&self, conversation: Uuid) {
        self.rooms().typing.insert(conversation);
    }

    /// Whether the socket was typing in `conversation`.
    pub(crate) fn stop_typing(&self, conversation: Uuid) -> bool {
        self.rooms().typing.remove(&conversation)
    }

    /// Every conversation the socket was typing in, forgetting them.
    pub(crate) fn take_all_typing(&self) -> Vec<Uuid> {
        self.rooms().typing.drain().collect()
    }

    /// The lock under which deliveries are decided and emitted.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Deliveries> {
        self.inner.lock()
    }
}

impl Deliveries {
    /// A live message arrives: `true` to emit it now; `false` when it is held for a running
    /// replay or was already delivered.
    pub(crate) fn admit_live(&mut self, message: &Message) -> bool {
        let delivery = self.conversations.entry(message.conversation_id).or_default();
        if let Some(held) = &mut delivery.held {
            held.push(message.clone());
            return false;
        }
        if message.seq <= delivery.last_delivered {
            return false;
        }
        if self.warming && delivery.first_live.is_none() && !delivery.joined {
            delivery.held = Some(vec![message.clone()]);
            return false;
        }
        delivery.first_live.get_or_insert(message.seq);
        delivery.last_delivered = message.seq;
        true
    }

    /// Starts holding live messages of `conversation`; returns the first sequence this socket got
    /// live, where the replay must stop.
    pub(crate) fn begin_replay(&mut self, conversation: Uuid) -> Option<i64> {
        let delivery = self.conversations.entry(conversation).or_default();
        delivery.held.get_or_insert_with(Vec::new);
        delivery.replaying = true;
        delivery.first_live
    }

    /// Ends the replay, which sent everything up to `replayed_through`; returns the held live
    /// messages still to emit, in order, without any the replay or earlier delivery covered.
    pub(crate) fn end_replay(&mut self, conversation: Uuid, replayed_through: i64) -> Vec<Message> {
        let delivery = self.conversations.entry(conversation).or_default();
        delivery.replaying = false;
        delivery.joined = true;
        delivery.release(replayed_through)
    }

    /// Ends the grace after connect; returns the held live messages of every conversation no
    /// replay is running for, each conversation's in order.
    pub(crate) fn end_grace(&mut self) -> Vec<Message> {
        self.warming = false;
        self.conversations
            .values_mut()
            .filter(|d| !d.replaying)
            .flat_map(|d| d.release(0))
            .collect()
    }
}

impl Delivery {
    fn release(&mut self, replayed_through: i64) -> Vec<Message> {
        let mut held = self.held.take().unwrap_or_default();
        held.sort_by_key(|m| m.seq);
        self.last_delivered = self.last_delivered.max(replayed_through);
        let mut release = Vec::new();
        for message in held {
            if message.seq > self.last_delivered {
                self.first_live.get_or_insert(message.seq);
                self.last_delivered = message.seq;
                release.push(message);
            }
        }
        release
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn message(conversation: Uuid, seq: i64) -> Message {
        Message {
            id: Uuid::new_v4(),
            conversation_id: conversation,
            project_id: Uuid::nil(),
            sender_id: Uuid::nil(),
            body: format!("m{seq}"),
            seq,
            created_at: Utc::now(),
            client_msg_id: None,
        }
    }

    /// A session past its connect grace.
    fn settled() -> Deliveries {
        Deliveries {
            conversations: HashMap::new(),
            warming: false,
        }
    }

    #[test]
    fn live_messages_are_emitted_once_in_order() {
        let conv = Uuid::new_v4();
        let mut d = settled();
        assert!(d.admit_live(&message(conv, 3)));
        assert!(!d.admit_live(&message(conv, 3)), "a repeat is dropped");
        assert!(d.admit_live(&message(conv, 5)));
    }

    #[test]
    fn a_replay_stops_where_live_delivery_began_and_releases_what_it_held() {
        let conv = Uuid::new_v4();
        let mut d = settled();
        assert!(d.admit_live(&message(conv, 10)));
        assert_eq!(d.begin_replay(conv), Some(10), "replay must stop before 10");
        // Live messages during the replay are held, including one the replay will also read.
        assert!(!d.admit_live(&message(conv, 11)));
        assert!(!d.admit_live(&message(conv, 12)));
        // The replay sent 4..=9 (below first_live); the held ones come out after, once each.
        let released: Vec<i64> = d.end_replay(conv, 9).iter().map(|m| m.seq).collect();
        assert_eq!(released, vec![11, 12]);
        assert!(!d.admit_live(&message(conv, 12)));
        assert!(d.admit_live(&message(conv, 13)));
    }

    #[test]
    fn held_messages_the_replay_already_sent_are_dropped() {
        let conv = Uuid::new_v4();
        let mut d = settled();
        assert_eq!(d.begin_replay(conv), None);
        assert!(!d.admit_live(&message(conv, 7)));
        assert!(!d.admit_live(&message(conv, 8)));
        // The replay read the stream up to 7 itself.
        let released: Vec<i64> = d.end_replay(conv, 7).iter().map(|m| m.seq).collect();
        assert_eq!(released, vec![8]);
        // A late live copy of 7 (fan-out behind the replay) is not sent again.
        assert!(!d.admit_live(&message(conv, 7)));
    }

    #[test]
    fn conversations_are_independent() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut d = settled();
        d.begin_replay(a);
        assert!(!d.admit_live(&message(a, 1)));
        assert!(d.admit_live(&message(b, 2)));
    }

    #[test]
    fn during_the_grace_a_join_keeps_live_messages_behind_its_replay() {
        let (joined, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mut d = Deliveries {
            conversations: HashMap::new(),
            warming: true,
        };
        assert!(!d.admit_live(&message(joined, 240)), "held during the grace");
        assert!(!d.admit_live(&message(other, 5)));
        assert_eq!(d.begin_replay(joined), None, "nothing was sent live yet");
        assert!(!d.admit_live(&message(joined, 241)));
        // The replay read through 240 itself.
        let released: Vec<i64> = d.end_replay(joined, 240).iter().map(|m| m.seq).collect();
        assert_eq!(released, vec![241]);
        // The grace ends: the conversation nobody joined gets its held message.
        let released: Vec<i64> = d.end_grace().iter().map(|m| m.seq).collect();
        assert_eq!(released, vec![5]);
        assert!(d.admit_live(&message(other, 6)));
        assert!(d.admit_live(&message(joined, 242)));
    }

    /// One step of a socket's life in one conversation whose stream grows as the steps go.
    #[derive(Debug, Clone)]
    enum Step {
        /// A message is accepted into the stream.
        Publish,
        /// The fan-out hands the socket the next live message.
        Live,
        /// The fan-out hands it the last one again (a recreated consumer).
        LiveAgain,
        /// The client joins: with the last sequence it got, or, having got nothing yet, with a
        /// `lastSeq` that is this share of what is published (its read mark, say); the number of
        /// live steps that happen while its replay runs.
        Join { from_share: u8, live_meanwhile: u8 },
        /// The connect grace ends.
        EndGrace,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Step::Publish),
            3 => Just(Step::Live),
            1 => Just(Step::LiveAgain),
            1 => (any::<u8>(), 0u8..4).prop_map(|(from_share, live_meanwhile)| Step::Join { from_share, live_meanwhile }),
            1 => Just(Step::EndGrace),
        ]
    }

    /// Plays `steps` the way the fan-out and a join's replay drive a session (a replay reads
    /// the stream from `lastSeq` up to what is published when it looks, and below the first live
    /// message), then lets everything settle; returns the sequences emitted, in order, and the
    /// first sequence the socket owes the client: after the `lastSeq` of a join that came before
    /// anything reached it, else from the first message that did.
    fn play(steps: &[Step]) -> (Vec<i64>, i64) {
        let conv = Uuid::nil();
        let mut d = Deliveries {
            conversations: HashMap::new(),
            warming: true,
        };
        let (mut published, mut next_live, mut emitted) = (0i64, 1i64, Vec::<i64>::new());
        // The last sequence the client has, by what it said in a join or what it got.
        let mut client_last: Option<i64> = None;
        let mut owed_from: Option<i64> = None;
        let live = |d: &mut Deliveries, seq: i64, emitted: &mut Vec<i64>| {
            if d.admit_live(&message(conv, seq)) {
                emitted.push(seq);
            }
        };
        for step in steps {
            match step {
                Step::Publish => published += 1,
                Step::Live if next_live <= published => {
                    live(&mut d, next_live, &mut emitted);
                    next_live += 1;
                }
                Step::LiveAgain if next_live > 1 => live(&mut d, next_live - 1, &mut emitted),
                Step::Join {
                    from_share,
                    live_meanwhile,
                } => {
                    let after = client_last.unwrap_or(published * i64::from(*from_share) / 255);
                    owed_from.get_or_insert(after + 1);
                    let upper = d.begin_replay(conv).map_or(i64::MAX, |first_live| first_live - 1);
                    for _ in 0..*live_meanwhile {
                        if next_live <= published {
                            live(&mut d, next_live, &mut emitted);
                            next_live += 1;
                        }
                    }
                    let mut through = after;
                    for seq in after + 1..=published.min(upper) {
                        emitted.push(seq);
                        through = seq;
                    }
                    emitted.extend(d.end_replay(conv, through).iter().map(|m| m.seq));
                    client_last = Some(client_last.unwrap_or(after).max(after));
                }
                Step::EndGrace => emitted.extend(d.end_grace().iter().map(|m| m.seq)),
                Step::Live | Step::LiveAgain => {}
            }
            if let Some(&first) = emitted.first() {
                owed_from.get_or_insert(first);
            }
            if let Some(&last) = emitted.last() {
                client_last = Some(client_last.map_or(last, |known| known.max(last)));
            }
        }
        // Settle: the grace ends and the fan-out catches up with the stream.
        emitted.extend(d.end_grace().iter().map(|m| m.seq));
        while next_live <= published {
            live(&mut d, next_live, &mut emitted);
            next_live += 1;
        }
        let owed_from = owed_from.or(emitted.first().copied()).unwrap_or(published + 1);
        (emitted, owed_from)
    }

    fn published_in(steps: &[Step]) -> i64 {
        steps.iter().filter(|s| matches!(s, Step::Publish)).count() as i64
    }

    proptest::proptest! {
        /// Whatever the interleaving of live deliveries, joins and the grace, a socket gets each
        /// message once, in order, and nothing it was owed is skipped.
        #[test]
        fn live_and_replayed_messages_reach_a_socket_once_in_order_without_gaps(
            steps in proptest::collection::vec(step(), 0..80)
        ) {
            let (emitted, owed_from) = play(&steps);
            proptest::prop_assert!(emitted.windows(2).all(|w| w[0] < w[1]), "out of order or twice: {emitted:?}");
            let expected: Vec<i64> = (owed_from..=published_in(&steps)).collect();
            proptest::prop_assert_eq!(emitted, expected);
        }
    }
}
