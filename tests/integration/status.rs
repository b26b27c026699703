//! The `status` command: last runs from `job_runs`, next runs from the
//! cron schedules, and the outbox backlog.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{
    self, database_url, friday_morning_los_angeles, member, output_of, provider, session,
    settings_for, steward,
};
use crate::smtp::SmtpServer;

const LOS_ANGELES: &str = "America/Los_Angeles";

/// Runs `status --format json --now NOW` and parses its output.
async fn status_json(pool: &PgPool, now: DateTime<Utc>) -> Value {
    let url = database_url(pool).await;
    let (status, stdout, stderr) =
        output_of(steward(&url).args(["status", "--format", "json", "--now", &now.to_rfc3339()]));
    assert!(status.success(), "status failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("invalid JSON ({error}): {stdout}"))
}

fn job<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["jobs"]
        .as_array()
        .expect("jobs is an array")
        .iter()
        .find(|job| job["job"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {status}"))
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn status_before_any_run(pool: PgPool) {
    let now: DateTime<Utc> = "2026-12-04T19:07:30Z".parse().unwrap();

    let status = status_json(&pool, now).await;

    let reminders = job(&status, "reminders");
    assert_eq!(reminders["last_run"], Value::Null, "never ran");
    assert_eq!(reminders["next_run"], "2026-12-04T19:15:00Z");
    assert_eq!(reminders["schedule"], "0 */15 * * * *");
    let flags = job(&status, "flags");
    assert_eq!(flags["next_run"], "2026-12-04T20:05:00Z");
    for key in ["pending", "due_now", "being_sent", "failed"] {
        assert_eq!(status["outbox"][key], 0, "outbox {key}");
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn status_counts_backlog_and_runs(pool: PgPool) {
    let server = SmtpServer::start();
    // One sender, so the replies go to the digests one after the other:
    // one retry, one failure, one delivery.
    server.script_replies(&[451, 550]);
    let mut settings = settings_for(&server);
    settings.reminders.delivery_concurrency = 1;
    let now = friday_morning_los_angeles();
    for index in 0..3 {
        let provider_id = provider(
            &pool,
            &format!("Provider {index}"),
            Some(&format!("provider{index}@example.org")),
            LOS_ANGELES,
        )
        .await;
        let member = member(&pool, &format!("Member {index}"), 20, now).await;
        session(&pool, provider_id, member, now - Duration::days(6)).await;
    }
    let worker = helpers::worker(&pool, &settings);
    let run = worker.run_reminders(now).await.unwrap();
    assert_eq!(run.delivery.digests_sent, 1, "one digest delivered");

    let status = status_json(&pool, now).await;
    let last = &job(&status, "reminders")["last_run"];
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(last["clock_now"], "2026-12-04T18:00:00Z");
    assert_eq!(last["counts"]["plan"]["digests_planned"], 3);
    assert_eq!(last["counts"]["delivery"]["digests_sent"], 1);
    assert_eq!(job(&status, "flags")["last_run"], Value::Null);
    assert_eq!(status["outbox"]["pending"], 1, "the retry is pending");
    assert_eq!(status["outbox"]["due_now"], 0, "the retry waits");
    assert_eq!(status["outbox"]["failed"], 1, "the 550 failed");

    // The retry is due within retry_base_delay (60 s).
    let later = status_json(&pool, now + Duration::minutes(2)).await;
    assert_eq!(later["outbox"]["due_now"], 1, "the retry is due");
    assert!(
        later["outbox"]["oldest_due_at"].is_string(),
        "oldest due time shown: {later}"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn status_table_shows_failed_run(pool: PgPool) {
    let now = friday_morning_los_angeles();
    let server = SmtpServer::start();
    let worker = helpers::worker(&pool, &settings_for(&server));
    worker.run_reminders(now).await.unwrap();
    // A flag run that fails inside the job, after its start is recorded.
    sqlx::query("ALTER TABLE flags RENAME TO flags_moved")
        .execute(&pool)
        .await
        .unwrap();
    worker.run_flags(now).await.unwrap_err();
    sqlx::query("ALTER TABLE flags_moved RENAME TO flags")
        .execute(&pool)
        .await
        .unwrap();

    let url = database_url(&pool).await;
    let (status, stdout, stderr) =
        output_of(steward(&url).args(["status", "--now", "2026-12-04T18:01:00Z"]));

    assert!(status.success(), "status failed: {stderr}");
    let row = |job: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{job} ")))
            .unwrap_or_else(|| panic!("no row for {job} in:\n{stdout}"))
            .to_owned()
    };
    assert!(row("reminders").contains("succeeded"), "{stdout}");
    assert!(
        row("reminders").ends_with("2026-12-04T18:15:00Z"),
        "{stdout}"
    );
    assert!(row("flags").contains("failed"), "{stdout}");
    assert!(
        stdout.contains("flags error: flag update failed:"),
        "error shown: {stdout}"
    );
    assert!(
        stdout.contains("does not exist"),
        "error shown with its cause: {stdout}"
    );
    assert!(
        stdout.contains("reminders counts: all zero"),
        "counts shown: {stdout}"
    );
    assert!(
        stdout.lines().any(|line| line.starts_with("digests ")),
        "outbox row shown: {stdout}"
    );
}
