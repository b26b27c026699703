//! The reminder cycle benchmark. It loads generated datasets into fresh
//! databases and times the planner against the bare overdue query and
//! delivery against an SMTP load generator. It also measures the peak
//! memory of `run-once reminders`, the scan's growth with the table size
//! and an idle tick, and renders one table of ratios.
//!
//! `examples/benchmark.rs` runs it at platform scale against `smtp-sink`;
//! the integration tests run it at a reduced size against an embedded SMTP
//! server, so the table cannot rot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;

use crate::compose::{Composer, DigestSession};
use crate::config::{Settings, TransportKind};
use crate::dataset::{self, DemoSize, SessionMix};
use crate::email::Transport;
use crate::jobs::Worker;
use crate::outbox::Deliverer;
use crate::policy::{ReminderPolicy, SendWindow};
use crate::recipient::{self, ProviderRow};
use crate::reminders::Planner;

/// Benchmark settings: dataset sizes, databases and the SMTP sink.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// PostgreSQL server URL without a database, such as
    /// `postgres://postgres@127.0.0.1:5432`. The benchmark creates its
    /// databases there and drops them at the end.
    pub server_url: String,
    /// Prefix of the database names, so parallel runs do not collide.
    pub database_prefix: String,
    pub seed: u64,
    /// The instant the datasets are dated around and the cycle runs at.
    pub now: DateTime<Utc>,
    /// Shape of the scan, delivery and memory datasets.
    pub size: DemoSize,
    /// Overdue sessions in the scan and growth datasets.
    pub overdue: u64,
    /// Sessions in the growth dataset. Providers and members stay the same.
    pub large_sessions: u64,
    /// Overdue sessions of the two memory runs, smaller first.
    pub memory_overdue: [u64; 2],
    /// Timed repetitions of each scan. The report gives the median.
    pub repeats: usize,
    /// `reminders.delivery_concurrency`, also the SMTP pool size and the
    /// reference generator's session count.
    pub delivery_concurrency: u32,
    /// Port of the SMTP sink on 127.0.0.1.
    pub smtp_port: u16,
    pub reference: ReferenceLoad,
    /// The `session-steward` binary for the memory runs.
    pub binary: PathBuf,
}

/// The load generator whose throughput against the same sink is the
/// reference for delivery.
#[derive(Debug, Clone)]
pub enum ReferenceLoad {
    /// Postfix's `smtp-source`, at this path, reusing each connection (`-d`).
    SmtpSource(PathBuf),
    /// A minimal SMTP client in this module: one connection per session,
    /// MAIL, RCPT and DATA per message, no pipelining.
    Builtin,
}

/// A measured figure with its unit.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub value: f64,
    pub unit: &'static str,
}

impl Figure {
    fn new(value: f64, unit: &'static str) -> Self {
        Self { value, unit }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub measured: Figure,
    pub reference: Figure,
    pub ratio: Option<f64>,
    pub target: String,
    /// Whether the target is met; `None` for a figure without a target.
    pub met: Option<bool>,
}

/// The benchmark's result: one row per figure, plus notes on the datasets.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    /// Renders the rows as a Markdown table, followed by the notes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("| figure | measured | against | ratio | target | met |\n");
        out.push_str("|---|---:|---:|---:|---|---|\n");
        for row in &self.rows {
            let ratio = row.ratio.map_or_else(|| "n/a".to_owned(), format_ratio);
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "n/a",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                row.name,
                format_figure(row.measured),
                format_figure(row.reference),
                ratio,
                row.target,
                met
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }
}

/// Two decimals, or three significant digits for a ratio below 0.1, so a
/// small ratio does not print as zero.
fn format_ratio(ratio: f64) -> String {
    if ratio >= 0.1 || ratio == 0.0 {
        format!("{ratio:.2}")
    } else {
        let decimals = (2.0 - ratio.log10().floor()) as usize;
        format!("{ratio:.decimals$}")
    }
}

fn format_figure(figure: Figure) -> String {
    if figure.value >= 100.0 || figure.value.fract() == 0.0 {
        format!("{:.0} {}", figure.value, figure.unit)
    } else {
        format!("{:.1} {}", figure.value, figure.unit)
    }
}

/// Prints progress to standard error, so the table on standard output
/// stays clean.
fn progress(message: &str) {
    eprintln!("benchmark: {message}");
}

/// Runs every part of the benchmark and drops its databases, also when a
/// part fails.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Report> {
    let scratch =
        std::env::temp_dir().join(format!("{}-{}", config.database_prefix, std::process::id()));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("failed to create {}", scratch.display()))?;
    let mut databases = Vec::new();
    let result = run_parts(config, &scratch, &mut databases).await;
    for name in &databases {
        if let Err(error) = drop_database(config, name).await {
            progress(&format!("failed to drop database {name}: {error:#}"));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run_parts(
    config: &BenchConfig,
    scratch: &Path,
    databases: &mut Vec<String>,
) -> anyhow::Result<Report> {
    let config_path = scratch.join("config.toml");
    std::fs::write(&config_path, settings_toml(config))
        .with_context(|| format!("failed to write {}", config_path.display()))?;
    let settings = Settings::load(Some(&config_path))?;
    let mut report = Report::default();

    // Scan and delivery on the platform-scale dataset.
    let (pool, name) = load_database(config, "scan", config.size, config.overdue).await?;
    databases.push(name);
    let scan = measure_scan(config, &settings, &pool).await?;
    report.rows.push(Row {
        name: format!(
            "1. scan: planner vs bare overdue query ({} sessions, {} overdue, {} digests)",
            config.size.sessions, scan.overdue_sessions, scan.digests
        ),
        measured: Figure::new(millis(scan.planner), "ms"),
        reference: Figure::new(millis(scan.bare_query), "ms"),
        ratio: Some(ratio(scan.planner, scan.bare_query)),
        target: "≤ 1.20".to_owned(),
        met: Some(ratio(scan.planner, scan.bare_query) <= 1.2),
    });

    let floor = scan.bare_query + scan.bare_insert;
    report.rows.push(Row {
        name: format!(
            "1b. scan with its writes: planner vs bare query + bare insert of the same {} digests and {} items",
            scan.digests, scan.items
        ),
        measured: Figure::new(millis(scan.planner), "ms"),
        reference: Figure::new(millis(floor), "ms"),
        ratio: Some(ratio(scan.planner, floor)),
        target: "none".to_owned(),
        met: None,
    });
    report.notes.push(format!(
        "Planner at {} sessions: {:.1} ms recording digests and items, {:.1} ms refreshing statistics, {:.1} ms reading and deciding. Bare insert: {:.1} ms.",
        config.size.sessions,
        millis(scan.recording),
        millis(scan.statistics),
        millis(scan.planner.saturating_sub(scan.recording + scan.statistics)),
        millis(scan.bare_insert)
    ));

    let delivery = measure_delivery(config, &settings, &pool, scan.digests).await?;
    let delivery_ratio = delivery.steward_rate / delivery.reference_rate;
    report.rows.push(Row {
        name: format!(
            "2. delivery: session-steward vs {} ({} messages of about {} bytes, {} connections)",
            match config.reference {
                ReferenceLoad::SmtpSource(_) => "smtp-source",
                ReferenceLoad::Builtin => "built-in SMTP client",
            },
            delivery.messages,
            delivery.message_bytes,
            config.delivery_concurrency
        ),
        measured: Figure::new(delivery.steward_rate, "msg/s"),
        reference: Figure::new(delivery.reference_rate, "msg/s"),
        ratio: Some(delivery_ratio),
        target: "≥ 0.80".to_owned(),
        met: Some(delivery_ratio >= 0.8),
    });
    pool.close().await;

    // Peak memory of the real binary, one database per overdue count.
    let mut peaks = Vec::new();
    for overdue in config.memory_overdue {
        let (pool, name) = load_database(config, "memory", config.size, overdue).await?;
        let url = database_url(config, &name);
        pool.close().await;
        let started = Instant::now();
        let peak = measure_peak_rss(config, &config_path, &url, scratch).await;
        let elapsed = started.elapsed();
        drop_database(config, &name).await?;
        peaks.push(peak?);
        report.notes.push(format!(
            "First run-once reminders on an empty outbox with {overdue} overdue sessions (plan and deliver): {:.1} s.",
            elapsed.as_secs_f64()
        ));
    }
    let (small_peak, large_peak) = (peaks[0], peaks[1]);
    let memory_ratio = large_peak as f64 / small_peak as f64;
    report.rows.push(Row {
        name: format!(
            "3. memory: peak RSS of run-once reminders, {} vs {} overdue",
            config.memory_overdue[1], config.memory_overdue[0]
        ),
        measured: Figure::new(mib(large_peak), "MiB"),
        reference: Figure::new(mib(small_peak), "MiB"),
        ratio: Some(memory_ratio),
        target: "≤ 64 MiB, ≤ 1.10".to_owned(),
        met: Some(mib(large_peak) <= 64.0 && memory_ratio <= 1.1),
    });

    // Growth and the idle tick on the large dataset.
    let large_size = DemoSize {
        sessions: config.large_sessions,
        ..config.size
    };
    let (large_pool, name) = load_database(config, "large", large_size, config.overdue).await?;
    databases.push(name);
    let large_scan = measure_scan(config, &settings, &large_pool).await?;
    let growth = ratio(large_scan.planner, scan.planner);
    report.rows.push(Row {
        name: format!(
            "4. growth: planner at {} vs {} sessions ({} overdue)",
            config.large_sessions, config.size.sessions, large_scan.overdue_sessions
        ),
        measured: Figure::new(millis(large_scan.planner), "ms"),
        reference: Figure::new(millis(scan.planner), "ms"),
        ratio: Some(growth),
        target: "≤ 1.20".to_owned(),
        met: Some(growth <= 1.2),
    });
    report.notes.push(format!(
        "Bare overdue query at {} sessions: {:.1} ms. Planner there: {:.1} ms recording, {:.1} ms refreshing statistics, {:.1} ms reading and deciding.",
        config.large_sessions,
        millis(large_scan.bare_query),
        millis(large_scan.recording),
        millis(large_scan.statistics),
        millis(large_scan.planner.saturating_sub(large_scan.recording + large_scan.statistics))
    ));

    let idle = measure_idle_tick(config, &settings, &large_pool).await?;
    report.rows.push(Row {
        name: format!(
            "5. idle tick: run_reminders with nothing overdue ({} sessions)",
            config.large_sessions
        ),
        measured: Figure::new(millis(idle.elapsed), "ms"),
        reference: Figure::new(idle.statements as f64, "statements"),
        ratio: None,
        target: "none".to_owned(),
        met: None,
    });
    large_pool.close().await;
    Ok(report)
}

/// The configuration the benchmark runs with, in process and in the child:
/// the send window open at every hour of every day, so each digest due is
/// planned, and SMTP to the sink with a pool as large as the concurrency.
fn settings_toml(config: &BenchConfig) -> String {
    format!(
        r#"[reminders]
delivery_concurrency = {concurrency}

[send_window]
start = "00:00"
end = "23:59"
business_days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

[email]
transport = "smtp"

[smtp]
host = "127.0.0.1"
port = {port}
pool_size = {concurrency}

[log]
filter = "warn"
"#,
        concurrency = config.delivery_concurrency,
        port = config.smtp_port,
    )
}

fn database_url(config: &BenchConfig, name: &str) -> String {
    format!("{}/{name}", config.server_url.trim_end_matches('/'))
}

/// Creates a fresh database, migrates it and loads a dataset of `size`
/// with about `overdue` overdue sessions. Returns its pool and name.
async fn load_database(
    config: &BenchConfig,
    label: &str,
    size: DemoSize,
    overdue: u64,
) -> anyhow::Result<(PgPool, String)> {
    let name = format!("{}_{label}", config.database_prefix);
    drop_database(config, &name).await?;
    let url = database_url(config, &name);
    crate::db::create_if_missing(&url).await?;
    let connections = 3 + config.delivery_concurrency;
    let pool = crate::db::connect(&url, connections, Duration::from_secs(30)).await?;
    crate::db::migrate(&pool).await?;
    progress(&format!(
        "loading {} sessions ({overdue} overdue) into {name}",
        size.sessions
    ));
    let summary = dataset::load_mix(
        &pool,
        config.seed,
        size,
        config.now,
        SessionMix::Overdue(overdue),
    )
    .await?;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    progress(&format!(
        "loaded {} sessions in {:.1} s",
        summary.sessions,
        summary.elapsed.as_secs_f64()
    ));
    Ok((pool, name))
}

async fn drop_database(config: &BenchConfig, name: &str) -> anyhow::Result<()> {
    let maintenance = database_url(config, "postgres");
    let mut connection: sqlx::PgConnection = sqlx::Connection::connect(&maintenance)
        .await
        .with_context(|| {
            format!("failed to connect to {maintenance} to drop the benchmark database")
        })?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut connection)
        .await
        .with_context(|| format!("failed to drop database {name}"))?;
    Ok(())
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ratio(measured: Duration, reference: Duration) -> f64 {
    measured.as_secs_f64() / reference.as_secs_f64().max(1e-9)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Medians of the planner and of the bare query on one dataset.
struct ScanResult {
    planner: Duration,
    bare_query: Duration,
    /// The planner's recording and statistics refresh, medians.
    recording: Duration,
    statistics: Duration,
    /// One plain insert of the same digests and items into the empty outbox.
    bare_insert: Duration,
    items: u64,
    overdue_sessions: u64,
    digests: u64,
}

/// The least the database must do for a scan: select the overdue rows
/// with the planner's bounds, without joins, sorting or writes.
const BARE_OVERDUE_QUERY: &str = "
SELECT s.id, s.provider_id, s.ends_at
FROM sessions s
WHERE s.status = 'scheduled' AND s.ends_at < $1 AND s.ends_at >= $2";

/// Times the bare query and a full planning pass `repeats` times each,
/// alternating, with the outbox emptied before each pass. The last pass's
/// digests stay pending for the delivery measurement.
async fn measure_scan(
    config: &BenchConfig,
    settings: &Settings,
    pool: &PgPool,
) -> anyhow::Result<ScanResult> {
    let policy = ReminderPolicy::from_settings(settings);
    let planner = Planner {
        policy: policy.clone(),
        window: SendWindow::from_settings(settings),
    };
    let overdue_cutoff = policy.overdue_cutoff(config.now);
    let escalation_cutoff = policy.escalation_cutoff(config.now);

    let mut planner_times = Vec::new();
    let mut bare_times = Vec::new();
    let mut recording_times = Vec::new();
    let mut statistics_times = Vec::new();
    let mut overdue_sessions = 0;
    let mut digests = 0;
    // The first round warms the caches and is not counted.
    for round in 0..=config.repeats.max(1) {
        let started = Instant::now();
        let rows: Vec<(i64, i64, DateTime<Utc>)> = sqlx::query_as(BARE_OVERDUE_QUERY)
            .bind(overdue_cutoff)
            .bind(escalation_cutoff)
            .fetch_all(pool)
            .await?;
        let bare = started.elapsed();

        sqlx::query("TRUNCATE reminder_items, support_digests, reminders")
            .execute(pool)
            .await?;
        let started = Instant::now();
        let counts = planner.run_once(pool, config.now).await?;
        let planned = started.elapsed();

        ensure!(
            counts.overdue_sessions == rows.len() as u64,
            "the planner read {} overdue sessions, the bare query {}",
            counts.overdue_sessions,
            rows.len()
        );
        ensure!(
            counts.digests_deferred == 0,
            "{} digests were deferred although the send window is open all day",
            counts.digests_deferred
        );
        overdue_sessions = counts.overdue_sessions;
        digests = counts.digests_planned;
        if round > 0 {
            planner_times.push(planned);
            bare_times.push(bare);
            recording_times.push(counts.timings.recording);
            statistics_times.push(counts.timings.statistics);
        }
    }
    let (bare_insert, items) = measure_bare_insert(pool).await?;
    progress(&format!(
        "scan: {overdue_sessions} overdue sessions, {digests} digests, planner {:?}, bare query {:?}",
        median(planner_times.clone()),
        median(bare_times.clone())
    ));
    Ok(ScanResult {
        planner: median(planner_times),
        bare_query: median(bare_times),
        recording: median(recording_times),
        statistics: median(statistics_times),
        bare_insert,
        items,
        overdue_sessions,
        digests,
    })
}

/// Times the least the database must do to store what the last planning
/// pass recorded: the same digest and item rows, copied aside, inserted
/// again into the emptied outbox in one transaction with two plain
/// `INSERT ... SELECT` statements. The rows stay, pending, for delivery.
async fn measure_bare_insert(pool: &PgPool) -> anyhow::Result<(Duration, u64)> {
    let mut connection = pool.acquire().await?;
    for statement in [
        "DROP TABLE IF EXISTS bench_reminders, bench_items",
        "CREATE TEMP TABLE bench_reminders AS SELECT * FROM reminders",
        "CREATE TEMP TABLE bench_items AS SELECT * FROM reminder_items",
        "TRUNCATE reminder_items, support_digests, reminders",
    ] {
        sqlx::query(statement).execute(&mut *connection).await?;
    }
    let started = Instant::now();
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    sqlx::query("INSERT INTO reminders OVERRIDING SYSTEM VALUE SELECT * FROM bench_reminders")
        .execute(&mut *transaction)
        .await?;
    let items = sqlx::query("INSERT INTO reminder_items SELECT * FROM bench_items")
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    transaction.commit().await?;
    let elapsed = started.elapsed();
    sqlx::query("DROP TABLE bench_reminders, bench_items")
        .execute(&mut *connection)
        .await?;
    Ok((elapsed, items))
}

struct DeliveryResult {
    messages: u64,
    message_bytes: usize,
    steward_rate: f64,
    reference_rate: f64,
}

/// Delivers the pending digests to the sink, then runs the reference load
/// generator with as many messages of the same mean size.
async fn measure_delivery(
    config: &BenchConfig,
    settings: &Settings,
    pool: &PgPool,
    pending: u64,
) -> anyhow::Result<DeliveryResult> {
    let deliverer = Deliverer::new(
        Composer::new(settings)?,
        Transport::from_settings(settings, TransportKind::Smtp)?,
        settings.reminders.clone(),
        crate::policy::SendWindow::from_settings(settings),
    );
    let started = Instant::now();
    let counts = deliverer.run_once(pool, config.now).await?;
    let elapsed = started.elapsed();
    ensure!(
        counts.digests_sent == pending,
        "delivered {} of {pending} digests ({} retrying, {} failed); is the SMTP sink on 127.0.0.1:{} running?",
        counts.digests_sent,
        counts.digests_retrying,
        counts.digests_failed,
        config.smtp_port
    );
    let steward_rate = counts.digests_sent as f64 / elapsed.as_secs_f64();

    let message_bytes = mean_message_size(settings, pool, config.now).await?;
    let messages = counts.digests_sent.max(100);
    let reference_elapsed = match &config.reference {
        ReferenceLoad::SmtpSource(program) => {
            run_smtp_source(config, program, messages, message_bytes).await?
        }
        ReferenceLoad::Builtin => run_builtin_source(config, messages, message_bytes).await?,
    };
    let reference_rate = messages as f64 / reference_elapsed.as_secs_f64();
    progress(&format!(
        "delivery: {} messages in {elapsed:?} ({steward_rate:.0}/s); reference {messages} in {reference_elapsed:?} ({reference_rate:.0}/s)",
        counts.digests_sent
    ));
    Ok(DeliveryResult {
        messages: counts.digests_sent,
        message_bytes,
        steward_rate,
        reference_rate,
    })
}

/// A digest's session: id, start, end and member name.
type SessionRow = (i64, DateTime<Utc>, DateTime<Utc>, Option<String>);

/// Composes up to 200 of the sent digests again and returns their mean
/// size in bytes, as written to the SMTP DATA command.
async fn mean_message_size(
    settings: &Settings,
    pool: &PgPool,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let composer = Composer::new(settings)?;
    let digests: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT id, reminder_key, provider_id FROM reminders
         WHERE status = 'sent' AND kind = 'provider_digest' ORDER BY id LIMIT 200",
    )
    .fetch_all(pool)
    .await?;
    ensure!(!digests.is_empty(), "no digest was sent");
    let mut total = 0;
    for (reminder_id, key, provider_id) in &digests {
        let provider: ProviderRow = sqlx::query_as(
            "SELECT id, name, email, time_zone, active FROM providers WHERE id = $1",
        )
        .bind(provider_id)
        .fetch_one(pool)
        .await?;
        let recipient = recipient::check(&provider)
            .map_err(|reason| anyhow::anyhow!("sent digest {key} has no recipient: {reason}"))?;
        let sessions: Vec<SessionRow> = sqlx::query_as(
            "SELECT s.id, s.starts_at, s.ends_at, m.name
             FROM reminder_items ri
             JOIN sessions s ON s.id = ri.session_id
             JOIN members m ON m.id = s.member_id
             WHERE ri.reminder_id = $1 ORDER BY s.ends_at, s.id",
        )
        .bind(reminder_id)
        .fetch_all(pool)
        .await?;
        let sessions: Vec<DigestSession> = sessions
            .into_iter()
            .map(|(session_id, starts_at, ends_at, name)| DigestSession {
                session_id,
                starts_at,
                ends_at,
                member_name: name.unwrap_or_default(),
            })
            .collect();
        let message = composer.digest(key, &recipient, &sessions, now)?;
        total += message.formatted().len();
    }
    Ok(total / digests.len())
}

/// Runs `smtp-source` with the same concurrency and message size, reusing
/// each connection for the next message (`-d`), as lettre's pool does.
async fn run_smtp_source(
    config: &BenchConfig,
    program: &Path,
    messages: u64,
    message_bytes: usize,
) -> anyhow::Result<Duration> {
    let mut command = Command::new(program);
    command
        .arg("-d")
        .args(["-s", &config.delivery_concurrency.to_string()])
        .args(["-m", &messages.to_string()])
        .args(["-l", &message_bytes.to_string()])
        .args(["-f", "bench@localhost", "-t", "sink@localhost"])
        .arg(format!("127.0.0.1:{}", config.smtp_port))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("failed to run {}", program.display()))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{} failed with {}: {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// Sends `messages` messages of `message_bytes` over as many connections
/// as senders, one message after the other on each, and returns the time
/// taken.
async fn run_builtin_source(
    config: &BenchConfig,
    messages: u64,
    message_bytes: usize,
) -> anyhow::Result<Duration> {
    let body = Arc::new(message_body(message_bytes));
    let senders = u64::from(config.delivery_concurrency.max(1));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|index| {
            let share = messages / senders + u64::from(index < messages % senders);
            let body = Arc::clone(&body);
            let port = config.smtp_port;
            tokio::spawn(async move { send_messages(port, share, &body).await })
        })
        .collect();
    for task in tasks {
        task.await.context("SMTP load task panicked")??;
    }
    Ok(started.elapsed())
}

/// Builds a message of about `size` bytes: a few headers, then lines of 76
/// characters, ending with the DATA terminator.
fn message_body(size: usize) -> Vec<u8> {
    let mut body = b"From: bench@localhost\r\nTo: sink@localhost\r\nSubject: load\r\n\r\n".to_vec();
    while body.len() + 78 < size {
        body.extend_from_slice(&[b'x'; 76]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    body
}

async fn send_messages(port: u16, count: u64, body: &[u8]) -> anyhow::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("failed to connect to the SMTP sink on 127.0.0.1:{port}"))?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    expect_reply(&mut reader, '2').await?;
    writer.write_all(b"EHLO localhost\r\n").await?;
    expect_reply(&mut reader, '2').await?;
    for _ in 0..count {
        writer.write_all(b"MAIL FROM:<bench@localhost>\r\n").await?;
        expect_reply(&mut reader, '2').await?;
        writer.write_all(b"RCPT TO:<sink@localhost>\r\n").await?;
        expect_reply(&mut reader, '2').await?;
        writer.write_all(b"DATA\r\n").await?;
        expect_reply(&mut reader, '3').await?;
        writer.write_all(body).await?;
        expect_reply(&mut reader, '2').await?;
    }
    writer.write_all(b"QUIT\r\n").await?;
    Ok(())
}

/// Reads one reply, which may span lines (`250-…` then `250 …`), and
/// checks the first digit of its code.
async fn expect_reply(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    class: char,
) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the SMTP sink closed the connection");
        }
        if !line.starts_with(class) {
            bail!("unexpected SMTP reply: {}", line.trim_end());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// Runs `session-steward run-once reminders` on `database_url` and returns
/// its peak resident set size in KiB, from `wait4`'s resource usage.
async fn measure_peak_rss(
    config: &BenchConfig,
    config_path: &Path,
    database_url: &str,
    scratch: &Path,
) -> anyhow::Result<u64> {
    let log_path = scratch.join("run-once.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(&config.binary)
        .arg("--config")
        .arg(config_path)
        .args(["--database-url", database_url])
        .args(["run-once", "reminders", "--now", &config.now.to_rfc3339()])
        .env_remove("RUST_LOG")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to start {}", config.binary.display()))?;
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let (status, max_rss) = tokio::task::spawn_blocking(move || wait_with_rusage(pid)).await??;
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status {
        bail!("run-once reminders failed: {}", output.trim());
    }
    progress(&format!(
        "memory: peak RSS {:.1} MiB; {}",
        mib(max_rss),
        output.trim()
    ));
    Ok(max_rss)
}

/// Waits for child `pid` and returns whether it exited with 0, and its
/// peak resident set size in KiB.
fn wait_with_rusage(pid: libc::pid_t) -> anyhow::Result<(bool, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, so all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped, and both pointers are
    // valid for writes for the duration of the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        bail!(
            "wait4 on the run-once child failed: {}",
            std::io::Error::last_os_error()
        );
    }
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    // Linux reports ru_maxrss in KiB.
    Ok((success, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

struct IdleResult {
    elapsed: Duration,
    statements: u64,
}

/// Times full reminder ticks (planning and delivery, with their `job_runs`
/// rows) at an instant 120 days before the dataset's `now`, when no
/// session is overdue, and counts the SQL statements of one tick.
async fn measure_idle_tick(
    config: &BenchConfig,
    settings: &Settings,
    pool: &PgPool,
) -> anyhow::Result<IdleResult> {
    let transport = Transport::from_settings(settings, TransportKind::Smtp)?;
    let worker = Worker::new(pool.clone(), settings, transport)?;
    let idle_now = config.now - chrono::Duration::days(120);

    let counter = StatementCounter::default();
    let subscriber = tracing::Dispatch::new(tracing_subscriber::registry().with(counter.clone()));
    let mut times = Vec::new();
    let mut statements = 0;
    for round in 0..=config.repeats.max(1) {
        let before = counter.count();
        let started = Instant::now();
        let run = worker
            .run_reminders(idle_now)
            .with_subscriber(subscriber.clone())
            .await?;
        let elapsed = started.elapsed();
        ensure!(
            run.plan.overdue_sessions == 0 && run.delivery.digests_sent == 0,
            "the idle tick found work: {} overdue sessions, {} digests sent",
            run.plan.overdue_sessions,
            run.delivery.digests_sent
        );
        statements = counter.count() - before;
        if round > 0 {
            times.push(elapsed);
        }
    }
    Ok(IdleResult {
        elapsed: median(times),
        statements,
    })
}

/// Counts the statements sqlx executes, from its per-statement log events
/// (target `sqlx::query`). NOTE: whether `BEGIN` and `COMMIT` emit such an
/// event is not checked, so the count may leave them out.
#[derive(Clone, Default)]
struct StatementCounter(Arc<AtomicU64>);

impl StatementCounter {
    fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementCounter {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
