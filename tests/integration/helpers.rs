//! Fixtures: rows in the platform's tables, settings pointing at the test
//! SMTP server, and a worker built from them.

use chrono::{DateTime, Duration, TimeZone, Utc};
use session_steward::config::{Settings, SmtpSettings, TransportKind};
use session_steward::email::Transport;
use session_steward::jobs::Worker;
use sqlx::PgPool;

use crate::smtp::SmtpServer;

/// Friday 4 December 2026, 10:00 in Los Angeles: inside the default send
/// window there, and a fixed point that tests move forward from.
pub fn friday_morning_los_angeles() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 18, 0, 0).unwrap()
}

/// Default settings with SMTP pointed at `server`.
pub fn settings_for(server: &SmtpServer) -> Settings {
    let mut settings = Settings::default();
    settings.email.transport = Some(TransportKind::Smtp);
    settings.smtp = Some(SmtpSettings {
        host: "127.0.0.1".to_owned(),
        port: server.port,
        ..SmtpSettings::default()
    });
    settings
}

pub fn worker(pool: &PgPool, settings: &Settings) -> Worker {
    let transport =
        Transport::from_settings(settings, TransportKind::Smtp).expect("SMTP transport builds");
    Worker::new(pool.clone(), settings, transport).expect("worker builds")
}

pub async fn provider(pool: &PgPool, name: &str, email: Option<&str>, time_zone: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO providers (name, email, time_zone) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(name)
    .bind(email)
    .bind(time_zone)
    .fetch_one(pool)
    .await
    .expect("insert provider")
}

/// Inserts a member with one allotment of `total` sessions whose period runs from
/// 100 days before to 200 days after `now`. Returns (member id, allotment id).
pub async fn member(pool: &PgPool, name: &str, total: i32, now: DateTime<Utc>) -> (i64, i64) {
    let member_id: i64 = sqlx::query_scalar("INSERT INTO members (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("insert member");
    let allotment_id: i64 = sqlx::query_scalar(
        "INSERT INTO allotments (member_id, period_start, period_end, sessions_total) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(member_id)
    .bind(now - Duration::days(100))
    .bind(now + Duration::days(200))
    .bind(total)
    .fetch_one(pool)
    .await
    .expect("insert allotment");
    (member_id, allotment_id)
}

/// Inserts a scheduled 50-minute session that ends at `ends_at`.
pub async fn session(
    pool: &PgPool,
    provider_id: i64,
    member: (i64, i64),
    ends_at: DateTime<Utc>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO sessions (provider_id, member_id, allotment_id, starts_at, ends_at, status_changed_at)
         VALUES ($1, $2, $3, $4, $5, $4 - interval '7 days') RETURNING id",
    )
    .bind(provider_id)
    .bind(member.0)
    .bind(member.1)
    .bind(ends_at - Duration::minutes(50))
    .bind(ends_at)
    .fetch_one(pool)
    .await
    .expect("insert session")
}

pub async fn set_status(pool: &PgPool, session_id: i64, status: &str) {
    sqlx::query(
        "UPDATE sessions SET status = $2::session_status, status_changed_at = now() WHERE id = $1",
    )
    .bind(session_id)
    .bind(status)
    .execute(pool)
    .await
    .expect("update session status");
}

/// Session ids in every digest recorded for `provider_id`, by digest.
pub async fn digest_sessions(pool: &PgPool, provider_id: i64) -> Vec<Vec<i64>> {
    let rows: Vec<(i64, Vec<i64>)> = sqlx::query_as(
        "SELECT r.id, array_agg(ri.session_id ORDER BY ri.session_id)
         FROM reminders r JOIN reminder_items ri ON ri.reminder_id = r.id
         WHERE r.provider_id = $1 GROUP BY r.id ORDER BY r.id",
    )
    .bind(provider_id)
    .fetch_all(pool)
    .await
    .expect("query digests");
    rows.into_iter().map(|(_, sessions)| sessions).collect()
}

/// Returns the server URL from DATABASE_URL with another database name.
pub fn url_with_database(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for the tests");
    let (server, _) = base
        .rsplit_once('/')
        .expect("DATABASE_URL has a database path");
    format!("{server}/{name}")
}

/// Returns the URL of the database behind `pool`, for child processes.
pub async fn database_url(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("query database name");
    url_with_database(&name)
}

/// Drops database `name` if it exists, closing its connections.
pub async fn drop_database(name: &str) {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(&url_with_database("postgres"))
        .await
        .expect("connect to the postgres database");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut connection)
        .await
        .expect("drop the database");
}

/// Path of the binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_session-steward");

/// Returns a command that runs the binary on `database_url`. The test's
/// own `SESSION_STEWARD_` variables and `RUST_LOG` are removed, so only the
/// arguments configure the child.
pub fn steward(database_url: &str) -> std::process::Command {
    let mut command = std::process::Command::new(BINARY);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SESSION_STEWARD_") {
            command.env_remove(key);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", database_url);
    command
}

/// Writes a configuration that sends through the SMTP server on `port` at
/// 127.0.0.1, with `extra` TOML appended, and returns its path.
pub fn smtp_config(dir: &std::path::Path, port: u16, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let contents = format!(
        "[email]\ntransport = \"smtp\"\n\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntimeout = \"2s\"\nsend_timeout = \"5s\"\n{extra}"
    );
    std::fs::write(&path, contents).expect("write the configuration file");
    path
}

/// Runs `command` and returns its exit status, standard output and
/// standard error.
pub fn output_of(
    command: &mut std::process::Command,
) -> (std::process::ExitStatus, String, String) {
    let output = command.output().expect("run the binary");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
