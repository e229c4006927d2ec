//! Parley's Postgres query model: the one place that knows the schema. The persistence worker
//! writes through it (idempotent batch writes) and gateways read through it (membership, lists,
//! history). Queries are compile-checked against `migrations/` (see `.sqlx/`).

mod reads;
mod transcripts;
mod writes;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, migrate::Migrator};

pub use reads::{ConversationAccess, HistoryPage, HistoryQuery};
pub use transcripts::{CheckReport, StoredEntry, StoredKind, TranscriptHeader};
pub use writes::{
    BatchWritten, ChainHead, ClosedOutcome, Heads, Link, MESSAGES_COPY, MessageRow, ReadMarkRow, messages_copy_data,
};

/// The schema, embedded from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A handle on the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects lazily: the pool opens connections on first use, so a process can start while
    /// Postgres is still coming up, and `/readyz` tells when it answers.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations. sqlx holds a Postgres advisory lock while it migrates, so
    /// several workers starting at once apply each migration exactly once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Whether Postgres answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query_scalar!("SELECT 1 AS \"one!\"")
            .fetch_one(&self.pool)
            .await
            .is_ok()
    }
}
