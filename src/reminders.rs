//! The reminder job's planning step: scans overdue scheduled sessions,
//! groups them by provider and records at most one digest per provider and
//! local day in the outbox. Delivery is the outbox's step.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;
use tracing::{debug, info, warn};

use crate::policy::{ReminderPolicy, SendWindow, Standing};
use crate::recipient::{self, ProviderRow};

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
    /// Time spent in parts of the pass, which the job run does not record.
    #[serde(skip)]
    pub timings: PassTimings,
}

/// Time spent in the parts of a planning pass other than reading and
/// deciding, which is the rest of the pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassTimings {
    /// Inserting digests and items, superseding older ones, committing.
    pub recording: Duration,
    /// Refreshing the outbox statistics after a large pass.
    pub statistics: Duration,
}

/// One overdue session as the scan returns it, with its provider's columns
/// and the highest stage an earlier digest already covered, which
/// [`CoveredStages`] fills in.
#[derive(Debug, sqlx::FromRow)]
struct OverdueRow {
    session_id: i64,
    ends_at: DateTime<Utc>,
    #[sqlx(default)]
    covered_stage: i16,
    #[sqlx(flatten)]
    provider: ProviderRow,
}

/// A digest decided by the scan, recorded with others in one batch.
#[derive(Debug)]
struct PlannedDigest {
    provider_id: i64,
    local_date: NaiveDate,
    /// The provider's local midnight that began `local_date`, in UTC.
    local_day_start: DateTime<Utc>,
    items: Vec<PlannedItem>,
}

/// Digests recorded per transaction. Larger batches save little once the
/// commit is shared, and keep more rows in memory.
const RECORD_BATCH_DIGESTS: usize = 500;

/// A session placed in a digest, with the stage it had reached.
#[derive(Debug, Clone, Copy)]
struct PlannedItem {
    session_id: i64,
    stage: i16,
}

// The partial index `sessions_scheduled_by_end` serves the range on ends_at.
// The sort by provider lets the loop below hold one provider's rows at a time.
const OVERDUE_SCAN: &str = "
SELECT s.id AS session_id, s.ends_at, p.id, p.name, p.email, p.time_zone, p.active
FROM sessions s
JOIN providers p ON p.id = s.provider_id
WHERE s.status = 'scheduled' AND s.ends_at < $1 AND s.ends_at >= $2
  AND ($3::bigint IS NULL OR s.provider_id = $3)
ORDER BY s.provider_id, s.ends_at, s.id";

// The highest stage that a pending or sent digest covered, for each
// overdue session that one covered. It runs to completion before the pass
// records anything. A lookup per scanned row instead, planned while the
// outbox's statistics still described an empty table, read the digests
// this pass was adding again for every row: 68 s for 100,000 sessions.
const COVERED_STAGES: &str = "
SELECT ri.session_id, max(ri.stage)::smallint
FROM sessions s
JOIN reminder_items ri ON ri.session_id = s.id
JOIN reminders r ON r.id = ri.reminder_id
WHERE s.status = 'scheduled' AND s.ends_at < $1 AND s.ends_at >= $2
  AND ($3::bigint IS NULL OR s.provider_id = $3)
  AND r.status IN ('pending', 'sent')
GROUP BY ri.session_id
ORDER BY ri.session_id";

/// Stages earlier digests covered, by session id, sorted for lookup.
struct CoveredStages(Vec<(i64, i16)>);

impl CoveredStages {
    /// Reads the stages covered for the overdue sessions of `provider_id`,
    /// or of every provider.
    async fn load(
        connection: &mut sqlx::PgConnection,
        overdue_cutoff: DateTime<Utc>,
        escalation_cutoff: DateTime<Utc>,
        provider_id: Option<i64>,
    ) -> sqlx::Result<Self> {
        let stages = sqlx::query_as(COVERED_STAGES)
            .bind(overdue_cutoff)
            .bind(escalation_cutoff)
            .bind(provider_id)
            .fetch_all(connection)
            .await?;
        Ok(Self(stages))
    }

    /// Returns the stage covered for `session_id`, 0 when none was.
    fn of(&self, session_id: i64) -> i16 {
        self.0
            .binary_search_by_key(&session_id, |(id, _)| *id)
            .map_or(0, |index| self.0[index].1)
    }
}

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

        let covered =
            CoveredStages::load(&mut lock, overdue_cutoff, escalation_cutoff, None).await?;
        let mut rows = sqlx::query_as::<_, OverdueRow>(OVERDUE_SCAN)
            .bind(overdue_cutoff)
            .bind(escalation_cutoff)
            .bind(None::<i64>)
            .fetch(&mut *lock);

        let mut group: Vec<OverdueRow> = Vec::new();
        let mut batch: Vec<PlannedDigest> = Vec::new();
        while let Some(mut row) = rows.try_next().await? {
            counts.overdue_sessions += 1;
            row.covered_stage = covered.of(row.session_id);
            if group
                .last()
                .is_some_and(|last| last.provider.id != row.provider.id)
            {
                batch.extend(self.plan_provider(now, &group, &mut counts));
                group.clear();
                if batch.len() >= RECORD_BATCH_DIGESTS {
                    record_digests(pool, now, &batch, &mut counts).await?;
                    batch.clear();
                }
            }
            group.push(row);
        }
        if !group.is_empty() {
            batch.extend(self.plan_provider(now, &group, &mut counts));
        }
        if !batch.is_empty() {
            record_digests(pool, now, &batch, &mut counts).await?;
        }
        drop(rows);
        lock.commit().await?;

        // After many new rows, until autovacuum analyzes them, the
        // statistics of the outbox still describe its old size. The scan
        // no longer depends on them, but delivery's claim and the flag
        // job's lookups do, so a large pass refreshes them at once.
        if counts.digests_planned >= ANALYZE_AFTER_DIGESTS {
            let started = Instant::now();
            sqlx::query("ANALYZE reminders, reminder_items")
                .execute(pool)
                .await?;
            counts.timings.statistics = started.elapsed();
        }
        Ok(counts)
    }

    /// Decides whether one provider's overdue sessions need a digest now,
    /// and returns it if so.
    fn plan_provider(
        &self,
        now: DateTime<Utc>,
        rows: &[OverdueRow],
        counts: &mut PlanCounts,
    ) -> Option<PlannedDigest> {
        let provider = &rows[0].provider;
        counts.providers_seen += 1;

        let recipient = match recipient::check(provider) {
            Ok(recipient) => recipient,
            Err(reason) => {
                // The flag job opens a provider_unreachable flag for these.
                debug!(provider_id = provider.id, %reason, "skipped unreachable provider");
                counts.providers_unreachable += 1;
                return None;
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
            return None;
        }

        let local_now = now.with_timezone(&recipient.time_zone);
        if !self.window.is_open(&local_now) {
            debug!(
                provider_id = provider.id,
                "digest deferred until the local send window opens"
            );
            counts.digests_deferred += 1;
            return None;
        }

        let local_date = local_now.date_naive();
        // Midnight can fall in a DST gap; the day then starts later, and
        // 24 hours back is a safe, slightly early bound.
        let local_day_start = recipient
            .time_zone
            .from_local_datetime(&local_date.and_time(NaiveTime::MIN))
            .earliest()
            .map_or(now - chrono::Duration::hours(24), |start| {
                start.with_timezone(&Utc)
            });
        Some(PlannedDigest {
            provider_id: recipient.provider_id,
            local_date,
            local_day_start,
            items,
        })
    }
}

/// Digests planned in one pass after which the worker refreshes the
/// statistics of its own tables.
const ANALYZE_AFTER_DIGESTS: u64 = 1_000;

/// Builds the outbox key of a provider's digest for one local day.
pub fn digest_key(provider_id: i64, local_date: NaiveDate) -> String {
    format!("digest-{provider_id}-{local_date}")
}

/// Inserts a batch of digests and their items in one transaction, and
/// counts the digests recorded and those skipped because the provider
/// already has one for that local day. The unique constraint makes that
/// skip safe even with several replicas planning at once. A batch saves a
/// commit, and so a WAL flush, per digest; a failure rolls the whole batch
/// back and the next tick plans it again.
async fn record_digests(
    pool: &PgPool,
    now: DateTime<Utc>,
    digests: &[PlannedDigest],
    counts: &mut PlanCounts,
) -> sqlx::Result<()> {
    let started = Instant::now();
    let keys: Vec<String> = digests
        .iter()
        .map(|digest| digest_key(digest.provider_id, digest.local_date))
        .collect();
    let provider_ids: Vec<i64> = digests.iter().map(|digest| digest.provider_id).collect();
    let local_dates: Vec<NaiveDate> = digests.iter().map(|digest| digest.local_date).collect();
    let day_starts: Vec<DateTime<Utc>> = digests
        .iter()
        .map(|digest| digest.local_day_start)
        .collect();

    let mut transaction = pool.begin().await?;
    let recorded: Vec<(i64, i64)> = sqlx::query_as(
        "INSERT INTO reminders (reminder_key, provider_id, local_date, created_at, next_attempt_at)
         SELECT digest.key, digest.provider_id, digest.local_date, $4, $4
         FROM unnest($1::text[], $2::bigint[], $3::date[], $5::timestamptz[])
              AS digest(key, provider_id, local_date, day_start)
         -- An earlier day's digest sent late (a retry) already reached the
         -- provider today, so today's waits for tomorrow.
         WHERE NOT EXISTS (
             SELECT 1 FROM reminders sent
             WHERE sent.provider_id = digest.provider_id AND sent.status = 'sent'
               AND sent.finished_at >= digest.day_start)
         ON CONFLICT DO NOTHING
         RETURNING provider_id, id",
    )
    .bind(&keys)
    .bind(&provider_ids)
    .bind(&local_dates)
    .bind(now)
    .bind(&day_starts)
    .fetch_all(&mut *transaction)
    .await?;
    let reminder_ids: HashMap<i64, i64> = recorded.into_iter().collect();

    // An older digest still waiting (for a retry or a send window) would
    // reach the provider on the same day as the new one, which lists all
    // its sessions anyway. One that a sender holds right now is left alone.
    let new_providers: Vec<i64> = reminder_ids.keys().copied().collect();
    let new_ids: Vec<i64> = reminder_ids.values().copied().collect();
    sqlx::query(
        "UPDATE reminders SET status = 'superseded', finished_at = $3
         WHERE provider_id = ANY($1) AND id <> ALL($2) AND status = 'pending'
           AND (lease_until IS NULL OR lease_until <= $3)",
    )
    .bind(&new_providers)
    .bind(&new_ids)
    .bind(now)
    .execute(&mut *transaction)
    .await?;

    let mut item_reminder_ids = Vec::new();
    let mut session_ids = Vec::new();
    let mut stages = Vec::new();
    for digest in digests {
        let Some(&reminder_id) = reminder_ids.get(&digest.provider_id) else {
            counts.already_sent_today += 1;
            continue;
        };
        counts.digests_planned += 1;
        for item in &digest.items {
            item_reminder_ids.push(reminder_id);
            session_ids.push(item.session_id);
            stages.push(item.stage);
            *counts.sessions_by_stage.entry(item.stage).or_default() += 1;
        }
        debug!(
            reminder_id,
            provider_id = digest.provider_id,
            sessions = digest.items.len(),
            "digest recorded"
        );
    }
    sqlx::query(
        "INSERT INTO reminder_items (reminder_id, session_id, stage)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[])",
    )
    .bind(&item_reminder_ids)
    .bind(&session_ids)
    .bind(&stages)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    counts.timings.recording += started.elapsed();
    Ok(())
}

/// A digest that the planner would record, as [`Planner::plan_provider_at`]
/// returns it.
#[derive(Debug, Clone)]
pub struct DigestPlan {
    pub key: String,
    pub local_date: NaiveDate,
    /// The provider's local midnight that began `local_date`, in UTC.
    pub local_day_start: DateTime<Utc>,
    /// The sessions in the digest, oldest first.
    pub session_ids: Vec<i64>,
}

impl Planner {
    /// Decides, as a scan at `now` would, whether `provider_id` is due a
    /// digest, without recording anything. When it is not, the counts give
    /// the reason. Only reads, so it can run in a read-only transaction.
    ///
    /// This does not check the outbox for a digest already recorded or sent
    /// on that local day, which `record_digests` does when it inserts.
    pub async fn plan_provider_at(
        &self,
        connection: &mut sqlx::PgConnection,
        provider_id: i64,
        now: DateTime<Utc>,
    ) -> sqlx::Result<(Option<DigestPlan>, PlanCounts)> {
        let overdue_cutoff = self.policy.overdue_cutoff(now);
        let escalation_cutoff = self.policy.escalation_cutoff(now);
        let covered = CoveredStages::load(
            &mut *connection,
            overdue_cutoff,
            escalation_cutoff,
            Some(provider_id),
        )
        .await?;
        let mut rows: Vec<OverdueRow> = sqlx::query_as(OVERDUE_SCAN)
            .bind(overdue_cutoff)
            .bind(escalation_cutoff)
            .bind(provider_id)
            .fetch_all(&mut *connection)
            .await?;
        for row in &mut rows {
            row.covered_stage = covered.of(row.session_id);
        }

        let mut counts = PlanCounts {
            overdue_sessions: rows.len() as u64,
            ..PlanCounts::default()
        };
        if rows.is_empty() {
            return Ok((None, counts));
        }
        let plan = self
            .plan_provider(now, &rows, &mut counts)
            .map(|digest| DigestPlan {
                key: digest_key(digest.provider_id, digest.local_date),
                local_date: digest.local_date,
                local_day_start: digest.local_day_start,
                session_ids: digest.items.iter().map(|item| item.session_id).collect(),
            });
        Ok((plan, counts))
    }
}
