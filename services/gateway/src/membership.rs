//! Who may use a conversation, remembered. A conversation's participants never change once its
//! project started, so they are cached; only its status can change, and a close is learnt from
//! `parley.project.closed` the moment the marketplace publishes it (before Postgres shows it),
//! so caching never lets a send into a closed conversation. Entries expire after a minute in
//! case a close went by while this gateway was away from NATS. Unknown conversations are not
//! cached: they may be created at any moment.
//!
//! Sends need only NATS, so when Postgres cannot answer (an error, or no answer within
//! [`STORE_PATIENCE`]) membership comes from what NATS holds: the entry last read from Postgres,
//! however old, or for a conversation this gateway never looked up, the conversation directory
//! in the `PARLEY_CONVERSATIONS` bucket (see [`Directory`]). Postgres is asked first, and the
//! directory only when it cannot answer, because the directory is written by another service
//! (the notification workers) that may lag behind the projects stream or not run at all, while
//! Postgres needs no such check; and because checking the directory is current costs a request
//! of its own. A directory entry that says the project closed is believed at once; one that says
//! it is active is believed only while the directory's consumer has applied every project event
//! in the stream, so a close its writer has not recorded yet is never missed, whoever writes the
//! bucket and however late (closes after that are learnt live, as above). A conversation the
//! directory does not hold yet (a project that just started) is `unavailable` while Postgres is
//! away, never `not_found`: only Postgres may say a conversation does not exist.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
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
/// How long a lookup waits for Postgres before it asks NATS; if NATS cannot answer either, it
/// waits for Postgres after all.
const STORE_PATIENCE: Duration = Duration::from_millis(250);
/// How long a directory read may take.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub(crate) struct Membership {
    inner: Arc<Mutex<Inner>>,
    directory: Option<Directory>,
}

/// The conversation directory in `PARLEY_CONVERSATIONS`, and the progress of the consumer that
/// writes it, which says whether it holds every close the projects stream holds.
#[derive(Clone)]
pub(crate) struct Directory {
    kv: kv::Store,
    js: jetstream::Context,
}

/// The part of a directory entry membership needs; other fields are ignored.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirectoryEntry {
    conversation_id: Uuid,
    project_id: Uuid,
    #[serde(default)]
    participants: Vec<DirectoryPerson>,
    #[serde(default)]
    closed_at: Option<String>,
}

#[derive(serde::Deserialize)]
struct DirectoryPerson {
    id: Uuid,
}

impl Directory {
    pub(crate) fn new(kv: kv::Store, js: jetstream::Context) -> Self {
        Self { kv, js }
    }

    /// The conversation's access facts as the directory holds them, if it can be trusted to:
    /// `None` when the entry is missing or incomplete, or says active while the directory may
    /// not have recorded a close yet.
    async fn access(&self, conversation_id: Uuid) -> Option<ConversationAccess> {
        let key = parley_nats::buckets::conversation_key(conversation_id);
        let read = tokio::time::timeout(DIRECTORY_TIMEOUT, self.kv.get(key)).await;
        let bytes = match read {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) | Err(_) => return None,
            Ok(Err(error)) => {
                tracing::debug!(%error, "the conversation directory did not answer");
                return None;
            }
        };
        let entry: DirectoryEntry = serde_json::from_slice(&bytes).ok()?;
        if entry.conversation_id != conversation_id || entry.participants.len() != 2 {
            // A close seen before its start: no participants yet.
            return None;
        }
        let status = if entry.closed_at.is_some() {
            ConversationStatus::Closed
        } else if self.holds_every_project_event().await {
            ConversationStatus::Active
        } else {
            return None;
        };
        Some(ConversationAccess {
            conversation_id,
            project_id: entry.project_id,
            status,
            participants: entry.participants.into_iter().map(|p| p.id).collect(),
        })
    }

    /// Whether the directory's consumer has applied every project event the stream holds (none
    /// pending, none in hand): then every close published so far is in the directory.
    async fn holds_every_project_event(&self) -> bool {
        let definition = parley_nats::NOTIFICATION_DIRECTORY_CONSUMER;
        let Ok(name) = definition.durable_name() else {
            return false;
        };
        let progress = async {
            let stream = self.js.get_stream_no_info(definition.stream).await.ok()?;
            stream.consumer_info(&name).await.ok()
        };
        match tokio::time::timeout(DIRECTORY_TIMEOUT, progress).await {
            Ok(Some(info)) => info.num_pending == 0 && info.num_ack_pending == 0,
            _ => false,
        }
    }
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

    /// Membership that also reads the conversation directory when Postgres cannot answer.
    pub(crate) fn with_directory(mut self, directory: Directory) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The conversation's access facts, from memory or Postgres. An entry older than [`TTL`]
    /// is read again, but still serves while Postgres does not answer: a conversation's two
    /// participants never change, and its close is learnt from NATS (see `follow_closes`).
    /// Without Postgres and without an entry, the directory answers, if it can.
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
            (stale, _) => match self.look_up(store, conversation_id, stale).await? {
                Some(access) => access,
                None => return Ok(None),
            },
        };
        if self.lock().closed.contains(&conversation_id) {
            access.status = ConversationStatus::Closed;
        }
        Ok(Some(access))
    }

    /// Asks Postgres; when it fails or keeps silent past [`STORE_PATIENCE`], the last known
    /// entry serves, else the directory; when neither can, Postgres's answer stands.
    async fn look_up(
        &self,
        store: &Store,
        conversation_id: Uuid,
        stale: Option<ConversationAccess>,
    ) -> Result<Option<ConversationAccess>, StoreError> {
        let lookup = store.conversation_access(conversation_id);
        tokio::pin!(lookup);
        let answered = match tokio::time::timeout(STORE_PATIENCE, &mut lookup).await {
            Ok(answered) => answered,
            Err(_) => match self.without_store(conversation_id, stale.clone()).await {
                Some(access) => return Ok(Some(access)),
                None => lookup.await,
            },
        };
        match answered {
            Ok(Some(access)) => {
                self.remember(&access);
                Ok(Some(access))
            }
            Ok(None) => Ok(None),
            Err(error) => match self.without_store(conversation_id, stale).await {
                Some(access) => {
                    tracing::debug!(%error, "Postgres away; membership from what NATS holds");
                    Ok(Some(access))
                }
                None => Err(error),
            },
        }
    }

    /// Membership without Postgres: the last known entry, else the directory's.
    async fn without_store(
        &self,
        conversation_id: Uuid,
        stale: Option<ConversationAccess>,
    ) -> Option<ConversationAccess> {
        if stale.is_some() {
            return stale;
        }
        let access = self.directory.as_ref()?.access(conversation_id).await?;
        metrics::counter!("parley_gateway_membership_from_directory_total").increment(1);
        self.remember(&access);
        Some(access)
    }

    fn remember(&self, access: &ConversationAccess) {
        let mut inner = self.lock();
        if inner.known.len() >= CAPACITY {
            inner.known.clear();
        }
        inner
            .known
            .insert(access.conversation_id, (access.clone(), Instant::now()));
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
