//! The `check` command: checks, before a deploy, what the daemon needs at
//! start and on its first tick. Prints one line per check and fails if any
//! check failed.

use std::io::Write;

use chrono::{Duration, SubsecRound, Utc};
use lettre::message::Mailbox;
use sqlx::PgPool;

use crate::compose::{Composer, DigestSession};
use crate::config::{Settings, TransportKind};
use crate::email::Transport;
use crate::recipient::Recipient;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, with what was checked.
    Passed(String),
    /// Failed, with what failed and what to do.
    Failed(String),
    /// Not run because an earlier check failed.
    Skipped(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct CheckLine {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl CheckLine {
    fn passed(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Passed(detail.into()),
        }
    }

    fn failed(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Failed(detail.into()),
        }
    }

    fn skipped(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Skipped(detail.into()),
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }
}

/// Runs every check in order: configuration, templates, database,
/// migrations, table privileges, then the transport `run` uses. `database`
/// is the result of connecting, so a connection failure becomes a line.
pub async fn run(
    settings: &Settings,
    config_source: &str,
    database: anyhow::Result<PgPool>,
) -> Vec<CheckLine> {
    let transport_kind = settings.daemon_transport();
    let mut lines = vec![CheckLine::passed(
        "configuration",
        format!(
            "{config_source}; transport {}",
            describe_transport(settings, transport_kind)
        ),
    )];
    lines.push(check_templates(settings));
    lines.extend(check_database(database).await);
    lines.push(check_transport(settings, transport_kind).await);
    lines
}

/// Returns the line for a configuration that did not load. The other
/// checks need a configuration, so they do not run.
pub fn configuration_failed(error: &anyhow::Error) -> CheckLine {
    CheckLine::failed(
        "configuration",
        format!(
            "{error:#}; fix the key named here in the file or in its SESSION_STEWARD_ variable"
        ),
    )
}

/// Writes one line per check, such as `ok    database  connected to …`.
pub fn write(out: &mut impl Write, lines: &[CheckLine]) -> std::io::Result<()> {
    let width = lines.iter().map(|line| line.name.len()).max().unwrap_or(0);
    for line in lines {
        let (label, detail) = match &line.outcome {
            Outcome::Passed(detail) => ("ok", detail),
            Outcome::Failed(detail) => ("FAIL", detail),
            Outcome::Skipped(detail) => ("skip", detail),
        };
        writeln!(out, "{label:<4}  {:<width$}  {detail}", line.name)?;
    }
    Ok(())
}

fn describe_transport(settings: &Settings, kind: TransportKind) -> String {
    match (kind, &settings.smtp) {
        (TransportKind::Smtp, Some(smtp)) => format!("smtp to {}:{}", smtp.host, smtp.port),
        (TransportKind::Smtp, None) => {
            "smtp to localhost:25 (the defaults, as there is no [smtp] section)".to_owned()
        }
        (TransportKind::File, _) => format!("file in {}", settings.file.directory.display()),
    }
}

/// Renders a digest of two sessions for a sample provider, through the
/// same code as a real one, so a template or address error shows up here.
fn check_templates(settings: &Settings) -> CheckLine {
    const NAME: &str = "templates";
    let composer = match Composer::new(settings) {
        Ok(composer) => composer,
        Err(error) => {
            return CheckLine::failed(NAME, format!("{error:#}; fix the template and rebuild"));
        }
    };
    let now = Utc::now().trunc_subsecs(0);
    let session_end = |days: i64| now - Duration::days(days);
    let sessions: Vec<DigestSession> = [(1, 6), (2, 9)]
        .into_iter()
        .map(|(session_id, days)| DigestSession {
            session_id,
            starts_at: session_end(days) - Duration::minutes(50),
            ends_at: session_end(days),
            member_name: "Sample Member".to_owned(),
        })
        .collect();
    let recipient = Recipient {
        provider_id: 1,
        mailbox: "Sample Provider <provider@example.org>"
            .parse::<Mailbox>()
            .expect("the sample address is valid"),
        time_zone: chrono_tz::Europe::Berlin,
    };
    match composer.digest("digest-1-sample", &recipient, &sessions, now) {
        Ok(_) => CheckLine::passed(NAME, "sample digest rendered as plain text and HTML"),
        Err(error) => CheckLine::failed(
            NAME,
            format!("{error:#}; check email.from, email.support_mailbox and email.dashboard_url"),
        ),
    }
}

async fn check_database(database: anyhow::Result<PgPool>) -> Vec<CheckLine> {
    let pool = match database {
        Ok(pool) => pool,
        Err(error) => {
            return vec![
                CheckLine::failed("database", format!("{error:#}")),
                CheckLine::skipped("migrations", "not checked without a database connection"),
                CheckLine::skipped("privileges", "not checked without a database connection"),
            ];
        }
    };
    let mut lines = Vec::new();
    let identity: Result<(String, String), sqlx::Error> =
        sqlx::query_as("SELECT current_user::text, current_database()::text")
            .fetch_one(&pool)
            .await;
    lines.push(match identity {
        Ok((user, database)) => CheckLine::passed(
            "database",
            format!("connected to \"{database}\" as \"{user}\""),
        ),
        Err(error) => CheckLine::failed(
            "database",
            format!(
                "connected, but a query failed: {error}; check that PostgreSQL accepts queries"
            ),
        ),
    });

    let status = match crate::db::migration_status(&pool).await {
        Ok(status) => status,
        Err(error) => {
            lines.push(CheckLine::failed("migrations", format!("{error:#}")));
            lines.push(CheckLine::skipped(
                "privileges",
                "not checked until the migrations can be read",
            ));
            return lines;
        }
    };
    let applied = crate::db::MIGRATOR.iter().count() - status.missing.len();
    let migrations = if !status.missing.is_empty() {
        CheckLine::failed(
            "migrations",
            format!(
                "{} of {} migrations missing ({}); run `session-steward migrate` as the owner of the tables",
                status.missing.len(),
                crate::db::MIGRATOR.iter().count(),
                join_versions(&status.missing)
            ),
        )
    } else if !status.modified.is_empty() {
        CheckLine::failed(
            "migrations",
            format!(
                "migration(s) {} changed after they were applied; deploy the release that applied them, or restore the files",
                join_versions(&status.modified)
            ),
        )
    } else if !status.unknown.is_empty() {
        CheckLine::passed(
            "migrations",
            format!(
                "all {applied} applied; the database also has {} from a newer release",
                join_versions(&status.unknown)
            ),
        )
    } else {
        CheckLine::passed("migrations", format!("all {applied} applied"))
    };
    let missing = !status.missing.is_empty();
    lines.push(migrations);

    lines.push(if missing {
        CheckLine::skipped("privileges", "not checked until the migrations are applied")
    } else {
        check_privileges(&pool).await
    });
    lines
}

fn join_versions(versions: &[i64]) -> String {
    let texts: Vec<String> = versions.iter().map(i64::to_string).collect();
    texts.join(", ")
}

/// The platform's tables and view, which the jobs only read.
const PLATFORM_TABLES: [&str; 5] = [
    "providers",
    "members",
    "allotments",
    "sessions",
    "allotment_balances",
];

/// The worker's own tables, which the jobs read and write.
const WORKER_TABLES: [&str; 5] = [
    "reminders",
    "reminder_items",
    "support_digests",
    "flags",
    "job_runs",
];

/// Checks that the connected role has every privilege the jobs use, so
/// a missing grant shows up here rather than in the first tick.
async fn check_privileges(pool: &PgPool) -> CheckLine {
    const NAME: &str = "privileges";
    // has_table_privilege is true when any privilege of a list is held, so
    // each privilege gets a row of its own.
    let mut required: Vec<(&str, &str)> = PLATFORM_TABLES
        .iter()
        .map(|table| (*table, "SELECT"))
        .collect();
    for table in WORKER_TABLES {
        required.extend(["SELECT", "INSERT", "UPDATE"].map(|privilege| (table, privilege)));
    }
    required.push(("_sqlx_migrations", "SELECT"));
    let (tables, privileges): (Vec<&str>, Vec<&str>) = required.into_iter().unzip();

    let missing: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
        "SELECT required.table_name || ' (' || required.privilege || ')'
         FROM unnest($1::text[], $2::text[]) AS required(table_name, privilege)
         WHERE NOT has_table_privilege(required.table_name, required.privilege)",
    )
    .bind(&tables)
    .bind(&privileges)
    .fetch_all(pool)
    .await;
    match missing {
        Ok(missing) if missing.is_empty() => CheckLine::passed(
            NAME,
            "reads the platform's tables, reads and writes the worker's tables",
        ),
        Ok(missing) => CheckLine::failed(
            NAME,
            format!(
                "the database role lacks {}; apply deploy/least-privilege.sql as the owner of the tables",
                missing.join(", ")
            ),
        ),
        Err(error) => CheckLine::failed(
            NAME,
            format!("failed to read the role's privileges: {error}"),
        ),
    }
}

async fn check_transport(settings: &Settings, kind: TransportKind) -> CheckLine {
    let name = match kind {
        TransportKind::Smtp => "smtp",
        TransportKind::File => "file transport",
    };
    let transport = match Transport::from_settings(settings, kind) {
        Ok(transport) => transport,
        Err(error) => return CheckLine::failed(name, format!("{error:#}")),
    };
    match transport.check().await {
        Ok(detail) => CheckLine::passed(name, detail),
        Err(error) => CheckLine::failed(name, error.to_string()),
    }
}
