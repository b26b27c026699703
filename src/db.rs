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

/// Differences between the migrations recorded in the database and the embedded ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Embedded migrations the database has not applied successfully.
    pub missing: Vec<i64>,
    /// Applied migrations whose file changed since they were applied.
    pub modified: Vec<i64>,
    /// Applied migrations this binary does not have, from a newer release.
    pub unknown: Vec<i64>,
}

/// Compares `_sqlx_migrations` with the embedded migrations. A database
/// without that table has applied none.
pub async fn migration_status(pool: &PgPool) -> anyhow::Result<MigrationStatus> {
    let applied: Vec<(i64, bool, Vec<u8>)> = match sqlx::query_as(
        "SELECT version, success, checksum FROM _sqlx_migrations",
    )
    .fetch_all(pool)
    .await
    {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNDEFINED_TABLE) => {
            Vec::new()
        }
        Err(error) => {
            return Err(anyhow::Error::new(error).context(
                    "failed to read _sqlx_migrations; the database role needs SELECT on it (see deploy/least-privilege.sql)",
                ));
        }
    };

    let mut status = MigrationStatus::default();
    for migration in MIGRATOR.iter() {
        match applied
            .iter()
            .find(|(version, ..)| *version == migration.version)
        {
            Some((_, true, checksum)) if *checksum != *migration.checksum => {
                status.modified.push(migration.version);
            }
            Some((_, true, _)) => {}
            _ => status.missing.push(migration.version),
        }
    }
    status.unknown = applied
        .iter()
        .map(|(version, ..)| *version)
        .filter(|version| {
            !MIGRATOR
                .iter()
                .any(|migration| migration.version == *version)
        })
        .collect();
    Ok(status)
}

/// SQLSTATE of a reference to a table that does not exist.
const UNDEFINED_TABLE: &str = "42P01";

/// Fails with a clear message when the schema is missing or behind, so
/// the worker never runs against tables it does not expect.
pub async fn ensure_migrated(pool: &PgPool) -> anyhow::Result<()> {
    let missing = migration_status(pool).await?.missing.len();
    if missing > 0 {
        anyhow::bail!(
            "the database is missing {missing} migration(s); run `session-steward migrate` first, as the owner of the tables"
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
