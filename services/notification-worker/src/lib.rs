//! The notification worker: will publish one notification per new message per recipient and email
//! recipients who stay offline. For now it connects, applies the streams and waits for shutdown,
//! so deployments can already run and scale it.

use anyhow::Context as _;
use parley_service::config::{self, ConfigError};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The worker's configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `NATS_URL`
    pub nats_url: String,
    /// `PARLEY_STREAM_REPLICAS`
    pub stream_replicas: usize,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            nats_url: config::or_default("NATS_URL", "nats://127.0.0.1:4222"),
            stream_replicas: config::parsed("PARLEY_STREAM_REPLICAS", 1usize)?,
        })
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = parley_nats::connect(&config.nats_url, "parley-notification-worker")
        .await
        .context("NATS_URL")?;
    let js = parley_nats::jetstream(client.clone());
    let replicas = config.stream_replicas;
    if parley_service::retry_until("applying streams", &shutdown, || {
        parley_nats::ensure_streams(&js, replicas)
    })
    .await
    .is_none()
    {
        return Ok(());
    }
    info!("notification worker running");
    shutdown.cancelled().await;
    client.flush().await.ok();
    info!("notification worker stopped");
    Ok(())
}
