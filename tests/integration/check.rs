//! The `check` command: one line per check, a failure line that tells
//! what to do, a non-zero exit code when any check fails, and no message sent.

use std::path::Path;

use sqlx::PgPool;

use crate::helpers::{database_url, output_of, smtp_config, steward};
use crate::smtp::{LoginListener, SmtpServer, start_closing_listener};

/// Returns the line of check `name`, which starts with its status.
fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{stdout}"))
}

fn status_of<'a>(stdout: &'a str, name: &str) -> &'a str {
    line(stdout, name)
        .split_whitespace()
        .next()
        .expect("a status word")
}

fn check(database_url: &str, config: &Path) -> (std::process::ExitStatus, String, String) {
    output_of(
        steward(database_url)
            .arg("--config")
            .arg(config)
            .arg("check"),
    )
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn check_passes_and_sends_nothing(pool: PgPool) {
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = smtp_config(dir.path(), server.port, "");

    let (status, stdout, stderr) = check(&database_url(&pool).await, &config);

    assert!(status.success(), "check failed:\n{stdout}{stderr}");
    let names = [
        "configuration",
        "templates",
        "database",
        "migrations",
        "privileges",
        "smtp",
    ];
    for name in names {
        assert_eq!(status_of(&stdout, name), "ok", "{name}:\n{stdout}");
    }
    assert_eq!(stdout.lines().count(), names.len(), "one line per check");
    assert!(
        line(&stdout, "smtp").contains("greeting and EHLO accepted"),
        "{stdout}"
    );
    assert_eq!(server.attempts(), 0, "no message started");
    assert!(server.messages().is_empty(), "no message sent");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn check_logs_in_without_sending(pool: PgPool) {
    let server = LoginListener::start("steward", "correct-horse");
    let dir = tempfile::tempdir().unwrap();
    let config = smtp_config(dir.path(), server.port, "username = \"steward\"\n");
    let url = database_url(&pool).await;

    let accepted = output_of(
        steward(&url)
            .env("SESSION_STEWARD_SMTP__PASSWORD", "correct-horse")
            .arg("--config")
            .arg(&config)
            .arg("check"),
    );
    let rejected = output_of(
        steward(&url)
            .env("SESSION_STEWARD_SMTP__PASSWORD", "wrong-horse")
            .arg("--config")
            .arg(&config)
            .arg("check"),
    );

    let (status, stdout, stderr) = accepted;
    assert!(status.success(), "check failed:\n{stdout}{stderr}");
    assert!(
        line(&stdout, "smtp").contains("greeting and EHLO, login accepted"),
        "{stdout}"
    );
    let (status, stdout, stderr) = rejected;
    assert!(!status.success(), "a rejected login fails the check");
    assert_eq!(status_of(&stdout, "smtp"), "FAIL", "{stdout}");
    let smtp = line(&stdout, "smtp");
    assert!(smtp.contains("SMTP login failed"), "{smtp}");
    assert!(smtp.contains("535"), "the server's reply: {smtp}");
    assert!(
        smtp.contains("SESSION_STEWARD_SMTP__PASSWORD"),
        "says what to check: {smtp}"
    );
    assert!(
        !stdout.contains("wrong-horse") && !stderr.contains("wrong-horse"),
        "password never printed"
    );
    assert_eq!(server.mail_commands(), 0, "no message started");
}

#[sqlx::test(migrations = false)]
async fn check_reports_each_failure(pool: PgPool) {
    let closing_port = start_closing_listener();
    let dir = tempfile::tempdir().unwrap();
    let config = smtp_config(dir.path(), closing_port, "");

    let (status, stdout, stderr) = check(&database_url(&pool).await, &config);

    assert!(!status.success(), "failures give a non-zero exit code");
    assert_eq!(status_of(&stdout, "configuration"), "ok", "{stdout}");
    assert_eq!(status_of(&stdout, "database"), "ok", "{stdout}");
    assert_eq!(status_of(&stdout, "migrations"), "FAIL", "{stdout}");
    assert!(
        line(&stdout, "migrations").contains("run `session-steward migrate`"),
        "says what to do: {stdout}"
    );
    assert_eq!(status_of(&stdout, "privileges"), "skip", "{stdout}");
    assert_eq!(status_of(&stdout, "smtp"), "FAIL", "{stdout}");
    assert!(
        line(&stdout, "smtp").contains("SMTP greeting or EHLO failed"),
        "names the step: {stdout}"
    );
    assert!(
        stderr.contains("2 of 6 checks failed"),
        "summary on standard error: {stderr}"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn check_starttls_missing_on_server(pool: PgPool) {
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = smtp_config(dir.path(), server.port, "tls = \"starttls\"\n");

    let (status, stdout, _) = check(&database_url(&pool).await, &config);

    assert!(!status.success(), "STARTTLS configured but not offered");
    let smtp = line(&stdout, "smtp");
    assert!(smtp.contains("SMTP STARTTLS failed"), "{smtp}");
    assert!(smtp.contains("smtp.tls"), "says what to change: {smtp}");
}

#[test]
fn check_without_database_or_outbox() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the outbox's parent folder should be.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nacquire_timeout = \"2s\"\n\n[email]\ntransport = \"file\"\n\n[file]\ndirectory = \"{}\"\n",
            blocker.join("outbox").display()
        ),
    )
    .unwrap();

    let (status, stdout, _) = check("postgres://postgres@127.0.0.1:1/nothing", &config);

    assert!(!status.success(), "failures give a non-zero exit code");
    assert_eq!(status_of(&stdout, "templates"), "ok", "{stdout}");
    assert_eq!(status_of(&stdout, "database"), "FAIL", "{stdout}");
    assert!(
        line(&stdout, "database").contains("check DATABASE_URL"),
        "says what to do: {stdout}"
    );
    assert_eq!(status_of(&stdout, "migrations"), "skip", "{stdout}");
    assert_eq!(status_of(&stdout, "privileges"), "skip", "{stdout}");
    let outbox = stdout
        .lines()
        .find(|line| line.contains("file transport"))
        .unwrap_or_else(|| panic!("no file transport line in:\n{stdout}"));
    assert!(outbox.starts_with("FAIL"), "{outbox}");
    assert!(outbox.contains("not writable"), "{outbox}");
}

#[test]
fn check_invalid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[log]\nformat = \"xml\"\n").unwrap();

    let (status, stdout, stderr) = check("postgres://postgres@127.0.0.1:1/nothing", &config);

    assert!(!status.success(), "an invalid configuration fails");
    assert_eq!(status_of(&stdout, "configuration"), "FAIL", "{stdout}");
    assert!(line(&stdout, "configuration").contains("xml"), "{stdout}");
    assert!(stderr.starts_with("error:"), "{stderr}");
}
