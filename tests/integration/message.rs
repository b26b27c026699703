//! The digest as a MIME message: structure, headers and content rules.

use chrono::Duration;
use mail_parser::{HeaderValue, MessageParser, MimeHeaders};
use sqlx::PgPool;

use crate::helpers::{self, friday_morning_los_angeles, member, provider, session, settings_for};
use crate::smtp::SmtpServer;

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn digest_is_valid_multipart_alternative(pool: PgPool) {
    let server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let provider_id = provider(
        &pool,
        "Ada <b>Lovelace</b>",
        Some("ada@example.org"),
        "America/Los_Angeles",
    )
    .await;
    let jane = member(&pool, "Jane Marie Doe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;

    helpers::worker(&pool, &settings_for(&server))
        .run_reminders(now)
        .await
        .unwrap();

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "one digest");
    let raw = &messages[0].data;
    let message = MessageParser::default()
        .parse(raw)
        .expect("message parses as MIME");

    let content_type = message.content_type().expect("top-level content type");
    assert_eq!(content_type.ctype(), "multipart");
    assert_eq!(content_type.subtype(), Some("alternative"));
    let parts: Vec<String> = message
        .parts
        .iter()
        .skip(1)
        .map(|part| {
            let part_type = part.content_type().expect("part content type");
            format!(
                "{}/{}",
                part_type.ctype(),
                part_type.subtype().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec!["text/plain", "text/html"],
        "plain text first, then HTML"
    );

    let key = format!("digest-{provider_id}-2026-12-04");
    assert_eq!(
        message.message_id(),
        Some(format!("{key}@localhost").as_str()),
        "Message-ID derived from the key"
    );
    let auto_submitted = message
        .header("Auto-Submitted")
        .expect("Auto-Submitted header");
    assert!(
        matches!(auto_submitted, HeaderValue::Text(value) if value == "auto-generated"),
        "Auto-Submitted is auto-generated: {auto_submitted:?}"
    );
    let subject = message.subject().expect("subject");
    assert!(
        !subject.contains("Lovelace") && !subject.contains("Jane"),
        "no personal data in the subject: {subject}"
    );

    let text = message.body_text(0).expect("plain text body");
    let html = message.body_html(0).expect("HTML body");
    let whole = String::from_utf8_lossy(raw);
    for body in [text.as_ref(), html.as_ref(), whole.as_ref()] {
        assert!(!body.contains("Jane"), "no member first name");
        assert!(!body.contains("Doe"), "no member last name");
    }
    assert!(text.contains("J. D."), "member shown by initials: {text}");
    assert!(
        text.contains("http://localhost:8080/dashboard"),
        "dashboard link in text"
    );
    // minijinja's HTML escaping writes "/" as "&#x2f;", which mail clients decode.
    assert!(
        html.contains("href=\"http:&#x2f;&#x2f;localhost:8080&#x2f;dashboard\""),
        "dashboard link in HTML: {html}"
    );
    assert!(
        text.contains("no-show") && text.contains("late cancellation"),
        "says what to do"
    );
    assert!(
        html.contains("Ada &lt;b&gt;Lovelace&lt;&#x2f;b&gt;"),
        "HTML escapes the provider name: {html}"
    );
    assert!(!html.contains("<b>Lovelace"), "no raw markup from data");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn retried_digest_keeps_message_id(pool: PgPool) {
    let now = friday_morning_los_angeles();
    let outbox = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&SmtpServer::start());
    settings.email.transport = Some(session_steward::config::TransportKind::File);
    settings.file.directory = outbox.path().to_owned();
    let provider_id = provider(
        &pool,
        "Ada Lovelace",
        Some("ada@example.org"),
        "America/Los_Angeles",
    )
    .await;
    let jane = member(&pool, "Jane Doe", 20, now).await;
    session(&pool, provider_id, jane, now - Duration::days(6)).await;

    let transport = session_steward::email::Transport::from_settings(
        &settings,
        session_steward::config::TransportKind::File,
    )
    .unwrap();
    let worker = session_steward::jobs::Worker::new(pool.clone(), &settings, transport).unwrap();
    worker.run_reminders(now).await.unwrap();

    let path = outbox
        .path()
        .join(format!("digest-{provider_id}-2026-12-04.eml"));
    let raw = std::fs::read(&path).expect("file transport wrote the digest under its key");
    let message = MessageParser::default()
        .parse(&raw)
        .expect("file holds a MIME message");
    assert_eq!(
        message.message_id(),
        Some(format!("digest-{provider_id}-2026-12-04@localhost").as_str())
    );
    let files = std::fs::read_dir(outbox.path()).unwrap().count();
    assert_eq!(files, 1, "one file per digest and no partial files");
}
