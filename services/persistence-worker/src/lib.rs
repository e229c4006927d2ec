//! The persistence worker: builds Parley's Postgres query model from the JetStream log.
//!
//! Two consumers share one cancellation token: project lifecycle events (creating and closing
//! conversations) go through the shared consumer runtime of `parley_nats::consume`, messages and
//! read marks through the batching loop of `chat`. Every write is idempotent and every ack
//! follows the commit, so a worker killed at any point loses nothing and doubles nothing: what it
//! had not acked is redelivered, to it or to another worker, and rewritten harmlessly.
//!
//! Built as a library with the gateway's shape, so tests start the real thing:
//! [`Application::build`] connects and binds the admin endpoint (port 0 in tests, then
//! [`Application::admin_addr`]), [`Application::run_until_stopped`] runs until the token fires.

mod chat;
mod projects;

use std::net::SocketAddr;

use anyhow::Context as _;
use parley_nats::consume::{DeadLetters, RETRY_DELAY, RetryLimit, Runtime};
use parley_service::admin::{self, AdminListener};
use parley_service::config::{self, CommonConfig, ConfigError};
use parley_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// `PARLEY_ADMIN_LISTEN` when unset.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9091);

/// An event that needs its project's start (a message, a read mark or a close arriving first,
/// as when both backlogs drain at once after an outage) is retried a second apart, then buried
/// on its twentieth delivery: a start that has not come by then never will.
pub(crate) const WAITING_FOR_START: RetryLimit = RetryLimit {
    after: RETRY_DELAY,
    max_deliveries: 20,
};

/// Where this worker's dead letters go: `parley.deadletter.persistence`.
fn dead_letters(js: &async_nats::jetstream::Context) -> DeadLetters {
    DeadLetters::new(js.clone(), "persistence", "parley_persistence_dead_lettered_total")
}

/// The worker's configuration, from the environment. `NATS_URL` and `PARLEY_STREAM_REPLICAS` are
/// read as every process reads them ([`CommonConfig`]).
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
    pub admin_listen: SocketAddr,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env()?;
        let admin_listen = config::parsed("PARLEY_ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN)?;
        let batch_size = config::parsed("PARLEY_BATCH_SIZE", 5000usize)?;
        if !(1..=10_000).contains(&batch_size) {
            return Err(ConfigError {
                variable: "PARLEY_BATCH_SIZE",
                problem: "must be between 1 and 10000".into(),
            });
        }
        let database_url = config::or_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/parley");
        Ok(Self {
            admin_listen,
            ..Self::new(common, database_url).with_batch_size(batch_size)
        })
    }

    /// The worker on `common`'s NATS and `database_url`, with the default batch size.
    pub fn new(common: CommonConfig, database_url: impl Into<String>) -> Self {
        Self {
            nats_url: common.nats_url,
            database_url: database_url.into(),
            batch_size: 5000,
            stream_replicas: common.stream_replicas,
            // Tests bind on a port the system picks; `from_env` reads `PARLEY_ADMIN_LISTEN`.
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
}

/// A worker connected and bound to its admin address, ready to run.
pub struct Application {
    config: Config,
    store: Store,
    client: async_nats::Client,
    admin: AdminListener,
}

impl Application {
    /// Prepares the Postgres pool (connecting lazily), starts connecting to NATS (retrying in the
    /// background while it is down) and binds the admin endpoint. Waiting for the two to answer
    /// is [`Application::run_until_stopped`]'s, so that it can be stopped meanwhile.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything records.
        parley_service::telemetry::metrics();
        let store = Store::connect_lazy(&config.database_url, 8).context("DATABASE_URL")?;
        let client = parley_nats::connect(&config.nats_url, "parley-persistence-worker")
            .await
            .context("NATS_URL")?;
        let admin = AdminListener::bind(config.admin_listen).await?;
        Ok(Self {
            config,
            store,
            client,
            admin,
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served (the real port when 0 was asked).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Applies migrations, streams and consumers (retrying until they succeed or `shutdown`
    /// fires), then consumes until `shutdown`; then finishes and acks the batches in hand.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            store,
            client,
            admin,
        } = self;
        let set_up = admin::SetUp::default();
        let ready = {
            let (store, client, set_up) = (store.clone(), client.clone(), set_up.clone());
            admin::readiness(move || {
                let (store, client, set_up) = (store.clone(), client.clone(), set_up.clone());
                async move {
                    set_up.is_done()
                        && client.connection_state() == async_nats::connection::State::Connected
                        && store.ping().await
                }
            })
        };
        info!(admin_addr = %admin.local_addr(), "admin endpoint listening");
        let admin = admin.serve(ready, shutdown.clone());
        // A server cut off from its cluster is left for another (see `parley_nats::reach`).
        let reach = tokio::spawn(parley_nats::reach::stay_in_reach(client.clone(), shutdown.clone()));
        let consumed = consume(&config, store, client, &set_up, &shutdown).await;
        shutdown.cancel();
        let _ = reach.await;
        let _ = admin.await;
        consumed
    }
}

/// Starts the worker and runs it until `shutdown`: [`Application::build`], then
/// [`Application::run_until_stopped`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config).await?.run_until_stopped(shutdown).await
}

/// Waits for Postgres and NATS, then runs both consumers until `shutdown` (`set_up` once they
/// exist).
async fn consume(
    config: &Config,
    store: Store,
    client: async_nats::Client,
    set_up: &admin::SetUp,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(()) = parley_service::retry_until("applying migrations", shutdown, || store.migrate()).await else {
        return Ok(());
    };
    let js = parley_nats::jetstream(client);
    let replicas = config.stream_replicas;
    let setup = || async {
        parley_nats::ensure_streams(&js, replicas).await?;
        let chat = parley_nats::ensure_pull_consumer(&js, parley_nats::PERSISTENCE_CHAT_CONSUMER).await?;
        let projects = parley_nats::ensure_pull_consumer(&js, parley_nats::PERSISTENCE_PROJECTS_CONSUMER).await?;
        Ok::<_, parley_nats::SetupError>((chat, projects))
    };
    let Some((chat_consumer, projects_consumer)) =
        parley_service::retry_until("applying streams and consumers", shutdown, setup).await
    else {
        return Ok(());
    };
    set_up.done();
    info!(batch_size = config.batch_size, "persistence worker running");
    let gauges = parley_nats::spawn_consumer_gauges(
        js.clone(),
        vec![
            parley_nats::PERSISTENCE_CHAT_CONSUMER,
            parley_nats::PERSISTENCE_PROJECTS_CONSUMER,
        ],
        shutdown.clone(),
    );
    // Lifecycle events one at a time, in stream order: a close follows its start.
    let projects = Runtime::new(js.clone(), projects_consumer)
        .dead_letters(dead_letters(&js))
        .run(projects::ProjectEvents::new(store.clone()), shutdown.clone());
    let projects = tokio::spawn(projects);
    let chat_result = chat::run(chat_consumer, store, js, config.batch_size, shutdown.clone()).await;
    shutdown.cancel();
    let projects_result = projects.await.context("projects consumer panicked")?;
    let _ = gauges.await;
    chat_result.and(projects_result.context("projects consumer"))
}
