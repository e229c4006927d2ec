//! The gateway's configuration, read once from the environment and passed down explicitly.

use std::net::SocketAddr;

use parley_service::config::{self, ConfigError};

#[derive(Clone)]
pub struct Config {
    /// `NATS_URL`
    pub nats_url: String,
    /// `DATABASE_URL`
    pub database_url: String,
    /// `PARLEY_JWT_SECRET`: the HS256 key tokens are signed with. Required.
    pub jwt_secret: String,
    /// `PARLEY_LISTEN`: where HTTP and Socket.IO are served.
    pub listen: SocketAddr,
    /// `PARLEY_STREAM_REPLICAS`: replicas of the streams this gateway creates (default 1).
    pub stream_replicas: usize,
    /// `PARLEY_DB_POOL_SIZE`: Postgres connections (default 16).
    pub db_pool_size: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &self.nats_url)
            .field("listen", &self.listen)
            .field("jwt_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let jwt_secret = config::required("PARLEY_JWT_SECRET")?;
        Ok(Self {
            nats_url: config::or_default("NATS_URL", "nats://127.0.0.1:4222"),
            database_url: config::or_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/parley"),
            jwt_secret,
            listen: config::parsed("PARLEY_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            stream_replicas: config::parsed("PARLEY_STREAM_REPLICAS", 1usize)?,
            db_pool_size: config::parsed("PARLEY_DB_POOL_SIZE", 16u32)?,
        })
    }
}
