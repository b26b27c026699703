//! The flag job: opens at most one flag per session and kind on support's
//! review list, keeps `last_seen_at` current while the condition holds, and
//! resolves the flag itself when the condition stops. Support acknowledges
//! or resolves flags through `acknowledge` and `resolve`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tracing::warn;

use crate::policy::ReminderPolicy;
use crate::recipient::{self, ProviderRow, Unreachable};

/// The kinds of flag, in the order the report lists them: the kinds that
/// harm a member soonest come first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(type_name = "flag_kind", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    /// An overdue hold on a member with no remaining balance, who cannot book.
    MemberBlocked,
    /// An overdue hold on an allotment whose benefit period ends soon.
    PeriodEnding,
    /// A scheduled session of a member who is no longer eligible or matched.
    MemberIneligible,
    /// An overdue hold whose provider cannot be reached.
    ProviderUnreachable,
    /// A session still scheduled past `stale_after`: reminders have run out.
    StaleHold,
}

impl FlagKind {
    pub const ALL: [FlagKind; 5] = [
        FlagKind::MemberBlocked,
        FlagKind::PeriodEnding,
        FlagKind::MemberIneligible,
        FlagKind::ProviderUnreachable,
        FlagKind::StaleHold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::MemberBlocked => "member_blocked",
            FlagKind::PeriodEnding => "period_ending",
            FlagKind::MemberIneligible => "member_ineligible",
            FlagKind::ProviderUnreachable => "provider_unreachable",
            FlagKind::StaleHold => "stale_hold",
        }
    }

    /// Position in the report, 1 for the most harmful kind.
    pub fn severity_rank(self) -> i32 {
        FlagKind::ALL
            .iter()
            .position(|kind| *kind == self)
            .map_or(0, |index| index as i32 + 1)
    }
}

impl fmt::Display for FlagKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for FlagKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FlagKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = FlagKind::ALL.iter().map(|kind| kind.as_str()).collect();
                format!(
                    "unknown flag kind \"{text}\"; use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Flags opened, kept open and resolved by one run, per kind.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlagCounts {
    /// True when another replica was updating flags, so this run did not.
    pub skipped: bool,
    pub opened: BTreeMap<FlagKind, u64>,
    pub still_open: BTreeMap<FlagKind, u64>,
    pub resolved: BTreeMap<FlagKind, u64>,
}

/// The flag job, with the policies fixed at start-up.
#[derive(Debug, Clone)]
pub struct Flagger {
    pub policy: ReminderPolicy,
    pub period_ending_within: chrono::Duration,
}

impl Flagger {
    /// Brings every kind of flag up to date at `now`.
    pub async fn run_once(&self, pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<FlagCounts> {
        let mut counts = FlagCounts::default();
        // Every statement runs in the lock's transaction, so a run's changes
        // land together or not at all, on one connection.
        let Some(mut lock) = crate::db::try_job_lock(pool, crate::db::JobLock::FlagUpdate).await?
        else {
            tracing::info!("flag update skipped: another replica is updating flags");
            counts.skipped = true;
            return Ok(counts);
        };
        let overdue_cutoff = self.policy.overdue_cutoff(now);
        let unreachable = find_unreachable_providers(&mut lock, overdue_cutoff).await?;

        for kind in FlagKind::ALL {
            let (source, args) = self.observed_sessions(kind, now, &unreachable);
            let (opened, seen, resolved, new_providers) =
                sync_kind(&mut lock, kind, now, source, args).await?;
            if kind == FlagKind::ProviderUnreachable {
                log_unreachable(&unreachable, &new_providers);
            }
            counts.opened.insert(kind, opened);
            counts.still_open.insert(kind, seen - opened);
            counts.resolved.insert(kind, resolved);
        }
        lock.commit().await?;
        Ok(counts)
    }

    /// The query listing the sessions for which `kind` holds now, as
    /// (session_id, member_id, provider_id, reason), and its arguments
    /// from $3 on.
    fn observed_sessions(
        &self,
        kind: FlagKind,
        now: DateTime<Utc>,
        unreachable: &UnreachableProviders,
    ) -> (&'static str, SourceArgs) {
        let overdue_cutoff = self.policy.overdue_cutoff(now);
        match kind {
            FlagKind::StaleHold => (
                "SELECT s.id AS session_id, s.member_id, s.provider_id, NULL::text AS reason
                 FROM sessions s
                 WHERE s.status = 'scheduled' AND s.ends_at < $3",
                SourceArgs::Time(self.policy.escalation_cutoff(now)),
            ),
            FlagKind::MemberBlocked => (
                "SELECT s.id AS session_id, s.member_id, s.provider_id, NULL::text AS reason
                 FROM sessions s
                 CROSS JOIN LATERAL (
                     SELECT b.remaining FROM allotment_balances b WHERE b.allotment_id = s.allotment_id
                 ) balance
                 WHERE s.status = 'scheduled' AND s.ends_at < $3 AND balance.remaining <= 0",
                SourceArgs::Time(overdue_cutoff),
            ),
            FlagKind::PeriodEnding => (
                "SELECT s.id AS session_id, s.member_id, s.provider_id,
                        'benefit period ends ' || to_char(a.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS reason
                 FROM sessions s
                 JOIN allotments a ON a.id = s.allotment_id
                 WHERE s.status = 'scheduled' AND s.ends_at < $3
                   AND a.period_end > $4 AND a.period_end <= $5",
                SourceArgs::PeriodEnding {
                    overdue_cutoff,
                    now,
                    window_end: now + self.period_ending_within,
                },
            ),
            FlagKind::MemberIneligible => (
                "SELECT s.id AS session_id, s.member_id, s.provider_id,
                        CASE WHEN NOT m.eligible THEN 'member is no longer eligible'
                             ELSE 'member is no longer matched with a provider' END AS reason
                 FROM members m
                 JOIN sessions s ON s.member_id = m.id AND s.status = 'scheduled'
                 WHERE (NOT m.eligible OR NOT m.matched) AND $3::timestamptz IS NOT NULL",
                SourceArgs::Time(now),
            ),
            FlagKind::ProviderUnreachable => (
                "SELECT s.id AS session_id, s.member_id, s.provider_id, bad.reason
                 FROM unnest($4::bigint[], $5::text[]) AS bad(provider_id, reason)
                 JOIN sessions s ON s.provider_id = bad.provider_id
                 WHERE s.status = 'scheduled' AND s.ends_at < $3",
                SourceArgs::Providers {
                    overdue_cutoff,
                    ids: unreachable.ids.clone(),
                    reasons: unreachable.reasons.clone(),
                },
            ),
        }
    }
}

/// Arguments of a flag source query, bound from $3 on.
enum SourceArgs {
    Time(DateTime<Utc>),
    PeriodEnding {
        overdue_cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
        window_end: DateTime<Utc>,
    },
    Providers {
        overdue_cutoff: DateTime<Utc>,
        ids: Vec<i64>,
        reasons: Vec<String>,
    },
}

/// Opens, refreshes and resolves the flags of one kind in one statement,
/// so every change sees the same snapshot. A flag that support resolved is
/// not opened again for the same session and kind. Returns the number
/// opened, observed and resolved, and the providers of the opened flags.
async fn sync_kind(
    connection: &mut PgConnection,
    kind: FlagKind,
    now: DateTime<Utc>,
    source: &str,
    args: SourceArgs,
) -> sqlx::Result<(u64, u64, u64, Vec<i64>)> {
    let statement = format!(
        "WITH observed AS ({source}),
         upserted AS (
             INSERT INTO flags (kind, session_id, member_id, provider_id, reason, opened_at, last_seen_at)
             SELECT $1, o.session_id, o.member_id, o.provider_id, o.reason, $2, $2
             FROM observed o
             WHERE NOT EXISTS (
                 SELECT 1 FROM flags done
                 WHERE done.session_id = o.session_id AND done.kind = $1
                   AND done.resolution = 'resolved_by_support')
             ON CONFLICT (session_id, kind) WHERE resolved_at IS NULL
             DO UPDATE SET last_seen_at = GREATEST(flags.last_seen_at, EXCLUDED.last_seen_at),
                           reason = EXCLUDED.reason
             RETURNING (xmax = 0) AS inserted, provider_id
         ),
         cleared AS (
             UPDATE flags f
             SET resolved_at = $2, resolution = 'condition_cleared', resolved_by = 'session-steward'
             WHERE f.kind = $1 AND f.resolved_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM observed o WHERE o.session_id = f.session_id)
             RETURNING f.id
         )
         SELECT (SELECT count(*) FROM upserted WHERE inserted),
                (SELECT count(*) FROM upserted),
                (SELECT count(*) FROM cleared),
                (SELECT COALESCE(array_agg(DISTINCT provider_id), '{{}}') FROM upserted WHERE inserted)"
    );
    let query = sqlx::query_as::<_, (i64, i64, i64, Vec<i64>)>(&statement)
        .bind(kind)
        .bind(now);
    let query = match args {
        SourceArgs::Time(time) => query.bind(time),
        SourceArgs::PeriodEnding {
            overdue_cutoff,
            now,
            window_end,
        } => query.bind(overdue_cutoff).bind(now).bind(window_end),
        SourceArgs::Providers {
            overdue_cutoff,
            ids,
            reasons,
        } => query.bind(overdue_cutoff).bind(ids).bind(reasons),
    };
    let (opened, seen, resolved, new_providers) = query.fetch_one(connection).await?;
    Ok((opened as u64, seen as u64, resolved as u64, new_providers))
}

/// Opens a `kind` flag on each of `session_ids` now, unless one is open or
/// support resolved one for that session and kind. The outbox calls this
/// when a digest fails, so support sees it before the next flag run.
pub async fn open_for_sessions(
    pool: &PgPool,
    kind: FlagKind,
    session_ids: &[i64],
    reason: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let opened = sqlx::query(
        "INSERT INTO flags (kind, session_id, member_id, provider_id, reason, opened_at, last_seen_at)
         SELECT $1, s.id, s.member_id, s.provider_id, $3, $4, $4
         FROM sessions s
         WHERE s.id = ANY($2)
           AND NOT EXISTS (
               SELECT 1 FROM flags done
               WHERE done.session_id = s.id AND done.kind = $1 AND done.resolution = 'resolved_by_support')
         ON CONFLICT (session_id, kind) WHERE resolved_at IS NULL DO NOTHING",
    )
    .bind(kind)
    .bind(session_ids)
    .bind(reason)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(opened.rows_affected())
}

/// Providers with overdue holds that cannot be reached, and why.
#[derive(Debug, Default)]
struct UnreachableProviders {
    ids: Vec<i64>,
    reasons: Vec<String>,
}

/// Checks every provider that has an overdue hold, plus whether their
/// latest finished digest failed permanently.
async fn find_unreachable_providers(
    connection: &mut PgConnection,
    overdue_cutoff: DateTime<Utc>,
) -> sqlx::Result<UnreachableProviders> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        provider: ProviderRow,
        last_digest_failed: bool,
    }

    let mut rows = sqlx::query_as::<_, Row>(
        "SELECT p.id, p.name, p.email, p.time_zone, p.active,
                COALESCE(last.status = 'failed' AND last.permanent_failure, false) AS last_digest_failed
         FROM providers p
         LEFT JOIN LATERAL (
             SELECT r.status, r.permanent_failure FROM reminders r
             WHERE r.provider_id = p.id AND r.status IN ('sent', 'failed')
             ORDER BY r.finished_at DESC NULLS LAST, r.id DESC
             LIMIT 1
         ) last ON true
         WHERE p.id IN (SELECT DISTINCT s.provider_id FROM sessions s WHERE s.status = 'scheduled' AND s.ends_at < $1)",
    )
    .bind(overdue_cutoff)
    .fetch(connection);

    let mut unreachable = UnreachableProviders::default();
    while let Some(row) = rows.try_next().await? {
        let reason = match recipient::check(&row.provider) {
            Err(reason) => reason,
            Ok(_) if row.last_digest_failed => Unreachable::DeliveryFailed,
            Ok(_) => continue,
        };
        unreachable.ids.push(row.provider.id);
        unreachable.reasons.push(reason.to_string());
    }
    Ok(unreachable)
}

/// Logs each provider that got new provider_unreachable flags in this run,
/// once, with its id and the reason.
fn log_unreachable(unreachable: &UnreachableProviders, new_providers: &[i64]) {
    for provider_id in new_providers {
        let reason = unreachable
            .ids
            .iter()
            .position(|id| id == provider_id)
            .map_or("unknown", |index| unreachable.reasons[index].as_str());
        warn!(
            provider_id,
            reason, "provider cannot be reached; its overdue sessions are flagged for support"
        );
    }
}

/// Errors of support's changes to a flag.
#[derive(Debug, thiserror::Error)]
pub enum FlagUpdateError {
    #[error("flag {0} not found; list flags with `session-steward flags --all`")]
    NotFound(i64),
    #[error("flag {0} is already resolved")]
    AlreadyResolved(i64),
    #[error("invalid note: {0}")]
    InvalidNote(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The first acknowledgement of a flag, which later ones do not replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// Records that `by` has seen flag `id`, unless someone already did, and
/// returns the acknowledgement that stands.
pub async fn acknowledge(
    pool: &PgPool,
    id: i64,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Acknowledgement, FlagUpdateError> {
    let state = flag_state(pool, id).await?;
    if state.resolved {
        return Err(FlagUpdateError::AlreadyResolved(id));
    }
    let (by, at): (String, DateTime<Utc>) = sqlx::query_as(
        "UPDATE flags SET acknowledged_at = COALESCE(acknowledged_at, $2), acknowledged_by = COALESCE(acknowledged_by, $3)
         WHERE id = $1
         RETURNING acknowledged_by, acknowledged_at",
    )
    .bind(id)
    .bind(now)
    .bind(by)
    .fetch_one(pool)
    .await?;
    Ok(Acknowledgement { by, at })
}

/// Resolves flag `id` on behalf of `by` with a note saying what was done.
pub async fn resolve(
    pool: &PgPool,
    id: i64,
    by: &str,
    note: &str,
    now: DateTime<Utc>,
) -> Result<(), FlagUpdateError> {
    let note = note.trim();
    if note.is_empty() {
        return Err(FlagUpdateError::InvalidNote(
            "the note is empty; say what was done".to_owned(),
        ));
    }
    if note
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(FlagUpdateError::InvalidNote(
            "the note contains control characters; use plain text, with line breaks if needed"
                .to_owned(),
        ));
    }
    // Browsers and form decoders put U+FFFD where the bytes sent were not
    // UTF-8, so the note would not say what was typed.
    if note.contains(char::REPLACEMENT_CHARACTER) {
        return Err(FlagUpdateError::InvalidNote(
            "the note contains a character that was not valid UTF-8 (shown as \u{fffd}); type the note again".to_owned(),
        ));
    }
    if note.chars().count() > 2000 {
        return Err(FlagUpdateError::InvalidNote(
            "the note is longer than 2000 characters".to_owned(),
        ));
    }
    let updated = sqlx::query(
        "UPDATE flags SET resolved_at = $2, resolved_by = $3, resolution = 'resolved_by_support', note = $4
         WHERE id = $1 AND resolved_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .bind(by)
    .bind(note)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        let state = flag_state(pool, id).await?;
        if state.resolved {
            return Err(FlagUpdateError::AlreadyResolved(id));
        }
    }
    Ok(())
}

struct FlagState {
    resolved: bool,
}

async fn flag_state(pool: &PgPool, id: i64) -> Result<FlagState, FlagUpdateError> {
    let resolved: Option<bool> =
        sqlx::query_scalar("SELECT resolved_at IS NOT NULL FROM flags WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    match resolved {
        Some(resolved) => Ok(FlagState { resolved }),
        None => Err(FlagUpdateError::NotFound(id)),
    }
}
