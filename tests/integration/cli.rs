//! The binary: the demo end to end and the errors of bad input.

use std::process::Command;

use crate::helpers::{drop_database, url_with_database};

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_session-steward");

/// Reads the first number after `label` on the summary line that starts with it.
fn count_after(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|line| line.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line for {label:?} in:\n{stdout}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no count in line {line:?}"))
}

#[tokio::test]
async fn demo_runs_end_to_end() {
    let database = format!("session_steward_demo_test_{}", std::process::id());
    let workdir = tempfile::tempdir().unwrap();
    drop_database(&database).await;

    let output = Command::new(BINARY)
        .current_dir(workdir.path())
        .env_remove("SESSION_STEWARD_CONFIG")
        .args([
            "demo",
            "--reset",
            "--now",
            "2026-12-04T19:00:00Z",
            "--database-url",
        ])
        .arg(url_with_database(&database))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    drop_database(&database).await;

    assert!(output.status.success(), "demo failed: {stderr}");
    let sent = count_after(&stdout, "digests sent");
    assert!(sent > 0, "digests sent: {stdout}");
    assert!(
        count_after(&stdout, "digests deferred by send window") > 0,
        "digests deferred: {stdout}"
    );
    for stage in ["stage 1", "stage 2", "stage 3"] {
        assert!(
            count_after(&stdout, stage) > 0,
            "{stage} reminded: {stdout}"
        );
    }
    for kind in [
        "member_blocked",
        "period_ending",
        "member_ineligible",
        "provider_unreachable",
        "stale_hold",
    ] {
        assert!(count_after(&stdout, kind) > 0, "{kind} opened: {stdout}");
    }
    let files = std::fs::read_dir(workdir.path().join("outbox"))
        .expect("outbox folder")
        .count();
    assert_eq!(files as u64, sent, "one .eml per digest sent");
    assert!(stdout.contains("Open flags"), "report follows the summary");
}

#[test]
fn demo_rejects_database_url_before_command() {
    let output = Command::new(BINARY)
        .args([
            "--database-url",
            "postgres://postgres@127.0.0.1:1/unused",
            "demo",
            "--reset",
        ])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the demo ran: {stderr}");
    assert!(
        stderr.contains("after `demo`"),
        "error says where the option goes: {stderr}"
    );
}

#[test]
fn run_once_rejects_future_instant() {
    let output = Command::new(BINARY)
        .args([
            "--database-url",
            "postgres://postgres@127.0.0.1:1/unused",
            "run-once",
            "reminders",
            "--now",
            "2999-01-01T00:00:00Z",
        ])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a future --now was accepted");
    assert!(
        stderr.contains("2999-01-01"),
        "error names the value: {stderr}"
    );
    assert!(
        stderr.contains("preview"),
        "error says what to do: {stderr}"
    );
}

#[test]
fn bad_config_value_names_key_and_value() {
    let workdir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[schedule]\nreminders = \"every day\"\n",
            "schedule.reminders",
            "every day",
        ),
        (
            "[reminders]\nreminder_after = \"-5d\"\n",
            "reminder_after",
            "-5d",
        ),
        (
            "[email]\nfrom = \"not an address\"\n",
            "from",
            "not an address",
        ),
        ("[send_window]\nstart = \"25:00\"\n", "start", "25:00"),
        // 31 February never comes.
        (
            "[schedule]\nflags = \"0 0 0 31 2 *\"\n",
            "never matches",
            "0 0 0 31 2 *",
        ),
    ];
    for (contents, key, value) in cases {
        let path = workdir.path().join("bad.toml");
        std::fs::write(&path, contents).unwrap();
        let output = Command::new(BINARY)
            .arg("--config")
            .arg(&path)
            .args(["flags"])
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{key} accepted: {contents}");
        assert!(stderr.contains(key), "error names {key}: {stderr}");
        assert!(stderr.contains(value), "error names {value}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one line on stderr: {stderr}"
        );
    }
}

#[test]
fn environment_overrides_config_key() {
    let output = Command::new(BINARY)
        .env("SESSION_STEWARD_SMTP__PORT", "not-a-port")
        .args(["flags"])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "bad port accepted");
    assert!(stderr.contains("port"), "error names the key: {stderr}");
}

#[test]
fn numeric_password_accepted_never_printed() {
    let output = Command::new(BINARY)
        .env_remove("DATABASE_URL")
        .env("SESSION_STEWARD_SMTP__USERNAME", "4242")
        .env("SESSION_STEWARD_SMTP__PASSWORD", "918273")
        .args(["flags"])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("918273"), "password printed: {stderr}");
    assert!(
        stderr.contains("no database configured"),
        "configuration accepted, then the missing database reported: {stderr}"
    );
}
