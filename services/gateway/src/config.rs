//! The gateway's configuration, read once from the environment and passed down explicitly.

use std::net::SocketAddr;
use std::path::PathBuf;

use parley_service::config::{self, CommonConfig, ConfigError};
use parley_transcript::keys::TranscriptKeys;

use crate::auth::{AuthConfig, PublicKey};
use crate::limits::LimitConfig;

#[derive(Clone)]
pub struct Config {
    /// `NATS_URL` (read with `PARLEY_STREAM_REPLICAS` and `PARLEY_LOG_FORMAT` as every process
    /// reads them: `CommonConfig`)
    pub nats_url: String,
    /// `DATABASE_URL`
    pub database_url: String,
    /// `PARLEY_JWT_SECRET`, `PARLEY_JWT_PUBLIC_KEYS`, `PARLEY_JWKS_URL` (at least one) and
    /// `PARLEY_JWT_ISSUER`, `PARLEY_JWT_AUDIENCE`: how tokens are verified.
    pub auth: AuthConfig,
    /// `PARLEY_LISTEN`: where HTTP and Socket.IO are served.
    pub listen: SocketAddr,
    /// `PARLEY_STREAM_REPLICAS`: replicas of the streams this gateway creates (default 1).
    pub stream_replicas: usize,
    /// `PARLEY_DB_POOL_SIZE`: Postgres connections (default 16).
    pub db_pool_size: u32,
    /// `PARLEY_SEND_RATE`, `PARLEY_SEND_BURST`, `PARLEY_EVENT_RATE`,
    /// `PARLEY_MAX_SOCKETS_PER_USER` (the contract's defaults; `0` turns one off).
    pub limits: LimitConfig,
    /// `PARLEY_TRANSCRIPT_KEY` (required: base64 of the 32-byte Ed25519 seed that signs
    /// transcript checkpoints) and `PARLEY_TRANSCRIPT_RETIRED_KEYS` (earlier public keys, still
    /// listed for verifiers).
    pub transcript_keys: TranscriptKeys,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &self.nats_url)
            .field("listen", &self.listen)
            .field("limits", &self.limits)
            .field("auth", &self.auth)
            .field("transcript_keys", &self.transcript_keys)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env()?;
        let auth = auth()?;
        Ok(Self {
            nats_url: common.nats_url,
            database_url: config::or_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/parley"),
            auth,
            listen: config::parsed("PARLEY_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            stream_replicas: common.stream_replicas,
            db_pool_size: config::parsed("PARLEY_DB_POOL_SIZE", 16u32)?,
            limits: LimitConfig {
                send_rate: config::parsed("PARLEY_SEND_RATE", LimitConfig::DEFAULT.send_rate)?,
                send_burst: config::parsed("PARLEY_SEND_BURST", LimitConfig::DEFAULT.send_burst)?,
                event_rate: config::parsed("PARLEY_EVENT_RATE", LimitConfig::DEFAULT.event_rate)?,
                max_sockets_per_user: config::parsed(
                    "PARLEY_MAX_SOCKETS_PER_USER",
                    LimitConfig::DEFAULT.max_sockets_per_user,
                )?,
            },
            // Read last: a malformed value above is named first, as before this key existed.
            transcript_keys: transcript_keys()?,
        })
    }
}

/// The transcript keys, each variable named when its value cannot be used.
fn transcript_keys() -> Result<TranscriptKeys, ConfigError> {
    let seed = config::required("PARLEY_TRANSCRIPT_KEY")?;
    let retired = config::optional("PARLEY_TRANSCRIPT_RETIRED_KEYS");
    TranscriptKeys::parse(&seed, retired.as_deref()).map_err(|error| ConfigError {
        variable: match error {
            parley_transcript::keys::KeyError::BadSeed => "PARLEY_TRANSCRIPT_KEY",
            parley_transcript::keys::KeyError::BadPublicKey(_) => "PARLEY_TRANSCRIPT_RETIRED_KEYS",
        },
        problem: error.to_string(),
    })
}

/// How tokens are verified; at least one way must be configured.
fn auth() -> Result<AuthConfig, ConfigError> {
    let mut auth = AuthConfig::none();
    auth.secret = config::optional("PARLEY_JWT_SECRET");
    if let Some(path) = config::optional("PARLEY_JWT_PUBLIC_KEYS").map(PathBuf::from) {
        let problem = |problem: String| ConfigError {
            variable: "PARLEY_JWT_PUBLIC_KEYS",
            problem: format!("{}: {problem}", path.display()),
        };
        let text = std::fs::read(&path).map_err(|e| problem(format!("cannot read it: {e}")))?;
        auth.public_keys = PublicKey::parse_pem(&text).map_err(problem)?;
    }
    if let Some(raw) = config::optional("PARLEY_JWKS_URL") {
        let url = reqwest::Url::parse(&raw)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http") && url.has_host())
            .ok_or_else(|| ConfigError {
                variable: "PARLEY_JWKS_URL",
                problem: format!("{raw:?} is not an http(s) URL"),
            })?;
        auth.jwks_url = Some(url);
    }
    auth.issuer = config::optional("PARLEY_JWT_ISSUER");
    auth.audience = config::optional("PARLEY_JWT_AUDIENCE");
    if !auth.can_verify() {
        return Err(ConfigError {
            variable: "PARLEY_JWT_SECRET",
            problem:
                "must be set, or PARLEY_JWT_PUBLIC_KEYS or PARLEY_JWKS_URL: the gateway needs a way to verify tokens"
                    .into(),
        });
    }
    Ok(auth)
}
