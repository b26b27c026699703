//! No personal data in logs or metrics. The demo runs as a child process
//! with `RUST_LOG=debug`, then a worker runs every job on the demo's
//! database. Every log line and every line of the metrics the worker would
//! serve is checked against the names and email addresses in the dataset.
//!
//! Each place that could leak is a [`LineSource`] in the list that
//! `assert_no_personal_data` checks.

use chrono::{TimeZone, Utc};
use regex::Regex;
use session_steward::config::MailboxList;
use sqlx::PgPool;

use crate::helpers::{drop_database, settings_for, steward, url_with_database, worker};
use crate::smtp::SmtpServer;

/// Lines from one place that must carry no personal data.
struct LineSource {
    name: String,
    lines: Vec<String>,
}

/// Names and addresses of the generated dataset.
struct PersonalData {
    names: Vec<String>,
    emails: Vec<String>,
}

/// Anything shaped like an email address.
fn email_pattern() -> Regex {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("the pattern is valid")
}

/// Tells whether `line` is a log line as the text or the JSON format
/// writes it: a timestamp and a level, or a JSON object with a level.
fn is_log_line(line: &str) -> bool {
    let text = Regex::new(
        r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s",
    )
    .expect("the pattern is valid");
    let json = serde_json::from_str::<serde_json::Value>(line)
        .is_ok_and(|value| value.get("level").is_some());
    text.is_match(line) || json
}

async fn personal_data(pool: &PgPool) -> PersonalData {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM members WHERE name IS NOT NULL
         UNION SELECT name FROM providers WHERE name IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .expect("read names");
    let emails: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT trim(email) FROM providers WHERE trim(email) <> ''")
            .fetch_all(pool)
            .await
            .expect("read email addresses");
    // A JSON log line escapes control characters and quotes, so each
    // value is also searched for in its escaped form.
    let with_escaped = |values: Vec<String>| -> Vec<String> {
        let mut all = Vec::new();
        for value in values {
            let value = value.trim().to_owned();
            if value.is_empty() {
                continue;
            }
            let quoted = serde_json::to_string(&value).expect("a string serializes");
            let escaped = quoted[1..quoted.len() - 1].to_owned();
            if escaped != value {
                all.push(escaped);
            }
            all.push(value);
        }
        all
    };
    PersonalData {
        names: with_escaped(names),
        emails: with_escaped(emails),
    }
}

/// Fails on the first line of any source that contains a name, an address
/// of the dataset, or anything shaped like an email address.
fn assert_no_personal_data(sources: &[LineSource], personal: &PersonalData) {
    let pattern = email_pattern();
    for source in sources {
        for line in &source.lines {
            if let Some(name) = personal
                .names
                .iter()
                .find(|name| line.contains(name.as_str()))
            {
                panic!(
                    "{}: member or provider name {name:?} in {line:?}",
                    source.name
                );
            }
            if let Some(email) = personal
                .emails
                .iter()
                .find(|email| line.contains(email.as_str()))
            {
                panic!("{}: email address {email:?} in {line:?}", source.name);
            }
            if let Some(found) = pattern.find(line) {
                panic!(
                    "{}: something shaped like an email address, {:?}, in {line:?}",
                    source.name,
                    found.as_str()
                );
            }
        }
    }
}

/// Runs the demo with debug logging in `format` and returns its log lines:
/// all of standard error, and the lines of standard output that are logs.
fn demo_log_lines(database_url: &str, format: &str) -> Vec<LineSource> {
    let workdir = tempfile::tempdir().expect("create a working directory");
    // The demo never reads DATABASE_URL, which `steward` sets.
    let output = steward(database_url)
        .current_dir(workdir.path())
        .env("RUST_LOG", "debug")
        .env("SESSION_STEWARD_LOG__FORMAT", format)
        .args([
            "demo",
            "--reset",
            "--now",
            "2026-12-04T19:00:00Z",
            "--database-url",
        ])
        .arg(database_url)
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {stderr}");
    assert!(
        stdout.contains("Open flags"),
        "the demo printed its report: {stdout}"
    );

    vec![
        LineSource {
            name: format!("standard error ({format})"),
            lines: stderr.lines().map(str::to_owned).collect(),
        },
        LineSource {
            name: format!("log lines on standard output ({format})"),
            lines: stdout
                .lines()
                .filter(|line| is_log_line(line))
                .map(str::to_owned)
                .collect(),
        },
    ]
}

/// Runs every job once more on the demo's database, with the support
/// digest on, and returns the metrics as `/metrics` would serve them.
async fn metric_lines(pool: &PgPool) -> LineSource {
    let smtp = SmtpServer::start();
    let mut settings = settings_for(&smtp);
    settings.support_digest.recipients = MailboxList(vec![
        "support@example.test".parse().expect("a valid address"),
    ]);
    let worker = worker(pool, &settings);
    // A day after the demo's instant, in the support digest's Monday slot.
    let now = Utc.with_ymd_and_hms(2026, 12, 7, 16, 0, 0).unwrap();
    worker.run_reminders(now).await.expect("reminders run");
    worker.run_flags(now).await.expect("flags run");
    worker
        .run_support_digest(now)
        .await
        .expect("support digest runs");
    let text = worker.metrics().encode().expect("metrics encode");
    assert!(
        text.contains("session_steward_open_flags{kind=\"stale_hold\"}"),
        "the gauges were refreshed: {text}"
    );
    LineSource {
        name: "metrics".to_owned(),
        lines: text.lines().map(str::to_owned).collect(),
    }
}

#[tokio::test]
async fn demo_logs_carry_no_personal_data() {
    let database = format!("session_steward_privacy_test_{}", std::process::id());
    let url = url_with_database(&database);
    drop_database(&database).await;

    let mut sources = demo_log_lines(&url, "json");
    // The second run recreates the same dataset, since the seed and the
    // instant are fixed.
    sources.extend(demo_log_lines(&url, "text"));
    let pool = PgPool::connect(&url)
        .await
        .expect("connect to the demo database");
    let personal = personal_data(&pool).await;
    sources.push(metric_lines(&pool).await);
    pool.close().await;
    drop_database(&database).await;

    let debug_lines = sources[2]
        .lines
        .iter()
        .filter(|line| line.contains(" DEBUG "))
        .count();
    assert!(
        debug_lines > 100,
        "debug logging was on: {debug_lines} lines"
    );
    assert!(
        personal.names.len() > 100,
        "distinct names read from the dataset"
    );
    assert!(
        personal.emails.len() > 100,
        "addresses read from the dataset"
    );
    assert!(
        personal
            .emails
            .iter()
            .filter(|email| email.contains('@'))
            .all(|email| email_pattern().is_match(email)),
        "the pattern matches every address of the dataset"
    );
    assert_no_personal_data(&sources, &personal);
}
