//! The reminder rules as pure functions of a session's end time and "now":
//! when a session is overdue, which reminder stage it has reached, when it
//! is escalated, and whether a provider's local send window is open.

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

use crate::config::Settings;

/// Where a scheduled session stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Ended `reminder_after` ago or less (or has not ended yet).
    NotOverdue,
    /// Overdue and still the provider's to report. `stage` counts the
    /// configured stages it has passed, so it is 0 when it is overdue but
    /// the first stage lies later than `reminder_after`.
    Overdue { stage: i16 },
    /// Still scheduled more than `stale_after` after its end: support's case.
    Escalated,
}

/// Ages, after a session's scheduled end, that drive reminders and escalation.
#[derive(Debug, Clone)]
pub struct ReminderPolicy {
    pub reminder_after: chrono::Duration,
    pub stages: Vec<chrono::Duration>,
    pub stale_after: chrono::Duration,
}

impl ReminderPolicy {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            reminder_after: settings.reminders.reminder_after.to_chrono(),
            stages: settings
                .reminders
                .stages
                .iter()
                .map(|stage| stage.to_chrono())
                .collect(),
            stale_after: settings.flags.stale_after.to_chrono(),
        }
    }

    /// Sessions that ended strictly before this instant are overdue. A
    /// session that ended exactly `reminder_after` ago is not overdue yet.
    pub fn overdue_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.reminder_after
    }

    /// Sessions that ended strictly before this instant are escalated.
    pub fn escalation_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.stale_after
    }

    /// Classifies a scheduled session that ended at `ends_at`.
    pub fn standing(&self, ends_at: DateTime<Utc>, now: DateTime<Utc>) -> Standing {
        if ends_at < self.escalation_cutoff(now) {
            return Standing::Escalated;
        }
        if ends_at >= self.overdue_cutoff(now) {
            return Standing::NotOverdue;
        }
        let age = now - ends_at;
        let passed = self.stages.iter().filter(|stage| age > **stage).count();
        Standing::Overdue {
            stage: i16::try_from(passed).unwrap_or(i16::MAX),
        }
    }
}

/// The local hours and weekdays in which digests may be sent.
#[derive(Debug, Clone)]
pub struct SendWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub business_days: Vec<Weekday>,
}

impl SendWindow {
    pub fn from_settings(settings: &Settings) -> Self {
        let window = &settings.send_window;
        Self {
            start: window.start.0,
            end: window.end.0,
            business_days: window.business_days.iter().map(|day| day.0).collect(),
        }
    }

    /// Returns the first instant after `after` at which the window opens
    /// in `zone`. A start time that falls in a DST gap moves an hour on.
    pub fn next_opening(&self, after: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        let today = after.with_timezone(&zone).date_naive();
        for offset in 0..=7 {
            let day = today + chrono::Duration::days(offset);
            if !self.business_days.contains(&day.weekday()) {
                continue;
            }
            let local_start = day.and_time(self.start);
            let opening = zone
                .from_local_datetime(&local_start)
                .earliest()
                .or_else(|| {
                    zone.from_local_datetime(&(local_start + chrono::Duration::hours(1)))
                        .earliest()
                });
            if let Some(opening) = opening.map(|opening| opening.with_timezone(&Utc))
                && opening > after
            {
                return opening;
            }
        }
        // Unreachable with at least one business day; retry in a day.
        after + chrono::Duration::days(1)
    }

    /// Tells whether `local` falls on a business day, at or after `start`
    /// and before `end`.
    pub fn is_open<Tz: TimeZone>(&self, local: &DateTime<Tz>) -> bool {
        let time = local.time();
        self.business_days.contains(&local.weekday()) && time >= self.start && time < self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn policy() -> ReminderPolicy {
        ReminderPolicy {
            reminder_after: Duration::days(5),
            stages: vec![Duration::days(5), Duration::days(8), Duration::days(12)],
            stale_after: Duration::days(14),
        }
    }

    #[test]
    fn standing_follows_stage_ages() {
        let now = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        let policy = policy();
        let cases = [
            (Duration::days(5), Standing::NotOverdue),
            (
                Duration::days(5) + Duration::seconds(1),
                Standing::Overdue { stage: 1 },
            ),
            (Duration::days(8), Standing::Overdue { stage: 1 }),
            (
                Duration::days(8) + Duration::seconds(1),
                Standing::Overdue { stage: 2 },
            ),
            (
                Duration::days(12) + Duration::seconds(1),
                Standing::Overdue { stage: 3 },
            ),
            (Duration::days(14), Standing::Overdue { stage: 3 }),
            (
                Duration::days(14) + Duration::seconds(1),
                Standing::Escalated,
            ),
        ];
        for (age, expected) in cases {
            assert_eq!(policy.standing(now - age, now), expected, "age {age}");
        }
    }

    #[test]
    fn send_window_is_half_open() {
        let window = SendWindow {
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            business_days: vec![Weekday::Mon, Weekday::Fri],
        };
        let friday_nine = Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap();
        let friday_five = Utc.with_ymd_and_hms(2026, 12, 4, 17, 0, 0).unwrap();
        let saturday_noon = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
        assert!(window.is_open(&friday_nine));
        assert!(!window.is_open(&friday_five));
        assert!(!window.is_open(&saturday_noon));
    }

    #[test]
    fn next_opening_skips_closed_days() {
        let window = SendWindow {
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            business_days: vec![Weekday::Mon, Weekday::Fri],
        };
        let zone = chrono_tz::America::Chicago;
        // Saturday 5 December 2026, 02:00 in Chicago (CST, UTC-6).
        let saturday = Utc.with_ymd_and_hms(2026, 12, 5, 8, 0, 0).unwrap();
        let monday_nine = Utc.with_ymd_and_hms(2026, 12, 7, 15, 0, 0).unwrap();
        assert_eq!(window.next_opening(saturday, zone), monday_nine);
        // Friday 08:00 opens the same day at 09:00.
        let friday_early = Utc.with_ymd_and_hms(2026, 12, 4, 14, 0, 0).unwrap();
        let friday_nine = Utc.with_ymd_and_hms(2026, 12, 4, 15, 0, 0).unwrap();
        assert_eq!(window.next_opening(friday_early, zone), friday_nine);
    }
}
