//! Database connections and migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The fewest connections the jobs need at once: the reminder scan streams
/// on one while recording digests on another, and the flag job uses a third.
pub const MIN_CONNECTIONS: u32 = 3;

/// Opens a pool on `url`. Connections are checked before use, so a pool
/// survives a database restart.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        anyhow::bail!("invalid database URL: it must start with postgres:// or postgresql://");
    }
    let options: PgConnectOptions = url.parse().with_context(|| {
        "invalid database URL; expected postgres://USER@HOST:PORT/DATABASE".to_owned()
    })?;
    let database = options.get_database().unwrap_or("(default)").to_owned();
    PgPoolOptions::new()
        .max_connections(max_connections.max(MIN_CONNECTIONS))
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(true)
        .connect_with(options)
        .await
        .with_context(|| format!("failed to connect to database \"{database}\"; check DATABASE_URL and that PostgreSQL is running"))
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn create_if_missing(url: &str) -> anyhow::Result<()> {
    let exists = Postgres::database_exists(url)
        .await
        .context("failed to check whether the database exists; is PostgreSQL running?")?;
    if !exists {
        Postgres::create_database(url)
            .await
            .context("failed to create the database")?;
    }
    Ok(())
}

/// Drops the database named in `url`, closing its other connections, and
/// creates it again empty.
pub async fn recreate(url: &str) -> anyhow::Result<()> {
    if Postgres::database_exists(url)
        .await
        .context("failed to check whether the database exists; is PostgreSQL running?")?
    {
        Postgres::force_drop_database(url)
            .await
            .context("failed to drop the database")?;
    }
    Postgres::create_database(url)
        .await
        .context("failed to create the database")
}

/// Applies the embedded migrations that the database has not seen yet.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("failed to apply migrations")
}

/// Jobs whose scan must run on one replica at a time.
#[derive(Debug, Clone, Copy)]
pub enum JobLock {
    ReminderScan = 1,
    FlagUpdate = 2,
    SupportDigest = 3,
}

/// First key of every advisory lock the worker takes ("SS" in ASCII), so
/// its locks stand apart from any the platform takes.
const LOCK_NAMESPACE: i32 = 0x5353;

/// Takes the transaction-scoped advisory lock for `job` without waiting.
/// Returns the transaction that holds it, or `None` when another process
/// holds it. The lock ends with the transaction: on commit, on rollback,
/// or when the connection is lost, so it can never outlive its holder.
pub async fn try_job_lock(
    pool: &PgPool,
    job: JobLock,
) -> sqlx::Result<Option<sqlx::Transaction<'static, Postgres>>> {
    let mut transaction = pool.begin().await?;
    let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(job as i32)
        .fetch_one(&mut *transaction)
        .await?;
    if acquired {
        Ok(Some(transaction))
    } else {
        transaction.rollback().await?;
        Ok(None)
    }
}
