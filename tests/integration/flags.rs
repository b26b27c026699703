//! Tests of the flag job against a real database. Each kind of flag opens
//! once, stays open while its condition is met and clears itself when the
//! condition stops. Support acknowledges and resolves flags through
//! `flags::acknowledge` and `flags::resolve`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use session_steward::flags::{self, FlagCounts, FlagKind, FlagUpdateError};
use session_steward::jobs::Worker;
use session_steward::recipient::Unreachable;
use sqlx::PgPool;

use crate::helpers::{
    friday_morning_los_angeles, member, provider, session, set_status, settings_for, worker,
};
use crate::smtp::SmtpServer;

const LOS_ANGELES: &str = "America/Los_Angeles";

/// The columns of a `flags` row that the tests check.
#[derive(Debug, sqlx::FromRow)]
struct Flag {
    id: i64,
    provider_id: i64,
    reason: Option<String>,
    opened_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    acknowledged_at: Option<DateTime<Utc>>,
    acknowledged_by: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    resolution: Option<String>,
    note: Option<String>,
}

/// Returns every flag of `kind` on `session_id`, oldest first.
async fn flags_of(pool: &PgPool, session_id: i64, kind: FlagKind) -> Vec<Flag> {
    sqlx::query_as(
        "SELECT id, provider_id, reason, opened_at, last_seen_at, acknowledged_at,
                acknowledged_by, resolved_at, resolved_by, resolution::text AS resolution, note
         FROM flags WHERE session_id = $1 AND kind = $2 ORDER BY id",
    )
    .bind(session_id)
    .bind(kind)
    .fetch_all(pool)
    .await
    .expect("query flags")
}

/// Returns the open flags of `kind` on `session_id`.
async fn open_flags(pool: &PgPool, session_id: i64, kind: FlagKind) -> Vec<Flag> {
    let mut flags = flags_of(pool, session_id, kind).await;
    flags.retain(|flag| flag.resolved_at.is_none());
    flags
}

/// Runs the flag job at `now` and checks that this run did the update,
/// since a run that finds the job lock taken skips it and counts nothing.
pub(crate) async fn run_flag_job(worker: &Worker, now: DateTime<Utc>) -> FlagCounts {
    let counts = worker.run_flags(now).await.expect("run the flag job");
    assert!(!counts.skipped, "the flag run at {now} took the job lock");
    counts
}

/// Returns the count for `kind` in one of the maps of `FlagCounts`.
fn count(counts: &BTreeMap<FlagKind, u64>, kind: FlagKind) -> u64 {
    counts.get(&kind).copied().unwrap_or(0)
}

/// Builds a worker from default settings. The SMTP server only has to
/// exist for the worker to build, because the flag job sends no email.
pub(crate) fn flag_worker(pool: &PgPool) -> (SmtpServer, Worker) {
    let server = SmtpServer::start();
    let worker = worker(pool, &settings_for(&server));
    (server, worker)
}

/// Inserts a provider that passes every reachability check.
async fn reachable_provider(pool: &PgPool) -> i64 {
    provider(pool, "Ana Ruiz", Some("ana@example.org"), LOS_ANGELES).await
}

async fn set_sessions_total(pool: &PgPool, allotment_id: i64, total: i32) {
    sqlx::query("UPDATE allotments SET sessions_total = $2 WHERE id = $1")
        .bind(allotment_id)
        .bind(total)
        .execute(pool)
        .await
        .expect("update sessions_total");
}

pub(crate) async fn set_period_end(pool: &PgPool, allotment_id: i64, period_end: DateTime<Utc>) {
    sqlx::query("UPDATE allotments SET period_end = $2 WHERE id = $1")
        .bind(allotment_id)
        .bind(period_end)
        .execute(pool)
        .await
        .expect("update period_end");
}

async fn set_provider_email(pool: &PgPool, provider_id: i64, email: &str) {
    sqlx::query("UPDATE providers SET email = $2 WHERE id = $1")
        .bind(provider_id)
        .bind(email)
        .execute(pool)
        .await
        .expect("update provider email");
}

async fn deactivate_provider(pool: &PgPool, provider_id: i64) {
    sqlx::query("UPDATE providers SET active = false WHERE id = $1")
        .bind(provider_id)
        .execute(pool)
        .await
        .expect("deactivate provider");
}

async fn clear_time_zone(pool: &PgPool, provider_id: i64) {
    sqlx::query("UPDATE providers SET time_zone = NULL WHERE id = $1")
        .bind(provider_id)
        .execute(pool)
        .await
        .expect("clear provider time zone");
}

async fn set_member(pool: &PgPool, member_id: i64, eligible: bool, matched: bool) {
    sqlx::query("UPDATE members SET eligible = $2, matched = $3 WHERE id = $1")
        .bind(member_id)
        .bind(eligible)
        .bind(matched)
        .execute(pool)
        .await
        .expect("update member");
}

/// Records a finished digest to `provider_id` with `status` ('sent' or
/// 'failed', taken as a permanent failure), as the outbox would.
async fn finished_digest(
    pool: &PgPool,
    provider_id: i64,
    status: &str,
    finished_at: DateTime<Utc>,
) {
    sqlx::query(
        "INSERT INTO reminders (reminder_key, provider_id, local_date, status, created_at,
                                attempts, next_attempt_at, finished_at, permanent_failure)
         VALUES ($1, $2, $3, $4::reminder_status, $5, 1, $5, $5, $4 = 'failed')",
    )
    .bind(format!("{provider_id}:{finished_at}"))
    .bind(provider_id)
    .bind(finished_at.date_naive())
    .bind(status)
    .bind(finished_at)
    .execute(pool)
    .await
    .expect("insert digest");
}

/// Runs the job at `now` and an hour later. Checks that the first run
/// opened one flag of `kind` and none of any other kind, and that the
/// second run counted it as still open. Returns the one flag of `kind`
/// on `session_id`, which must be open.
async fn assert_opens_once(
    pool: &PgPool,
    worker: &Worker,
    session_id: i64,
    kind: FlagKind,
    now: DateTime<Utc>,
) -> Flag {
    let first = run_flag_job(worker, now).await;
    for other in FlagKind::ALL {
        let expected = u64::from(other == kind);
        assert_eq!(
            count(&first.opened, other),
            expected,
            "first run opens {expected} {other} flag(s) while testing {kind}"
        );
    }

    let later = now + Duration::hours(1);
    let second = run_flag_job(worker, later).await;
    assert_eq!(
        count(&second.opened, kind),
        0,
        "second run opens no new {kind} flag"
    );
    assert_eq!(
        count(&second.still_open, kind),
        1,
        "second run counts the {kind} flag as still open"
    );
    assert_eq!(
        count(&second.resolved, kind),
        0,
        "second run resolves no {kind} flag"
    );

    let mut rows = flags_of(pool, session_id, kind).await;
    assert_eq!(
        rows.len(),
        1,
        "session {session_id} has exactly one {kind} row"
    );
    let flag = rows.remove(0);
    assert_eq!(flag.resolved_at, None, "the {kind} flag is open");
    assert_eq!(
        flag.opened_at, now,
        "the {kind} flag opened at the first run"
    );
    assert_eq!(
        flag.last_seen_at, later,
        "the {kind} flag was last seen at the second run"
    );
    flag
}

/// Runs the job at `now` and checks that it resolved the one flag of
/// `kind` on `session_id` as 'condition_cleared' and opened no other.
async fn assert_clears(
    pool: &PgPool,
    worker: &Worker,
    session_id: i64,
    kind: FlagKind,
    now: DateTime<Utc>,
) {
    let counts = run_flag_job(worker, now).await;
    assert_eq!(
        count(&counts.resolved, kind),
        1,
        "the run resolves the {kind} flag"
    );
    assert_eq!(
        count(&counts.still_open, kind),
        0,
        "no {kind} flag is still open"
    );
    assert_eq!(count(&counts.opened, kind), 0, "no {kind} flag is opened");

    let rows = flags_of(pool, session_id, kind).await;
    assert_eq!(
        rows.len(),
        1,
        "session {session_id} still has one {kind} row"
    );
    let flag = &rows[0];
    assert_eq!(
        flag.resolution.as_deref(),
        Some("condition_cleared"),
        "the {kind} flag resolved itself"
    );
    assert_eq!(
        flag.resolved_at,
        Some(now),
        "the {kind} flag resolved at the run"
    );
    assert_eq!(
        flag.resolved_by.as_deref(),
        Some("session-steward"),
        "the worker resolved the {kind} flag"
    );
}

/// Opens a stale_hold flag at `now` and returns (session id, flag id).
async fn open_stale_hold(pool: &PgPool, worker: &Worker, now: DateTime<Utc>) -> (i64, i64) {
    let provider_id = reachable_provider(pool).await;
    let jane = member(pool, "Jane Doe", 10, now).await;
    let session_id = session(pool, provider_id, jane, now - Duration::days(15)).await;
    run_flag_job(worker, now).await;
    let flags = open_flags(pool, session_id, FlagKind::StaleHold).await;
    assert_eq!(flags.len(), 1, "setup opens one stale_hold flag");
    (session_id, flags[0].id)
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn stale_hold_opens_then_clears(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let jane = member(&pool, "Jane Doe", 10, now).await;
    let session_id = session(&pool, provider_id, jane, now - Duration::days(15)).await;

    let flag = assert_opens_once(&pool, &worker, session_id, FlagKind::StaleHold, now).await;
    assert_eq!(flag.reason, None, "a stale_hold flag needs no reason");

    set_status(&pool, session_id, "completed").await;
    assert_clears(
        &pool,
        &worker,
        session_id,
        FlagKind::StaleHold,
        now + Duration::hours(2),
    )
    .await;
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn stale_hold_starts_after_fourteen_days(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let jane = member(&pool, "Jane Doe", 10, now).await;
    let session_id = session(&pool, provider_id, jane, now - Duration::days(14)).await;

    let at_boundary = run_flag_job(&worker, now).await;
    assert_eq!(
        count(&at_boundary.opened, FlagKind::StaleHold),
        0,
        "a session that ended exactly 14 days ago is not stale"
    );

    let after = run_flag_job(&worker, now + Duration::seconds(1)).await;
    assert_eq!(
        count(&after.opened, FlagKind::StaleHold),
        1,
        "one second later the session is stale"
    );
    assert_eq!(
        open_flags(&pool, session_id, FlagKind::StaleHold)
            .await
            .len(),
        1,
        "the stale session has one open stale_hold flag"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn member_blocked_opens_then_clears(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let jane = member(&pool, "Jane Doe", 1, now).await;
    let session_id = session(&pool, provider_id, jane, now - Duration::days(6)).await;

    assert_opens_once(&pool, &worker, session_id, FlagKind::MemberBlocked, now).await;

    set_sessions_total(&pool, jane.1, 2).await;
    assert_clears(
        &pool,
        &worker,
        session_id,
        FlagKind::MemberBlocked,
        now + Duration::hours(2),
    )
    .await;
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn member_blocked_counts_used_sessions(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    // Three used sessions and the hold leave 4 - 3 - 1 = 0.
    let jane = member(&pool, "Jane Doe", 4, now).await;
    for status in ["completed", "late_cancellation", "no_show"] {
        let used = session(&pool, provider_id, jane, now - Duration::days(30)).await;
        set_status(&pool, used, status).await;
    }
    let hold = session(&pool, provider_id, jane, now - Duration::days(6)).await;

    run_flag_job(&worker, now).await;

    assert_eq!(
        open_flags(&pool, hold, FlagKind::MemberBlocked).await.len(),
        1,
        "completed, late_cancellation and no_show use up the allotment"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn member_blocked_ignores_unused_sessions(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    // The unused sessions and the hold leave 2 - 0 - 1 = 1.
    let jane = member(&pool, "Jane Doe", 2, now).await;
    for status in ["cancelled", "completed_credited"] {
        let unused = session(&pool, provider_id, jane, now - Duration::days(30)).await;
        set_status(&pool, unused, status).await;
    }
    let first_hold = session(&pool, provider_id, jane, now - Duration::days(6)).await;

    run_flag_job(&worker, now).await;
    assert_eq!(
        open_flags(&pool, first_hold, FlagKind::MemberBlocked)
            .await
            .len(),
        0,
        "cancelled and completed_credited sessions use none of the allotment"
    );

    // A second hold takes the last session.
    let second_hold = session(&pool, provider_id, jane, now - Duration::days(7)).await;
    run_flag_job(&worker, now + Duration::hours(1)).await;
    assert_eq!(
        open_flags(&pool, first_hold, FlagKind::MemberBlocked)
            .await
            .len(),
        1,
        "the first hold is blocked once the holds use the allotment up"
    );
    assert_eq!(
        open_flags(&pool, second_hold, FlagKind::MemberBlocked)
            .await
            .len(),
        1,
        "the second hold is blocked as well"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn period_ending_opens_then_clears(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let jane = member(&pool, "Jane Doe", 10, now).await;
    set_period_end(&pool, jane.1, now + Duration::days(7)).await;
    let session_id = session(&pool, provider_id, jane, now - Duration::days(6)).await;

    let flag = assert_opens_once(&pool, &worker, session_id, FlagKind::PeriodEnding, now).await;
    assert_eq!(
        flag.reason.as_deref(),
        Some("benefit period ends 2026-12-11"),
        "the reason gives the end of the period"
    );

    set_period_end(&pool, jane.1, now + Duration::days(60)).await;
    assert_clears(
        &pool,
        &worker,
        session_id,
        FlagKind::PeriodEnding,
        now + Duration::hours(2),
    )
    .await;
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn period_ending_window_bounds(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let ended = now - Duration::days(6);

    let at_window_end = member(&pool, "Jane Doe", 10, now).await;
    set_period_end(&pool, at_window_end.1, now + Duration::days(14)).await;
    let inside = session(&pool, provider_id, at_window_end, ended).await;

    let past_window_end = member(&pool, "John Roe", 10, now).await;
    set_period_end(
        &pool,
        past_window_end.1,
        now + Duration::days(14) + Duration::seconds(1),
    )
    .await;
    let outside = session(&pool, provider_id, past_window_end, ended).await;

    let already_ended = member(&pool, "Mary Major", 10, now).await;
    set_period_end(&pool, already_ended.1, now).await;
    let over = session(&pool, provider_id, already_ended, ended).await;

    run_flag_job(&worker, now).await;

    assert_eq!(
        open_flags(&pool, inside, FlagKind::PeriodEnding)
            .await
            .len(),
        1,
        "a period ending exactly 14 days from now is flagged"
    );
    assert_eq!(
        open_flags(&pool, outside, FlagKind::PeriodEnding)
            .await
            .len(),
        0,
        "a period ending later than 14 days from now is not flagged"
    );
    assert_eq!(
        open_flags(&pool, over, FlagKind::PeriodEnding).await.len(),
        0,
        "a period that ends now has already ended and is not flagged"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn unreachable_provider_opens_then_clears(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ana Ruiz", None, LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 10, now).await;
    let session_id = session(&pool, provider_id, jane, now - Duration::days(6)).await;

    let flag = assert_opens_once(
        &pool,
        &worker,
        session_id,
        FlagKind::ProviderUnreachable,
        now,
    )
    .await;
    assert_eq!(
        flag.reason.as_deref(),
        Some(Unreachable::MissingEmail.as_str()),
        "the reason names the missing address"
    );

    set_provider_email(&pool, provider_id, "ana@example.org").await;
    assert_clears(
        &pool,
        &worker,
        session_id,
        FlagKind::ProviderUnreachable,
        now + Duration::hours(2),
    )
    .await;
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn unreachable_provider_names_each_reason(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let jane = member(&pool, "Jane Doe", 10, now).await;

    let inactive = reachable_provider(&pool).await;
    deactivate_provider(&pool, inactive).await;
    let no_time_zone = provider(&pool, "Fa Gil", Some("fa@example.org"), LOS_ANGELES).await;
    clear_time_zone(&pool, no_time_zone).await;
    let cases = [
        (inactive, Unreachable::Inactive),
        (
            provider(&pool, "Bo Chen", None, LOS_ANGELES).await,
            Unreachable::MissingEmail,
        ),
        (
            provider(&pool, "Cy Diaz", Some("not-an-address"), LOS_ANGELES).await,
            Unreachable::InvalidEmail,
        ),
        (
            provider(&pool, "Di Eze", Some("di@example.org"), "Mars/Olympus").await,
            Unreachable::UnknownTimeZone,
        ),
        (no_time_zone, Unreachable::UnknownTimeZone),
        (
            provider(&pool, "Ed\r\nBcc: x", Some("ed@example.org"), LOS_ANGELES).await,
            Unreachable::UnsafeName,
        ),
    ];
    let mut sessions = Vec::new();
    for (provider_id, _) in &cases {
        sessions.push(session(&pool, *provider_id, jane, now - Duration::days(6)).await);
    }

    let counts = run_flag_job(&worker, now).await;
    assert_eq!(
        count(&counts.opened, FlagKind::ProviderUnreachable),
        cases.len() as u64,
        "one provider_unreachable flag per unreachable provider"
    );

    for ((provider_id, reason), session_id) in cases.into_iter().zip(sessions) {
        let flags = open_flags(&pool, session_id, FlagKind::ProviderUnreachable).await;
        assert_eq!(flags.len(), 1, "provider {provider_id} is flagged once");
        assert_eq!(
            flags[0].provider_id, provider_id,
            "the flag names provider {provider_id}"
        );
        assert_eq!(
            flags[0].reason.as_deref(),
            Some(reason.as_str()),
            "provider {provider_id} is flagged because {reason}"
        );
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn failed_digest_flags_until_sent(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let jane = member(&pool, "Jane Doe", 10, now).await;
    let session_id = session(&pool, provider_id, jane, now - Duration::days(6)).await;
    finished_digest(&pool, provider_id, "sent", now - Duration::days(3)).await;
    finished_digest(&pool, provider_id, "failed", now - Duration::days(1)).await;

    let flag = assert_opens_once(
        &pool,
        &worker,
        session_id,
        FlagKind::ProviderUnreachable,
        now,
    )
    .await;
    assert_eq!(
        flag.reason.as_deref(),
        Some(Unreachable::DeliveryFailed.as_str()),
        "the reason names the failed digest"
    );

    finished_digest(&pool, provider_id, "sent", now + Duration::days(1)).await;
    assert_clears(
        &pool,
        &worker,
        session_id,
        FlagKind::ProviderUnreachable,
        now + Duration::days(1) + Duration::hours(1),
    )
    .await;
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn ineligible_member_opens_then_clears(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let jane = member(&pool, "Jane Doe", 10, now).await;
    set_member(&pool, jane.0, false, true).await;
    // The session has not ended yet, because member_ineligible covers every
    // scheduled session, overdue or not.
    let session_id = session(&pool, provider_id, jane, now + Duration::days(2)).await;

    let flag = assert_opens_once(&pool, &worker, session_id, FlagKind::MemberIneligible, now).await;
    assert_eq!(
        flag.reason.as_deref(),
        Some("member is no longer eligible"),
        "the reason names eligibility"
    );

    set_member(&pool, jane.0, true, true).await;
    assert_clears(
        &pool,
        &worker,
        session_id,
        FlagKind::MemberIneligible,
        now + Duration::hours(2),
    )
    .await;
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn unmatched_member_opens_then_clears(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let jane = member(&pool, "Jane Doe", 10, now).await;
    set_member(&pool, jane.0, true, false).await;
    let session_id = session(&pool, provider_id, jane, now + Duration::days(2)).await;

    let flag = assert_opens_once(&pool, &worker, session_id, FlagKind::MemberIneligible, now).await;
    assert_eq!(
        flag.reason.as_deref(),
        Some("member is no longer matched with a provider"),
        "the reason names the lost match"
    );

    set_member(&pool, jane.0, true, true).await;
    assert_clears(
        &pool,
        &worker,
        session_id,
        FlagKind::MemberIneligible,
        now + Duration::hours(2),
    )
    .await;
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn cleared_flag_reopens_on_return(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let provider_id = reachable_provider(&pool).await;
    let jane = member(&pool, "Jane Doe", 10, now).await;
    set_member(&pool, jane.0, false, true).await;
    let session_id = session(&pool, provider_id, jane, now + Duration::days(2)).await;
    run_flag_job(&worker, now).await;
    set_member(&pool, jane.0, true, true).await;
    run_flag_job(&worker, now + Duration::hours(1)).await;

    set_member(&pool, jane.0, false, true).await;
    let counts = run_flag_job(&worker, now + Duration::hours(2)).await;

    assert_eq!(
        count(&counts.opened, FlagKind::MemberIneligible),
        1,
        "a flag the worker cleared opens again when its condition returns"
    );
    let rows = flags_of(&pool, session_id, FlagKind::MemberIneligible).await;
    assert_eq!(rows.len(), 2, "the cleared flag is kept beside the new one");
    assert_eq!(
        rows[0].resolution.as_deref(),
        Some("condition_cleared"),
        "the first flag stays cleared"
    );
    assert_eq!(rows[1].resolved_at, None, "the new flag is open");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn not_overdue_session_gets_no_flags(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    // Every condition except the age is met: the provider has no address,
    // the allotment has no balance left and its period ends within 14 days.
    let provider_id = provider(&pool, "Ana Ruiz", None, LOS_ANGELES).await;
    let jane = member(&pool, "Jane Doe", 1, now).await;
    set_period_end(&pool, jane.1, now + Duration::days(7)).await;
    let session_id = session(&pool, provider_id, jane, now - Duration::days(5)).await;
    let overdue_kinds = [
        FlagKind::MemberBlocked,
        FlagKind::PeriodEnding,
        FlagKind::ProviderUnreachable,
    ];

    let at_boundary = run_flag_job(&worker, now).await;
    for kind in overdue_kinds {
        assert_eq!(
            count(&at_boundary.opened, kind),
            0,
            "a session that ended exactly 5 days ago gets no {kind} flag"
        );
        assert_eq!(
            flags_of(&pool, session_id, kind).await.len(),
            0,
            "no {kind} row exists for the session that ended 5 days ago"
        );
    }

    run_flag_job(&worker, now + Duration::seconds(1)).await;
    for kind in overdue_kinds {
        assert_eq!(
            open_flags(&pool, session_id, kind).await.len(),
            1,
            "one second later the overdue session gets a {kind} flag"
        );
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn acknowledge_keeps_flag_open(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let (session_id, flag_id) = open_stale_hold(&pool, &worker, now).await;
    let acknowledged_at = now + Duration::hours(1);

    flags::acknowledge(&pool, flag_id, "dana", acknowledged_at)
        .await
        .expect("acknowledge an open flag");
    flags::acknowledge(&pool, flag_id, "eli", now + Duration::hours(2))
        .await
        .expect("acknowledge the flag again");
    let counts = run_flag_job(&worker, now + Duration::hours(3)).await;

    let rows = flags_of(&pool, session_id, FlagKind::StaleHold).await;
    assert_eq!(rows.len(), 1, "acknowledging adds no row");
    let flag = &rows[0];
    assert_eq!(flag.resolved_at, None, "the acknowledged flag stays open");
    assert_eq!(
        flag.acknowledged_by.as_deref(),
        Some("dana"),
        "the first acknowledgement records who"
    );
    assert_eq!(
        flag.acknowledged_at,
        Some(acknowledged_at),
        "the first acknowledgement records when"
    );
    assert_eq!(
        count(&counts.still_open, FlagKind::StaleHold),
        1,
        "the job still counts the acknowledged flag as open"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn acknowledge_rejects_unknown_flag(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let (_, flag_id) = open_stale_hold(&pool, &worker, now).await;
    let unknown = flag_id + 1000;

    let error = flags::acknowledge(&pool, unknown, "dana", now)
        .await
        .expect_err("an unknown flag cannot be acknowledged");

    assert!(
        matches!(error, FlagUpdateError::NotFound(id) if id == unknown),
        "acknowledging an unknown id fails with NotFound, got {error:?}"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn acknowledge_rejects_resolved_flag(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let (session_id, flag_id) = open_stale_hold(&pool, &worker, now).await;
    flags::resolve(&pool, flag_id, "dana", "Provider reported it.", now)
        .await
        .expect("resolve");

    let error = flags::acknowledge(&pool, flag_id, "eli", now + Duration::hours(1))
        .await
        .expect_err("a resolved flag cannot be acknowledged");

    assert!(
        matches!(error, FlagUpdateError::AlreadyResolved(id) if id == flag_id),
        "acknowledging a resolved flag fails with AlreadyResolved, got {error:?}"
    );
    let rows = flags_of(&pool, session_id, FlagKind::StaleHold).await;
    assert_eq!(
        rows[0].acknowledged_by, None,
        "the rejected acknowledgement is not recorded"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn resolve_records_support_note(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let (session_id, flag_id) = open_stale_hold(&pool, &worker, now).await;
    let resolved_at = now + Duration::hours(1);

    flags::resolve(
        &pool,
        flag_id,
        "dana",
        "  Called the provider; session reported.\n",
        resolved_at,
    )
    .await
    .expect("resolve an open flag");

    let rows = flags_of(&pool, session_id, FlagKind::StaleHold).await;
    let flag = &rows[0];
    assert_eq!(
        flag.resolution.as_deref(),
        Some("resolved_by_support"),
        "the flag is resolved by support"
    );
    assert_eq!(
        flag.resolved_by.as_deref(),
        Some("dana"),
        "the resolution records who"
    );
    assert_eq!(
        flag.resolved_at,
        Some(resolved_at),
        "the resolution records when"
    );
    assert_eq!(
        flag.note.as_deref(),
        Some("Called the provider; session reported."),
        "the note is stored without surrounding whitespace"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn resolve_rejects_empty_note(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let (session_id, flag_id) = open_stale_hold(&pool, &worker, now).await;

    for note in ["", " \n\t "] {
        let error = flags::resolve(&pool, flag_id, "dana", note, now)
            .await
            .expect_err("an empty note is rejected");
        assert!(
            matches!(error, FlagUpdateError::InvalidNote(_)),
            "note {note:?} fails with InvalidNote, got {error:?}"
        );
    }

    let rows = flags_of(&pool, session_id, FlagKind::StaleHold).await;
    assert_eq!(
        rows[0].resolved_at, None,
        "the flag stays open after the rejected notes"
    );
    assert_eq!(rows[0].note, None, "no note is stored");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn resolve_rejects_unknown_flag(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let (_, flag_id) = open_stale_hold(&pool, &worker, now).await;
    let unknown = flag_id + 1000;

    let error = flags::resolve(&pool, unknown, "dana", "Provider reported it.", now)
        .await
        .expect_err("an unknown flag cannot be resolved");

    assert!(
        matches!(error, FlagUpdateError::NotFound(id) if id == unknown),
        "resolving an unknown id fails with NotFound, got {error:?}"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn resolve_twice_is_rejected(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let (session_id, flag_id) = open_stale_hold(&pool, &worker, now).await;
    flags::resolve(&pool, flag_id, "dana", "Provider reported it.", now)
        .await
        .expect("first resolve");

    let error = flags::resolve(
        &pool,
        flag_id,
        "eli",
        "Second note.",
        now + Duration::hours(1),
    )
    .await
    .expect_err("a resolved flag cannot be resolved again");

    assert!(
        matches!(error, FlagUpdateError::AlreadyResolved(id) if id == flag_id),
        "the second resolve fails with AlreadyResolved, got {error:?}"
    );
    let rows = flags_of(&pool, session_id, FlagKind::StaleHold).await;
    assert_eq!(
        rows[0].resolved_by.as_deref(),
        Some("dana"),
        "the first resolution is kept"
    );
    assert_eq!(
        rows[0].note.as_deref(),
        Some("Provider reported it."),
        "the first note is kept"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn resolved_flag_is_not_reopened(pool: PgPool) {
    let (_server, worker) = flag_worker(&pool);
    let now = friday_morning_los_angeles();
    let (session_id, flag_id) = open_stale_hold(&pool, &worker, now).await;
    flags::resolve(&pool, flag_id, "dana", "Waiting on the provider.", now)
        .await
        .expect("resolve");

    // The session is still scheduled, so it is still a stale hold.
    let counts = run_flag_job(&worker, now + Duration::hours(1)).await;

    assert_eq!(
        count(&counts.opened, FlagKind::StaleHold),
        0,
        "the job opens no new stale_hold flag"
    );
    assert_eq!(
        count(&counts.still_open, FlagKind::StaleHold),
        0,
        "the job counts no stale_hold flag as open"
    );
    assert_eq!(
        count(&counts.resolved, FlagKind::StaleHold),
        0,
        "the job does not resolve the flag a second time"
    );
    let rows = flags_of(&pool, session_id, FlagKind::StaleHold).await;
    assert_eq!(rows.len(), 1, "the session keeps its one stale_hold row");
    assert_eq!(
        rows[0].resolution.as_deref(),
        Some("resolved_by_support"),
        "the flag stays resolved by support"
    );
}
