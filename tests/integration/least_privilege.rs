//! `deploy/least-privilege.sql`: every command the daemon and support run
//! works as the role it creates, and that role cannot write the platform's
//! tables.
//!
//! Roles belong to the whole PostgreSQL cluster, so each test creates one
//! with a unique name and drops it at the end, even when an assert fails.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{
    database_url, friday_morning_los_angeles, member, output_of, provider, session, smtp_config,
    steward,
};
use crate::smtp::SmtpServer;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/least-privilege.sql");

/// SQLSTATE insufficient_privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// A login role for one test. Dropping it revokes its privileges in the
/// test database and drops the role.
struct TestRole {
    name: String,
    owner_url: String,
}

impl TestRole {
    fn new(owner_url: &str) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Self {
            name: format!("steward_test_{}", &suffix[..12]),
            owner_url: owner_url.to_owned(),
        }
    }

    /// Returns `owner_url` with this role as the user, which trust
    /// authentication on the test server lets in without a password.
    fn url(&self) -> String {
        let (scheme, rest) = self
            .owner_url
            .split_once("://")
            .expect("the URL has a scheme");
        let (_, host_and_database) = rest.split_once('@').expect("the URL names a user");
        format!("{scheme}://{}@{host_and_database}", self.name)
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let _ = psql(&self.owner_url)
            .args(["-c", &format!("DROP OWNED BY {}", self.name)])
            .args(["-c", &format!("DROP ROLE IF EXISTS {}", self.name)])
            .output();
    }
}

fn psql(url: &str) -> Command {
    let mut command = Command::new("psql");
    command.args(["--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", url]);
    command
}

/// Applies the script as the owner of the tables.
fn apply_script(role: &TestRole) {
    let output = psql(&role.owner_url)
        .args(["-v", &format!("role={}", role.name), "-f", SCRIPT])
        .output()
        .expect("run psql; the PostgreSQL client must be installed");
    assert!(
        output.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs the binary as `role` with `config`, asserts that it succeeds and
/// returns its standard output.
fn run_as(role: &TestRole, config: &Path, args: &[&str]) -> String {
    let (status, stdout, stderr) =
        output_of(steward(&role.url()).arg("--config").arg(config).args(args));
    assert!(
        status.success(),
        "`{}` failed as {}:\n{stdout}{stderr}",
        args.join(" "),
        role.name
    );
    stdout
}

/// Inserts one provider with a session overdue at `now` and one with a
/// session past `stale_after`, which the flag job flags.
async fn seed(pool: &PgPool, now: DateTime<Utc>) -> i64 {
    let provider_id = provider(
        pool,
        "Ada Lovelace",
        Some("ada@example.org"),
        "America/Los_Angeles",
    )
    .await;
    let jane = member(pool, "Jane Doe", 20, now).await;
    session(pool, provider_id, jane, now - Duration::days(6)).await;
    session(pool, provider_id, jane, now - Duration::days(20)).await;
    provider_id
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn role_runs_every_command(pool: PgPool) {
    let now = friday_morning_los_angeles();
    let provider_id = seed(&pool, now).await;
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = smtp_config(
        dir.path(),
        server.port,
        "\n[support_digest]\nrecipients = [\"support@example.org\"]\n",
    );
    let role = TestRole::new(&database_url(&pool).await);
    let at = |instant: DateTime<Utc>| instant.to_rfc3339();

    // Twice: the second run updates the role it created.
    apply_script(&role);
    apply_script(&role);

    let reminders = run_as(
        &role,
        &config,
        &["run-once", "reminders", "--now", &at(now)],
    );
    assert!(reminders.contains("\"digests_sent\":1"), "{reminders}");
    assert_eq!(
        server.messages().len(),
        1,
        "the digest reached the SMTP server"
    );
    let flags = run_as(&role, &config, &["run-once", "flags", "--now", &at(now)]);
    assert!(flags.contains("\"stale_hold\":1"), "{flags}");
    let support_digest = run_as(
        &role,
        &config,
        &["run-once", "support-digest", "--now", &at(now)],
    );
    assert!(
        support_digest.contains("\"digests_sent\":1"),
        "{support_digest}"
    );
    assert_eq!(
        server.messages().len(),
        2,
        "the support digest reached the SMTP server"
    );
    let flag_id: i64 = sqlx::query_scalar("SELECT id FROM flags WHERE kind = 'stale_hold'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let flag = flag_id.to_string();
    run_as(&role, &config, &["flags", "ack", &flag, "--by", "tester"]);
    run_as(
        &role,
        &config,
        &[
            "flags",
            "resolve",
            &flag,
            "--note",
            "cancelled by support",
            "--by",
            "tester",
        ],
    );
    let resolution: Option<String> =
        sqlx::query_scalar("SELECT resolution::text FROM flags WHERE id = $1")
            .bind(flag_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(resolution.as_deref(), Some("resolved_by_support"));
    let report = run_as(&role, &config, &["flags", "--all"]);
    assert!(report.contains("resolved_by_support"), "{report}");
    let status = run_as(&role, &config, &["status", "--now", &at(now)]);
    assert!(
        status
            .lines()
            .any(|line| line.starts_with("reminders ") && line.contains("succeeded")),
        "{status}"
    );
    let monday = now + Duration::days(3);
    let preview = run_as(
        &role,
        &config,
        &[
            "preview",
            "--provider",
            &provider_id.to_string(),
            "--now",
            &at(monday),
        ],
    );
    assert!(preview.contains("Subject: Reminder:"), "{preview}");
    let check = run_as(&role, &config, &["check"]);
    assert!(
        check.lines().all(|line| line.starts_with("ok")),
        "every check passes as the role:\n{check}"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn role_cannot_write_platform_tables(pool: PgPool) {
    let now = friday_morning_los_angeles();
    seed(&pool, now).await;
    let role = TestRole::new(&database_url(&pool).await);
    apply_script(&role);
    let mut connection = PgConnection::connect(&role.url())
        .await
        .expect("connect as the role");

    let denied = [
        "UPDATE sessions SET status = 'completed'",
        "INSERT INTO providers (name) VALUES ('Mallory')",
        "DELETE FROM members",
        "DELETE FROM reminders",
        "CREATE TABLE scratch (id integer)",
    ];
    for statement in denied {
        let error = sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect_err(statement);
        let database_error = error
            .as_database_error()
            .unwrap_or_else(|| panic!("{statement}: not a database error: {error}"));
        assert_eq!(
            database_error.code().as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "{statement}: {database_error}"
        );
        assert!(
            database_error.message().contains("permission denied"),
            "{statement}: {database_error}"
        );
    }
    let readable: i64 = sqlx::query_scalar("SELECT count(*) FROM allotment_balances")
        .fetch_one(&mut connection)
        .await
        .expect("the role reads the balance view");
    assert_eq!(readable, 1);
    connection.close().await.unwrap();
}
