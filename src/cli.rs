//! The command line: parses arguments, loads configuration and runs one
//! command. Every error ends here as one line on standard error and exit
//! code 1.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use sqlx::PgPool;

use crate::config::{Settings, TransportKind};
use crate::dataset::DemoSize;
use crate::email::Transport;
use crate::flags::FlagKind;
use crate::http;
use crate::jobs::{JobName, Worker};
use crate::report::{self, ReportFilter};
use crate::shutdown::Shutdown;

/// Default database of `demo`. It never reads
/// `DATABASE_URL`, so it cannot empty a database by accident.
pub const DEMO_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/session_steward_demo";

#[derive(Debug, Parser)]
#[command(
    name = "session-steward",
    version,
    about = "Reminds providers of unreported sessions and flags stale allotment holds for support"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "SESSION_STEWARD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// PostgreSQL URL, such as postgres://user@127.0.0.1:5432/platform. Not used by `demo`.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Whether `database_url` came from the command line, not the environment.
    #[arg(skip)]
    database_url_on_command_line: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the database migrations.
    Migrate,
    /// Run the jobs on their cron schedules until SIGINT or SIGTERM.
    Run,
    /// Run one tick of one job, then exit.
    RunOnce {
        #[arg(value_enum)]
        job: JobChoice,
        /// The instant to run at, in RFC 3339 such as 2026-12-04T15:00:00Z. Defaults to the current time.
        #[arg(long, value_parser = parse_instant)]
        now: Option<DateTime<Utc>>,
    },
    /// Load the built-in synthetic dataset, run every job once and print what happened.
    Demo(DemoArgs),
    /// Support's report of flags, or `ack` and `resolve` to act on one.
    Flags(FlagsArgs),
    /// Show each job's last and next run and the outbox backlog.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
        /// The instant to report at, in RFC 3339. Defaults to the current time.
        #[arg(long, value_parser = parse_instant)]
        now: Option<DateTime<Utc>>,
    },
    /// Print the digest the reminder job would send a provider, without sending or recording it.
    Preview {
        /// Id of the provider in the providers table.
        #[arg(long, value_name = "ID")]
        provider: i64,
        /// The instant the job would run at, in RFC 3339. Defaults to the current time.
        #[arg(long, value_parser = parse_instant)]
        now: Option<DateTime<Utc>>,
    },
    /// Check the configuration, templates, database and mail transport; send nothing.
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum JobChoice {
    Reminders,
    Flags,
    SupportDigest,
    All,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Seed of the generated dataset; the same seed and --now give the same data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of providers.
    #[arg(long, default_value_t = DemoSize::default().providers, value_parser = clap::value_parser!(u32).range(1..))]
    providers: u32,
    /// Number of members, each with one allotment.
    #[arg(long, default_value_t = DemoSize::default().members, value_parser = clap::value_parser!(u32).range(1..))]
    members: u32,
    /// Number of sessions.
    #[arg(long, default_value_t = DemoSize::default().sessions)]
    sessions: u64,
    /// The instant the dataset is dated around and the jobs run at, in RFC 3339. Defaults to the current time.
    #[arg(long, value_parser = parse_instant)]
    now: Option<DateTime<Utc>>,
    /// Empty the demo database before loading, if it already has data.
    #[arg(long)]
    reset: bool,
    /// Database for the demo; it is created if missing.
    #[arg(long, value_name = "URL", default_value = DEMO_DATABASE_URL)]
    database_url: String,
    /// Flags to print from the report after the summary.
    #[arg(long, default_value_t = 20)]
    report_rows: usize,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct FlagsArgs {
    #[command(subcommand)]
    action: Option<FlagAction>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Only flags of this kind: member_blocked, period_ending, member_ineligible, provider_unreachable or stale_hold.
    #[arg(long, value_parser = parse_kind)]
    kind: Option<FlagKind>,
    /// Include resolved flags.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Subcommand)]
enum FlagAction {
    /// Record that you have seen a flag.
    Ack {
        id: i64,
        /// Name recorded as the acknowledger (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Resolve a flag with a note saying what was done.
    Resolve {
        id: i64,
        #[arg(long)]
        note: String,
        /// Name recorded as the resolver (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|instant| instant.with_timezone(&Utc))
        .map_err(|error| {
            format!(
                "invalid instant \"{text}\" ({error}); write RFC 3339 such as 2026-12-04T15:00:00Z"
            )
        })
}

fn parse_kind(text: &str) -> Result<FlagKind, String> {
    text.parse()
}

/// Parses the command line, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    cli.database_url_on_command_line =
        matches.value_source("database_url") == Some(ValueSource::CommandLine);
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            if matches!(cli.command, Command::Check) {
                let line = crate::check::configuration_failed(&error);
                let _ = crate::check::write(&mut std::io::stdout(), &[line]);
            }
            return report_failure(&error);
        }
    };
    crate::telemetry::init(&settings.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return report_failure(
                &anyhow::Error::new(error).context("failed to start the async runtime"),
            );
        }
    };
    match runtime.block_on(execute(cli, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report_failure(&error),
    }
}

fn report_failure(error: &anyhow::Error) -> ExitCode {
    // A reader such as `head` that closes the pipe early is not a failure.
    let broken_pipe = error.chain().any(|cause| {
        let kind = if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            Some(io.kind())
        } else if let Some(json) = cause.downcast_ref::<serde_json::Error>() {
            json.io_error_kind()
        } else if let Some(csv) = cause.downcast_ref::<csv::Error>() {
            match csv.kind() {
                csv::ErrorKind::Io(io) => Some(io.kind()),
                _ => None,
            }
        } else {
            None
        };
        kind == Some(std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

async fn execute(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(_) if cli.database_url_on_command_line => anyhow::bail!(
            "demo does not use --database-url before the command; write it after `demo`, as in `session-steward demo --database-url URL`"
        ),
        Command::Demo(args) => crate::demo::run(&settings, demo_options(args)).await,
        Command::Check => {
            let source = match &cli.config {
                Some(path) => format!("loaded from {}", path.display()),
                None => "defaults and SESSION_STEWARD_ variables, no file".to_owned(),
            };
            let database = connect(cli.database_url.as_deref(), &settings).await;
            let lines = crate::check::run(&settings, &source, database).await;
            crate::check::write(&mut std::io::stdout().lock(), &lines)?;
            let failed = lines.iter().filter(|line| line.is_failure()).count();
            if failed > 0 {
                anyhow::bail!("{failed} of {} checks failed", lines.len());
            }
            Ok(())
        }
        command => {
            if let Command::RunOnce { now: Some(now), .. } = &command {
                reject_future(*now)?;
            }
            let pool = connect(cli.database_url.as_deref(), &settings).await?;
            match command {
                Command::Migrate => {
                    crate::db::migrate(&pool).await?;
                    println!("migrations applied");
                    Ok(())
                }
                Command::Run => run_daemon(pool, &settings).await,
                Command::RunOnce { job, now } => {
                    run_once(pool, &settings, job, now.unwrap_or_else(Utc::now)).await
                }
                Command::Flags(args) => flags_command(&pool, args).await,
                Command::Status { format, now } => {
                    status_command(&pool, &settings, format, now.unwrap_or_else(Utc::now)).await
                }
                Command::Preview { provider, now } => {
                    preview_command(&pool, &settings, provider, now.unwrap_or_else(Utc::now)).await
                }
                Command::Demo(_) | Command::Check => unreachable!("handled above"),
            }
        }
    }
}

fn demo_options(args: DemoArgs) -> crate::demo::DemoOptions {
    crate::demo::DemoOptions {
        database_url: args.database_url,
        seed: args.seed,
        size: DemoSize {
            providers: args.providers,
            members: args.members,
            sessions: args.sessions,
        },
        now: args.now.unwrap_or_else(Utc::now),
        reset: args.reset,
        report_rows: args.report_rows,
    }
}

async fn connect(cli_url: Option<&str>, settings: &Settings) -> anyhow::Result<PgPool> {
    let url = cli_url
        .map(str::to_owned)
        .or_else(|| settings.database.url.as_ref().map(|url| url.expose().to_owned()))
        .context("no database configured; set DATABASE_URL, pass --database-url or set url in [database]")?;
    let size = settings
        .database
        .max_connections
        .max(settings.required_connections());
    crate::db::connect(&url, size, settings.database.acquire_timeout.to_std()).await
}

async fn build_worker(
    pool: PgPool,
    settings: &Settings,
    transport: TransportKind,
) -> anyhow::Result<Worker> {
    let transport = Transport::from_settings(settings, transport)?;
    Worker::new(pool, settings, transport)
}

async fn run_daemon(pool: PgPool, settings: &Settings) -> anyhow::Result<()> {
    crate::db::ensure_migrated(&pool).await?;
    let worker = build_worker(pool, settings, settings.daemon_transport()).await?;
    let grace = settings.daemon.shutdown_grace.to_std();

    // One signal stops both the scheduler and the HTTP server.
    let (trigger, shutdown) = Shutdown::channel();
    tokio::spawn(async move {
        crate::daemon::shutdown_signal().await;
        trigger.trigger();
    });
    if settings.http.enabled {
        crate::support_page::check_exposure(settings.http.address.0, &settings.support)?;
    }
    let state = http::AppState {
        pool: crate::db::probe_pool(&worker.pool),
        metrics: worker.metrics().clone(),
    };
    let routes = http::router(state).merge(crate::support_page::routes(
        worker.pool.clone(),
        &settings.support,
    )?);
    let server = http::start(&settings.http, routes, shutdown.clone()).await?;

    let mut stopping = shutdown;
    crate::daemon::run(worker, &settings.schedule, grace, async move {
        stopping.requested().await;
    })
    .await?;
    server.join(grace).await;
    Ok(())
}

/// How far ahead of the clock `run-once --now` may be, for clock skew.
const FUTURE_TOLERANCE_MINUTES: i64 = 5;

/// Rejects a `run-once --now` in the future. Digests recorded for a later
/// instant are sent at once and count for that day, so the real tick of
/// that day would send none.
fn reject_future(now: DateTime<Utc>) -> anyhow::Result<()> {
    if now > Utc::now() + chrono::Duration::minutes(FUTURE_TOLERANCE_MINUTES) {
        anyhow::bail!(
            "invalid --now {}: it is in the future, and run-once would send that day's digests now; use `preview --provider ID --now ...` to see what would be sent then",
            now.to_rfc3339()
        );
    }
    Ok(())
}

async fn run_once(
    pool: PgPool,
    settings: &Settings,
    job: JobChoice,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    crate::db::ensure_migrated(&pool).await?;
    let worker = build_worker(pool, settings, settings.daemon_transport()).await?;
    let mut out = std::io::stdout().lock();
    if matches!(job, JobChoice::Reminders | JobChoice::All) {
        let run = worker.run_reminders(now).await?;
        writeln!(
            out,
            "{}: {}",
            JobName::Reminders,
            serde_json::to_string(&run)?
        )?;
    }
    if matches!(job, JobChoice::Flags | JobChoice::All) {
        let run = worker.run_flags(now).await?;
        writeln!(out, "{}: {}", JobName::Flags, serde_json::to_string(&run)?)?;
    }
    if matches!(job, JobChoice::SupportDigest | JobChoice::All) {
        let run = worker.run_support_digest(now).await?;
        writeln!(
            out,
            "{}: {}",
            JobName::SupportDigest,
            serde_json::to_string(&run)?
        )?;
    }
    Ok(())
}

async fn status_command(
    pool: &PgPool,
    settings: &Settings,
    format: StatusFormat,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    crate::db::ensure_migrated(pool).await?;
    let status = crate::status::load(pool, settings, now).await?;
    let mut out = std::io::stdout().lock();
    match format {
        StatusFormat::Table => crate::status::write_table(&mut out, &status),
        StatusFormat::Json => crate::status::write_json(&mut out, &status),
    }
}

async fn preview_command(
    pool: &PgPool,
    settings: &Settings,
    provider_id: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    crate::db::ensure_migrated(pool).await?;
    let preview = crate::preview::preview(pool, settings, provider_id, now).await?;
    crate::preview::write(&mut std::io::stdout().lock(), &preview, now)
}

async fn flags_command(pool: &PgPool, args: FlagsArgs) -> anyhow::Result<()> {
    crate::db::ensure_migrated(pool).await?;
    // PostgreSQL keeps microseconds; rounding here lets `now` compare equal
    // to what it stores.
    let now = Utc::now().trunc_subsecs(6);
    match args.action {
        Some(FlagAction::Ack { id, by }) => {
            let by = who(by)?;
            let first = crate::flags::acknowledge(pool, id, &by, now).await?;
            if first.by == by && first.at == now {
                println!("flag {id} acknowledged by {by}");
            } else {
                println!(
                    "flag {id} was already acknowledged by {} at {}",
                    first.by,
                    first.at.to_rfc3339()
                );
            }
        }
        Some(FlagAction::Resolve { id, note, by }) => {
            let by = who(by)?;
            crate::flags::resolve(pool, id, &by, &note, now).await?;
            println!("flag {id} resolved by {by}");
        }
        None => {
            let filter = ReportFilter {
                kind: args.kind,
                all: args.all,
                ..ReportFilter::default()
            };
            let rows = report::load(pool, &filter, now).await?;
            let mut out = std::io::stdout().lock();
            match args.format {
                Format::Table => report::write_table(&mut out, &rows)?,
                Format::Csv => report::write_csv(&mut out, &rows)?,
                Format::Json => report::write_json(&mut out, &rows)?,
            }
        }
    }
    Ok(())
}

/// Returns the name to record on an acknowledgement or resolution.
fn who(by: Option<String>) -> anyhow::Result<String> {
    let Some(name) = by.or_else(|| std::env::var("USER").ok()) else {
        anyhow::bail!("missing --by: pass --by NAME, because $USER is not set");
    };
    let name = name.trim();
    if name.is_empty() || name.chars().any(char::is_control) || name.chars().count() > 100 {
        anyhow::bail!("invalid --by {name:?}; give a name of 1 to 100 printable characters");
    }
    Ok(name.to_owned())
}
