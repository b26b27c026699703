//! The `preview` command: the digest the reminder job would send one
//! provider at an instant, rendered with the planner's and the composer's
//! rules but neither recorded nor sent.
//!
//! Every query runs in one read-only transaction that is rolled back, so
//! PostgreSQL rejects any write that a future change might add here.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use lettre::Message;
use sqlx::PgConnection;

use crate::compose::{Composer, DigestSession, RenderedDigest};
use crate::config::Settings;
use crate::policy::{ReminderPolicy, SendWindow};
use crate::recipient::{self, ProviderRow, Recipient, Unreachable};
use crate::reminders::Planner;

/// Providers that `preview` cannot render a digest for.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("provider {0} not found in the providers table; check the id")]
    UnknownProvider(i64),
    #[error(
        "provider {provider_id} cannot receive digests: {reason}; correct the provider's row on the platform"
    )]
    Unreachable {
        provider_id: i64,
        reason: Unreachable,
    },
}

/// The result of a reminder tick at one instant for one provider.
#[derive(Debug)]
pub enum Preview {
    Digest(PreviewDigest),
    Nothing { provider_id: i64, reason: NoDigest },
}

/// A digest as the tick would send it.
#[derive(Debug)]
pub struct PreviewDigest {
    /// The recorded digest the tick would deliver, or `None` when the tick
    /// would record a new one first.
    pub reminder_id: Option<i64>,
    pub message: Message,
    pub rendered: RenderedDigest,
}

/// Reason a tick would send a provider nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoDigest {
    NothingOverdue,
    /// Every overdue session is at a stage that an earlier digest covered.
    UpToDate {
        overdue_sessions: u64,
    },
    /// The provider's local send window is closed.
    WindowClosed {
        local_time: String,
        next_opening: DateTime<Utc>,
    },
    /// The provider's digest for this local day is already recorded.
    AlreadyRecorded {
        reminder_id: i64,
        local_date: NaiveDate,
        status: String,
        next_attempt_at: DateTime<Utc>,
    },
    /// An earlier day's digest, sent late, reached the provider today.
    SentToday {
        local_date: NaiveDate,
    },
    /// The recorded digest due now lists no session still scheduled, so
    /// the tick would mark it empty.
    Empty {
        reminder_id: i64,
    },
}

impl NoDigest {
    fn describe(&self) -> String {
        match self {
            NoDigest::NothingOverdue => "the provider has no session in the reminder range (overdue, and not yet past escalation, which the flag job handles)".to_owned(),
            NoDigest::UpToDate { overdue_sessions } => format!(
                "all {overdue_sessions} overdue session(s) are at a stage an earlier digest covered; the next digest is due when one reaches the next stage"
            ),
            NoDigest::WindowClosed {
                local_time,
                next_opening,
            } => {
                let opening = next_opening.to_rfc3339_opts(SecondsFormat::Secs, true);
                format!(
                    "the provider's send window is closed at {local_time}; it opens at {opening} (try --now {opening})"
                )
            }
            NoDigest::AlreadyRecorded {
                reminder_id,
                local_date,
                status,
                next_attempt_at,
            } if status == "pending" => format!(
                "digest {reminder_id} for local day {local_date} is recorded and waits until {} for its next attempt",
                next_attempt_at.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            NoDigest::AlreadyRecorded {
                reminder_id,
                local_date,
                status,
                ..
            } => format!(
                "digest {reminder_id} for local day {local_date} is already recorded (status {status}); the next one can go on the next local day"
            ),
            NoDigest::SentToday { local_date } => format!(
                "an earlier digest reached the provider on local day {local_date}; the next one can go on the next local day"
            ),
            NoDigest::Empty { reminder_id } => format!(
                "digest {reminder_id} is due, but none of its sessions is still scheduled, so it would be marked empty"
            ),
        }
    }
}

/// Works out what a reminder tick at `now` would send `provider_id`, and
/// renders it. Reads only, inside a read-only transaction that is rolled
/// back.
pub async fn preview(
    pool: &sqlx::PgPool,
    settings: &Settings,
    provider_id: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<Preview> {
    let planner = Planner {
        policy: ReminderPolicy::from_settings(settings),
        window: SendWindow::from_settings(settings),
    };
    let composer = Composer::new(settings).context("failed to load the email templates")?;

    let mut transaction = pool.begin().await?;
    // Every query reads one snapshot, as the tick's scan does.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *transaction)
        .await?;
    let preview = preview_in(&mut transaction, &planner, &composer, provider_id, now).await;
    transaction.rollback().await?;
    preview
}

async fn preview_in(
    connection: &mut PgConnection,
    planner: &Planner,
    composer: &Composer,
    provider_id: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<Preview> {
    let row: Option<ProviderRow> =
        sqlx::query_as("SELECT id, name, email, time_zone, active FROM providers WHERE id = $1")
            .bind(provider_id)
            .fetch_optional(&mut *connection)
            .await?;
    let row = row.ok_or(PreviewError::UnknownProvider(provider_id))?;
    let recipient = recipient::check(&row).map_err(|reason| PreviewError::Unreachable {
        provider_id,
        reason,
    })?;
    let nothing = |reason| {
        Ok(Preview::Nothing {
            provider_id,
            reason,
        })
    };

    // The planning step: a new digest, unless the outbox already has one
    // for this local day or a late one reached the provider today.
    let (plan, counts) = planner
        .plan_provider_at(connection, provider_id, now)
        .await?;
    let mut blocked = None;
    if let Some(plan) = plan {
        blocked = outbox_blocks(
            connection,
            provider_id,
            plan.local_date,
            plan.local_day_start,
        )
        .await?;
        if blocked.is_none() {
            let sessions = load_sessions(connection, &plan.session_ids).await?;
            let digest = render(composer, &plan.key, &recipient, &sessions, now, None)?;
            return Ok(Preview::Digest(digest));
        }
    }

    // The delivery step: a recorded digest that is due, such as a retry.
    if let Some((reminder_id, key)) = due_digest(connection, provider_id, now).await? {
        if !planner
            .window
            .is_open(&now.with_timezone(&recipient.time_zone))
        {
            return nothing(window_closed(planner, &recipient, now));
        }
        let session_ids: Vec<i64> = sqlx::query_scalar(
            "SELECT session_id FROM reminder_items WHERE reminder_id = $1 AND NOT dropped",
        )
        .bind(reminder_id)
        .fetch_all(&mut *connection)
        .await?;
        let sessions = load_sessions(connection, &session_ids).await?;
        if sessions.is_empty() {
            return nothing(NoDigest::Empty { reminder_id });
        }
        let digest = render(
            composer,
            &key,
            &recipient,
            &sessions,
            now,
            Some(reminder_id),
        )?;
        return Ok(Preview::Digest(digest));
    }

    let reason = if let Some(reason) = blocked {
        reason
    } else if counts.overdue_sessions == 0 {
        NoDigest::NothingOverdue
    } else if counts.digests_deferred > 0 {
        window_closed(planner, &recipient, now)
    } else {
        NoDigest::UpToDate {
            overdue_sessions: counts.overdue_sessions,
        }
    };
    nothing(reason)
}

/// Returns why recording a digest for `local_date` would insert nothing,
/// following the conditions of the planner's insert: the day's digest
/// exists already, or a digest was sent since the local day began.
async fn outbox_blocks(
    connection: &mut PgConnection,
    provider_id: i64,
    local_date: NaiveDate,
    local_day_start: DateTime<Utc>,
) -> sqlx::Result<Option<NoDigest>> {
    let recorded: Option<(i64, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, status::text, next_attempt_at FROM reminders WHERE provider_id = $1 AND local_date = $2",
    )
    .bind(provider_id)
    .bind(local_date)
    .fetch_optional(&mut *connection)
    .await?;
    if let Some((reminder_id, status, next_attempt_at)) = recorded {
        return Ok(Some(NoDigest::AlreadyRecorded {
            reminder_id,
            local_date,
            status,
            next_attempt_at,
        }));
    }
    let sent_today: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM reminders
                        WHERE provider_id = $1 AND status = 'sent' AND finished_at >= $2)",
    )
    .bind(provider_id)
    .bind(local_day_start)
    .fetch_one(&mut *connection)
    .await?;
    Ok(sent_today.then_some(NoDigest::SentToday { local_date }))
}

/// Returns the provider's recorded digest that a delivery pass at `now`
/// would claim first, as (id, key).
async fn due_digest(
    connection: &mut PgConnection,
    provider_id: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<(i64, String)>> {
    sqlx::query_as(
        "SELECT id, reminder_key FROM reminders
         WHERE provider_id = $1 AND status = 'pending' AND next_attempt_at <= $2
           AND (lease_until IS NULL OR lease_until <= $2)
         ORDER BY next_attempt_at, id
         LIMIT 1",
    )
    .bind(provider_id)
    .bind(now)
    .fetch_optional(connection)
    .await
}

/// Loads the sessions among `session_ids` that delivery would keep: still
/// scheduled, with times chrono can hold, oldest first.
async fn load_sessions(
    connection: &mut PgConnection,
    session_ids: &[i64],
) -> sqlx::Result<Vec<DigestSession>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: i64,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        member_name: Option<String>,
    }

    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.id, s.starts_at, s.ends_at, m.name AS member_name
         FROM sessions s
         LEFT JOIN members m ON m.id = s.member_id
         WHERE s.id = ANY($1) AND s.status = 'scheduled'
           AND s.starts_at BETWEEN '0001-01-01' AND '9999-12-31'
           AND s.ends_at BETWEEN '0001-01-01' AND '9999-12-31'
         ORDER BY s.ends_at, s.id",
    )
    .bind(session_ids)
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| DigestSession {
            session_id: row.id,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            member_name: row.member_name.unwrap_or_default(),
        })
        .collect())
}

fn render(
    composer: &Composer,
    key: &str,
    recipient: &Recipient,
    sessions: &[DigestSession],
    now: DateTime<Utc>,
    reminder_id: Option<i64>,
) -> anyhow::Result<PreviewDigest> {
    let rendered = composer.render(recipient, sessions, now)?;
    let message = composer.build(key, recipient, &rendered, now)?;
    Ok(PreviewDigest {
        reminder_id,
        message,
        rendered,
    })
}

fn window_closed(planner: &Planner, recipient: &Recipient, now: DateTime<Utc>) -> NoDigest {
    let local = now.with_timezone(&recipient.time_zone);
    NoDigest::WindowClosed {
        local_time: local.format("%a %H:%M %Z").to_string() + " in " + recipient.time_zone.name(),
        next_opening: planner.window.next_opening(now, recipient.time_zone),
    }
}

/// Writes a digest as its headers, a blank line and the plain-text body,
/// or one line saying why there is none.
pub fn write(out: &mut impl Write, preview: &Preview, now: DateTime<Utc>) -> anyhow::Result<()> {
    match preview {
        Preview::Digest(digest) => {
            let headers = digest.message.headers().to_string();
            write!(out, "{}", headers.replace("\r\n", "\n"))?;
            writeln!(out)?;
            write!(out, "{}", digest.rendered.text)?;
            if !digest.rendered.text.ends_with('\n') {
                writeln!(out)?;
            }
        }
        Preview::Nothing {
            provider_id,
            reason,
        } => writeln!(
            out,
            "no digest for provider {provider_id} at {}: {}",
            now.to_rfc3339_opts(SecondsFormat::Secs, true),
            reason.describe()
        )?,
    }
    Ok(())
}
