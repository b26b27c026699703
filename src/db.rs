//! Database connections and migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Opens a pool on `url`. Connections are checked before use, so a pool
/// survives a database restart.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().with_context(|| {
        "invalid database URL; expected postgres://USER@HOST:PORT/DATABASE".to_owned()
    })?;
    let database = options.get_database().unwrap_or("(default)").to_owned();
    PgPoolOptions::new()
        .max_connections(max_connections.max(2))
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

/// Applies the embedded migrations that the database has not seen yet.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("failed to apply migrations")
}
