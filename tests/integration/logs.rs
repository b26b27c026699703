//! Log lines: `[log] format` as text or JSON, each job run's start and end
//! at info level, and a failed run logged once with its cause chain.

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{database_url, output_of, steward};

/// Runs `run-once flags` at a fixed instant with `format`, and returns the
/// exit status and standard error.
async fn run_flags(pool: &PgPool, format: &str) -> (std::process::ExitStatus, String) {
    let url = database_url(pool).await;
    let (status, _, stderr) = output_of(
        steward(&url)
            .env("SESSION_STEWARD_LOG__FORMAT", format)
            .args(["run-once", "flags", "--now", "2026-12-04T18:00:00Z"]),
    );
    (status, stderr)
}

/// Parses every JSON line of `stderr`, failing on a line that is neither
/// JSON nor the command's final `error:` line.
fn json_events(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|line| !line.starts_with("error: "))
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"))
        })
        .collect()
}

fn event_with_message<'a>(events: &'a [Value], message: &str) -> &'a Value {
    events
        .iter()
        .find(|event| event["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} event in {events:?}"))
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn json_format_one_object_per_line(pool: PgPool) {
    let (status, stderr) = run_flags(&pool, "json").await;

    assert!(status.success(), "run-once failed: {stderr}");
    let events = json_events(&stderr);
    let started = event_with_message(&events, "job run started");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["span"]["job"], "flags");
    assert!(started["span"]["run_id"].is_number(), "run id: {started}");
    assert!(started["timestamp"].is_string(), "timestamp: {started}");
    let finished = event_with_message(&events, "job run finished");
    assert_eq!(finished["level"], "INFO");
    let counts: Value = serde_json::from_str(
        finished["counts"]
            .as_str()
            .unwrap_or_else(|| panic!("counts field: {finished}")),
    )
    .expect("counts are JSON");
    assert!(counts["opened"].is_object(), "flag counts: {counts}");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn text_format_readable(pool: PgPool) {
    let (status, stderr) = run_flags(&pool, "text").await;

    assert!(status.success(), "run-once failed: {stderr}");
    let started = stderr
        .lines()
        .find(|line| line.contains("job run started"))
        .unwrap_or_else(|| panic!("no start line in {stderr}"));
    assert!(started.contains(" INFO "), "level shown: {started}");
    assert!(
        started.contains("job{job=\"flags\" run_id="),
        "span shown: {started}"
    );
    let finished = stderr
        .lines()
        .find(|line| line.contains("job run finished"))
        .unwrap_or_else(|| panic!("no end line in {stderr}"));
    assert!(finished.contains("counts="), "counts shown: {finished}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes off a terminal");
    assert!(!stderr.contains("{\"timestamp"), "not JSON: {stderr}");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn failed_run_logged_once(pool: PgPool) {
    sqlx::query("ALTER TABLE flags RENAME TO flags_moved")
        .execute(&pool)
        .await
        .unwrap();

    let (status, stderr) = run_flags(&pool, "json").await;

    assert!(!status.success(), "the run fails");
    let events = json_events(&stderr);
    let mentions: Vec<&Value> = events
        .iter()
        .filter(|event| event.to_string().contains("does not exist"))
        .collect();
    assert_eq!(
        mentions.len(),
        1,
        "one event carries the error: {mentions:?}"
    );
    let failed = mentions[0];
    assert_eq!(failed["level"], "ERROR");
    assert_eq!(failed["message"], "job run failed");
    assert_eq!(failed["span"]["job"], "flags", "ids of the run: {failed}");
    assert!(
        failed["span"]["run_id"].is_number(),
        "ids of the run: {failed}"
    );
    let error = failed["error"].as_str().expect("error field");
    assert!(
        error.starts_with("flag update failed: "),
        "context first: {error}"
    );
    assert!(
        error.contains("relation \"flags\" does not exist"),
        "then the cause: {error}"
    );
    let recorded: (String, Option<String>) =
        sqlx::query_as("SELECT outcome::text, error FROM job_runs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded.0, "failed", "the run is recorded as failed");
    assert_eq!(recorded.1.as_deref(), Some(error), "with the same error");
}
