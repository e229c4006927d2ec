//! The conversation directory: what a notification or an email needs to say about a conversation
//! (project title, who is who, their emails), learnt from `parley.project.started` and kept in the
//! `PARLEY_CONVERSATIONS` bucket, so every notification worker shares it and none needs Postgres.
//! The directory is learnt by a [`Handler`] of the shared consumer runtime.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use async_nats::jetstream::{self, kv};
use parley_domain::Role;
use parley_domain::ids::conversation_id_for_project;
use parley_events::ProjectStarted;
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

/// Learns every `parley.project.started` into the directory.
pub(crate) struct Learner(pub(crate) Directory);

impl Handler for Learner {
    async fn handle(&self, message: &jetstream::Message) -> Disposition {
        let event = match serde_json::from_slice::<ProjectStarted>(&message.payload) {
            Ok(event) if event.validate().is_ok() => event,
            // The persistence worker records it as a dead letter; nothing to learn here.
            _ => return Disposition::terminate("an invalid project.started"),
        };
        let card = ConversationCard::from_event(&event);
        let encoded = match serde_json::to_vec(&card) {
            Ok(encoded) => encoded,
            Err(error) => return Disposition::terminate(format!("a card that does not encode: {error}")),
        };
        match self.0.kv.put(card.conversation_id.to_string(), encoded.into()).await {
            Ok(_) => {
                info!(project_id = %event.project_id, "conversation known for notifications");
                Disposition::Ack
            }
            Err(error) => {
                warn!(%error, "storing a conversation card failed; retrying");
                Disposition::retry_soon()
            }
        }
    }
}
