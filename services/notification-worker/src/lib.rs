//! The notification worker: tells the marketplace's notification system about every new message
//! (one notification per recipient, on `parley.notification.<recipientId>`, kept in
//! `PARLEY_NOTIFICATIONS`), and emails recipients who stay away.
//!
//! Three consumers share one cancellation token and never wait on each other, each run by the
//! shared consumer runtime of `parley_nats::consume`: the directory learns conversations from
//! `parley.project.started` and their closes from `parley.project.closed`; notify turns messages into notifications and, when email is on,
//! queues one pending digest per (conversation, recipient); email sends each digest when it
//! falls due, if the recipient is still offline and has not read. Every publish is deduplicated
//! by a deterministic `Nats-Msg-Id` and every ack follows the work, so any number of workers,
//! killed at any point, send nothing twice.
//!
//! Built as a library with the gateway's shape, so tests start the real thing:
//! [`Application::build`] connects and binds the admin endpoint (port 0 in tests, then
//! [`Application::admin_addr`]), [`Application::run_until_stopped`] runs until the token fires.

mod directory;
mod email;
mod notify;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::Mailbox;
use parley_nats::consume::Runtime;
use parley_service::admin::{self, AdminListener};
use parley_service::config::{self, CommonConfig, ConfigError};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// `PARLEY_ADMIN_LISTEN` when unset.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9092);

/// The worker's configuration, from the environment. `NATS_URL` and `PARLEY_STREAM_REPLICAS` are
/// read as every process reads them ([`CommonConfig`]).
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
    pub admin_listen: SocketAddr,
}

/// `PARLEY_EMAIL_FROM` when unset: `Parley <no-reply@parley.local>`.
fn default_email_from() -> Mailbox {
    // Two constant parts that pass the address checks (a test parses the same mailbox).
    Mailbox::new(
        Some("Parley".into()),
        lettre::Address::new_dangerous("no-reply", "parley.local"),
    )
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env()?;
        let admin_listen = config::parsed("PARLEY_ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN)?;
        let smtp_url = config::optional("PARLEY_SMTP_URL");
        if let Some(url) = &smtp_url {
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url).map_err(|e| ConfigError {
                variable: "PARLEY_SMTP_URL",
                problem: format!("not a usable SMTP URL: {e}"),
            })?;
        }
        let email_from = match config::optional("PARLEY_EMAIL_FROM") {
            None => default_email_from(),
            Some(from) => from.parse().map_err(|e| ConfigError {
                variable: "PARLEY_EMAIL_FROM",
                problem: format!("not a mailbox ({e}); e.g. Parley <no-reply@example.com>"),
            })?,
        };
        Ok(Self {
            smtp_url,
            email_from,
            email_delay: Duration::from_millis(config::parsed("PARLEY_EMAIL_DELAY_MS", 60_000u64)?),
            admin_listen,
            ..Self::new(common)
        })
    }

    /// The worker on `common`'s NATS, without email.
    pub fn new(common: CommonConfig) -> Self {
        Self {
            nats_url: common.nats_url,
            smtp_url: None,
            email_from: default_email_from(),
            email_delay: Duration::from_secs(60),
            stream_replicas: common.stream_replicas,
            // Tests bind on a port the system picks; `from_env` reads `PARLEY_ADMIN_LISTEN`.
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Emails through `smtp_url` once a recipient has stayed away `delay`.
    pub fn with_email(mut self, smtp_url: impl Into<String>, delay: Duration) -> Self {
        self.smtp_url = Some(smtp_url.into());
        self.email_delay = delay;
        self
    }
}

/// A worker connected and bound to its admin address, ready to run.
pub struct Application {
    config: Config,
    client: async_nats::Client,
    mailer: Option<email::Mailer>,
    admin: AdminListener,
}

impl Application {
    /// Starts connecting to NATS (retrying in the background while it is down), prepares the
    /// SMTP transport if email is on, and binds the admin endpoint. Waiting for NATS to answer
    /// is [`Application::run_until_stopped`]'s, so that it can be stopped meanwhile.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything records.
        parley_service::telemetry::metrics();
        let client = parley_nats::connect(&config.nats_url, "parley-notification-worker")
            .await
            .context("NATS_URL")?;
        let mailer = match &config.smtp_url {
            Some(url) => {
                // Both email counters exist from the start, at zero: an alert on failures
                // "unless some were sent" must see the sends' series even before the first one.
                metrics::counter!("parley_emails_sent_total").increment(0);
                metrics::counter!("parley_emails_failed_total").increment(0);
                Some(email::Mailer::new(url, config.email_from.clone()).context("PARLEY_SMTP_URL")?)
            }
            None => None,
        };
        let admin = AdminListener::bind(config.admin_listen).await?;
        Ok(Self {
            config,
            client,
            mailer,
            admin,
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served (the real port when 0 was asked).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Applies streams, buckets and consumers (retrying until they succeed or `shutdown` fires),
    /// then consumes until `shutdown`; each consumer finishes the messages in hand.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            client,
            mailer,
            admin,
        } = self;
        let set_up = admin::SetUp::default();
        let ready = {
            let (client, set_up) = (client.clone(), set_up.clone());
            admin::readiness(move || {
                let ready = set_up.is_done() && client.connection_state() == async_nats::connection::State::Connected;
                async move { ready }
            })
        };
        info!(admin_addr = %admin.local_addr(), "admin endpoint listening");
        let admin = admin.serve(ready, shutdown.clone());
        // Each consumer flushes its own acks when it stops.
        // A server cut off from its cluster is left for another (see `parley_nats::reach`).
        let reach = tokio::spawn(parley_nats::reach::stay_in_reach(client.clone(), shutdown.clone()));
        let consumed = consume(&config, client, mailer, &set_up, &shutdown).await;
        shutdown.cancel();
        let _ = reach.await;
        let _ = admin.await;
        info!("notification worker stopped");
        consumed
    }
}

/// Starts the worker and runs it until `shutdown`: [`Application::build`], then
/// [`Application::run_until_stopped`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config).await?.run_until_stopped(shutdown).await
}

/// Deletes the directory's former consumer (starts only), which nothing reads any more; its
/// successor rereads the projects stream from the start. Absent is the usual case.
async fn retire_projects_consumer(js: &async_nats::jetstream::Context) {
    let Ok(stream) = js.get_stream_no_info(parley_nats::PROJECTS_STREAM).await else {
        return;
    };
    if stream
        .delete_consumer(parley_nats::RETIRED_NOTIFICATION_PROJECTS_CONSUMER)
        .await
        .is_ok()
    {
        info!("retired the directory's former consumer");
    }
}

/// Waits for NATS, then runs the three consumers until `shutdown` (`set_up` once they exist).
async fn consume(
    config: &Config,
    client: async_nats::Client,
    mailer: Option<email::Mailer>,
    set_up: &admin::SetUp,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let js = parley_nats::jetstream(client);
    let replicas = config.stream_replicas;
    let setup = || async {
        parley_nats::ensure_streams(&js, replicas).await?;
        let directory = parley_nats::buckets::conversations(&js, replicas).await?;
        parley_nats::buckets::presence(&js, replicas).await?;
        let sent = parley_nats::buckets::email_sent(&js, replicas).await?;
        let projects = parley_nats::ensure_pull_consumer(&js, parley_nats::NOTIFICATION_DIRECTORY_CONSUMER).await?;
        retire_projects_consumer(&js).await;
        let messages = parley_nats::ensure_pull_consumer(&js, parley_nats::NOTIFICATION_MESSAGES_CONSUMER).await?;
        let jobs = parley_nats::ensure_pull_consumer(&js, parley_nats::EMAIL_CONSUMER).await?;
        Ok::<_, parley_nats::SetupError>((directory, sent, projects, messages, jobs))
    };
    let Some((directory, sent, projects, messages, jobs)) =
        parley_service::retry_until("applying streams and consumers", shutdown, setup).await
    else {
        return Ok(());
    };
    let directory = directory::Directory::new(directory);
    set_up.done();
    info!(email = mailer.is_some(), "notification worker running");

    let gauges = parley_nats::spawn_consumer_gauges(
        js.clone(),
        vec![
            parley_nats::NOTIFICATION_MESSAGES_CONSUMER,
            parley_nats::NOTIFICATION_DIRECTORY_CONSUMER,
            parley_nats::EMAIL_CONSUMER,
        ],
        shutdown.clone(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let learner = directory::Learner(directory.clone());
    tasks.spawn(Runtime::new(js.clone(), projects).run(learner, shutdown.clone()));
    let notifier = notify::Notifier {
        js: js.clone(),
        directory: directory.clone(),
        email_delay: mailer.is_some().then_some(config.email_delay),
    };
    tasks.spawn(
        Runtime::new(js.clone(), messages)
            .concurrency(notify::CONCURRENCY)
            .run(notifier, shutdown.clone()),
    );
    if let Some(mailer) = mailer {
        let sender = email::DigestSender {
            js: js.clone(),
            directory,
            sent,
            mailer,
        };
        tasks.spawn(Runtime::new(js.clone(), jobs).run(sender, shutdown.clone()));
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        // One consumer ending ends the others: the worker stops as a whole.
        shutdown.cancel();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => result = Err(error).context("a consumer could not start"),
            Err(error) => result = Err(error).context("a consumer panicked"),
        }
    }
    let _ = gauges.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sender_is_a_valid_mailbox() {
        let parsed: Mailbox = "Parley <no-reply@parley.local>".parse().unwrap();
        assert_eq!(default_email_from(), parsed);
        assert_eq!(default_email_from().to_string(), parsed.to_string());
    }
}
