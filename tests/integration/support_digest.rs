//! The support digest: recorded once per schedule slot, delivered through
//! the outbox like a provider digest, with counts, new flags and the open
//! flags as a CSV attachment.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, TimeZone, Utc};
use mail_parser::{MessageParser, MimeHeaders};
use session_steward::config::{MailboxList, Settings, TransportKind};
use session_steward::email::Transport;
use session_steward::jobs::Worker;
use sqlx::PgPool;

use crate::helpers::{self, member, provider, session, settings_for};
use crate::smtp::{Received, SmtpServer};

const SUPPORT: &str = "support@example.org";

/// Monday 7 December 2026, 08:00 UTC: an occurrence of the default
/// support digest schedule.
fn monday_slot() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 8, 0, 0).unwrap()
}

/// Settings for `server` with the support digest going to [`SUPPORT`].
fn support_settings(server: &SmtpServer) -> Settings {
    let mut settings = settings_for(server);
    settings.support_digest.recipients =
        MailboxList(vec![SUPPORT.parse().expect("a valid address")]);
    settings
}

/// Inserts one provider and three members whose sessions open a
/// stale_hold, a member_blocked and a member_ineligible flag at `now`.
async fn flagged_sessions(pool: &PgPool, now: DateTime<Utc>) {
    let provider_id = provider(
        pool,
        "Ada Lovelace",
        Some("ada@example.org"),
        "America/Los_Angeles",
    )
    .await;
    let jane = member(pool, "Jane Doe", 20, now).await;
    session(pool, provider_id, jane, now - Duration::days(20)).await;
    let john = member(pool, "John Roe", 1, now).await;
    session(pool, provider_id, john, now - Duration::days(6)).await;
    ineligible_member_session(pool, provider_id, "Mary Major", now).await;
}

/// Inserts a member who is no longer eligible, with a session two days
/// before `now`, which the flag job flags as member_ineligible.
async fn ineligible_member_session(
    pool: &PgPool,
    provider_id: i64,
    name: &str,
    now: DateTime<Utc>,
) {
    let mary = member(pool, name, 20, now).await;
    sqlx::query("UPDATE members SET eligible = false WHERE id = $1")
        .bind(mary.0)
        .execute(pool)
        .await
        .expect("update member");
    session(pool, provider_id, mary, now - Duration::days(2)).await;
}

async fn open_flag_ids(pool: &PgPool) -> BTreeSet<i64> {
    sqlx::query_scalar::<_, i64>("SELECT id FROM flags WHERE resolved_at IS NULL")
        .fetch_all(pool)
        .await
        .expect("query flags")
        .into_iter()
        .collect()
}

/// Support digests in the outbox as (key, status, attempts), oldest first.
async fn support_digests(pool: &PgPool) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "SELECT reminder_key, status::text, attempts FROM reminders
         WHERE kind = 'support_digest' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("query support digests")
}

/// One received support digest, taken apart.
struct Digest {
    raw: String,
    text: String,
    html: String,
    message_id: String,
    attachment_name: String,
    /// The attachment's records, header line excluded.
    csv: Vec<csv::StringRecord>,
    csv_header: csv::StringRecord,
}

impl Digest {
    fn parse(data: &[u8]) -> Self {
        let message = MessageParser::default()
            .parse(data)
            .expect("message parses as MIME");
        let attachment = message.attachment(0).expect("one attachment");
        let contents = std::str::from_utf8(attachment.contents()).expect("UTF-8 attachment");
        // A spreadsheet reads the encoding from the byte order mark and
        // expects CRLF line ends.
        let contents = contents
            .strip_prefix('\u{feff}')
            .expect("the CSV starts with a byte order mark");
        assert_eq!(
            contents.matches('\n').count(),
            contents.matches("\r\n").count(),
            "every line of the CSV ends with CRLF"
        );
        let mut reader = csv::Reader::from_reader(contents.as_bytes());
        let csv_header = reader.headers().expect("CSV header line").clone();
        let csv = reader
            .records()
            .collect::<Result<Vec<_>, _>>()
            .expect("attachment parses as CSV");
        Digest {
            raw: String::from_utf8_lossy(data).into_owned(),
            text: message.body_text(0).expect("plain text body").into_owned(),
            html: message.body_html(0).expect("HTML body").into_owned(),
            message_id: message.message_id().expect("Message-ID").to_owned(),
            attachment_name: attachment
                .attachment_name()
                .expect("attachment name")
                .to_owned(),
            csv,
            csv_header,
        }
    }

    /// Flag ids in the attachment.
    fn csv_flag_ids(&self) -> BTreeSet<i64> {
        let column = self
            .csv_header
            .iter()
            .position(|name| name == "flag_id")
            .expect("flag_id column");
        self.csv
            .iter()
            .map(|record| record[column].parse().expect("numeric flag id"))
            .collect()
    }

    /// Flag ids on the new-flag lines of the text body.
    fn new_flag_ids(&self) -> BTreeSet<i64> {
        self.text
            .lines()
            .filter_map(|line| line.split(", flag ").nth(1))
            .map(|rest| {
                rest.split(',')
                    .next()
                    .and_then(|id| id.parse().ok())
                    .expect("flag id after \"flag \"")
            })
            .collect()
    }
}

fn only_message(server: &SmtpServer) -> Received {
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "exactly one message accepted");
    messages.into_iter().next().expect("one message")
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn digest_recorded_and_delivered_once(pool: PgPool) {
    let server = SmtpServer::start();
    let now = monday_slot() + Duration::minutes(1);
    flagged_sessions(&pool, now).await;
    let worker = helpers::worker(&pool, &support_settings(&server));
    worker.run_flags(now).await.unwrap();
    let open = open_flag_ids(&pool).await;
    assert_eq!(open.len(), 3, "three flags opened");

    let run = worker.run_support_digest(now).await.unwrap();

    assert!(run.record.recorded, "digest recorded");
    assert_eq!(run.record.slot, Some(monday_slot()), "slot is 08:00");
    assert_eq!(run.delivery.digests_sent, 1, "digest sent");
    assert_eq!(
        support_digests(&pool).await,
        vec![(
            "support-digest-20261207T080000Z".to_owned(),
            "sent".to_owned(),
            1
        )]
    );
    let received = only_message(&server);
    assert_eq!(received.recipients, vec![SUPPORT.to_owned()]);
    let digest = Digest::parse(&received.data);

    assert_eq!(
        digest.message_id, "support-digest-20261207T080000Z@localhost",
        "Message-ID derived from the slot"
    );
    assert!(
        received
            .text()
            .contains("\r\nAuto-Submitted: auto-generated\r\n"),
        "Auto-Submitted header"
    );
    let message = MessageParser::default().parse(&received.data).unwrap();
    let subject = message.subject().expect("subject");
    assert_eq!(subject, "Support digest: 3 open flags, 3 new");
    let content_type = message.content_type().expect("top-level content type");
    assert_eq!(
        content_type.subtype(),
        Some("mixed"),
        "body plus attachment"
    );

    for line in [
        "- member_blocked: 1",
        "- period_ending: 0",
        "- member_ineligible: 1",
        "- provider_unreachable: 0",
        "- stale_hold: 1",
        "- total: 3",
    ] {
        assert!(digest.text.contains(line), "{line:?} in:\n{}", digest.text);
    }
    let kinds_in_order: Vec<usize> = [
        "member_blocked:",
        "period_ending:",
        "member_ineligible:",
        "provider_unreachable:",
        "stale_hold:",
    ]
    .iter()
    .map(|kind| digest.text.find(kind).expect("kind listed"))
    .collect();
    assert!(
        kinds_in_order.is_sorted(),
        "kinds in severity order: {}",
        digest.text
    );
    assert_eq!(digest.new_flag_ids(), open, "every flag is new at first");
    assert!(
        digest.text.contains("member J. D."),
        "members shown by initials: {}",
        digest.text
    );
    assert!(
        digest.text.contains("session on 2026-11-16"),
        "session date in the provider's zone: {}",
        digest.text
    );
    assert!(
        digest.text.contains("http://127.0.0.1:8080/support/flags"),
        "page link in text"
    );
    assert!(
        digest
            .html
            .contains("href=\"http:&#x2f;&#x2f;127.0.0.1:8080&#x2f;support&#x2f;flags\""),
        "page link in HTML: {}",
        digest.html
    );
    for name in ["Jane", "Doe", "John", "Roe", "Mary", "Major"] {
        assert!(
            !digest.raw.contains(name),
            "member name {name} in the message"
        );
    }

    assert_eq!(digest.attachment_name, "open-flags-2026-12-07.csv");
    assert_eq!(digest.csv_flag_ids(), open, "every open flag attached");
    let member_ref = digest
        .csv_header
        .iter()
        .position(|name| name == "member_ref")
        .expect("member_ref column");
    let refs: BTreeSet<&str> = digest
        .csv
        .iter()
        .map(|record| &record[member_ref])
        .collect();
    assert_eq!(refs, BTreeSet::from(["J. D.", "J. R.", "M. M."]));
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn second_tick_in_slot_sends_nothing(pool: PgPool) {
    let server = SmtpServer::start();
    let now = monday_slot();
    flagged_sessions(&pool, now).await;
    let settings = support_settings(&server);
    let worker = helpers::worker(&pool, &settings);
    worker.run_flags(now).await.unwrap();
    worker.run_support_digest(now).await.unwrap();

    let repeated = worker.run_support_digest(now).await.unwrap();
    let catch_up = helpers::worker(&pool, &settings)
        .run_support_digest(now + Duration::hours(5))
        .await
        .unwrap();

    assert!(!repeated.record.recorded, "repeated tick records nothing");
    assert!(!catch_up.record.recorded, "catch-up tick records nothing");
    assert_eq!(catch_up.record.slot, Some(monday_slot()), "same slot");
    assert_eq!(support_digests(&pool).await.len(), 1, "one digest recorded");
    assert_eq!(server.attempts(), 1, "one message sent");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn replicas_record_one_digest(pool: PgPool) {
    let server = SmtpServer::start();
    let now = monday_slot();
    flagged_sessions(&pool, now).await;
    let settings = support_settings(&server);
    let replicas = [
        helpers::worker(&pool, &settings),
        helpers::worker(&pool, &settings),
        helpers::worker(&pool, &settings),
    ];
    replicas[0].run_flags(now).await.unwrap();

    let runs = futures_util::future::join_all(
        replicas
            .iter()
            .map(|replica| replica.run_support_digest(now)),
    )
    .await;

    let recorded = runs
        .into_iter()
        .map(|run| run.expect("tick succeeds"))
        .filter(|run| run.record.recorded)
        .count();
    assert_eq!(recorded, 1, "one replica records the digest");
    assert_eq!(support_digests(&pool).await.len(), 1, "one digest recorded");
    assert_eq!(server.attempts(), 1, "one message sent");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn next_slot_lists_only_newer_flags(pool: PgPool) {
    let server = SmtpServer::start();
    let monday = monday_slot();
    flagged_sessions(&pool, monday).await;
    let worker = helpers::worker(&pool, &support_settings(&server));
    worker.run_flags(monday).await.unwrap();
    worker.run_support_digest(monday).await.unwrap();
    let mondays_flags = open_flag_ids(&pool).await;

    let tuesday_early = monday + Duration::hours(23);
    let provider_id = provider(&pool, "Grace Hopper", Some("grace@example.org"), "UTC").await;
    ineligible_member_session(&pool, provider_id, "Kim Lee", tuesday_early).await;
    worker.run_flags(tuesday_early).await.unwrap();
    let tuesday = monday + Duration::days(1);
    let run = worker.run_support_digest(tuesday).await.unwrap();

    assert_eq!(run.record.slot, Some(tuesday), "Tuesday's slot");
    assert!(run.record.recorded, "a new digest for the new slot");
    let messages = server.messages();
    assert_eq!(messages.len(), 2, "one digest per slot");
    let digest = Digest::parse(&messages[1].data);
    let all_open = open_flag_ids(&pool).await;
    let newer: BTreeSet<i64> = all_open.difference(&mondays_flags).copied().collect();
    assert_eq!(newer.len(), 1, "one flag opened since Monday");
    assert_eq!(digest.new_flag_ids(), newer, "only the newer flag is new");
    assert_eq!(digest.csv_flag_ids(), all_open, "every open flag attached");
    assert_eq!(
        digest.message_id,
        "support-digest-20261208T080000Z@localhost"
    );
    assert_eq!(digest.attachment_name, "open-flags-2026-12-08.csv");
    assert!(
        digest
            .text
            .contains("from 2026-12-07 08:00:00 UTC to 2026-12-08 08:00:00 UTC"),
        "range of new flags: {}",
        digest.text
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn transient_failure_retried_once(pool: PgPool) {
    let server = SmtpServer::start();
    server.script_replies(&[451]);
    let now = monday_slot();
    flagged_sessions(&pool, now).await;
    let worker = helpers::worker(&pool, &support_settings(&server));
    worker.run_flags(now).await.unwrap();
    let recorded_flags = open_flag_ids(&pool).await;

    let first = worker.run_support_digest(now).await.unwrap();
    assert_eq!(first.delivery.digests_retrying, 1, "451 schedules a retry");
    assert!(server.messages().is_empty(), "nothing accepted yet");
    let (_, status, attempts) = support_digests(&pool).await.remove(0);
    assert_eq!((status.as_str(), attempts), ("pending", 1));

    // A flag opened after the digest was recorded belongs to the next one.
    let provider_id = provider(&pool, "Grace Hopper", Some("grace@example.org"), "UTC").await;
    ineligible_member_session(&pool, provider_id, "Kim Lee", now).await;
    worker.run_flags(now + Duration::minutes(2)).await.unwrap();

    let too_early = worker
        .run_support_digest(now + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(too_early.delivery.digests_sent, 0, "backoff respected");
    // The reminder job's delivery pass, every 15 minutes by default,
    // sends the retry long before the next support digest tick.
    let retry = worker
        .run_reminders(now + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(retry.delivery.digests_sent, 1, "delivered on the retry");
    worker
        .run_reminders(now + Duration::hours(1))
        .await
        .unwrap();

    let digest = Digest::parse(&only_message(&server).data);
    let (_, status, attempts) = support_digests(&pool).await.remove(0);
    assert_eq!((status.as_str(), attempts), ("sent", 2));
    assert_eq!(
        digest.new_flag_ids(),
        recorded_flags,
        "new flags are those up to the recording"
    );
    assert_eq!(
        digest.csv_flag_ids().len(),
        recorded_flags.len() + 1,
        "the attachment holds the flags open when sent"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn rejected_mailbox_fails_not_retried(pool: PgPool) {
    let server = SmtpServer::start();
    server.script_replies(&[550]);
    let now = monday_slot();
    let worker = helpers::worker(&pool, &support_settings(&server));

    let run = worker.run_support_digest(now).await.unwrap();

    assert_eq!(run.delivery.digests_failed, 1, "550 fails the digest");
    let (status, permanent, error): (String, bool, Option<String>) = sqlx::query_as(
        "SELECT status::text, permanent_failure, last_error FROM reminders WHERE kind = 'support_digest'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "failed");
    assert!(permanent, "marked as a permanent failure");
    assert!(
        error.unwrap_or_default().contains("550"),
        "server reply recorded"
    );
    worker
        .run_reminders(now + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(server.attempts(), 1, "never retried");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn file_transport_writes_digest(pool: PgPool) {
    let outbox = tempfile::tempdir().unwrap();
    let now = monday_slot();
    flagged_sessions(&pool, now).await;
    let mut settings = support_settings(&SmtpServer::start());
    settings.email.transport = Some(TransportKind::File);
    settings.file.directory = outbox.path().to_owned();
    let transport = Transport::from_settings(&settings, TransportKind::File).unwrap();
    let worker = Worker::new(pool.clone(), &settings, transport).unwrap();
    worker.run_flags(now).await.unwrap();

    worker.run_support_digest(now).await.unwrap();

    let path = outbox.path().join("support-digest-20261207T080000Z.eml");
    let raw = std::fs::read(&path).expect("file transport wrote the digest under its key");
    let digest = Digest::parse(&raw);
    assert_eq!(digest.attachment_name, "open-flags-2026-12-07.csv");
    assert_eq!(digest.csv_flag_ids(), open_flag_ids(&pool).await);
    let files = std::fs::read_dir(outbox.path()).unwrap().count();
    assert_eq!(files, 1, "one file and no partial files");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn empty_recipients_record_nothing(pool: PgPool) {
    let server = SmtpServer::start();
    let now = monday_slot();
    flagged_sessions(&pool, now).await;
    let worker = helpers::worker(&pool, &settings_for(&server));
    worker.run_flags(now).await.unwrap();

    let run = worker.run_support_digest(now).await.unwrap();

    assert!(run.record.disabled, "the job is off");
    assert!(worker.support_digest_schedule().is_none(), "not scheduled");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM reminders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outbox, 0, "nothing recorded");
    assert_eq!(server.attempts(), 0, "nothing sent");
}

const BINARY: &str = env!("CARGO_BIN_EXE_session-steward");

#[test]
fn bad_settings_name_key_and_value() {
    let workdir = tempfile::tempdir().unwrap();
    let path = workdir.path().join("bad.toml");
    let file_cases = [
        (
            "[support_digest]\nschedule = \"weekdays at 8\"\n",
            "support_digest.schedule",
            "weekdays at 8",
        ),
        (
            "[support_digest]\nrecipients = [\"support at example\"]\n",
            "support_digest.recipients",
            "support at example",
        ),
        (
            "[support_digest]\npage_url = \"ftp://example.org/flags\"\n",
            "support_digest.page_url",
            "ftp://example.org/flags",
        ),
    ];
    for (contents, key, value) in file_cases {
        std::fs::write(&path, contents).unwrap();
        let output = std::process::Command::new(BINARY)
            .env_remove("SESSION_STEWARD_CONFIG")
            .arg("--config")
            .arg(&path)
            .arg("flags")
            .output()
            .expect("run the binary");
        assert_one_line_error(&output, key, value);
    }

    let output = std::process::Command::new(BINARY)
        .env_remove("SESSION_STEWARD_CONFIG")
        .env(
            "SESSION_STEWARD_SUPPORT_DIGEST__PAGE_URL",
            "javascript:alert(1)",
        )
        .arg("flags")
        .output()
        .expect("run the binary");
    assert_one_line_error(&output, "support_digest.page_url", "javascript:alert(1)");
}

fn assert_one_line_error(output: &std::process::Output, key: &str, value: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{value} accepted for {key}");
    assert!(stderr.contains(key), "error names {key}: {stderr}");
    assert!(stderr.contains(value), "error names {value}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr: {stderr}"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn run_once_takes_environment_overrides(pool: PgPool) {
    let outbox = tempfile::tempdir().unwrap();
    // run-once refuses an instant in the future, so a week before.
    let now = monday_slot() - chrono::Duration::days(7);
    flagged_sessions(&pool, now).await;

    let output = std::process::Command::new(BINARY)
        .env_remove("SESSION_STEWARD_CONFIG")
        .env("DATABASE_URL", helpers::database_url(&pool).await)
        .env("SESSION_STEWARD_EMAIL__TRANSPORT", "file")
        .env("SESSION_STEWARD_FILE__DIRECTORY", outbox.path())
        .env("SESSION_STEWARD_SUPPORT_DIGEST__SCHEDULE", "0 30 7 * * *")
        .env(
            "SESSION_STEWARD_SUPPORT_DIGEST__RECIPIENTS",
            "Support <support@example.org>, oncall@example.org",
        )
        .args(["run-once", "all", "--now", &now.to_rfc3339()])
        .output()
        .expect("run the binary");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "run-once failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("support_digest: {\"record\""),
        "run-once all includes the support digest: {stdout}"
    );
    let path = outbox.path().join("support-digest-20261130T073000Z.eml");
    let raw = std::fs::read(&path).expect("digest written for the 07:30 slot");
    let message = MessageParser::default().parse(&raw).unwrap();
    let recipients: Vec<&str> = message
        .to()
        .expect("To header")
        .iter()
        .filter_map(|address| address.address())
        .collect();
    assert_eq!(recipients, vec![SUPPORT, "oncall@example.org"]);
    let digest = Digest::parse(&raw);
    assert_eq!(
        digest.csv_flag_ids(),
        open_flag_ids(&pool).await,
        "flags from the same run-once all are attached"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn long_new_list_is_cut(pool: PgPool) {
    let server = SmtpServer::start();
    let now = monday_slot();
    let listed = session_steward::compose::SUPPORT_NEW_FLAGS_LISTED;
    sqlx::query(
        "INSERT INTO flags (kind, session_id, member_id, provider_id, opened_at, last_seen_at)
         SELECT 'stale_hold', n, n, 1, $2, $2 FROM generate_series(1, $1) AS n",
    )
    .bind(listed as i32 + 5)
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();

    helpers::worker(&pool, &support_settings(&server))
        .run_support_digest(now)
        .await
        .unwrap();

    let digest = Digest::parse(&only_message(&server).data);
    assert_eq!(
        digest.new_flag_ids().len(),
        listed,
        "the first {listed} listed"
    );
    assert!(
        digest
            .text
            .contains("...and 5 more, listed in the attachment."),
        "the rest counted: {}",
        digest.text
    );
    assert_eq!(digest.csv.len(), listed + 5, "every flag attached");
}
