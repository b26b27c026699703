//! The jobs as units of work: each `run_*` method performs one tick at a
//! given instant, records it in `job_runs` and returns what it did. The
//! daemon, `run-once`, the demo and the tests all call these.

use std::fmt;
use std::future::Future;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tracing::{Instrument, error, info, info_span, warn};

use crate::compose::Composer;
use crate::config::Settings;
use crate::email::Transport;
use crate::flags::{FlagCounts, Flagger};
use crate::metrics::Metrics;
use crate::outbox::{Deliverer, DeliveryCounts};
use crate::policy::{ReminderPolicy, SendWindow};
use crate::reminders::{PlanCounts, Planner};
use crate::shutdown::Shutdown;
use crate::support_digest::{self, RecordCounts};

/// The jobs the scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JobName {
    Reminders,
    Flags,
    SupportDigest,
}

impl JobName {
    pub fn as_str(self) -> &'static str {
        match self {
            JobName::Reminders => "reminders",
            JobName::Flags => "flags",
            JobName::SupportDigest => "support_digest",
        }
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Counts from one tick of the reminder job: planning, then delivery.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReminderRun {
    pub plan: PlanCounts,
    pub delivery: DeliveryCounts,
}

/// Counts from one tick of the support digest job: recording, then
/// delivery. Delivery is the outbox's whole pass, so it also counts any
/// provider digests that were due at the same moment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SupportDigestRun {
    pub record: RecordCounts,
    pub delivery: DeliveryCounts,
}

/// Everything a tick needs, built once at start-up.
pub struct Worker {
    pub pool: PgPool,
    planner: Planner,
    deliverer: Deliverer,
    flagger: Flagger,
    support_digest: support_digest::Recorder,
    metrics: Metrics,
}

impl Worker {
    pub fn new(pool: PgPool, settings: &Settings, transport: Transport) -> anyhow::Result<Self> {
        let policy = ReminderPolicy::from_settings(settings);
        let metrics = Metrics::new();
        let mut deliverer = Deliverer::new(
            Composer::new(settings).context("failed to load the email templates")?,
            transport,
            settings.reminders.clone(),
            SendWindow::from_settings(settings),
        );
        deliverer.metrics = metrics.clone();
        Ok(Self {
            pool,
            planner: Planner {
                policy: policy.clone(),
                window: SendWindow::from_settings(settings),
            },
            deliverer,
            flagger: Flagger {
                policy,
                period_ending_within: settings.flags.period_ending_within.to_chrono(),
            },
            support_digest: support_digest::Recorder::from_settings(settings)?,
            metrics,
        })
    }

    /// Returns the support digest's cron expression, or `None` when the job
    /// is off because `support_digest.recipients` is empty.
    pub fn support_digest_schedule(&self) -> Option<&str> {
        self.support_digest.schedule()
    }

    /// Returns this worker's metrics, which its ticks update.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Makes delivery stop between messages once `shutdown` is requested.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.deliverer.shutdown = shutdown;
        self
    }

    /// Hands back the digests claimed by delivery still in progress; see
    /// [`Deliverer::release_all_claims`].
    pub async fn release_claims(&self) -> sqlx::Result<u64> {
        self.deliverer.release_all_claims(&self.pool).await
    }

    /// Plans the digests due at `now`, then delivers every due digest.
    pub async fn run_reminders(&self, now: DateTime<Utc>) -> anyhow::Result<ReminderRun> {
        self.record(JobName::Reminders, now, async {
            let plan = self
                .planner
                .run_once(&self.pool, now)
                .await
                .context("reminder scan failed")?;
            let delivery = self
                .deliverer
                .run_once(&self.pool, now)
                .await
                .context("digest delivery failed")?;
            Ok(ReminderRun { plan, delivery })
        })
        .await
    }

    /// Brings support's flags up to date at `now`.
    pub async fn run_flags(&self, now: DateTime<Utc>) -> anyhow::Result<FlagCounts> {
        self.record(JobName::Flags, now, async {
            self.flagger
                .run_once(&self.pool, now)
                .await
                .context("flag update failed")
        })
        .await
    }

    /// Records the support digest of the schedule slot at `now` unless it
    /// exists, then delivers every due digest. Does nothing when the job is off.
    pub async fn run_support_digest(&self, now: DateTime<Utc>) -> anyhow::Result<SupportDigestRun> {
        self.record(JobName::SupportDigest, now, async {
            let record = self
                .support_digest
                .run_once(&self.pool, now)
                .await
                .context("support digest recording failed")?;
            if record.disabled {
                return Ok(SupportDigestRun {
                    record,
                    delivery: DeliveryCounts::default(),
                });
            }
            let delivery = self
                .deliverer
                .run_once(&self.pool, now)
                .await
                .context("digest delivery failed")?;
            Ok(SupportDigestRun { record, delivery })
        })
        .await
    }

    /// Runs `work` as one run of `job`, counts it in the metrics, then
    /// refreshes the gauges if the run succeeded.
    async fn record<T: Serialize>(
        &self,
        job: JobName,
        now: DateTime<Utc>,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let result = self.record_run(job, now, work).await;
        self.metrics
            .observe_job_run(job, result.is_ok(), started.elapsed());
        // After a failed run the gauges keep their values: the query would
        // most likely fail for the same cause, which is already logged.
        let policy = &self.planner.policy;
        if result.is_ok()
            && let Err(error) = self.metrics.refresh_gauges(&self.pool, policy, now).await
        {
            // The gauges keep their last values; the next tick tries again.
            warn!(
                job = job.as_str(),
                error = format!("{error:#}"),
                "failed to refresh the metrics gauges"
            );
        }
        result
    }

    /// Runs `work` inside a span and a `job_runs` row, and logs its start
    /// and its end with the counts or the error.
    async fn record_run<T: Serialize>(
        &self,
        job: JobName,
        now: DateTime<Utc>,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let run_id = match crate::runs::start(&self.pool, job.as_str(), now).await {
            Ok(run_id) => run_id,
            Err(failure) => {
                // Usually the database is down; the next tick tries again.
                let failure = anyhow::Error::new(failure)
                    .context(format!("failed to record the start of a {job} run"));
                error!(job = job.as_str(), error = %format!("{failure:#}"), "job run failed");
                return Err(failure);
            }
        };
        let span = info_span!("job", job = job.as_str(), run_id);
        async {
            info!(clock = %now.to_rfc3339(), "job run started");
            let outcome = match work.await {
                Ok(counts) => crate::runs::succeed(&self.pool, run_id, &counts)
                    .await
                    .map(|()| counts)
                    .context("failed to record the end of the run"),
                Err(failure) => Err(failure),
            };
            match outcome {
                Ok(counts) => {
                    let summary = serde_json::to_string(&counts).unwrap_or_default();
                    info!(counts = %summary, "job run finished");
                    Ok(counts)
                }
                Err(failure) => {
                    // Logged here, once, because the daemon drops the error
                    // after a tick.
                    error!(error = %format!("{failure:#}"), "job run failed");
                    if let Err(record_failure) =
                        crate::runs::fail(&self.pool, run_id, &failure).await
                    {
                        // Usually the same outage that failed the run; the
                        // row then stays `running`.
                        warn!(
                            error = %format!("{:#}", anyhow::Error::new(record_failure)),
                            "failed to record the failed run"
                        );
                    }
                    Err(failure)
                }
            }
        }
        .instrument(span)
        .await
    }
}
