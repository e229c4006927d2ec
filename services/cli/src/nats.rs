//! How the CLI reaches NATS: the shared `--nats-url` flag and a one-shot connect that fails fast
//! with one clear line (an operator's command should not wait forever the way a service does).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::ErrorCode;

/// The `--nats-url` flag of every command that talks to NATS.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server to connect to.
    #[arg(long, env = "NATS_URL", default_value = parley_nats::DEFAULT_URL)]
    pub nats_url: String,
}

/// A connected client and its JetStream context.
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

/// Connects once (no retries) and checks that JetStream answers.
pub async fn connect(url: &str) -> anyhow::Result<Nats> {
    let client = async_nats::ConnectOptions::new()
        .name("parley-cli")
        .connection_timeout(Duration::from_secs(5))
        .connect(parley_nats::server_urls(url))
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach NATS at {url}: {e}"))?;
    let js = parley_nats::jetstream(client.clone());
    js.query_account()
        .await
        .map_err(|e| anyhow::anyhow!("JetStream is not available at {url}: {e}"))?;
    Ok(Nats { client, js })
}

/// The stream `name`, or `None` when it does not exist (yet).
pub async fn stream(js: &jetstream::Context, name: &str) -> anyhow::Result<Option<jetstream::stream::Stream>> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(error)
                if error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(e).with_context(|| format!("reading stream {name}")),
        },
    }
}

/// `PARLEY_STREAM_REPLICAS`, 1 unless set.
pub fn replicas() -> usize {
    std::env::var("PARLEY_STREAM_REPLICAS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}
