//! The reminder job's planning step: scans overdue scheduled sessions,
//! groups them by provider and records at most one digest per provider and
//! local day in the outbox. Delivery is the outbox's step.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;
use tracing::{debug, info, warn};

use crate::policy::{ReminderPolicy, SendWindow, Standing};
use crate::recipient::{self, ProviderRow, Recipient};

/// Counts from one planning pass.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PlanCounts {
    /// True when another replica was scanning, so this pass did not.
    pub scan_skipped: bool,
    /// Overdue, not yet escalated sessions read by the scan.
    pub overdue_sessions: u64,
    /// Providers with at least one such session.
    pub providers_seen: u64,
    /// Digests recorded in the outbox by this pass.
    pub digests_planned: u64,
    /// Providers with a digest due whose local send window is closed.
    pub digests_deferred: u64,
    /// Providers with a digest due who already had one on this local day.
    pub already_sent_today: u64,
    /// Providers whose sessions are all covered by earlier digests.
    pub up_to_date: u64,
    /// Providers skipped because they cannot be reached.
    pub providers_unreachable: u64,
    /// Sessions in the planned digests, by reminder stage.
    pub sessions_by_stage: BTreeMap<i16, u64>,
}

/// One overdue session as the scan returns it, with its provider's columns
/// and the highest stage an earlier digest already covered.
#[derive(Debug, sqlx::FromRow)]
struct OverdueRow {
    session_id: i64,
    ends_at: DateTime<Utc>,
    covered_stage: i16,
    #[sqlx(flatten)]
    provider: ProviderRow,
}

/// A session placed in a digest, with the stage it had reached.
#[derive(Debug, Clone, Copy)]
struct PlannedItem {
    session_id: i64,
    stage: i16,
}

// The partial index `sessions_scheduled_by_end` serves the range on ends_at.
// The sort by provider lets the loop below hold one provider's rows at a time.
const OVERDUE_SCAN: &str = "
SELECT s.id AS session_id, s.ends_at,
       COALESCE(covered.stage, 0)::smallint AS covered_stage,
       p.id, p.name, p.email, p.time_zone, p.active
FROM sessions s
JOIN providers p ON p.id = s.provider_id
LEFT JOIN LATERAL (
    SELECT max(ri.stage) AS stage
    FROM reminder_items ri
    JOIN reminders r ON r.id = ri.reminder_id
    WHERE ri.session_id = s.id AND r.status IN ('pending', 'sent')
) covered ON true
WHERE s.status = 'scheduled' AND s.ends_at < $1 AND s.ends_at >= $2
ORDER BY s.provider_id, s.ends_at, s.id";

/// The reminder planner, with the policies fixed at start-up.
#[derive(Debug, Clone)]
pub struct Planner {
    pub policy: ReminderPolicy,
    pub window: SendWindow,
}

impl Planner {
    /// Scans once at `now` and records the digests that are due.
    pub async fn run_once(&self, pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<PlanCounts> {
        let mut counts = PlanCounts::default();
        let Some(mut lock) =
            crate::db::try_job_lock(pool, crate::db::JobLock::ReminderScan).await?
        else {
            info!("reminder scan skipped: another replica is scanning");
            counts.scan_skipped = true;
            return Ok(counts);
        };
        let overdue_cutoff = self.policy.overdue_cutoff(now);
        let escalation_cutoff = self.policy.escalation_cutoff(now);

        let mut rows = sqlx::query_as::<_, OverdueRow>(OVERDUE_SCAN)
            .bind(overdue_cutoff)
            .bind(escalation_cutoff)
            .fetch(&mut *lock);

        let mut group: Vec<OverdueRow> = Vec::new();
        while let Some(row) = rows.try_next().await? {
            counts.overdue_sessions += 1;
            if group
                .last()
                .is_some_and(|last| last.provider.id != row.provider.id)
            {
                self.plan_provider(pool, now, &group, &mut counts).await?;
                group.clear();
            }
            group.push(row);
        }
        if !group.is_empty() {
            self.plan_provider(pool, now, &group, &mut counts).await?;
        }
        drop(rows);
        lock.commit().await?;
        Ok(counts)
    }

    /// Decides whether one provider's overdue sessions need a digest now,
    /// and records it if so.
    async fn plan_provider(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
        rows: &[OverdueRow],
        counts: &mut PlanCounts,
    ) -> anyhow::Result<()> {
        let provider = &rows[0].provider;
        counts.providers_seen += 1;

        let recipient = match recipient::check(provider) {
            Ok(recipient) => recipient,
            Err(reason) => {
                // The flag job opens a provider_unreachable flag for these.
                debug!(provider_id = provider.id, %reason, "skipped unreachable provider");
                counts.providers_unreachable += 1;
                return Ok(());
            }
        };

        let mut items = Vec::with_capacity(rows.len());
        let mut reached_new_stage = false;
        for row in rows {
            let Standing::Overdue { stage } = self.policy.standing(row.ends_at, now) else {
                // The query's bounds and the policy agree, so this only
                // happens if the two drift apart.
                warn!(
                    session_id = row.session_id,
                    "scan returned a session outside the overdue range"
                );
                continue;
            };
            reached_new_stage |= stage >= 1 && stage > row.covered_stage;
            items.push(PlannedItem {
                session_id: row.session_id,
                stage,
            });
        }
        if !reached_new_stage {
            counts.up_to_date += 1;
            return Ok(());
        }

        let local_now = now.with_timezone(&recipient.time_zone);
        if !self.window.is_open(&local_now) {
            debug!(
                provider_id = provider.id,
                "digest deferred until the local send window opens"
            );
            counts.digests_deferred += 1;
            return Ok(());
        }

        let local_date = local_now.date_naive();
        if record_digest(pool, now, &recipient, local_date, &items).await? {
            counts.digests_planned += 1;
            for item in &items {
                *counts.sessions_by_stage.entry(item.stage).or_default() += 1;
            }
        } else {
            counts.already_sent_today += 1;
        }
        Ok(())
    }
}

/// The outbox key of a provider's digest for one local day.
pub fn digest_key(provider_id: i64, local_date: NaiveDate) -> String {
    format!("digest-{provider_id}-{local_date}")
}

/// Inserts the digest and its items in one transaction. Returns false when
/// the provider already has a digest for `local_date`, which the unique
/// constraint guarantees even with several replicas planning at once.
async fn record_digest(
    pool: &PgPool,
    now: DateTime<Utc>,
    recipient: &Recipient,
    local_date: NaiveDate,
    items: &[PlannedItem],
) -> sqlx::Result<bool> {
    let mut transaction = pool.begin().await?;
    let reminder_id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO reminders (reminder_key, provider_id, local_date, created_at, next_attempt_at)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(digest_key(recipient.provider_id, local_date))
    .bind(recipient.provider_id)
    .bind(local_date)
    .bind(now)
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(reminder_id) = reminder_id else {
        transaction.rollback().await?;
        return Ok(false);
    };

    let session_ids: Vec<i64> = items.iter().map(|item| item.session_id).collect();
    let stages: Vec<i16> = items.iter().map(|item| item.stage).collect();
    sqlx::query(
        "INSERT INTO reminder_items (reminder_id, session_id, stage)
         SELECT $1, item.session_id, item.stage FROM unnest($2::bigint[], $3::smallint[]) AS item(session_id, stage)",
    )
    .bind(reminder_id)
    .bind(&session_ids)
    .bind(&stages)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    debug!(
        reminder_id,
        provider_id = recipient.provider_id,
        sessions = items.len(),
        "digest recorded"
    );
    Ok(true)
}
