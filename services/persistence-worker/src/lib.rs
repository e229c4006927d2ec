//! The persistence worker: builds Parley's Postgres query model from the JetStream log.
//!
//! Two loops share one cancellation token: one applies project lifecycle events (creating and
//! closing conversations), the other writes messages in batches. Every write is idempotent and
//! every ack follows the commit, so a worker killed at any point loses nothing and doubles nothing:
//! what it had not acked is redelivered, to it or to another worker, and rewritten harmlessly.

mod chat;
mod dead_letter;
mod projects;

use std::time::Duration;

use anyhow::Context as _;
use parley_service::config::{self, ConfigError};
use parley_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long a transient failure (Postgres down) waits before the message comes back.
pub(crate) const RETRY_DELAY: Duration = Duration::from_secs(1);

/// An event that needs its project's start (a message, a read mark or a close arriving first,
/// as when both backlogs drain at once after an outage) is retried [`RETRY_DELAY`] apart this
/// many deliveries, then buried: a start that has not come by then never will.
pub(crate) const MAX_EARLY_ATTEMPTS: i64 = 20;

/// The worker's configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `NATS_URL`
    pub nats_url: String,
    /// `DATABASE_URL`
    pub database_url: String,
    /// `PARLEY_BATCH_SIZE`: most messages written in one transaction (default 5000).
    pub batch_size: usize,
    /// `PARLEY_STREAM_REPLICAS`: replicas of the streams this worker creates (default 1).
    pub stream_replicas: usize,
    /// `PARLEY_ADMIN_LISTEN`: `/healthz`, `/readyz`, `/metrics` (default 127.0.0.1:9091).
    pub admin_listen: std::net::SocketAddr,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let batch_size = config::parsed("PARLEY_BATCH_SIZE", 5000usize)?;
        if !(1..=10_000).contains(&batch_size) {
            return Err(ConfigError {
                variable: "PARLEY_BATCH_SIZE",
                problem: "must be between 1 and 10000".into(),
            });
        }
        Ok(Self {
            nats_url: config::or_default("NATS_URL", "nats://127.0.0.1:4222"),
            database_url: config::or_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/parley"),
            batch_size,
            stream_replicas: config::parsed("PARLEY_STREAM_REPLICAS", 1usize)?,
            admin_listen: config::parsed(
                "PARLEY_ADMIN_LISTEN",
                std::net::SocketAddr::from(([127, 0, 0, 1], 9091)),
            )?,
        })
    }
}

/// Runs the worker until `shutdown` is cancelled; then finishes and acks the batch in hand.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    parley_service::telemetry::metrics();
    let store = Store::connect_lazy(&config.database_url, 8).context("DATABASE_URL")?;
    let client = parley_nats::connect(&config.nats_url, "parley-persistence-worker")
        .await
        .context("NATS_URL")?;
    let ready: parley_service::admin::ReadinessCheck = {
        let (store, client) = (store.clone(), client.clone());
        std::sync::Arc::new(move || {
            let (store, client) = (store.clone(), client.clone());
            Box::pin(async move {
                client.connection_state() == async_nats::connection::State::Connected && store.ping().await
            })
        })
    };
    let (admin_addr, admin) = parley_service::admin::serve(config.admin_listen, ready, shutdown.clone())
        .await
        .with_context(|| format!("PARLEY_ADMIN_LISTEN: cannot bind {}", config.admin_listen))?;
    info!(%admin_addr, "admin endpoint listening");
    let Some(()) = parley_service::retry_until("applying migrations", &shutdown, || store.migrate()).await else {
        return Ok(());
    };
    let js = parley_nats::jetstream(client);
    let replicas = config.stream_replicas;
    let Some(()) = parley_service::retry_until("applying streams", &shutdown, || {
        parley_nats::ensure_streams(&js, replicas)
    })
    .await
    else {
        return Ok(());
    };
    let chat_consumer = parley_service::retry_until("applying the chat consumer", &shutdown, || {
        parley_nats::ensure_pull_consumer(&js, parley_nats::PERSISTENCE_CHAT_CONSUMER)
    });
    let Some(chat_consumer) = chat_consumer.await else {
        return Ok(());
    };
    let projects_consumer = parley_service::retry_until("applying the projects consumer", &shutdown, || {
        parley_nats::ensure_pull_consumer(&js, parley_nats::PERSISTENCE_PROJECTS_CONSUMER)
    });
    let Some(projects_consumer) = projects_consumer.await else {
        return Ok(());
    };
    info!(batch_size = config.batch_size, "persistence worker running");
    let gauges = parley_nats::spawn_consumer_gauges(
        js.clone(),
        vec![
            parley_nats::PERSISTENCE_CHAT_CONSUMER,
            parley_nats::PERSISTENCE_PROJECTS_CONSUMER,
        ],
        shutdown.clone(),
    );

    let projects = tokio::spawn(projects::run(
        projects_consumer,
        store.clone(),
        js.clone(),
        shutdown.clone(),
    ));
    let chat = chat::run(chat_consumer, store, js, config.batch_size, shutdown.clone());
    let chat_result = chat.await;
    shutdown.cancel();
    let projects_result = projects.await.context("projects loop panicked")?;
    let _ = gauges.await;
    let _ = admin.await;
    chat_result.and(projects_result)
}
