//! The sequences of recently seen messages, filled by the fan-out. `markRead` with a `messageId`
//! needs that message's `seq`; a client usually marks a message it received a moment ago, which
//! the persistence worker may not have written yet, but this gateway's fan-out has seen.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use uuid::Uuid;

/// How many messages are remembered; the oldest are forgotten first.
const CAPACITY: usize = 100_000;

#[derive(Clone, Default)]
pub(crate) struct RecentMessages {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    seq_of: HashMap<Uuid, (Uuid, i64)>,
    order: VecDeque<Uuid>,
}

impl RecentMessages {
    pub(crate) fn remember(&self, message_id: Uuid, conversation_id: Uuid, seq: i64) {
        let mut inner = self.inner.lock();
        if inner.seq_of.insert(message_id, (conversation_id, seq)).is_none() {
            inner.order.push_back(message_id);
            if inner.order.len() > CAPACITY
                && let Some(oldest) = inner.order.pop_front()
            {
                inner.seq_of.remove(&oldest);
            }
        }
    }

    /// The message's sequence, if it is a recent message of `conversation_id`.
    pub(crate) fn seq_of(&self, message_id: Uuid, conversation_id: Uuid) -> Option<i64> {
        let inner = self.inner.lock();
        inner
            .seq_of
            .get(&message_id)
            .filter(|(c, _)| *c == conversation_id)
            .map(|(_, seq)| *seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_found_only_in_its_own_conversation() {
        let recent = RecentMessages::default();
        let (id, conv) = (Uuid::new_v4(), Uuid::new_v4());
        recent.remember(id, conv, 42);
        assert_eq!(recent.seq_of(id, conv), Some(42));
        assert_eq!(recent.seq_of(id, Uuid::new_v4()), None);
        assert_eq!(recent.seq_of(Uuid::new_v4(), conv), None);
    }
}
