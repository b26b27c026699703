//! The `job_runs` table: one row per job tick, with its outcome and counts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Records the start of a run of `job` and returns its id.
pub async fn start(pool: &PgPool, job: &str, now: DateTime<Utc>) -> sqlx::Result<i64> {
    sqlx::query_scalar("INSERT INTO job_runs (job, clock_now) VALUES ($1, $2) RETURNING id")
        .bind(job)
        .bind(now)
        .fetch_one(pool)
        .await
}

/// Records a successful end with the run's counts.
pub async fn succeed(pool: &PgPool, run_id: i64, counts: &impl Serialize) -> sqlx::Result<()> {
    let counts = serde_json::to_value(counts).unwrap_or_default();
    sqlx::query(
        "UPDATE job_runs SET finished_at = clock_timestamp(), outcome = 'succeeded', counts = $2 WHERE id = $1",
    )
    .bind(run_id)
    .bind(counts)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records a failed end with the error's cause chain.
pub async fn fail(pool: &PgPool, run_id: i64, error: &anyhow::Error) -> sqlx::Result<()> {
    sqlx::query("UPDATE job_runs SET finished_at = clock_timestamp(), outcome = 'failed', error = $2 WHERE id = $1")
        .bind(run_id)
        .bind(format!("{error:#}"))
        .execute(pool)
        .await
        .map(|_| ())
}
