//! Prometheus metrics, kept in a registry that the application owns.
//!
//! Each [`Metrics`] has its own registry, so workers built in one process
//! (the tests build many) never share counts. Counters move as events
//! happen: a job run ends, a digest is sent, retried or failed. Gauges
//! describe the database and are refreshed once at the end of each tick
//! by [`Metrics::refresh_gauges`], so a scrape only encodes values in
//! memory and never queries the database.
//!
//! Labels carry job names, outcomes, flag kinds and reminder stages only:
//! never a name, an email address, free text, or a provider or member id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sqlx::PgPool;

use crate::flags::FlagKind;
use crate::jobs::JobName;
use crate::policy::ReminderPolicy;

/// The `Content-Type` of [`Metrics::encode`]'s output: the Prometheus
/// text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds, in seconds, of the job run duration buckets. An idle tick
/// takes milliseconds; a reminder tick that delivers thousands of digests,
/// or waits on a slow SMTP server, takes minutes.
const DURATION_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Label value of the sessions past `flags.stale_after`.
const ESCALATED: &str = "escalated";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobRunLabels {
    job: &'static str,
    /// `succeeded` or `failed`, as in the `job_runs` table.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    /// The reminder stage reached (`0` to the number of stages), or
    /// `escalated`.
    stage: String,
}

/// The outcome of one delivery attempt of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailOutcome {
    /// The transport accepted the message.
    Sent,
    /// A transient failure, so the digest is tried again later.
    Retried,
    /// A permanent failure, or a transient one with no attempts left. The
    /// digest is marked `failed`.
    Failed,
}

/// Handles on every metric, and the registry that encodes them. Clones
/// share the same values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    job_runs: Family<JobRunLabels, Counter>,
    job_run_duration: Family<JobRunLabels, Histogram, fn() -> Histogram>,
    job_last_success: Family<JobLabels, Gauge>,
    emails_sent: Counter,
    emails_retried: Counter,
    emails_failed: Counter,
    outbox_backlog: Gauge,
    open_flags: Family<KindLabels, Gauge>,
    overdue_sessions: Family<StageLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates a registry with every metric registered under the
    /// `session_steward_` prefix.
    pub fn new() -> Self {
        let mut metrics = Self {
            // Replaced below by the registry that contains every handle.
            registry: Arc::default(),
            job_runs: Family::default(),
            job_run_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            job_last_success: Family::default(),
            emails_sent: Counter::default(),
            emails_retried: Counter::default(),
            emails_failed: Counter::default(),
            outbox_backlog: Gauge::default(),
            open_flags: Family::default(),
            overdue_sessions: Family::default(),
        };
        let mut registry = Registry::with_prefix("session_steward");
        metrics.register_all(&mut registry);
        metrics.registry = Arc::new(registry);

        // Counters start at zero for every job and outcome, so rate() and
        // increase() see the first run.
        for job in [JobName::Reminders, JobName::Flags, JobName::SupportDigest] {
            for outcome in ["succeeded", "failed"] {
                let labels = JobRunLabels {
                    job: job.as_str(),
                    outcome,
                };
                let _ = metrics.job_runs.get_or_create(&labels);
                let _ = metrics.job_run_duration.get_or_create(&labels);
            }
        }
        metrics
    }

    fn register_all(&self, registry: &mut Registry) {
        registry.register(
            "job_runs",
            "Job runs (ticks) that ended, by job and outcome",
            self.job_runs.clone(),
        );
        registry.register_with_unit(
            "job_run_duration",
            "Wall-clock duration of job runs, by job and outcome",
            Unit::Seconds,
            self.job_run_duration.clone(),
        );
        registry.register_with_unit(
            "job_last_success_timestamp",
            "Unix time at which the latest successful run of each job ended",
            Unit::Seconds,
            self.job_last_success.clone(),
        );
        registry.register(
            "emails_sent",
            "Digests accepted by the email transport",
            self.emails_sent.clone(),
        );
        registry.register(
            "emails_retried",
            "Digest deliveries that failed transiently and will be retried",
            self.emails_retried.clone(),
        );
        registry.register(
            "emails_failed",
            "Digests marked failed: a permanent failure, or a transient one with no attempts left",
            self.emails_failed.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Digests recorded and waiting to be sent (status pending), at the end of the latest tick",
            self.outbox_backlog.clone(),
        );
        registry.register(
            "open_flags",
            "Open flags on support's review list by kind, at the end of the latest tick",
            self.open_flags.clone(),
        );
        registry.register(
            "overdue_sessions",
            "Overdue scheduled sessions by reminder stage reached, or escalated, at the end of the latest tick",
            self.overdue_sessions.clone(),
        );
    }

    /// Counts one run of `job` that took `duration`, and records the time
    /// of a successful one.
    pub fn observe_job_run(&self, job: JobName, succeeded: bool, duration: Duration) {
        let labels = JobRunLabels {
            job: job.as_str(),
            outcome: if succeeded { "succeeded" } else { "failed" },
        };
        self.job_runs.get_or_create(&labels).inc();
        self.job_run_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        if succeeded {
            self.job_last_success
                .get_or_create(&JobLabels { job: job.as_str() })
                .set(Utc::now().timestamp());
        }
    }

    /// Counts one delivery attempt's outcome.
    pub fn count_email(&self, outcome: EmailOutcome) {
        let counter = match outcome {
            EmailOutcome::Sent => &self.emails_sent,
            EmailOutcome::Retried => &self.emails_retried,
            EmailOutcome::Failed => &self.emails_failed,
        };
        counter.inc();
    }

    /// Sets the gauges from one query: digests pending in the outbox,
    /// open flags by kind, and overdue scheduled sessions by the stage that
    /// `policy` gives them at `now`.
    ///
    /// Each part reads a partial index only: `reminders_due` (pending
    /// digests), `flags_one_open_per_session_kind` (open flags) and
    /// `sessions_scheduled_by_end` (scheduled sessions that ended before
    /// the overdue cutoff, which the flag job's stale-hold check reads
    /// too). Kinds and stages with no rows are set to zero.
    pub async fn refresh_gauges(
        &self,
        pool: &PgPool,
        policy: &ReminderPolicy,
        now: DateTime<Utc>,
    ) -> sqlx::Result<()> {
        let buckets = OverdueBuckets::new(policy, now);
        let rows: Vec<(String, Option<i32>, i64)> = sqlx::query_as(
            "SELECT 'outbox_backlog', NULL::integer, count(*) FROM reminders WHERE status = 'pending'
             UNION ALL
             SELECT kind::text, NULL, count(*) FROM flags WHERE resolved_at IS NULL GROUP BY kind
             UNION ALL
             SELECT 'overdue_sessions', width_bucket(ends_at, $2::timestamptz[]), count(*)
             FROM sessions WHERE status = 'scheduled' AND ends_at < $1
             GROUP BY 2",
        )
        .bind(policy.overdue_cutoff(now))
        .bind(&buckets.thresholds)
        .fetch_all(pool)
        .await?;

        let mut backlog = 0;
        let mut flags: HashMap<&str, i64> = HashMap::new();
        let mut overdue: HashMap<String, i64> = HashMap::new();
        for (name, bucket, count) in &rows {
            match (name.as_str(), bucket) {
                ("outbox_backlog", _) => backlog = *count,
                ("overdue_sessions", Some(bucket)) => {
                    *overdue.entry(buckets.label(*bucket)).or_default() += count;
                }
                (kind, _) => {
                    flags.insert(kind, *count);
                }
            }
        }

        self.outbox_backlog.set(backlog);
        for kind in FlagKind::ALL {
            let open = flags.get(kind.as_str()).copied().unwrap_or(0);
            self.open_flags
                .get_or_create(&KindLabels {
                    kind: kind.as_str(),
                })
                .set(open);
        }
        for stage in buckets.labels() {
            let sessions = overdue.get(&stage).copied().unwrap_or(0);
            self.overdue_sessions
                .get_or_create(&StageLabels { stage })
                .set(sessions);
        }
        Ok(())
    }

    /// Encodes every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The age buckets of overdue sessions, which follow the reminder stages:
/// stage N contains the sessions whose age passed the Nth stage but not the
/// next, and `escalated` those past `stale_after`. With the default stages
/// (5, 8 and 12 days, escalation at 14) that is 1 for more than 5 up to 8
/// days, 2 for up to 12 days, 3 for up to 14 days, and `escalated` beyond.
/// Stage 0, overdue but before the first stage, exists only when the first
/// stage is later than `reminder_after`. A session exactly at a boundary
/// stays in the lower bucket, as in [`ReminderPolicy::standing`].
struct OverdueBuckets {
    /// End-time cutoffs, earliest first, for PostgreSQL's `width_bucket`:
    /// the escalation cutoff, then each stage's cutoff from the last stage
    /// to the first. Bucket `k` contains the end times from cutoff `k` up to
    /// the next one, and bucket 0 those before the escalation cutoff.
    thresholds: Vec<DateTime<Utc>>,
    stages: usize,
    has_stage_zero: bool,
}

impl OverdueBuckets {
    fn new(policy: &ReminderPolicy, now: DateTime<Utc>) -> Self {
        let mut thresholds = vec![policy.escalation_cutoff(now)];
        thresholds.extend(policy.stages.iter().rev().map(|stage| now - *stage));
        Self {
            thresholds,
            stages: policy.stages.len(),
            has_stage_zero: policy
                .stages
                .first()
                .is_some_and(|first| *first > policy.reminder_after),
        }
    }

    /// Returns the label of `width_bucket`'s result `bucket`.
    fn label(&self, bucket: i32) -> String {
        let stage = usize::try_from(bucket).unwrap_or(0);
        if stage == 0 {
            ESCALATED.to_owned()
        } else {
            (self.stages + 1).saturating_sub(stage).to_string()
        }
    }

    /// Returns every label the gauge reports, zero or not.
    fn labels(&self) -> Vec<String> {
        let first = if self.has_stage_zero { 0 } else { 1 };
        let mut labels: Vec<String> = (first..=self.stages)
            .map(|stage| stage.to_string())
            .collect();
        labels.push(ESCALATED.to_owned());
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn policy(reminder_after_days: i64) -> ReminderPolicy {
        ReminderPolicy {
            reminder_after: Duration::days(reminder_after_days),
            stages: vec![Duration::days(5), Duration::days(8), Duration::days(12)],
            stale_after: Duration::days(14),
        }
    }

    #[test]
    fn buckets_follow_stages() {
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 18, 0, 0).unwrap();
        let buckets = OverdueBuckets::new(&policy(5), now);
        assert_eq!(
            buckets.thresholds,
            vec![
                now - Duration::days(14),
                now - Duration::days(12),
                now - Duration::days(8),
                now - Duration::days(5),
            ]
        );
        let labels: Vec<String> = (0..=3).map(|bucket| buckets.label(bucket)).collect();
        assert_eq!(labels, ["escalated", "3", "2", "1"]);
        assert_eq!(buckets.labels(), ["1", "2", "3", "escalated"]);
    }

    #[test]
    fn stage_zero_only_before_first_stage() {
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 18, 0, 0).unwrap();
        let buckets = OverdueBuckets::new(&policy(3), now);
        assert_eq!(buckets.label(4), "0");
        assert_eq!(buckets.labels(), ["0", "1", "2", "3", "escalated"]);
    }

    #[test]
    fn registries_do_not_share_counts() {
        let first = Metrics::new();
        let second = Metrics::new();
        first.count_email(EmailOutcome::Sent);
        let first_text = first.encode().unwrap();
        let second_text = second.encode().unwrap();
        assert!(
            first_text.contains("session_steward_emails_sent_total 1\n"),
            "{first_text}"
        );
        assert!(
            second_text.contains("session_steward_emails_sent_total 0\n"),
            "{second_text}"
        );
    }
}
