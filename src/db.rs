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

/// Opens a second, small pool on the same database as `pool`, for health
/// checks, so a check never queues behind the jobs' queries. It connects
/// on first use. While the database is unreachable, acquiring a
/// connection retries until the caller's own timeout gives up.
pub fn probe_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(PROBE_CONNECTIONS)
        .test_before_acquire(true)
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// Connections of a [`probe_pool`]: one for the probe, one spare for an
/// overlapping probe.
const PROBE_CONNECTIONS: u32 = 2;

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

/// Counts the embedded migrations that the database has not applied
/// successfully. A database without sqlx's `_sqlx_migrations` table has
/// applied none; any other error, such as a lost connection, is returned.
pub async fn pending_migrations(pool: &PgPool) -> sqlx::Result<usize> {
    let applied: Vec<i64> = match sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    {
        Ok(applied) => applied,
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNDEFINED_TABLE) => {
            Vec::new()
        }
        Err(error) => return Err(error),
    };
    Ok(MIGRATOR
        .iter()
        .filter(|migration| !applied.contains(&migration.version))
        .count())
}

/// SQLSTATE of "relation does not exist".
const UNDEFINED_TABLE: &str = "42P01";

/// Fails with a clear message when the schema is missing or behind, so
/// the daemon never runs against tables it does not expect.
pub async fn ensure_migrated(pool: &PgPool) -> anyhow::Result<()> {
    let missing = pending_migrations(pool)
        .await
        .context("failed to read the applied migrations")?;
    if missing > 0 {
        anyhow::bail!(
            "the database is missing {missing} migration(s); run `session-steward migrate` first"
        );
    }
    Ok(())
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
