//! The notification worker: tells the marketplace's notification system about every new message
//! (one notification per recipient, on `parley.notification.<recipientId>`, kept in
//! `PARLEY_NOTIFICATIONS`), and emails recipients who stay away.
//!
//! Three loops share one cancellation token and never wait on each other: the directory loop
//! learns conversations from `parley.project.started`; the notify loop turns messages into
//! notifications and, when email is on, queues one pending digest per (conversation, recipient);
//! the email loop sends each digest when it falls due, if the recipient is still offline and has
//! not read. Every publish is deduplicated by a deterministic `Nats-Msg-Id` and every ack follows
//! the work, so any number of workers, killed at any point, send nothing twice.

mod directory;
mod email;
mod notify;

use std::time::Duration;

use anyhow::Context as _;
use lettre::message::Mailbox;
use parley_service::config::{self, ConfigError};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use directory::ConversationCard;
pub use email::compose_digest;

/// The worker's configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `NATS_URL`
    pub nats_url: String,
    /// `PARLEY_SMTP_URL`: unset means no email.
    pub smtp_url: Option<String>,
    /// `PARLEY_EMAIL_FROM`
    pub email_from: Mailbox,
    /// `PARLEY_EMAIL_DELAY_MS`: how long a recipient has to come back or read before the email.
    pub email_delay: Duration,
    /// `PARLEY_STREAM_REPLICAS`
    pub stream_replicas: usize,
    /// `PARLEY_ADMIN_LISTEN`: `/healthz`, `/readyz`, `/metrics` (default 127.0.0.1:9092).
    pub admin_listen: std::net::SocketAddr,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let smtp_url = config::optional("PARLEY_SMTP_URL");
        if let Some(url) = &smtp_url {
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url).map_err(|e| ConfigError {
                variable: "PARLEY_SMTP_URL",
                problem: format!("not a usable SMTP URL: {e}"),
            })?;
        }
        let from = config::or_default("PARLEY_EMAIL_FROM", "Parley <no-reply@parley.local>");
        let email_from = from.parse().map_err(|e| ConfigError {
            variable: "PARLEY_EMAIL_FROM",
            problem: format!("not a mailbox ({e}); e.g. Parley <no-reply@example.com>"),
        })?;
        Ok(Self {
            nats_url: config::or_default("NATS_URL", "nats://127.0.0.1:4222"),
            smtp_url,
            email_from,
            email_delay: Duration::from_millis(config::parsed("PARLEY_EMAIL_DELAY_MS", 60_000u64)?),
            stream_replicas: config::parsed("PARLEY_STREAM_REPLICAS", 1usize)?,
            admin_listen: config::parsed(
                "PARLEY_ADMIN_LISTEN",
                std::net::SocketAddr::from(([127, 0, 0, 1], 9092)),
            )?,
        })
    }
}

/// Runs until `shutdown` is cancelled; each loop finishes the message in hand.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    parley_service::telemetry::metrics();
    let client = parley_nats::connect(&config.nats_url, "parley-notification-worker")
        .await
        .context("NATS_URL")?;
    let ready: parley_service::admin::ReadinessCheck = {
        let client = client.clone();
        std::sync::Arc::new(move || {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            Box::pin(async move { connected })
        })
    };
    let (admin_addr, admin) = parley_service::admin::serve(config.admin_listen, ready, shutdown.clone())
        .await
        .with_context(|| format!("PARLEY_ADMIN_LISTEN: cannot bind {}", config.admin_listen))?;
    info!(%admin_addr, "admin endpoint listening");
    let js = parley_nats::jetstream(client.clone());
    let replicas = config.stream_replicas;
    let setup = || async {
        parley_nats::ensure_streams(&js, replicas).await?;
        let directory = parley_nats::buckets::conversations(&js, replicas).await?;
        parley_nats::buckets::presence(&js, replicas).await?;
        let sent = parley_nats::buckets::email_sent(&js, replicas).await?;
        let projects = parley_nats::ensure_pull_consumer(&js, parley_nats::NOTIFICATION_PROJECTS_CONSUMER).await?;
        let messages = parley_nats::ensure_pull_consumer(&js, parley_nats::NOTIFICATION_MESSAGES_CONSUMER).await?;
        let jobs = parley_nats::ensure_pull_consumer(&js, parley_nats::EMAIL_CONSUMER).await?;
        Ok::<_, parley_nats::SetupError>((directory, sent, projects, messages, jobs))
    };
    let Some((directory, sent, projects, messages, jobs)) =
        parley_service::retry_until("applying streams and consumers", &shutdown, setup).await
    else {
        return Ok(());
    };
    let directory = directory::Directory::new(directory);
    let emailing = config.smtp_url.is_some();
    info!(email = emailing, "notification worker running");

    let mut tasks = tokio::task::JoinSet::new();
    let gauges = parley_nats::spawn_consumer_gauges(
        js.clone(),
        vec![
            parley_nats::NOTIFICATION_MESSAGES_CONSUMER,
            parley_nats::NOTIFICATION_PROJECTS_CONSUMER,
            parley_nats::EMAIL_CONSUMER,
        ],
        shutdown.clone(),
    );
    tasks.spawn(directory::run(projects, directory.clone(), shutdown.clone()));
    tasks.spawn(notify::run(
        messages,
        js.clone(),
        directory.clone(),
        emailing.then_some(config.email_delay),
        shutdown.clone(),
    ));
    if let Some(url) = &config.smtp_url {
        let mailer = email::Mailer::new(url, config.email_from.clone())?;
        tasks.spawn(email::run(jobs, js.clone(), directory, sent, mailer, shutdown.clone()));
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        shutdown.cancel();
        if let Ok(Err(error)) = joined {
            result = Err(error);
        }
    }
    let _ = gauges.await;
    let _ = admin.await;
    client.flush().await.ok();
    info!("notification worker stopped");
    result
}
