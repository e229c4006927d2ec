//! The conversation directory: what a notification or an email needs to say about a conversation
//! (project title, who is who, their emails), learnt from `parley.project.started` and kept in the
//! `PARLEY_CONVERSATIONS` bucket, so every notification worker shares it and none needs Postgres.
//! Gateways read it too, for membership while Postgres is away, so it also records closes
//! (`closedAt`) from `parley.project.closed`. The directory is learnt by a [`Handler`] of the
//! shared consumer runtime.
//!
//! A start and a close may be applied in either order (several workers, retries), so neither
//! overwrites the other: each reads the entry and writes only if it is still at the revision it
//! read (create when absent, update at that revision), merging what is there. A close seen first
//! leaves a bare entry (ids and `closedAt`, no participants) that the start completes; a start
//! seen again leaves a complete entry alone. Every write is therefore idempotent and the entry
//! ends the same whichever order and however often the events come.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use parley_domain::Role;
use parley_domain::ids::conversation_id_for_project;
use parley_events::{ProjectClosed, ProjectStarted, subjects};
use parley_nats::consume::{Disposition, Handler};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub id: Uuid,
    pub role: Role,
    pub display_name: String,
    pub email: String,
}

/// Everything the worker knows about one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationCard {
    pub conversation_id: Uuid,
    pub project_id: Uuid,
    pub title: String,
    pub participants: Vec<Person>,
    /// When the project closed; absent while it is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
}

/// An entry written by a close seen before its start: no card yet. Card readers do not parse it
/// (it lacks the title and participants), so to them the conversation is not known yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClosedOnly {
    conversation_id: Uuid,
    project_id: Uuid,
    closed_at: DateTime<Utc>,
}

/// A directory entry as stored.
enum Stored {
    Card(ConversationCard),
    ClosedOnly(ClosedOnly),
}

impl Stored {
    fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes)
            .map(Self::Card)
            .or_else(|_| serde_json::from_slice(bytes).map(Self::ClosedOnly))
            .ok()
    }
}

impl ConversationCard {
    pub fn from_event(event: &ProjectStarted) -> Self {
        Self {
            conversation_id: conversation_id_for_project(event.project_id),
            project_id: event.project_id,
            title: event.title.clone(),
            participants: event
                .parties()
                .into_iter()
                .map(|(role, party)| Person {
                    id: party.id,
                    role,
                    display_name: party.display_name.clone(),
                    email: party.email.clone(),
                })
                .collect(),
            closed_at: None,
        }
    }

    pub fn person(&self, id: Uuid) -> Option<&Person> {
        self.participants.iter().find(|p| p.id == id)
    }
}

/// Cards kept in memory; a card never changes once a project started, so no invalidation.
const CACHED_CARDS: usize = 100_000;

#[derive(Clone)]
pub struct Directory {
    kv: kv::Store,
    cache: Arc<Mutex<HashMap<Uuid, ConversationCard>>>,
}

impl Directory {
    pub fn new(kv: kv::Store) -> Self {
        Self {
            kv,
            cache: Arc::default(),
        }
    }

    /// The card of a conversation, `None` while its `project.started` has not been seen.
    pub async fn card(&self, conversation_id: Uuid) -> Result<Option<ConversationCard>, async_nats::Error> {
        if let Some(card) = self.cache.lock().get(&conversation_id) {
            return Ok(Some(card.clone()));
        }
        let card: Option<ConversationCard> = match self.kv.get(conversation_id.to_string()).await? {
            Some(bytes) => serde_json::from_slice(&bytes).ok(),
            None => None,
        };
        if let Some(card) = &card {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHED_CARDS {
                cache.clear();
            }
            cache.insert(conversation_id, card.clone());
        }
        Ok(card)
    }
}

/// How many times a write that lost a race with another worker's is tried again at once.
const MERGE_ATTEMPTS: usize = 8;

/// What one event does to an entry: `None` when the entry already says it.
type Merge<'a> = &'a (dyn Fn(Option<Stored>) -> Option<Vec<u8>> + Sync);

/// Learns every `parley.project.started` and `parley.project.closed` into the directory.
pub(crate) struct Learner(pub(crate) Directory);

impl Learner {
    /// Applies `merge` to the entry of `conversation_id`, writing only over the revision read.
    async fn merge(&self, conversation_id: Uuid, merge: Merge<'_>) -> Result<(), String> {
        let key = parley_nats::buckets::conversation_key(conversation_id);
        for _ in 0..MERGE_ATTEMPTS {
            let entry = self.0.kv.entry(key.clone()).await.map_err(|e| e.to_string())?;
            let current = entry.filter(|e| e.operation == kv::Operation::Put);
            let Some(value) = merge(current.as_ref().and_then(|e| Stored::parse(&e.value))) else {
                return Ok(());
            };
            let written = match &current {
                None => self
                    .0
                    .kv
                    .create(&key, value.into())
                    .await
                    .map(drop)
                    .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
                Some(entry) => self
                    .0
                    .kv
                    .update(&key, value.into(), entry.revision)
                    .await
                    .map(drop)
                    .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string())),
            };
            match written {
                Ok(()) => return Ok(()),
                // Another worker wrote it meanwhile: read it again.
                Err((true, _)) => {}
                Err((false, error)) => return Err(error),
            }
        }
        Err("the entry kept changing".into())
    }

    async fn started(&self, message: &jetstream::Message) -> Disposition {
        let event = match serde_json::from_slice::<ProjectStarted>(&message.payload) {
            Ok(event) if event.validate().is_ok() => event,
            // The persistence worker records it as a dead letter; nothing to learn here.
            _ => return Disposition::terminate("an invalid project.started"),
        };
        let card = ConversationCard::from_event(&event);
        let merge = |stored: Option<Stored>| {
            let closed_at = match stored {
                Some(Stored::Card(_)) => return None,
                Some(Stored::ClosedOnly(closed)) => Some(closed.closed_at),
                None => None,
            };
            serde_json::to_vec(&ConversationCard {
                closed_at,
                ..card.clone()
            })
            .ok()
        };
        match self.merge(card.conversation_id, &merge).await {
            Ok(()) => {
                info!(project_id = %event.project_id, "conversation in the directory");
                Disposition::Ack
            }
            Err(error) => {
                warn!(%error, "storing a conversation card failed; retrying");
                Disposition::retry_soon()
            }
        }
    }

    async fn closed(&self, message: &jetstream::Message) -> Disposition {
        let Ok(event) = serde_json::from_slice::<ProjectClosed>(&message.payload) else {
            return Disposition::terminate("an invalid project.closed");
        };
        let conversation_id = conversation_id_for_project(event.project_id);
        let merge = |stored: Option<Stored>| match stored {
            Some(Stored::Card(card)) if card.closed_at.is_none() => serde_json::to_vec(&ConversationCard {
                closed_at: Some(event.closed_at),
                ..card
            })
            .ok(),
            Some(_) => None,
            None => serde_json::to_vec(&ClosedOnly {
                conversation_id,
                project_id: event.project_id,
                closed_at: event.closed_at,
            })
            .ok(),
        };
        match self.merge(conversation_id, &merge).await {
            Ok(()) => {
                info!(project_id = %event.project_id, "conversation closed in the directory");
                Disposition::Ack
            }
            Err(error) => {
                warn!(%error, "recording a close in the directory failed; retrying");
                Disposition::retry_soon()
            }
        }
    }
}

impl Handler for Learner {
    async fn handle(&self, message: &jetstream::Message) -> Disposition {
        match message.subject.as_str() {
            subjects::PROJECT_STARTED => self.started(message).await,
            subjects::PROJECT_CLOSED => self.closed(message).await,
            _ => Disposition::Ack,
        }
    }
}
