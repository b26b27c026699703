//! The `status` command: each job's last run from `job_runs`, its next
//! scheduled run from the cron expressions, and the outbox backlog.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::Settings;
use crate::jobs::JobName;

/// Everything `status` reports, as of `now`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub now: DateTime<Utc>,
    pub jobs: Vec<JobStatus>,
    pub outbox: OutboxBacklog,
}

/// One job's schedule and latest run.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job: &'static str,
    /// The cron expression from this command's configuration, in UTC.
    pub schedule: String,
    /// The first instant after `now` that the expression matches.
    pub next_run: Option<DateTime<Utc>>,
    /// `None` when the job never ran against this database.
    pub last_run: Option<LastRun>,
}

/// The latest row of a job in `job_runs`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LastRun {
    pub run_id: i64,
    /// The instant the job ran at, which `run-once --now` can pin.
    pub clock_now: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded` or `failed`. A run whose process died stays
    /// `running`.
    pub outcome: String,
    pub counts: serde_json::Value,
    pub error: Option<String>,
}

/// Digests waiting in the outbox.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxBacklog {
    /// Recorded and not yet sent, including those due later.
    pub pending: i64,
    /// Pending digests whose next attempt is due and that no sender has leased.
    pub due_now: i64,
    /// Pending digests leased by a sender right now.
    pub being_sent: i64,
    /// Digests that failed for good, over the whole outbox.
    pub failed: i64,
    /// The earliest next attempt among the digests due now.
    pub oldest_due_at: Option<DateTime<Utc>>,
}

/// Loads the status at `now` for the jobs that `settings` schedules.
pub async fn load(
    pool: &PgPool,
    settings: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<Status> {
    let last_runs: Vec<(String, LastRun)> = sqlx::query_as(
        "SELECT DISTINCT ON (job) job, id AS run_id, clock_now, started_at, finished_at,
                outcome::text AS outcome, counts, error
         FROM job_runs
         ORDER BY job, started_at DESC, id DESC",
    )
    .fetch_all(pool)
    .await
    .context("failed to read job_runs")?
    .into_iter()
    .map(|row: LastRunRow| (row.job, row.run))
    .collect();

    let mut jobs = Vec::new();
    for job in [JobName::Reminders, JobName::Flags, JobName::SupportDigest] {
        let (key, expression) = match job {
            JobName::Reminders => ("schedule.reminders", Some(&settings.schedule.reminders)),
            JobName::Flags => ("schedule.flags", Some(&settings.schedule.flags)),
            // The daemon does not schedule the support digest without recipients.
            JobName::SupportDigest => (
                "support_digest.schedule",
                Some(&settings.support_digest.schedule)
                    .filter(|_| !settings.support_digest.recipients.0.is_empty()),
            ),
        };
        let next = match expression {
            Some(expression) => next_run(expression, now)
                .with_context(|| format!("invalid cron expression \"{expression}\" in {key}"))?,
            None => None,
        };
        jobs.push(JobStatus {
            job: job.as_str(),
            schedule: expression.map_or_else(|| "off".to_owned(), Clone::clone),
            next_run: next,
            last_run: last_runs
                .iter()
                .find(|(name, _)| name == job.as_str())
                .map(|(_, run)| run.clone()),
        });
    }

    let outbox: OutboxBacklog = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= $1
                                   AND (lease_until IS NULL OR lease_until <= $1)) AS due_now,
                count(*) FILTER (WHERE status = 'pending' AND lease_until > $1) AS being_sent,
                count(*) FILTER (WHERE status = 'failed') AS failed,
                min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at <= $1
                                   AND (lease_until IS NULL OR lease_until <= $1)) AS oldest_due_at
         FROM reminders",
    )
    .bind(now)
    .fetch_one(pool)
    .await
    .context("failed to read the outbox")?;

    Ok(Status { now, jobs, outbox })
}

#[derive(sqlx::FromRow)]
struct LastRunRow {
    job: String,
    #[sqlx(flatten)]
    run: LastRun,
}

/// Returns the first instant strictly after `after` that the cron
/// expression matches, as the daemon's scheduler reads it.
pub fn next_run(expression: &str, after: DateTime<Utc>) -> anyhow::Result<Option<DateTime<Utc>>> {
    let cron = crate::daemon::parse_schedule(expression)?;
    // croner 3 searches up to the year 5000 and returns an error for an
    // expression that never matches again, such as 30 February.
    // Cron instants are whole seconds; croner would keep the fraction.
    let after = after.trunc_subsecs(0);
    Ok(cron.find_next_occurrence(&after, false).ok())
}

/// Writes the status as two plain-text tables, then each job's counts or
/// error on a line of its own.
pub fn write_table(out: &mut impl Write, status: &Status) -> anyhow::Result<()> {
    let header = ["JOB", "LAST RUN", "OUTCOME", "DURATION", "NEXT RUN"];
    let rows: Vec<[String; 5]> = status
        .jobs
        .iter()
        .map(|job| {
            let (started, outcome, duration) = match &job.last_run {
                Some(run) => (
                    format_time(run.started_at),
                    run.outcome.clone(),
                    run.finished_at
                        .map(|end| format!("{:.1} s", seconds_between(run.started_at, end)))
                        .unwrap_or_default(),
                ),
                None => ("never".to_owned(), String::new(), String::new()),
            };
            let next = job.next_run.map_or_else(|| "never".to_owned(), format_time);
            [job.job.to_owned(), started, outcome, duration, next]
        })
        .collect();
    crate::report::write_columns(out, &header, &rows)?;

    for job in &status.jobs {
        let Some(run) = &job.last_run else { continue };
        match &run.error {
            Some(error) => writeln!(out, "{} error: {}", job.job, printable(error))?,
            None => writeln!(out, "{} counts: {}", job.job, summarize_counts(&run.counts))?,
        }
    }
    writeln!(out)?;

    let outbox = &status.outbox;
    let header = [
        "OUTBOX",
        "PENDING",
        "DUE NOW",
        "BEING SENT",
        "FAILED",
        "OLDEST DUE",
    ];
    let row = [
        "digests".to_owned(),
        outbox.pending.to_string(),
        outbox.due_now.to_string(),
        outbox.being_sent.to_string(),
        outbox.failed.to_string(),
        outbox.oldest_due_at.map(format_time).unwrap_or_default(),
    ];
    crate::report::write_columns(out, &header, &[row])?;
    Ok(())
}

/// Writes the status as one JSON object.
pub fn write_json(out: &mut impl Write, status: &Status) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, status)?;
    writeln!(out)?;
    Ok(())
}

/// Flattens counts into `key=value` pairs, with nested keys joined by dots
/// and zeros, `false` and empty maps left out.
fn summarize_counts(counts: &serde_json::Value) -> String {
    fn walk(prefix: &str, value: &serde_json::Value, pairs: &mut Vec<String>) {
        let join = |key: &str| {
            if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            }
        };
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    walk(&join(key), inner, pairs);
                }
            }
            serde_json::Value::Null | serde_json::Value::Bool(false) => {}
            serde_json::Value::Number(number) if number.as_f64() == Some(0.0) => {}
            other => pairs.push(format!("{prefix}={other}")),
        }
    }
    let mut pairs = Vec::new();
    walk("", counts, &mut pairs);
    if pairs.is_empty() {
        "all zero".to_owned()
    } else {
        pairs.join(" ")
    }
}

fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn seconds_between(start: DateTime<Utc>, end: DateTime<Utc>) -> f64 {
    (end - start).num_milliseconds() as f64 / 1000.0
}

/// Replaces control characters, such as the line breaks of a database
/// error, so the error stays on one line.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn next_run_follows_default_schedules() {
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 19, 7, 30).unwrap();
        let reminders = next_run("0 */15 * * * *", now).unwrap();
        let flags = next_run("0 5 * * * *", now).unwrap();
        assert_eq!(
            reminders,
            Utc.with_ymd_and_hms(2026, 12, 4, 19, 15, 0).single()
        );
        assert_eq!(flags, Utc.with_ymd_and_hms(2026, 12, 4, 20, 5, 0).single());
    }

    #[test]
    fn next_run_excludes_current_instant() {
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 19, 15, 0).unwrap();
        let next = next_run("0 */15 * * * *", now).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 12, 4, 19, 30, 0).single());
    }

    #[test]
    fn next_run_drops_fraction_of_second() {
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 19, 7, 30).unwrap()
            + chrono::Duration::milliseconds(500);
        let next = next_run("0 */15 * * * *", now).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 12, 4, 19, 15, 0).single());
    }

    #[test]
    fn next_run_rejects_five_fields() {
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 19, 0, 0).unwrap();
        assert!(next_run("*/15 * * * *", now).is_err());
    }

    #[test]
    fn counts_summary_skips_zeros() {
        let counts = serde_json::json!({
            "plan": {"scan_skipped": false, "digests_planned": 3, "sessions_by_stage": {"1": 2, "2": 0}},
            "delivery": {"digests_sent": 0, "sessions_by_stage": {}},
        });
        assert_eq!(
            summarize_counts(&counts),
            "plan.digests_planned=3 plan.sessions_by_stage.1=2"
        );
        assert_eq!(
            summarize_counts(&serde_json::json!({"opened": {}})),
            "all zero"
        );
    }
}
