//! Presence: while this gateway holds at least one socket of a user, the key `<user>.<instance>`
//! exists in the `PARLEY_PRESENCE` bucket; the notification workers read it to decide who is
//! offline. Connects and disconnects only touch a local count; one writer task turns changes into
//! puts and deletes in order, so the socket path never waits on NATS, and refreshes every key well
//! within the bucket's age limit, so the keys of a gateway that dies vanish within a minute.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use async_nats::jetstream::kv;
use parley_nats::buckets::{PRESENCE_REFRESH, presence_key};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

#[derive(Clone)]
pub(crate) struct Presence {
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
    changed: mpsc::UnboundedSender<Uuid>,
}

impl Presence {
    /// Starts the writer for gateway `instance`; it removes this instance's keys on shutdown.
    pub(crate) fn start(kv: kv::Store, instance: Uuid, shutdown: CancellationToken) -> (Presence, JoinHandle<()>) {
        let counts: Arc<Mutex<HashMap<Uuid, usize>>> = Arc::default();
        let (changed, receiver) = mpsc::unbounded_channel();
        let writer = Writer {
            kv,
            instance,
            counts: counts.clone(),
        };
        let task = tokio::spawn(writer.run(receiver, shutdown));
        (Presence { counts, changed }, task)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<Uuid, usize>> {
        self.counts.lock()
    }

    pub(crate) fn connected(&self, user: Uuid) {
        let first = {
            let mut counts = self.lock();
            let count = counts.entry(user).or_default();
            *count += 1;
            *count == 1
        };
        if first {
            let _ = self.changed.send(user);
        }
    }

    pub(crate) fn disconnected(&self, user: Uuid) {
        let last = {
            let mut counts = self.lock();
            match counts.get_mut(&user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    counts.remove(&user);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self.changed.send(user);
        }
    }
}

struct Writer {
    kv: kv::Store,
    instance: Uuid,
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl Writer {
    fn online(&self, user: Uuid) -> bool {
        self.counts.lock().contains_key(&user)
    }

    /// Writes the user's current state (not the event's): a quick connect and disconnect ends as
    /// whatever is true when the writer gets to it.
    async fn write(&self, user: Uuid) {
        let key = presence_key(user, self.instance);
        let result = if self.online(user) {
            self.kv
                .put(&key, "1".into())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            self.kv.delete(&key).await.map_err(|e| e.to_string())
        };
        if let Err(error) = result {
            warn!(error, "presence write failed; the next refresh retries");
        }
    }

    async fn run(self, mut changed: mpsc::UnboundedReceiver<Uuid>, shutdown: CancellationToken) {
        let mut refresh = tokio::time::interval(PRESENCE_REFRESH);
        loop {
            let users: Vec<Uuid> = tokio::select! {
                () = shutdown.cancelled() => break,
                user = changed.recv() => match user {
                    Some(user) => {
                        // Coalesce a burst of changes into one write per user.
                        let mut users = HashSet::from([user]);
                        while let Ok(more) = changed.try_recv() {
                            users.insert(more);
                        }
                        users.into_iter().collect()
                    }
                    None => break,
                },
                _ = refresh.tick() => {
                    self.counts.lock().keys().copied().collect()
                }
            };
            // Each write waits up to the JetStream timeout while NATS is away, and a burst can
            // hold thousands: the shutdown must not wait for them.
            let writes = async {
                for user in users {
                    self.write(user).await;
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = writes => {}
            }
        }
        // Going away: nobody is online here any more. Bounded, so an unreachable NATS cannot hold
        // the shutdown; whatever is not deleted expires with the bucket's age limit.
        let users: Vec<Uuid> = self.counts.lock().drain().map(|(u, _)| u).collect();
        let cleanup = async {
            for user in users {
                let _ = self.kv.delete(presence_key(user, self.instance)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(3), cleanup)
            .await
            .is_err()
        {
            warn!("presence cleanup cut short; the keys expire within a minute");
        }
    }
}
