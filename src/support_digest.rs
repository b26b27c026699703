//! The support digest job: records in the outbox one digest of support's
//! open flags per occurrence of `support_digest.schedule`. The outbox's
//! delivery step sends it like a provider digest, with the content that
//! [`load`] reads from the flags open at sending time.
//!
//! The unique slot, not the tick, decides whether a digest exists: a
//! catch-up tick, a repeated tick or a second replica in the same slot
//! records nothing.

use anyhow::Context;
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use croner::Cron;
use serde::Serialize;
use sqlx::PgPool;
use tracing::{debug, info};

use crate::config::Settings;
use crate::flags::FlagKind;
use crate::report::{self, ReportFilter, ReportRow};

/// Counts from one recording pass.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RecordCounts {
    /// True when `support_digest.recipients` is empty, which turns the job off.
    pub disabled: bool,
    /// True when another replica was recording, so this pass did not.
    pub skipped: bool,
    /// The schedule occurrence this pass covered.
    pub slot: Option<DateTime<Utc>>,
    /// True when this pass recorded the slot's digest, false when an earlier
    /// tick or another replica already had.
    pub recorded: bool,
}

/// Records support digests, with the schedule fixed at start-up.
#[derive(Debug, Clone)]
pub struct Recorder {
    expression: String,
    schedule: Cron,
    enabled: bool,
}

impl Recorder {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let expression = settings.support_digest.schedule.clone();
        let schedule = parse_schedule(&expression)?;
        Ok(Self {
            expression,
            schedule,
            enabled: !settings.support_digest.recipients.is_empty(),
        })
    }

    /// Returns the cron expression to tick on, or `None` when the job is off.
    pub fn schedule(&self) -> Option<&str> {
        self.enabled.then_some(self.expression.as_str())
    }

    /// Returns the slot of a tick at `now`: the latest occurrence of the
    /// schedule at or before `now`, to the second.
    pub fn slot_at(&self, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
        self.schedule
            .find_previous_occurrence(&now.trunc_subsecs(0), true)
            .with_context(|| {
                format!(
                    "support_digest.schedule \"{}\" has no occurrence in the year before {}",
                    self.expression,
                    now.to_rfc3339()
                )
            })
    }

    /// Records the digest of the slot at `now` unless it, or a digest of a
    /// later slot, is already recorded.
    pub async fn run_once(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
    ) -> anyhow::Result<RecordCounts> {
        let mut counts = RecordCounts::default();
        if !self.enabled {
            counts.disabled = true;
            return Ok(counts);
        }
        let slot = self.slot_at(now)?;
        counts.slot = Some(slot);

        let Some(mut lock) =
            crate::db::try_job_lock(pool, crate::db::JobLock::SupportDigest).await?
        else {
            info!("support digest skipped: another replica is recording it");
            counts.skipped = true;
            return Ok(counts);
        };
        let last: Option<(DateTime<Utc>, DateTime<Utc>)> =
            sqlx::query_as("SELECT slot, cutoff FROM support_digests ORDER BY slot DESC LIMIT 1")
                .fetch_optional(&mut *lock)
                .await?;
        if last.is_some_and(|(last_slot, _)| last_slot >= slot) {
            debug!(slot = %slot.to_rfc3339(), "support digest already recorded for this slot");
            return Ok(counts);
        }

        // The lock makes the check above safe from races, and the unique
        // key keeps one digest per slot even without it.
        let reminder_id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO reminders (reminder_key, kind, local_date, created_at, next_attempt_at)
             VALUES ($1, 'support_digest', $2, $3, $3)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )
        .bind(digest_key(slot))
        .bind(slot.date_naive())
        .bind(now)
        .fetch_optional(&mut *lock)
        .await?;
        let Some(reminder_id) = reminder_id else {
            debug!(slot = %slot.to_rfc3339(), "support digest already recorded for this slot");
            return Ok(counts);
        };
        sqlx::query(
            "INSERT INTO support_digests (reminder_id, slot, flags_since, cutoff)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(reminder_id)
        .bind(slot)
        .bind(last.map(|(_, cutoff)| cutoff))
        .bind(now)
        .execute(&mut *lock)
        .await?;
        lock.commit().await?;

        counts.recorded = true;
        info!(reminder_id, slot = %slot.to_rfc3339(), "support digest recorded");
        Ok(counts)
    }
}

/// Parses the schedule as the daemon does, so the slots computed here are
/// the instants it ticks at.
fn parse_schedule(expression: &str) -> anyhow::Result<Cron> {
    crate::daemon::parse_schedule(expression).with_context(|| {
            format!("invalid support_digest.schedule \"{expression}\"; use six fields with seconds first, such as \"0 0 8 * * Mon-Fri\"")
        })
}

/// Builds the outbox key of the digest for `slot`, such as
/// `support-digest-20261207T080000Z`. It also forms the Message-ID and the
/// file name of the file transport, so it contains no colon.
pub fn digest_key(slot: DateTime<Utc>) -> String {
    format!("support-digest-{}", slot.format("%Y%m%dT%H%M%SZ"))
}

/// Content of a support digest, read when it is sent.
#[derive(Debug, Clone)]
pub struct SupportDigest {
    /// Open flags per kind in report order, most harmful first, with zeros.
    pub open_by_kind: Vec<(FlagKind, u64)>,
    pub open_total: u64,
    /// Open flags opened after `flags_since` and up to `cutoff`, in report order.
    pub new_flags: Vec<NewFlag>,
    /// The previous digest's cutoff, or `None` for the first digest.
    pub flags_since: Option<DateTime<Utc>>,
    pub cutoff: DateTime<Utc>,
    /// Every open flag, as `session-steward flags --format csv` writes it.
    pub csv: Vec<u8>,
}

/// One new flag as the digest lists it: ids, the session date and the
/// member's initials, never a name.
#[derive(Debug, Clone, Serialize)]
pub struct NewFlag {
    pub kind: FlagKind,
    pub flag_id: i64,
    pub provider_id: i64,
    /// Date of the session start in the provider's zone, or in UTC when
    /// that zone is unknown. `None` when the time is missing or out of range.
    pub session_date: Option<NaiveDate>,
    pub member_ref: String,
}

/// Reads the content of support digest `reminder_id` at `now`: the flags
/// open at `now`, and the new ones of the range fixed when it was
/// recorded, so a retry lists the same new flags.
pub async fn load(
    pool: &PgPool,
    reminder_id: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<SupportDigest> {
    let (flags_since, cutoff): (Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as("SELECT flags_since, cutoff FROM support_digests WHERE reminder_id = $1")
            .bind(reminder_id)
            .fetch_optional(pool)
            .await?
            .with_context(|| format!("support digest {reminder_id} has no support_digests row"))?;
    let rows = report::load(pool, &ReportFilter::default(), now).await?;

    let open_by_kind = FlagKind::ALL
        .iter()
        .map(|kind| {
            let count = rows.iter().filter(|row| row.kind == *kind).count();
            (*kind, count as u64)
        })
        .collect();
    let new_flags = rows
        .iter()
        .filter(|row| flags_since.is_none_or(|since| row.opened_at > since))
        .filter(|row| row.opened_at <= cutoff)
        .map(new_flag)
        .collect();
    let mut csv = Vec::new();
    report::write_spreadsheet_csv(&mut csv, &rows)?;

    Ok(SupportDigest {
        open_by_kind,
        open_total: rows.len() as u64,
        new_flags,
        flags_since,
        cutoff,
        csv,
    })
}

fn new_flag(row: &ReportRow) -> NewFlag {
    // The report writes the start as "YYYY-MM-DD HH:MM ZONE", or a note
    // when the time is missing.
    let session_date = NaiveDate::parse_and_remainder(&row.session_start, "%Y-%m-%d")
        .ok()
        .map(|(date, _)| date);
    NewFlag {
        kind: row.kind,
        flag_id: row.flag_id,
        provider_id: row.provider_id,
        session_date,
        member_ref: row.member_ref.clone(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn recorder(expression: &str) -> Recorder {
        let mut settings = Settings::default();
        settings.support_digest.schedule = expression.to_owned();
        Recorder::from_settings(&settings).expect("the schedule parses")
    }

    #[test]
    fn slot_is_latest_occurrence_at_or_before() {
        let weekday_mornings = recorder("0 0 8 * * Mon-Fri");
        let monday_eight = Utc.with_ymd_and_hms(2026, 12, 7, 8, 0, 0).unwrap();
        let friday_eight = Utc.with_ymd_and_hms(2026, 12, 4, 8, 0, 0).unwrap();
        let cases = [
            (monday_eight, monday_eight),
            (
                monday_eight + chrono::Duration::milliseconds(500),
                monday_eight,
            ),
            (monday_eight + chrono::Duration::hours(3), monday_eight),
            (monday_eight - chrono::Duration::seconds(1), friday_eight),
            (
                Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap(),
                friday_eight,
            ),
        ];
        for (now, expected) in cases {
            assert_eq!(
                weekday_mornings.slot_at(now).unwrap(),
                expected,
                "slot at {now}"
            );
        }
    }

    #[test]
    fn slot_key_has_no_colon() {
        let slot = Utc.with_ymd_and_hms(2026, 12, 7, 8, 0, 0).unwrap();
        assert_eq!(digest_key(slot), "support-digest-20261207T080000Z");
    }

    #[test]
    fn schedule_is_off_without_recipients() {
        assert_eq!(recorder("0 0 8 * * Mon-Fri").schedule(), None);
    }

    #[test]
    fn invalid_schedule_names_key_and_value() {
        let mut settings = Settings::default();
        settings.support_digest.schedule = "every morning".to_owned();
        let error = Recorder::from_settings(&settings).unwrap_err().to_string();
        assert!(error.contains("support_digest.schedule"), "{error}");
        assert!(error.contains("every morning"), "{error}");
    }
}
