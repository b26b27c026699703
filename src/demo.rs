//! The `demo` command: a fresh database with the synthetic dataset, every
//! job run once, and a summary of what happened.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::{Settings, TransportKind};
use crate::dataset::{self, DemoSize};
use crate::email::Transport;
use crate::flags::{FlagCounts, FlagKind};
use crate::jobs::{ReminderRun, Worker};
use crate::report::{self, ReportFilter};

/// Options of the `demo` command.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub database_url: String,
    pub seed: u64,
    pub size: DemoSize,
    pub now: DateTime<Utc>,
    pub reset: bool,
    pub report_rows: usize,
}

/// Creates and migrates the database, loads the dataset, runs the reminder
/// and flag jobs once at `options.now` and prints the summary and report.
pub async fn run(settings: &Settings, options: DemoOptions) -> anyhow::Result<()> {
    check_size(options.size)?;
    if options.reset {
        crate::db::recreate(&options.database_url).await?;
    } else {
        crate::db::create_if_missing(&options.database_url).await?;
    }
    let pool = crate::db::connect(
        &options.database_url,
        settings
            .database
            .max_connections
            .max(settings.required_connections()),
        settings.database.acquire_timeout.to_std(),
    )
    .await?;
    crate::db::migrate(&pool).await?;
    dataset::ensure_empty(&pool).await?;
    let loaded = dataset::load(&pool, options.seed, options.size, options.now).await?;

    let transport_kind = settings.demo_transport();
    let transport = Transport::from_settings(settings, transport_kind)?;
    let destination = transport.describe();
    let worker = Worker::new(pool.clone(), settings, transport)?;
    let reminders = worker.run_reminders(options.now).await?;
    let flags = worker.run_flags(options.now).await?;

    let rows = report::load(&pool, &ReportFilter::default(), options.now).await?;
    let mut out = std::io::stdout().lock();
    let summary = Summary {
        options: &options,
        loaded: &loaded,
        destination: &destination,
        transport_kind,
        reminders: &reminders,
        flags: &flags,
        stages: &settings.reminders.stages,
    };
    write_summary(&mut out, &summary)?;
    writeln!(out)?;
    writeln!(
        out,
        "Open flags, most harmful first (first {} of {}):",
        options.report_rows.min(rows.len()),
        rows.len()
    )?;
    report::write_table(&mut out, &rows[..options.report_rows.min(rows.len())])?;
    // A URL the user passed may carry a password, so only the default is echoed.
    let url = if options.database_url == crate::cli::DEMO_DATABASE_URL {
        options.database_url.as_str()
    } else {
        "URL"
    };
    writeln!(
        out,
        "\nFull report: session-steward --database-url {url} flags [--format csv|json]"
    )
    .context("failed to write the demo summary")?;
    Ok(())
}

/// Upper bounds that keep a mistyped size from running for hours or
/// exhausting memory; each member's sessions are generated in memory.
const MAX_PROVIDERS: u32 = 1_000_000;
const MAX_MEMBERS: u32 = 10_000_000;
const MAX_SESSIONS: u64 = 100_000_000;
const MAX_SESSIONS_PER_MEMBER: u64 = 10_000;

/// Rejects sizes past the bounds before anything in the database changes.
fn check_size(size: DemoSize) -> anyhow::Result<()> {
    if size.providers > MAX_PROVIDERS {
        anyhow::bail!(
            "invalid --providers {}: at most {MAX_PROVIDERS}",
            size.providers
        );
    }
    if size.members > MAX_MEMBERS {
        anyhow::bail!("invalid --members {}: at most {MAX_MEMBERS}", size.members);
    }
    if size.sessions > MAX_SESSIONS {
        anyhow::bail!(
            "invalid --sessions {}: at most {MAX_SESSIONS}",
            size.sessions
        );
    }
    if size.sessions > MAX_SESSIONS_PER_MEMBER * u64::from(size.members) {
        anyhow::bail!(
            "invalid --sessions {}: at most {MAX_SESSIONS_PER_MEMBER} per member; raise --members",
            size.sessions
        );
    }
    Ok(())
}

/// Everything the demo summary reports.
struct Summary<'a> {
    options: &'a DemoOptions,
    loaded: &'a dataset::LoadSummary,
    destination: &'a str,
    transport_kind: TransportKind,
    reminders: &'a ReminderRun,
    flags: &'a FlagCounts,
    stages: &'a [crate::config::Span],
}

fn write_summary(out: &mut impl Write, summary: &Summary<'_>) -> anyhow::Result<()> {
    let Summary {
        options,
        loaded,
        destination,
        transport_kind,
        reminders,
        flags,
        stages,
    } = *summary;
    let plan = &reminders.plan;
    let delivery = &reminders.delivery;
    writeln!(
        out,
        "session-steward demo at {} ({}), seed {}",
        options.now.to_rfc3339(),
        options.now.format("%A"),
        options.seed
    )?;
    writeln!(
        out,
        "Loaded {} providers, {} members, {} sessions in {:.1} s",
        loaded.providers,
        loaded.members,
        loaded.sessions,
        loaded.elapsed.as_secs_f64()
    )?;
    writeln!(out)?;
    writeln!(out, "Reminders")?;
    writeln!(
        out,
        "  overdue sessions (not escalated)   {:>7}",
        plan.overdue_sessions
    )?;
    writeln!(
        out,
        "  providers with overdue sessions    {:>7}",
        plan.providers_seen
    )?;
    writeln!(
        out,
        "  digests sent                       {:>7}   to {destination}",
        delivery.digests_sent
    )?;
    writeln!(
        out,
        "  digests deferred by send window    {:>7}",
        plan.digests_deferred
    )?;
    writeln!(
        out,
        "  providers skipped as unreachable   {:>7}",
        plan.providers_unreachable
    )?;
    writeln!(
        out,
        "  digests retrying / failed          {:>3} / {}",
        delivery.digests_retrying, delivery.digests_failed
    )?;
    if delivery.digests_deferred > 0 {
        writeln!(
            out,
            "  retries waiting for the window     {:>7}",
            delivery.digests_deferred
        )?;
    }
    writeln!(out, "  sessions reminded, by stage")?;
    let stage_count = i16::try_from(stages.len()).unwrap_or(i16::MAX);
    let first_stage = if delivery.sessions_by_stage.contains_key(&0) {
        0
    } else {
        1
    };
    for stage in first_stage..=stage_count {
        let count = delivery.sessions_by_stage.get(&stage).copied().unwrap_or(0);
        let name = match stage {
            0 => "overdue, before the first stage".to_owned(),
            stage => format!(
                "stage {stage} ({})",
                crate::compose::describe_span(stages[stage as usize - 1].to_chrono())
            ),
        };
        writeln!(out, "    {name:<33}{count:>7}")?;
    }
    if transport_kind == TransportKind::File {
        writeln!(
            out,
            "  (file transport: one .eml per digest; configure [smtp] to send instead)"
        )?;
    }
    writeln!(out)?;
    writeln!(out, "Flags opened, by kind")?;
    for kind in FlagKind::ALL {
        let opened = flags.opened.get(&kind).copied().unwrap_or(0);
        writeln!(out, "  {:<35}{opened:>7}", kind.as_str())?;
    }
    Ok(())
}
