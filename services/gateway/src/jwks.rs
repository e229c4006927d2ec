//! The identity provider's public keys, from its JWKS (`PARLEY_JWKS_URL`), kept fresh without a
//! restart: fetched at start, again on a schedule, and again when a token names a `kid` the
//! cached set does not hold (a rotation), at most once per `jwks_min_refetch` so that tokens with
//! made-up `kid`s cannot turn the gateway into a load generator against the provider. A fetch
//! that fails keeps the last good keys, and is logged and counted
//! (`parley_gateway_jwks_fetches_total{result}`): an identity provider's outage must not log
//! everyone out.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use parking_lot::RwLock;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::public_keys::PublicKey;

/// How long one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read; a provider's is a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a fetch failed, for the log.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("document over {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS: {0}")]
    NotJwks(#[from] serde_json::Error),
    #[error("holds no RSA, EC P-256 or Ed25519 signing key")]
    NoKeys,
}

/// The cached keys of one JWKS URL.
pub(crate) struct Jwks {
    url: reqwest::Url,
    client: reqwest::Client,
    keys: RwLock<Arc<Vec<PublicKey>>>,
    /// When the last fetch started; held while fetching, so concurrent unknown `kid`s wait for
    /// one fetch instead of starting their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
}

impl Jwks {
    pub(crate) fn new(url: reqwest::Url, min_refetch: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent("parley-gateway")
            .build()
            .expect("a TLS client with built-in roots builds");
        Self {
            url,
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refetch,
        }
    }

    /// The keys of the last good fetch (none before one succeeded).
    pub(crate) fn keys(&self) -> Arc<Vec<PublicKey>> {
        self.keys.read().clone()
    }

    /// Fetches the JWKS now; on success its keys replace the cached ones. Whether it succeeded.
    pub(crate) async fn refresh(&self) -> bool {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await
    }

    /// Fetches again for a token whose `kid` is not cached, unless a fetch started less than
    /// `min_refetch` ago. A fetch in flight is waited for, so the caller finds its keys.
    pub(crate) async fn refetch_for_unknown_kid(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch_and_store().await;
    }

    async fn fetch_and_store(&self) -> bool {
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS fetched");
                metrics::counter!("parley_gateway_jwks_fetches_total", "result" => "ok").increment(1);
                metrics::gauge!("parley_gateway_jwks_keys").set(keys.len() as f64);
                *self.keys.write() = Arc::new(keys);
                true
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "cannot fetch the JWKS; keeping the last good keys");
                metrics::counter!("parley_gateway_jwks_fetches_total", "result" => "failed").increment(1);
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<PublicKey>, FetchError> {
        let mut response = self.client.get(self.url.clone()).send().await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)?;
        let keys = PublicKey::from_jwks(&set);
        if keys.is_empty() {
            return Err(FetchError::NoKeys);
        }
        Ok(keys)
    }

    /// Fetches again every `every` until `shutdown`.
    pub(crate) fn start_refreshing(self: Arc<Self>, every: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                self.refresh().await;
            }
        })
    }
}
