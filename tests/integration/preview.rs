//! The `preview` command: the digest a tick would send, rendered without
//! a row changing, and a clear line for each provider that gets none.

use chrono::{DateTime, Duration, Utc};
use mail_parser::MessageParser;
use session_steward::config::Settings;
use session_steward::preview::{NoDigest, Preview, preview};
use sqlx::PgPool;

use crate::helpers::{
    self, database_url, friday_morning_los_angeles, member, output_of, provider, session,
    settings_for, steward,
};
use crate::smtp::SmtpServer;

const LOS_ANGELES: &str = "America/Los_Angeles";

/// Returns a digest of every row of every table and the position of every
/// sequence, so two snapshots differ if any row or sequence changed.
async fn snapshot(pool: &PgPool) -> Vec<(String, String)> {
    let tables = [
        "providers",
        "members",
        "allotments",
        "sessions",
        "reminders",
        "reminder_items",
        "flags",
        "job_runs",
        "_sqlx_migrations",
    ];
    let mut state = Vec::new();
    for table in tables {
        let digest: String = sqlx::query_scalar(&format!(
            "SELECT count(*) || ':' || md5(COALESCE(string_agg(t::text, '|' ORDER BY t::text), ''))
             FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .expect("read a table");
        state.push((table.to_owned(), digest));
    }
    let sequences: Vec<(String, String)> = sqlx::query_as(
        "SELECT sequencename::text, COALESCE(last_value::text, 'unused')
         FROM pg_sequences ORDER BY sequencename",
    )
    .fetch_all(pool)
    .await
    .expect("read sequences");
    state.extend(sequences);
    state
}

/// Returns the plain-text body of a sent message with the line breaks
/// the templates have, as SMTP carries them as CRLF.
fn sent_text(message: &mail_parser::Message<'_>) -> String {
    message
        .body_text(0)
        .expect("a plain-text body")
        .replace("\r\n", "\n")
}

/// Runs the binary's `preview` for `provider_id` at `now`.
async fn preview_command(
    pool: &PgPool,
    provider_id: i64,
    now: DateTime<Utc>,
) -> (std::process::ExitStatus, String, String) {
    let url = database_url(pool).await;
    output_of(steward(&url).args([
        "preview",
        "--provider",
        &provider_id.to_string(),
        "--now",
        &now.to_rfc3339(),
    ]))
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn preview_matches_sent_digest(pool: PgPool) {
    let server = SmtpServer::start();
    let settings = settings_for(&server);
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Zoë Ångström", Some("zoe@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let john = member(&pool, "John Roe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;
    session(&pool, provider_id, john, now - Duration::days(9)).await;
    let before = snapshot(&pool).await;

    let Preview::Digest(digest) = preview(&pool, &settings, provider_id, now).await.unwrap() else {
        panic!("a digest is due");
    };
    let (status, stdout, stderr) = preview_command(&pool, provider_id, now).await;

    assert_eq!(snapshot(&pool).await, before, "preview changed no row");
    assert_eq!(digest.reminder_id, None, "a new digest");
    assert!(status.success(), "preview failed: {stderr}");
    let key = format!("digest-{provider_id}-2026-12-04");
    assert!(
        stdout.contains(&format!("Message-ID: <{key}@localhost>")),
        "headers printed: {stdout}"
    );
    assert!(
        stdout.contains("Subject: Reminder: 2 sessions are waiting for your invoice"),
        "subject printed: {stdout}"
    );
    assert!(stdout.contains("member J. R."), "body printed: {stdout}");
    assert!(!stdout.contains("Jane"), "no member name: {stdout}");
    assert!(server.messages().is_empty(), "nothing sent");

    helpers::worker(&pool, &settings)
        .run_reminders(now)
        .await
        .unwrap();
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "the tick sends one digest");
    let sent = MessageParser::default()
        .parse(&messages[0].data)
        .expect("message parses");
    assert_eq!(sent.subject(), Some(digest.rendered.subject.as_str()));
    assert_eq!(sent.message_id(), Some(format!("{key}@localhost").as_str()));
    assert_eq!(
        sent_text(&sent),
        digest.rendered.text,
        "the tick sends the previewed text"
    );
    assert!(
        stdout.contains(digest.rendered.text.trim_end()),
        "the command prints the same text: {stdout}"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn preview_shows_due_retry(pool: PgPool) {
    let server = SmtpServer::start();
    server.script_replies(&[451]);
    let settings = settings_for(&server);
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    let john = member(&pool, "John Roe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;
    let reported = session(&pool, provider_id, john, now - Duration::days(7)).await;
    let worker = helpers::worker(&pool, &settings);
    worker.run_reminders(now).await.unwrap();
    helpers::set_status(&pool, reported, "completed").await;
    let later = now + Duration::minutes(5);
    let before = snapshot(&pool).await;

    let Preview::Digest(digest) = preview(&pool, &settings, provider_id, later).await.unwrap()
    else {
        panic!("the retry is due");
    };

    assert_eq!(snapshot(&pool).await, before, "preview changed no row");
    let reminder_id: i64 = sqlx::query_scalar("SELECT id FROM reminders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(digest.reminder_id, Some(reminder_id), "the recorded digest");
    assert_eq!(
        digest.rendered.subject, "Reminder: 1 session is waiting for your invoice",
        "the reported session left the digest"
    );
    worker.run_reminders(later).await.unwrap();
    let sent = server.messages();
    assert_eq!(sent.len(), 1, "the retry is sent");
    let parsed = MessageParser::default().parse(&sent[0].data).unwrap();
    assert_eq!(
        sent_text(&parsed),
        digest.rendered.text,
        "the previewed text"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn preview_explains_missing_digest(pool: PgPool) {
    let now = friday_morning_los_angeles();
    let settings = Settings::default();
    let idle = provider(
        &pool,
        "Idle Provider",
        Some("idle@example.org"),
        LOS_ANGELES,
    )
    .await;
    let no_email = provider(&pool, "No Email", None, LOS_ANGELES).await;
    let bad_email = provider(&pool, "Bad Email", Some("not-an-address"), LOS_ANGELES).await;
    let sydney = provider(
        &pool,
        "Night Provider",
        Some("night@example.org"),
        "Australia/Sydney",
    )
    .await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    for provider_id in [no_email, bad_email, sydney] {
        session(&pool, provider_id, jane, now - Duration::days(6)).await;
    }
    let before = snapshot(&pool).await;

    let idle_preview = preview(&pool, &settings, idle, now).await.unwrap();
    let night_preview = preview(&pool, &settings, sydney, now).await.unwrap();
    let cases = [
        (999_999, false, "provider 999999 not found"),
        (no_email, false, "has no email address"),
        (bad_email, false, "email address is invalid"),
        (idle, true, "has no session in the reminder range"),
        (sydney, true, "send window is closed"),
    ];
    for (provider_id, succeeds, expected) in cases {
        let (status, stdout, stderr) = preview_command(&pool, provider_id, now).await;
        let printed = if succeeds { &stdout } else { &stderr };
        assert_eq!(
            status.success(),
            succeeds,
            "exit status for provider {provider_id}: {stderr}"
        );
        assert!(
            printed.contains(expected),
            "provider {provider_id}: expected {expected:?} in {printed:?}"
        );
        assert!(
            printed.contains(&format!("provider {provider_id}")),
            "the message names provider {provider_id}: {printed:?}"
        );
        assert_eq!(printed.lines().count(), 1, "one line: {printed:?}");
    }

    assert!(matches!(
        idle_preview,
        Preview::Nothing {
            reason: NoDigest::NothingOverdue,
            ..
        }
    ));
    // 05:00 on Saturday in Sydney; the window opens on Monday at 09:00 AEDT.
    let Preview::Nothing {
        reason: NoDigest::WindowClosed { next_opening, .. },
        ..
    } = night_preview
    else {
        panic!("the Sydney window is closed: {night_preview:?}");
    };
    assert_eq!(
        next_opening,
        "2026-12-06T22:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(snapshot(&pool).await, before, "preview changed no row");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn preview_after_tick_sends_nothing(pool: PgPool) {
    let server = SmtpServer::start();
    let settings = settings_for(&server);
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;
    helpers::worker(&pool, &settings)
        .run_reminders(now)
        .await
        .unwrap();

    // On Monday the session has passed 8 days, the second stage.
    let monday = now + Duration::days(3);
    let same_day = preview(&pool, &settings, provider_id, now + Duration::hours(1))
        .await
        .unwrap();
    let (status, stdout, _) = preview_command(&pool, provider_id, now + Duration::hours(1)).await;

    assert!(
        matches!(
            same_day,
            Preview::Nothing {
                reason: NoDigest::UpToDate {
                    overdue_sessions: 1
                },
                ..
            }
        ),
        "covered by today's digest: {same_day:?}"
    );
    assert!(status.success());
    assert!(stdout.contains("earlier digest covered"), "{stdout}");
    let Preview::Digest(next) = preview(&pool, &settings, provider_id, monday)
        .await
        .unwrap()
    else {
        panic!("stage 2 is due on Monday");
    };
    assert_eq!(next.reminder_id, None, "a new digest for the new stage");
}
