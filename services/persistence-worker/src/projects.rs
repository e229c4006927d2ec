//! Project lifecycle: `parley.project.started` creates the conversation with its two participants,
//! `parley.project.closed` makes it read-only. Both are idempotent in the store, so this is a
//! plain handler for the shared consumer runtime: it only says what becomes of each event.

use async_nats::jetstream;
use parley_events::{ProjectClosed, ProjectStarted, subjects};
use parley_nats::consume::{Disposition, Handler};
use parley_store::{ClosedOutcome, Store};
use tracing::{info, warn};

use crate::WAITING_FOR_START;

/// Applies lifecycle events to the store.
pub(crate) struct ProjectEvents {
    store: Store,
}

impl ProjectEvents {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }
}

impl Handler for ProjectEvents {
    async fn handle(&self, message: &jetstream::Message) -> Disposition {
        match message.subject.as_str() {
            subjects::PROJECT_STARTED => self.started(message).await,
            subjects::PROJECT_CLOSED => self.closed(message).await,
            other => Disposition::bury(format!("unknown lifecycle subject {other}")),
        }
    }
}

impl ProjectEvents {
    async fn started(&self, message: &jetstream::Message) -> Disposition {
        let event: ProjectStarted = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(e) => return Disposition::bury(format!("malformed project.started: {e}")),
        };
        if let Err(reason) = event.validate() {
            return Disposition::bury(format!("invalid project.started: {reason}"));
        }
        match self.store.apply_project_started(&event).await {
            Ok(created) => {
                info!(project_id = %event.project_id, created, "project started");
                Disposition::Ack
            }
            Err(error) => {
                warn!(%error, "storing project.started failed; retrying");
                Disposition::retry_soon()
            }
        }
    }

    async fn closed(&self, message: &jetstream::Message) -> Disposition {
        let event: ProjectClosed = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(e) => return Disposition::bury(format!("malformed project.closed: {e}")),
        };
        match self.store.apply_project_closed(&event).await {
            Ok(ClosedOutcome::Closed | ClosedOutcome::AlreadyClosed) => {
                info!(project_id = %event.project_id, "project closed");
                Disposition::Ack
            }
            Ok(ClosedOutcome::UnknownProject) => {
                WAITING_FOR_START.retry_or_bury(message, "project.closed for a project that never started")
            }
            Err(error) => {
                warn!(%error, "storing project.closed failed; retrying");
                Disposition::retry_soon()
            }
        }
    }
}
