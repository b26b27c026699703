//! The reminder job end to end: scan, outbox, SMTP.

use chrono::{Duration, NaiveTime, TimeZone, Utc, Weekday};
use session_steward::config::{Day, Settings, TimeOfDay};
use session_steward::outbox::Deliverer;
use session_steward::policy::{ReminderPolicy, SendWindow};
use session_steward::reminders::Planner;
use sqlx::PgPool;

use crate::helpers::{
    self, digest_sessions, friday_morning_los_angeles, member, provider, session, set_status,
    settings_for,
};
use crate::smtp::SmtpServer;

const LOS_ANGELES: &str = "America/Los_Angeles";

/// Settings whose send window is open all day, every day, so a test can
/// tick at any instant.
fn always_open(server: &SmtpServer) -> Settings {
    let mut settings = settings_for(server);
    settings.send_window.start = TimeOfDay(NaiveTime::from_hms_opt(0, 0, 0).unwrap());
    settings.send_window.end = TimeOfDay(NaiveTime::from_hms_opt(23, 59, 59).unwrap());
    settings.send_window.business_days = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ]
    .into_iter()
    .map(Day)
    .collect();
    settings
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn cutoff_is_strictly_after_five_days(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let cutoff = now - Duration::days(5);
    let before = session(&pool, provider_id, jane, cutoff - Duration::seconds(1)).await;
    let _exactly = session(&pool, provider_id, jane, cutoff).await;
    let _after = session(&pool, provider_id, jane, cutoff + Duration::seconds(1)).await;

    let run = helpers::worker(&pool, &settings_for(&server))
        .run_reminders(now)
        .await
        .unwrap();

    assert_eq!(
        run.plan.overdue_sessions, 1,
        "only the session ending before the cutoff is overdue"
    );
    assert_eq!(
        digest_sessions(&pool, provider_id).await,
        vec![vec![before]]
    );
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "one digest sent");
    assert!(
        messages[0]
            .text()
            .contains("Subject: Reminder: 1 session is waiting")
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn digest_groups_sessions_by_provider(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let first = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let second = provider(&pool, "Alan Turing", Some("alan@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    for days in [6, 7, 9] {
        session(&pool, first, jane, now - Duration::days(days)).await;
    }
    session(&pool, second, jane, now - Duration::days(6)).await;

    let run = helpers::worker(&pool, &settings_for(&server))
        .run_reminders(now)
        .await
        .unwrap();

    assert_eq!(run.delivery.digests_sent, 2, "one digest per provider");
    let to_first = server.messages_to("ada@example.org");
    assert_eq!(to_first.len(), 1, "first provider gets one email");
    assert!(
        to_first[0]
            .text()
            .contains("Subject: Reminder: 3 sessions are waiting")
    );
    assert_eq!(
        server.messages_to("alan@example.org").len(),
        1,
        "second provider gets one email"
    );
    assert_eq!(server.messages().len(), 2, "no other email");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn cadence_follows_stages_then_escalates(pool: PgPool) {
    let server = SmtpServer::start();
    let settings = always_open(&server);
    let worker = helpers::worker(&pool, &settings);
    let ended = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, ended).await;
    let session_id = session(&pool, provider_id, jane, ended).await;

    let mut days_with_email = Vec::new();
    for day in 0..=20 {
        // Two ticks each day, an hour apart, to show a repeated tick sends nothing.
        for hour in [1, 2] {
            let now = ended + Duration::days(day) + Duration::hours(hour);
            let before = server.messages().len();
            worker.run_reminders(now).await.unwrap();
            worker.run_flags(now).await.unwrap();
            if server.messages().len() > before {
                days_with_email.push(day);
            }
        }
    }

    assert_eq!(
        days_with_email,
        vec![5, 8, 12],
        "digests only on stage days"
    );
    let stages: Vec<i16> =
        sqlx::query_scalar("SELECT stage FROM reminder_items WHERE session_id = $1 ORDER BY stage")
            .bind(session_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stages, vec![1, 2, 3], "each stage covered once");
    let stale_flags: i64 =
        sqlx::query_scalar("SELECT count(*) FROM flags WHERE session_id = $1 AND kind = 'stale_hold' AND resolved_at IS NULL")
            .bind(session_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stale_flags, 1, "escalated to support once");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn escalated_session_leaves_digest(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let recent = session(&pool, provider_id, jane, now - Duration::days(6)).await;
    let _escalated = session(&pool, provider_id, jane, now - Duration::days(15)).await;

    helpers::worker(&pool, &settings_for(&server))
        .run_reminders(now)
        .await
        .unwrap();

    assert_eq!(
        digest_sessions(&pool, provider_id).await,
        vec![vec![recent]]
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn send_window_uses_provider_zone(pool: PgPool) {
    let server = SmtpServer::start();
    let worker = helpers::worker(&pool, &settings_for(&server));
    // Friday 12:00 in Los Angeles is Saturday 09:00 in Auckland.
    let friday_noon_la = Utc.with_ymd_and_hms(2026, 12, 4, 20, 0, 0).unwrap();
    let los_angeles = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let auckland = provider(
        &pool,
        "Kiri Te Kanawa",
        Some("kiri@example.org"),
        "Pacific/Auckland",
    )
    .await;
    let jane = member(&pool, "Jane Doe", 20, friday_noon_la).await;
    session(&pool, los_angeles, jane, friday_noon_la - Duration::days(6)).await;
    session(&pool, auckland, jane, friday_noon_la - Duration::days(6)).await;

    let run = worker.run_reminders(friday_noon_la).await.unwrap();
    assert_eq!(
        run.plan.digests_deferred, 1,
        "Auckland's Saturday defers its digest"
    );
    assert_eq!(
        server.messages_to("ada@example.org").len(),
        1,
        "Los Angeles is open"
    );
    assert_eq!(
        server.messages_to("kiri@example.org").len(),
        0,
        "Auckland waits"
    );

    // Sunday 13:00 in Los Angeles is Monday 10:00 in Auckland.
    let sunday_la = Utc.with_ymd_and_hms(2026, 12, 6, 21, 0, 0).unwrap();
    let run = worker.run_reminders(sunday_la).await.unwrap();
    assert_eq!(
        server.messages_to("kiri@example.org").len(),
        1,
        "Auckland's Monday morning sends"
    );
    assert_eq!(
        server.messages_to("ada@example.org").len(),
        1,
        "Los Angeles gets nothing new on Sunday"
    );
    assert_eq!(run.plan.digests_planned, 1, "only Auckland planned");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn night_digest_waits_for_morning(pool: PgPool) {
    let server = SmtpServer::start();
    let worker = helpers::worker(&pool, &settings_for(&server));
    // Thursday 23:00 in Los Angeles.
    let night = Utc.with_ymd_and_hms(2026, 12, 4, 7, 0, 0).unwrap();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, night).await;
    session(&pool, provider_id, jane, night - Duration::days(6)).await;

    let run = worker.run_reminders(night).await.unwrap();
    assert_eq!(run.plan.digests_deferred, 1, "deferred at night");
    assert!(server.messages().is_empty(), "nothing sent at night");

    worker
        .run_reminders(friday_morning_los_angeles())
        .await
        .unwrap();
    assert_eq!(server.messages().len(), 1, "sent in the morning");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn downtime_sends_one_current_digest(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    // Sessions that passed every stage while the worker was down.
    for days in [6, 9, 13] {
        session(&pool, provider_id, jane, now - Duration::days(days)).await;
    }

    let worker = helpers::worker(&pool, &settings_for(&server));
    worker.run_reminders(now).await.unwrap();
    worker
        .run_reminders(now + Duration::minutes(15))
        .await
        .unwrap();

    assert_eq!(
        server.messages().len(),
        1,
        "one digest, not one per missed stage"
    );
    assert!(
        server.messages()[0]
            .text()
            .contains("3 sessions are waiting")
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn local_time_shown_across_dst_change(pool: PgPool) {
    let server = SmtpServer::start();
    // Monday 9 November 2026, 10:00 in New York; DST ended on 1 November.
    let now = Utc.with_ymd_and_hms(2026, 11, 9, 15, 0, 0).unwrap();
    let provider_id = provider(
        &pool,
        "Ada Lovelace",
        Some("ada@example.org"),
        "America/New_York",
    )
    .await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    // Saturday 31 October 10:00 EDT (UTC-4) and Monday 2 November 10:00 EST (UTC-5).
    session(
        &pool,
        provider_id,
        jane,
        Utc.with_ymd_and_hms(2026, 10, 31, 14, 50, 0).unwrap(),
    )
    .await;
    session(
        &pool,
        provider_id,
        jane,
        Utc.with_ymd_and_hms(2026, 11, 2, 15, 50, 0).unwrap(),
    )
    .await;

    helpers::worker(&pool, &settings_for(&server))
        .run_reminders(now)
        .await
        .unwrap();

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "one digest");
    let parsed = mail_parser::MessageParser::default()
        .parse(&messages[0].data)
        .expect("message parses");
    let text = parsed.body_text(0).expect("plain text part").into_owned();
    assert!(
        text.contains("Sat 31 Oct 2026, 10:00–10:50 EDT"),
        "summer time shown: {text}"
    );
    assert!(
        text.contains("Mon 2 Nov 2026, 10:00–10:50 EST"),
        "standard time shown: {text}"
    );
    assert!(text.contains("America/New_York"), "zone named: {text}");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn status_rechecked_before_sending(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let settings = settings_for(&server);
    let partly = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let wholly = provider(&pool, "Alan Turing", Some("alan@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let kept = session(&pool, partly, jane, now - Duration::days(6)).await;
    let reported = session(&pool, partly, jane, now - Duration::days(7)).await;
    let only = session(&pool, wholly, jane, now - Duration::days(6)).await;

    let planner = Planner {
        policy: ReminderPolicy::from_settings(&settings),
        window: SendWindow::from_settings(&settings),
    };
    let plan = planner.run_once(&pool, now).await.unwrap();
    assert_eq!(plan.digests_planned, 2, "both providers planned");

    // The provider reports between the scan and the send.
    set_status(&pool, reported, "completed").await;
    set_status(&pool, only, "no_show").await;

    let deliverer = Deliverer::new(
        session_steward::compose::Composer::new(&settings).unwrap(),
        session_steward::email::Transport::from_settings(
            &settings,
            session_steward::config::TransportKind::Smtp,
        )
        .unwrap(),
        settings.reminders.clone(),
        SendWindow::from_settings(&settings),
    );
    let delivery = deliverer.run_once(&pool, now).await.unwrap();

    assert_eq!(
        delivery.digests_sent, 1,
        "only the digest with a session left is sent"
    );
    assert_eq!(delivery.digests_empty, 1, "the emptied digest is not sent");
    assert_eq!(
        delivery.sessions_dropped, 2,
        "both reported sessions dropped"
    );
    assert_eq!(
        server.messages_to("alan@example.org").len(),
        0,
        "no empty email"
    );
    let to_ada = server.messages_to("ada@example.org");
    assert_eq!(to_ada.len(), 1, "partly reported digest sent");
    assert!(
        to_ada[0].text().contains("1 session is waiting"),
        "lists only the kept session"
    );
    let dropped: Vec<i64> = sqlx::query_scalar(
        "SELECT session_id FROM reminder_items WHERE dropped ORDER BY session_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(dropped, vec![reported, only], "dropped items recorded");
    let kept_rows: Vec<i64> =
        sqlx::query_scalar("SELECT session_id FROM reminder_items WHERE NOT dropped")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(kept_rows, vec![kept], "kept item recorded");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn repeated_tick_sends_nothing_twice(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;
    let worker = helpers::worker(&pool, &settings_for(&server));

    worker.run_reminders(now).await.unwrap();
    // A new session passes a stage later the same local day: it waits for tomorrow.
    session(
        &pool,
        provider_id,
        jane,
        now - Duration::days(5) - Duration::minutes(30),
    )
    .await;
    let same_day = worker
        .run_reminders(now + Duration::hours(1))
        .await
        .unwrap();
    let next_day = worker.run_reminders(now + Duration::days(3)).await.unwrap();

    assert_eq!(
        same_day.plan.already_sent_today, 1,
        "second digest on the same day is refused"
    );
    assert_eq!(
        next_day.delivery.digests_sent, 1,
        "the new session goes out on the next business day"
    );
    assert_eq!(server.messages().len(), 2, "two digests in total");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn unreachable_provider_skipped_others_sent(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let bad_rows = [
        ("No Email", None, LOS_ANGELES),
        ("Bad Email", Some("not-an-address"), LOS_ANGELES),
        ("Bad Zone", Some("zone@example.org"), "Mars/Olympus_Mons"),
        (
            "Eve\r\nBcc: eve@example.org",
            Some("eve@example.org"),
            LOS_ANGELES,
        ),
    ];
    for (name, email, zone) in bad_rows {
        let id = provider(&pool, name, email, zone).await;
        session(&pool, id, jane, now - Duration::days(6)).await;
    }
    let good = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    session(&pool, good, jane, now - Duration::days(6)).await;

    let run = helpers::worker(&pool, &settings_for(&server))
        .run_reminders(now)
        .await
        .unwrap();

    assert_eq!(run.plan.providers_unreachable, 4, "each bad row skipped");
    assert_eq!(run.delivery.digests_sent, 1, "the good row still sent");
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "one email in total");
    assert_eq!(messages[0].recipients, vec!["ada@example.org".to_owned()]);
}
