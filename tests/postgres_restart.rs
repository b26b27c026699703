//! The worker across a PostgreSQL outage: a tick while the server is down
//! fails with an error, and the first tick after it is back succeeds,
//! with the same pool and no process restart.
//!
//! This is its own test binary because it stops the whole server; cargo
//! runs test binaries one after another, so no other test is affected. It
//! needs `pg_ctlcluster`, as root, like the machines this project runs on.

#[path = "integration/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "integration/smtp.rs"]
#[allow(dead_code)]
mod smtp;

use std::process::Command;
use std::time::Duration;

use chrono::Duration as Days;
use helpers::{drop_database, url_with_database};

/// The installed cluster version, such as "15".
fn cluster_version() -> String {
    let entries = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL is installed under /etc/postgresql");
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .expect("one PostgreSQL cluster is installed")
}

fn cluster(action: &str) {
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &cluster_version(),
            "main",
            action,
        ])
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

fn wait_until_ready() {
    for _ in 0..300 {
        let ready = Command::new("pg_isready")
            .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
            .status()
            .is_ok_and(|status| status.success());
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("PostgreSQL did not come back within 30 s");
}

/// Starts the server again when dropped, even if the test panics.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &cluster_version(),
                "main",
                "start",
            ])
            .status();
        wait_until_ready();
    }
}

#[tokio::test]
async fn tick_after_postgres_restart_succeeds() {
    let database = format!("session_steward_restart_test_{}", std::process::id());
    drop_database(&database).await;
    let url = url_with_database(&database);
    session_steward::db::create_if_missing(&url).await.unwrap();
    let pool = session_steward::db::connect(&url, 5, Duration::from_secs(3))
        .await
        .unwrap();
    session_steward::db::migrate(&pool).await.unwrap();

    let server = smtp::SmtpServer::start();
    let now = helpers::friday_morning_los_angeles();
    let worker = helpers::worker(&pool, &helpers::settings_for(&server));
    let jane = helpers::member(&pool, "Jane Doe", 20, now).await;
    let first = helpers::provider(
        &pool,
        "Ada Lovelace",
        Some("ada@example.org"),
        "America/Los_Angeles",
    )
    .await;
    helpers::session(&pool, first, jane, now - Days::days(6)).await;
    let second = helpers::provider(
        &pool,
        "Alan Turing",
        Some("alan@example.org"),
        "America/Los_Angeles",
    )
    .await;
    helpers::session(&pool, second, jane, now - Days::days(6)).await;

    let before = worker.run_flags(now).await;
    assert!(before.is_ok(), "tick before the outage: {:?}", before.err());

    let outage = worker.run_reminders(now);
    let restart_guard = RestartOnDrop;
    cluster("stop");
    let during = outage.await;
    assert!(during.is_err(), "tick during the outage fails");

    drop(restart_guard);
    let after = worker.run_reminders(now + Days::minutes(15)).await;
    drop_database(&database).await;

    let after = after.expect("first tick after the restart succeeds");
    assert_eq!(
        after.delivery.digests_sent, 2,
        "both digests sent after the restart"
    );
    assert_eq!(server.messages().len(), 2, "two emails received");
}
