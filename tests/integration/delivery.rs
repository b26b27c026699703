//! Delivery under faults: transient and permanent SMTP failures, servers
//! that stall or drop connections, terminated database connections, and
//! bad rows in the platform's tables.

use std::time::Instant;

use chrono::Duration;
use session_steward::config::{Settings, SmtpSettings, Span};
use sqlx::PgPool;

use crate::helpers::{self, friday_morning_los_angeles, member, provider, session, settings_for};
use crate::smtp::{self, SmtpServer};

const LOS_ANGELES: &str = "America/Los_Angeles";

async fn reminder_state(pool: &PgPool, provider_id: i64) -> (String, i32, Option<String>) {
    sqlx::query_as(
        "SELECT status::text, attempts, last_error FROM reminders WHERE provider_id = $1",
    )
    .bind(provider_id)
    .fetch_one(pool)
    .await
    .expect("one reminder for the provider")
}

/// Settings for an SMTP server on `port` that may misbehave, with short timeouts.
fn settings_for_port(port: u16) -> Settings {
    let mut settings = Settings::default();
    settings.email.transport = Some(session_steward::config::TransportKind::Smtp);
    settings.smtp = Some(SmtpSettings {
        host: "127.0.0.1".to_owned(),
        port,
        timeout: "1s".parse::<Span>().unwrap(),
        send_timeout: "2s".parse::<Span>().unwrap(),
        ..SmtpSettings::default()
    });
    settings
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn transient_failure_retried_later(pool: PgPool) {
    let server = SmtpServer::start();
    server.script_replies(&[451]);
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;
    let worker = helpers::worker(&pool, &settings_for(&server));

    let first = worker.run_reminders(now).await.unwrap();
    assert_eq!(first.delivery.digests_retrying, 1, "451 schedules a retry");
    assert!(server.messages().is_empty(), "nothing accepted yet");
    let (status, attempts, error) = reminder_state(&pool, provider_id).await;
    assert_eq!(status, "pending", "still pending after 451");
    assert_eq!(attempts, 1, "one attempt recorded");
    assert!(
        error.unwrap_or_default().contains("451"),
        "server reply recorded"
    );

    let too_early = worker
        .run_reminders(now + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(too_early.delivery.digests_sent, 0, "backoff respected");

    let later = worker
        .run_reminders(now + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(
        later.delivery.digests_sent, 1,
        "delivered on the next attempt"
    );
    assert_eq!(server.messages().len(), 1, "accepted once");
    let (status, attempts, _) = reminder_state(&pool, provider_id).await;
    assert_eq!(status, "sent");
    assert_eq!(attempts, 2, "two attempts in total");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn permanent_failure_flagged_not_retried(pool: PgPool) {
    let server = SmtpServer::start();
    server.script_replies(&[550]);
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let session_id = session(&pool, provider_id, jane, now - Duration::days(6)).await;
    let worker = helpers::worker(&pool, &settings_for(&server));

    let run = worker.run_reminders(now).await.unwrap();
    assert_eq!(run.delivery.digests_failed, 1, "550 fails the digest");
    let (status, _, error) = reminder_state(&pool, provider_id).await;
    assert_eq!(status, "failed");
    assert!(
        error.unwrap_or_default().contains("550"),
        "server reply recorded"
    );
    let flag_reason: Option<String> = sqlx::query_scalar(
        "SELECT reason FROM flags WHERE session_id = $1 AND kind = 'provider_unreachable' AND resolved_at IS NULL",
    )
    .bind(session_id)
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert!(
        flag_reason.is_some(),
        "provider_unreachable flag opened at once"
    );

    worker
        .run_reminders(now + Duration::hours(1))
        .await
        .unwrap();
    worker.run_flags(now + Duration::hours(1)).await.unwrap();
    assert_eq!(server.attempts(), 1, "never retried");
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM flags WHERE session_id = $1 AND kind = 'provider_unreachable' AND resolved_at IS NULL")
        .bind(session_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        open, 1,
        "the flag job keeps the flag open while the last digest failed"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn silent_server_times_out(pool: PgPool) {
    let port = smtp::start_silent_listener();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;
    let worker = helpers::worker(&pool, &settings_for_port(port));

    let started = Instant::now();
    let run = worker.run_reminders(now).await.unwrap();
    assert_eq!(run.delivery.digests_retrying, 1, "the timeout is transient");
    // The deadline is 2 s; the bound here only shows the tick ends.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "tick ended"
    );
    let (status, _, error) = reminder_state(&pool, provider_id).await;
    assert_eq!(status, "pending", "kept for a retry");
    assert!(
        error.unwrap_or_default().contains("timed out"),
        "timeout recorded"
    );

    let next = worker
        .run_reminders(now + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(
        next.delivery.digests_retrying, 1,
        "the next tick runs and tries again"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn dropped_connection_is_transient(pool: PgPool) {
    let port = smtp::start_closing_listener();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;

    let run = helpers::worker(&pool, &settings_for_port(port))
        .run_reminders(now)
        .await
        .unwrap();

    assert_eq!(
        run.delivery.digests_retrying, 1,
        "a dropped connection is retried"
    );
    assert_eq!(reminder_state(&pool, provider_id).await.0, "pending");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn attempts_run_out_then_failed(pool: PgPool) {
    let port = smtp::start_closing_listener();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;
    let mut settings = settings_for_port(port);
    settings.reminders.max_attempts = 3;
    let worker = helpers::worker(&pool, &settings);

    for hour in 0..4 {
        worker
            .run_reminders(now + Duration::hours(hour))
            .await
            .unwrap();
    }

    let (status, attempts, _) = reminder_state(&pool, provider_id).await;
    assert_eq!(status, "failed", "failed after the last attempt");
    assert_eq!(attempts, 3, "stopped at max_attempts");

    // An outage of the mail relay tells nothing about the provider.
    worker.run_flags(now + Duration::hours(4)).await.unwrap();
    let unreachable: i64 =
        sqlx::query_scalar("SELECT count(*) FROM flags WHERE kind = 'provider_unreachable'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unreachable, 0, "running out of attempts flags no provider");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn terminated_connections_next_tick_succeeds(pool: PgPool) {
    let server = SmtpServer::start();
    server.set_delay(std::time::Duration::from_millis(200));
    let now = friday_morning_los_angeles();
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let mut addresses = Vec::new();
    for index in 0..6 {
        let address = format!("provider{index}@example.org");
        let id = provider(&pool, "Ada Lovelace", Some(&address), LOS_ANGELES).await;
        session(&pool, id, jane, now - Duration::days(6)).await;
        addresses.push(address);
    }
    let worker = std::sync::Arc::new(helpers::worker(&pool, &settings_for(&server)));

    let running = {
        let worker = std::sync::Arc::clone(&worker);
        tokio::spawn(async move { worker.run_reminders(now).await })
    };
    while server.attempts() < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!terminated.is_empty(), "worker connections were terminated");
    // The interrupted tick may fail or finish; either way the next one must work.
    let _ = running.await.unwrap();

    // After the lease of an interrupted digest expires, the next tick sends the rest.
    let later = now + Duration::minutes(10);
    worker
        .run_reminders(later)
        .await
        .expect("tick after the terminations succeeds");
    for address in &addresses {
        assert!(
            !server.messages_to(address).is_empty(),
            "{address} received its digest"
        );
    }
    // Only a digest whose status update was cut off can go out twice.
    assert!(
        server.messages().len() <= addresses.len() + 1,
        "at most one duplicate"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn bad_rows_flagged_others_processed(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let odd_member = member(&pool, "\u{7}Ødegård <script>\r\n", 20, now).await;
    let nameless: i64 = sqlx::query_scalar("INSERT INTO members (name) VALUES (NULL) RETURNING id")
        .fetch_one(&pool)
        .await
        .unwrap();
    let nameless_allotment: i64 = sqlx::query_scalar(
        "INSERT INTO allotments (member_id, period_start, period_end, sessions_total) VALUES ($1, $2, $3, 20) RETURNING id",
    )
    .bind(nameless)
    .bind(now - Duration::days(100))
    .bind(now + Duration::days(200))
    .fetch_one(&pool)
    .await
    .unwrap();

    struct BadRow {
        name: Option<&'static str>,
        email: Option<&'static str>,
        zone: Option<&'static str>,
        active: bool,
        reason: &'static str,
    }
    let bad_rows = [
        BadRow {
            name: Some("No Email"),
            email: None,
            zone: Some(LOS_ANGELES),
            active: true,
            reason: "no email address",
        },
        BadRow {
            name: Some("Blank Email"),
            email: Some("  "),
            zone: Some(LOS_ANGELES),
            active: true,
            reason: "no email address",
        },
        BadRow {
            name: Some("Bad Email"),
            email: Some("bad.example.org"),
            zone: Some(LOS_ANGELES),
            active: true,
            reason: "email address is invalid",
        },
        BadRow {
            name: Some("Injected Email"),
            email: Some("x@example.org\r\nBcc: victim@example.org"),
            zone: Some(LOS_ANGELES),
            active: true,
            reason: "email address is invalid",
        },
        BadRow {
            name: Some("Bad Zone"),
            email: Some("zone@example.org"),
            zone: Some("Mars/Olympus_Mons"),
            active: true,
            reason: "time zone",
        },
        BadRow {
            name: Some("No Zone"),
            email: Some("nozone@example.org"),
            zone: None,
            active: true,
            reason: "time zone",
        },
        BadRow {
            name: Some("Eve\r\nBcc: victim@example.org"),
            email: Some("eve@example.org"),
            zone: Some(LOS_ANGELES),
            active: true,
            reason: "control characters",
        },
        BadRow {
            name: Some("Gone Away"),
            email: Some("gone@example.org"),
            zone: Some(LOS_ANGELES),
            active: false,
            reason: "inactive",
        },
    ];
    let mut flagged = Vec::new();
    for row in &bad_rows {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO providers (name, email, time_zone, active) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(row.name)
        .bind(row.email)
        .bind(row.zone)
        .bind(row.active)
        .fetch_one(&pool)
        .await
        .unwrap();
        let session_id = session(&pool, id, jane, now - Duration::days(6)).await;
        flagged.push((session_id, row.reason));
    }

    let good_rows = [
        (Some("Zoë Ångström-Nakamura"), "zoe@example.org"),
        (None, "nameless@example.org"),
        (Some("Ada Lovelace"), "ada@example.org"),
    ];
    for (name, email) in good_rows {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO providers (name, email, time_zone) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(email)
        .bind(LOS_ANGELES)
        .fetch_one(&pool)
        .await
        .unwrap();
        session(&pool, id, jane, now - Duration::days(6)).await;
        if email == "ada@example.org" {
            session(&pool, id, odd_member, now - Duration::days(7)).await;
            session(
                &pool,
                id,
                (nameless, nameless_allotment),
                now - Duration::days(8),
            )
            .await;
        }
    }

    let worker = helpers::worker(&pool, &settings_for(&server));
    let reminders = worker.run_reminders(now).await.unwrap();
    worker.run_flags(now).await.unwrap();

    assert_eq!(
        reminders.plan.providers_unreachable,
        bad_rows.len() as u64,
        "every bad row skipped"
    );
    assert_eq!(
        reminders.delivery.digests_sent,
        good_rows.len() as u64,
        "every good row sent"
    );
    for (session_id, reason) in flagged {
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT reason FROM flags WHERE session_id = $1 AND kind = 'provider_unreachable' AND resolved_at IS NULL",
        )
        .bind(session_id)
        .fetch_optional(&pool)
        .await
        .unwrap()
        .flatten();
        let stored = stored
            .unwrap_or_else(|| panic!("session {session_id} has no provider_unreachable flag"));
        assert!(
            stored.contains(reason),
            "session {session_id}: reason {stored:?} should mention {reason:?}"
        );
    }
    for message in server.messages() {
        let text = message.text();
        assert!(
            !text.to_lowercase().contains("bcc:"),
            "no injected header: {text}"
        );
        assert!(
            !message
                .recipients
                .iter()
                .any(|recipient| recipient.contains("victim")),
            "no injected recipient"
        );
        assert!(
            !text.contains("<script>"),
            "no raw markup from a member name"
        );
    }
    let to_ada = server.messages_to("ada@example.org");
    assert_eq!(to_ada.len(), 1, "digest with odd member names sent");
    assert!(
        to_ada[0].text().contains("3 sessions"),
        "lists all three sessions"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn retry_waits_for_send_window(pool: PgPool) {
    let server = SmtpServer::start();
    server.script_replies(&[451]);
    // Friday 16:59 in Los Angeles, one minute before the window closes.
    let late_friday =
        chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 12, 5, 0, 59, 0).unwrap();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, late_friday).await;
    session(&pool, provider_id, jane, late_friday - Duration::days(6)).await;
    let worker = helpers::worker(&pool, &settings_for(&server));

    worker.run_reminders(late_friday).await.unwrap();
    let saturday_night = late_friday + Duration::hours(10);
    let weekend = worker.run_reminders(saturday_night).await.unwrap();

    assert_eq!(
        weekend.delivery.digests_deferred, 1,
        "the retry waits for the window"
    );
    assert!(server.messages().is_empty(), "nothing sent at the weekend");
    let next_attempt: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT next_attempt_at FROM reminders WHERE provider_id = $1")
            .bind(provider_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let monday_nine =
        chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 12, 7, 17, 0, 0).unwrap();
    assert_eq!(
        next_attempt, monday_nine,
        "rescheduled for Monday 09:00 local"
    );

    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM reminders WHERE provider_id = $1")
        .bind(provider_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "a deferral is not an attempt");

    // By Monday the session passed its second stage, so Monday's new digest
    // replaces Friday's unsent one: one email, with the current contents.
    let monday = worker.run_reminders(monday_nine).await.unwrap();
    assert_eq!(
        monday.delivery.digests_sent, 1,
        "one digest sent when the window opens"
    );
    assert_eq!(server.messages().len(), 1, "one email on Monday");
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status::text FROM reminders WHERE provider_id = $1 ORDER BY id")
            .bind(provider_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        vec!["superseded", "sent"],
        "Friday's digest superseded by Monday's"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn infinite_timestamps_skip_only_their_row(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let good = session(&pool, provider_id, jane, now - Duration::days(6)).await;
    let odd: i64 = sqlx::query_scalar(
        "INSERT INTO sessions (provider_id, member_id, allotment_id, starts_at, ends_at)
         VALUES ($1, $2, $3, '-infinity', $4) RETURNING id",
    )
    .bind(provider_id)
    .bind(jane.0)
    .bind(jane.1)
    .bind(now - Duration::days(7))
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE members SET eligible = false WHERE id = $1")
        .bind(jane.0)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sessions (provider_id, member_id, allotment_id, starts_at, ends_at)
         VALUES ($1, $2, $3, $4, 'infinity')",
    )
    .bind(provider_id)
    .bind(jane.0)
    .bind(jane.1)
    .bind(now + Duration::days(3))
    .execute(&pool)
    .await
    .unwrap();
    let worker = helpers::worker(&pool, &settings_for(&server));

    let run = worker
        .run_reminders(now)
        .await
        .expect("the run survives the odd rows");
    worker
        .run_flags(now)
        .await
        .expect("the flag run survives the odd rows");
    let rows = session_steward::report::load(&pool, &Default::default(), now)
        .await
        .expect("the report loads");

    assert_eq!(
        run.delivery.digests_sent, 1,
        "the good session is still reminded"
    );
    assert!(
        server.messages()[0].text().contains("1 session is waiting"),
        "only the good session listed"
    );
    let dropped: Vec<i64> =
        sqlx::query_scalar("SELECT session_id FROM reminder_items WHERE dropped")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(dropped, vec![odd], "the out-of-range session is dropped");
    assert!(
        rows.iter().any(|row| row.session_id == good),
        "report lists the good session's flags"
    );
}

/// Inserts `count` providers with one overdue session each.
async fn overdue_providers(
    pool: &PgPool,
    count: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<i64> {
    let jane = member(pool, "Jane Doe", 20, now).await;
    let mut ids = Vec::new();
    for index in 0..count {
        let address = format!("provider{index}@example.org");
        let id = provider(pool, "Ada Lovelace", Some(&address), LOS_ANGELES).await;
        session(pool, id, jane, now - Duration::days(6)).await;
        ids.push(id);
    }
    ids
}

async fn attempts_by_digest(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT attempts FROM reminders ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn retries_wait_for_next_tick(pool: PgPool) {
    let port = smtp::start_closing_listener();
    let now = friday_morning_los_angeles();
    overdue_providers(&pool, 2, now).await;
    let mut settings = settings_for_port(port);
    settings.reminders.retry_base_delay = "1s".parse().unwrap();
    settings.reminders.retry_max_delay = "1s".parse().unwrap();
    let worker = helpers::worker(&pool, &settings);

    worker.run_reminders(now).await.unwrap();

    // The first retry comes due within a second, during the pass, but a
    // pass only takes digests that were due when it started.
    assert_eq!(
        attempts_by_digest(&pool).await,
        vec![1, 1],
        "one attempt per digest per tick"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn failing_relay_pauses_sender(pool: PgPool) {
    let port = smtp::start_closing_listener();
    let now = friday_morning_los_angeles();
    overdue_providers(&pool, 5, now).await;
    let mut settings = settings_for_port(port);
    settings.reminders.delivery_concurrency = 1;
    settings.reminders.delivery_batch_size = 5;
    let worker = helpers::worker(&pool, &settings);

    let run = worker.run_reminders(now).await.unwrap();

    assert_eq!(
        run.delivery.digests_retrying, 3,
        "three failures in a row stop the sender"
    );
    // RETURNING gives no order, so compare the attempts sorted.
    let mut attempts = attempts_by_digest(&pool).await;
    attempts.sort_unstable();
    assert_eq!(
        attempts,
        vec![0, 0, 1, 1, 1],
        "untried digests keep their attempts"
    );
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reminders WHERE lease_until IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leased, 0, "untried digests handed back");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn relay_errors_flag_no_provider(pool: PgPool) {
    let server = SmtpServer::start();
    server.script_replies(&[554]);
    let now = friday_morning_los_angeles();
    overdue_providers(&pool, 2, now).await;
    let mut misconfigured = settings_for(&server);
    // The test server offers no STARTTLS, as a relay set up wrongly would not.
    if let Some(smtp) = misconfigured.smtp.as_mut() {
        smtp.tls = session_steward::config::TlsMode::Starttls;
    }

    let rejected = helpers::worker(&pool, &settings_for(&server))
        .run_reminders(now)
        .await
        .unwrap();
    let no_tls = helpers::worker(&pool, &misconfigured)
        .run_reminders(now + Duration::hours(1))
        .await
        .unwrap();
    helpers::worker(&pool, &settings_for(&server))
        .run_flags(now + Duration::hours(1))
        .await
        .unwrap();

    assert_eq!(
        rejected.delivery.digests_retrying, 1,
        "554 for the transaction is retried"
    );
    assert_eq!(
        rejected.delivery.digests_sent, 1,
        "the other digest goes through"
    );
    assert_eq!(
        no_tls.delivery.digests_retrying, 1,
        "missing STARTTLS is retried"
    );
    let unreachable: i64 =
        sqlx::query_scalar("SELECT count(*) FROM flags WHERE kind = 'provider_unreachable'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unreachable, 0, "no provider flagged for a relay problem");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn late_digest_counts_for_its_send_day(pool: PgPool) {
    use chrono::TimeZone;
    let server = SmtpServer::start();
    server.script_replies(&[451]);
    let utc = |day, hour| {
        chrono::Utc
            .with_ymd_and_hms(2026, 12, day, hour, 0, 0)
            .unwrap()
    };
    // Friday 4 December, 16:59 in Los Angeles.
    let late_friday = utc(5, 0) + Duration::minutes(59);
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, late_friday).await;
    // Ended Sunday 29 November, 12:00 in Los Angeles: stage 1 on Friday,
    // stage 2 from Monday 12:00 local.
    session(
        &pool,
        provider_id,
        jane,
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 29, 20, 0, 0)
            .unwrap(),
    )
    .await;
    let worker = helpers::worker(&pool, &settings_for(&server));

    worker.run_reminders(late_friday).await.unwrap();
    worker.run_reminders(utc(5, 10)).await.unwrap();
    let monday_morning = worker.run_reminders(utc(7, 17)).await.unwrap();
    let monday_afternoon = worker.run_reminders(utc(7, 22)).await.unwrap();
    let tuesday_morning = worker.run_reminders(utc(8, 17)).await.unwrap();

    assert_eq!(
        monday_morning.delivery.digests_sent, 1,
        "Friday's digest goes out on Monday morning"
    );
    assert_eq!(
        monday_afternoon.plan.already_sent_today, 1,
        "stage 2 on Monday waits: one email a day"
    );
    assert_eq!(
        monday_afternoon.delivery.digests_sent, 0,
        "nothing more on Monday"
    );
    assert_eq!(
        tuesday_morning.delivery.digests_sent, 1,
        "stage 2 goes out on Tuesday"
    );
    assert_eq!(server.messages().len(), 2, "two emails on two days");
}
