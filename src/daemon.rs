//! The long-running service: ticks each job on its cron schedule until a
//! shutdown signal, then waits for running ticks to finish.
//!
//! Schedules are evaluated in UTC. Local-time decisions, such as a
//! provider's send window, are made per provider inside the job, because
//! a scheduler zone would keep one fixed UTC offset across DST changes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::{info, warn};

use crate::config::ScheduleSettings;
use crate::jobs::{JobName, Worker};
use crate::shutdown::Shutdown;

/// One job's guard: a tick that finds it held skips instead of overlapping.
#[derive(Clone)]
struct TickGuard(Arc<Mutex<()>>);

/// Runs the jobs until `signal` completes. Each job runs once at start,
/// which catches up after downtime, then on its schedule.
///
/// On shutdown no new tick starts, delivery stops between messages, and
/// running ticks get `grace` to finish. A tick cut short after that loses
/// nothing: its claimed digests are handed back to the outbox for any
/// process to send.
pub async fn run(
    worker: Worker,
    schedule: &ScheduleSettings,
    grace: Duration,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Listen from the start, so a signal during the catch-up ticks is not
    // lost and does not kill the process mid-tick.
    let (trigger, mut shutdown) = Shutdown::channel();
    tokio::spawn(async move {
        signal.await;
        trigger.trigger();
    });
    let worker = Arc::new(worker.with_shutdown(shutdown.clone()));

    let mut guards = vec![
        (JobName::Reminders, TickGuard(Arc::new(Mutex::new(())))),
        (JobName::Flags, TickGuard(Arc::new(Mutex::new(())))),
    ];
    if worker.support_digest_schedule().is_some() {
        guards.push((JobName::SupportDigest, TickGuard(Arc::new(Mutex::new(())))));
    } else {
        info!("support digest off: support_digest.recipients is empty");
    }

    let mut scheduler = JobScheduler::new()
        .await
        .context("failed to create the job scheduler")?;
    for (job, guard) in &guards {
        let expression = match job {
            JobName::Reminders => schedule.reminders.as_str(),
            JobName::Flags => schedule.flags.as_str(),
            JobName::SupportDigest => worker.support_digest_schedule().unwrap_or_default(),
        };
        let worker = Arc::clone(&worker);
        let guard = guard.clone();
        let job = *job;
        let cron_job = Job::new_async(expression, move |_, _| {
            let worker = Arc::clone(&worker);
            let guard = guard.clone();
            Box::pin(async move { tick(&worker, job, &guard).await })
        })
        .with_context(|| format!("invalid cron expression \"{expression}\" for the {job} job"))?;
        scheduler
            .add(cron_job)
            .await
            .with_context(|| format!("failed to schedule the {job} job"))?;
    }

    // Catch up once, in the background like any tick, so a shutdown
    // request during it gets the same grace period. Scheduled ticks that
    // come due meanwhile find the guards held and skip.
    {
        let worker = Arc::clone(&worker);
        let guards = guards.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            for (job, guard) in &guards {
                if shutdown.is_requested() {
                    break;
                }
                tick(&worker, *job, guard).await;
            }
        });
    }

    if !shutdown.is_requested() {
        scheduler
            .start()
            .await
            .context("failed to start the job scheduler")?;
        info!(reminders = %schedule.reminders, flags = %schedule.flags, support_digest = worker.support_digest_schedule().unwrap_or("off"), "scheduler started");
    }

    shutdown.requested().await;
    info!("shutdown requested; no new ticks will start");
    if let Err(error) = scheduler.shutdown().await {
        warn!(error = %format!("{:#}", anyhow::Error::new(error)), "job scheduler did not stop cleanly");
    }

    let deadline = tokio::time::Instant::now() + grace;
    let mut cut_short = false;
    for (job, guard) in &guards {
        if tokio::time::timeout_at(deadline, guard.0.lock())
            .await
            .is_err()
        {
            warn!(
                job = job.as_str(),
                grace_seconds = grace.as_secs(),
                "tick still running at the end of the grace period"
            );
            cut_short = true;
        }
    }
    if cut_short {
        match worker.release_claims().await {
            Ok(released) => info!(released, "claimed digests handed back for other processes"),
            Err(error) => {
                warn!(error = %format!("{:#}", anyhow::Error::new(error)), "failed to hand back claimed digests; they are sent once their lease expires")
            }
        }
    }
    info!("stopped");
    Ok(())
}

/// Runs one tick of `job` unless the previous one is still running. Errors
/// are logged and recorded by the job itself, so the next tick simply tries
/// again.
async fn tick(worker: &Worker, job: JobName, guard: &TickGuard) {
    let Ok(_running) = guard.0.try_lock() else {
        warn!(
            job = job.as_str(),
            "tick skipped: the previous tick is still running"
        );
        return;
    };
    let now = Utc::now();
    let _ = match job {
        JobName::Reminders => worker.run_reminders(now).await.map(|_| ()),
        JobName::Flags => worker.run_flags(now).await.map(|_| ()),
        JobName::SupportDigest => worker.run_support_digest(now).await.map(|_| ()),
    };
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            warn!(error = %error, "failed to listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(error = %error, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Parses a cron expression with the options tokio-cron-scheduler 0.15
/// uses: seconds first, and a day must match both the day-of-month and the
/// weekday field. Code that computes when a tick happens parses with this,
/// so its instants are the ones the scheduler ticks at.
pub fn parse_schedule(expression: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expression)
}
