//! Project lifecycle: `parley.project.started` creates the conversation with its two participants,
//! `parley.project.closed` makes it read-only. Both are idempotent in the store.

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use parley_events::{ProjectClosed, ProjectStarted, subjects};
use parley_store::{ClosedOutcome, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{MAX_EARLY_ATTEMPTS, RETRY_DELAY, dead_letter};

enum Outcome {
    Done,
    Retry,
    Dead(String),
}

pub(crate) async fn run(
    consumer: PullConsumer,
    store: Store,
    js: jetstream::Context,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut messages = consumer.messages().await?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                warn!(%error, "projects consumer hiccup");
                continue;
            }
            None => return Ok(()),
        };
        match apply(&store, &message).await {
            Outcome::Done => {
                if let Err(error) = message.double_ack().await {
                    warn!(%error, "ack of a project event failed; it will be redelivered");
                }
            }
            Outcome::Retry => {
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            }
            Outcome::Dead(reason) => match dead_letter::bury(&js, &message, &reason).await {
                Ok(()) => metrics::counter!("parley_persistence_dead_lettered_total").increment(1),
                Err(error) => warn!(%error, "dead-lettering failed; the event will be redelivered"),
            },
        }
    }
}

async fn apply(store: &Store, message: &jetstream::Message) -> Outcome {
    match message.subject.as_str() {
        subjects::PROJECT_STARTED => {
            let event: ProjectStarted = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(e) => return Outcome::Dead(format!("malformed project.started: {e}")),
            };
            if let Err(reason) = event.validate() {
                return Outcome::Dead(format!("invalid project.started: {reason}"));
            }
            match store.apply_project_started(&event).await {
                Ok(created) => {
                    info!(project_id = %event.project_id, created, "project started");
                    Outcome::Done
                }
                Err(error) => {
                    warn!(%error, "storing project.started failed; retrying");
                    Outcome::Retry
                }
            }
        }
        subjects::PROJECT_CLOSED => {
            let event: ProjectClosed = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(e) => return Outcome::Dead(format!("malformed project.closed: {e}")),
            };
            match store.apply_project_closed(&event).await {
                Ok(ClosedOutcome::Closed | ClosedOutcome::AlreadyClosed) => {
                    info!(project_id = %event.project_id, "project closed");
                    Outcome::Done
                }
                Ok(ClosedOutcome::UnknownProject) => {
                    let attempts = message.info().map(|i| i.delivered).unwrap_or(i64::MAX);
                    if attempts >= MAX_EARLY_ATTEMPTS {
                        Outcome::Dead("project.closed for a project that never started".into())
                    } else {
                        Outcome::Retry
                    }
                }
                Err(error) => {
                    warn!(%error, "storing project.closed failed; retrying");
                    Outcome::Retry
                }
            }
        }
        other => Outcome::Dead(format!("unknown lifecycle subject {other}")),
    }
}
