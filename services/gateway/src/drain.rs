//! Graceful shutdown of writes. Once draining starts, new sends and read marks are refused with
//! `unavailable` (clients retry on another instance, idempotently with `clientMsgId`), while the
//! ones already in flight run to their JetStream ack and answer their client before the sockets
//! are closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::ApiError;

#[derive(Clone, Default)]
pub(crate) struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Held while one write is in flight.
pub(crate) struct InFlight {
    inner: Arc<Inner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Admits one write, or refuses it once draining started.
    pub(crate) fn enter(&self) -> Result<InFlight, ApiError> {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight {
            inner: self.inner.clone(),
        };
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("a write", "this gateway is shutting down"));
        }
        Ok(guard)
    }

    /// Refuses new writes from now on and waits (at most `bound`) for those in flight.
    pub(crate) async fn drain(&self, bound: Duration) -> bool {
        self.inner.draining.store(true, Ordering::SeqCst);
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(bound, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_refuses_new_writes_and_waits_for_those_in_flight() {
        let drain = Drain::default();
        let in_flight = drain.enter().unwrap();
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drain(Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while a write is in flight");
        let refused = drain.enter();
        assert!(refused.is_err(), "new writes are refused while draining");
        drop(refused);
        drop(in_flight);
        assert!(waiter.await.unwrap(), "done once the write finished");
    }

    #[tokio::test]
    async fn draining_gives_up_after_its_bound() {
        let drain = Drain::default();
        let _stuck = drain.enter().unwrap();
        assert!(!drain.drain(Duration::from_millis(20)).await);
    }
}
