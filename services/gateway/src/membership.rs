//! Who may use a conversation, remembered. A conversation's participants never change once its
//! project started, so they are cached; only its status can change, and a close is learnt from
//! `parley.project.closed` the moment the marketplace publishes it (before Postgres shows it),
//! so caching never lets a send into a closed conversation. Entries expire after a minute in
//! case a close went by while this gateway was away from NATS. Unknown conversations are not
//! cached: they may be created at any moment.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parley_domain::ConversationStatus;
use parley_domain::ids::conversation_id_for_project;
use parley_events::{ProjectClosed, subjects};
use parley_store::{ConversationAccess, Store, StoreError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(60);
const CAPACITY: usize = 100_000;

#[derive(Clone, Default)]
pub(crate) struct Membership {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    known: HashMap<Uuid, (ConversationAccess, Instant)>,
    closed: HashSet<Uuid>,
}

impl Membership {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// The conversation's access facts, from memory or Postgres. An entry older than [`TTL`]
    /// is read again, but still serves while Postgres does not answer: a conversation's two
    /// participants never change, and its close is learnt from NATS (see `follow_closes`).
    pub(crate) async fn get(
        &self,
        store: &Store,
        conversation_id: Uuid,
    ) -> Result<Option<ConversationAccess>, StoreError> {
        let (cached, fresh) = {
            let inner = self.lock();
            match inner.known.get(&conversation_id) {
                Some((access, at)) => (Some(access.clone()), at.elapsed() < TTL),
                None => (None, false),
            }
        };
        let mut access = match (cached, fresh) {
            (Some(access), true) => access,
            (stale, _) => match store.conversation_access(conversation_id).await {
                Ok(Some(access)) => {
                    let mut inner = self.lock();
                    if inner.known.len() >= CAPACITY {
                        inner.known.clear();
                    }
                    inner.known.insert(conversation_id, (access.clone(), Instant::now()));
                    access
                }
                Ok(None) => return Ok(None),
                Err(error) => match stale {
                    Some(access) => {
                        tracing::debug!(%error, "Postgres away; using the conversation's last known access");
                        access
                    }
                    None => return Err(error),
                },
            },
        };
        if self.lock().closed.contains(&conversation_id) {
            access.status = ConversationStatus::Closed;
        }
        Ok(Some(access))
    }

    fn closed(&self, conversation_id: Uuid) {
        let mut inner = self.lock();
        if inner.closed.len() >= CAPACITY {
            inner.closed.clear();
        }
        inner.closed.insert(conversation_id);
        if let Some((access, _)) = inner.known.get_mut(&conversation_id) {
            access.status = ConversationStatus::Closed;
        }
    }

    /// Learns closes from `parley.project.closed` (core NATS, as JetStream stores them) until
    /// `shutdown`.
    pub(crate) async fn follow_closes(
        &self,
        nats: async_nats::Client,
        shutdown: CancellationToken,
    ) -> anyhow::Result<JoinHandle<()>> {
        let mut closes = nats.subscribe(subjects::PROJECT_CLOSED).await?;
        let membership = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = closes.next() => message,
                };
                let Some(message) = message else { return };
                if let Ok(event) = serde_json::from_slice::<ProjectClosed>(&message.payload) {
                    membership.closed(conversation_id_for_project(event.project_id));
                }
            }
        }))
    }
}
