//! The built-in synthetic dataset: providers across time zones, members
//! with allotments, and sessions over the last 90 days (plus two weeks of
//! bookings ahead) in a realistic status mix, dated relative to "now".
//!
//! Generation is deterministic for a seed. Each member's rows come from an
//! RNG seeded with the run seed and the member id, so allotments and
//! sessions can be produced in two passes without holding all sessions in
//! memory, and loaded with `COPY`.

use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::{PgConnection, PgPool};

/// How many rows to generate.
#[derive(Debug, Clone, Copy)]
pub struct DemoSize {
    pub providers: u32,
    pub members: u32,
    pub sessions: u64,
}

impl Default for DemoSize {
    fn default() -> Self {
        Self {
            providers: 200,
            members: 2_000,
            sessions: 20_000,
        }
    }
}

/// Row counts and duration of one load.
#[derive(Debug, Clone, Copy)]
pub struct LoadSummary {
    pub providers: u64,
    pub members: u64,
    pub allotments: u64,
    pub sessions: u64,
    pub elapsed: std::time::Duration,
}

/// The zones providers work in: both hemispheres, and offsets of 30 and 45
/// minutes.
pub const ZONES: [&str; 10] = [
    "America/Los_Angeles",
    "America/Chicago",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Sydney",
    "Pacific/Auckland",
];

const FIRST_NAMES: [&str; 16] = [
    "Amara", "Ben", "Chiara", "Dmitri", "Elif", "Farid", "Grace", "Hiroshi", "Ines", "Jonas",
    "Kavya", "Lars", "Mónica", "Nia", "Oskar", "Zoë",
];
const LAST_NAMES: [&str; 16] = [
    "Abebe",
    "Berg",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Haddad",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Müller",
    "Nakamura",
    "O'Brien",
    "Ångström",
];

/// Rows that session-steward must skip and flag rather than send to. One
/// provider in 50 gets each defect, by id.
fn provider_defect(id: u32) -> Option<&'static str> {
    match id % 50 {
        7 => Some("inactive"),
        17 => Some("missing email"),
        27 => Some("invalid email"),
        37 => Some("unknown time zone"),
        47 => Some("control characters in name"),
        _ => None,
    }
}

/// Rejects a database whose platform tables already have rows, so the
/// demo never mixes its rows with others.
pub async fn ensure_empty(pool: &PgPool) -> anyhow::Result<()> {
    let has_rows: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM providers) OR EXISTS (SELECT 1 FROM sessions)",
    )
    .fetch_one(pool)
    .await?;
    if has_rows {
        anyhow::bail!(
            "the demo database already has data; pass --reset to recreate it, or point --database-url at an empty database"
        );
    }
    Ok(())
}

/// How the generator decides which past sessions are still `scheduled`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SessionMix {
    /// The demo's mix: about 1 % of the sessions end up overdue.
    Demo,
    /// About this many overdue sessions, independent of the dataset size.
    /// Each session is made overdue with probability `overdue / sessions`:
    /// it ends 6 to 13 local days before `now` and stays `scheduled`. No
    /// other session is left `scheduled` between 5 and 14 days after its end.
    Overdue(u64),
}

impl SessionMix {
    /// Returns the probability that a session is generated overdue, or
    /// `None` for the demo's mix.
    fn overdue_share(self, size: DemoSize) -> Option<f64> {
        match self {
            SessionMix::Demo => None,
            SessionMix::Overdue(count) => {
                Some((count as f64 / size.sessions.max(1) as f64).min(1.0))
            }
        }
    }
}

/// Generates and bulk-loads the dataset for `seed`, dated around `now`.
pub async fn load(
    pool: &PgPool,
    seed: u64,
    size: DemoSize,
    now: DateTime<Utc>,
) -> anyhow::Result<LoadSummary> {
    load_mix(pool, seed, size, now, SessionMix::Demo).await
}

/// Like [`load`], with the share of overdue sessions set by `mix`.
pub async fn load_mix(
    pool: &PgPool,
    seed: u64,
    size: DemoSize,
    now: DateTime<Utc>,
    mix: SessionMix,
) -> anyhow::Result<LoadSummary> {
    let overdue_share = mix.overdue_share(size);
    anyhow::ensure!(size.providers >= 1, "--providers must be at least 1");
    anyhow::ensure!(size.members >= 1, "--members must be at least 1");
    let started = Instant::now();
    let mut connection = pool.acquire().await?;

    copy_rows(
        &mut connection,
        "COPY providers (id, name, email, time_zone, active) FROM STDIN WITH (FORMAT csv)",
        |sink| {
            for id in 1..=size.providers {
                write_provider(sink, seed, id)?;
            }
            Ok(())
        },
    )
    .await
    .context("failed to load providers")?;

    copy_rows(
        &mut connection,
        "COPY members (id, name, eligible, matched) FROM STDIN WITH (FORMAT csv)",
        |sink| {
            for id in 1..=size.members {
                write_member(sink, seed, id)?;
            }
            Ok(())
        },
    )
    .await
    .context("failed to load members")?;

    copy_rows(
        &mut connection,
        "COPY allotments (id, member_id, period_start, period_end, sessions_total) FROM STDIN WITH (FORMAT csv)",
        |sink| {
            for member in 1..=size.members {
                let plan = MemberPlan::generate(seed, member, size, now, overdue_share);
                let total = plan.held_or_used() + plan.spare_sessions;
                sink.serialize((member, member, plan.period_start, plan.period_end, total))?;
            }
            Ok(())
        },
    )
    .await
    .context("failed to load allotments")?;

    let sessions_loaded = copy_sessions(&mut connection, seed, size, now, overdue_share)
        .await
        .context("failed to load sessions")?;

    for table in ["providers", "members", "allotments", "sessions"] {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST((SELECT max(id) FROM {table}), 1))"
        ))
        .execute(&mut *connection)
        .await?;
    }
    sqlx::query("VACUUM (ANALYZE)")
        .execute(&mut *connection)
        .await?;

    Ok(LoadSummary {
        providers: u64::from(size.providers),
        members: u64::from(size.members),
        allotments: u64::from(size.members),
        sessions: sessions_loaded,
        elapsed: started.elapsed(),
    })
}

type CsvSink = csv::Writer<Vec<u8>>;

/// Runs one `COPY … FROM STDIN`, with rows written by `fill`.
async fn copy_rows(
    connection: &mut PgConnection,
    statement: &str,
    fill: impl FnOnce(&mut CsvSink) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut sink = csv_sink();
    fill(&mut sink)?;
    let bytes = sink.into_inner().context("failed to finish CSV rows")?;
    let mut copy = connection.copy_in_raw(statement).await?;
    copy.send(bytes).await?;
    Ok(copy.finish().await?)
}

fn csv_sink() -> CsvSink {
    csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new())
}

/// Streams sessions in chunks, so memory stays flat for any size.
async fn copy_sessions(
    connection: &mut PgConnection,
    seed: u64,
    size: DemoSize,
    now: DateTime<Utc>,
    overdue_share: Option<f64>,
) -> anyhow::Result<u64> {
    const CHUNK_BYTES: usize = 4 << 20;
    let mut copy = connection
        .copy_in_raw(
            "COPY sessions (id, provider_id, member_id, allotment_id, starts_at, ends_at, status, status_changed_at)
             FROM STDIN WITH (FORMAT csv)",
        )
        .await?;
    let mut sink = csv_sink();
    let mut next_id: u64 = 1;
    for member in 1..=size.members {
        let plan = MemberPlan::generate(seed, member, size, now, overdue_share);
        for session in &plan.sessions {
            sink.serialize((
                next_id,
                session.provider_id,
                member,
                member,
                session.starts_at,
                session.ends_at,
                session.status,
                session.status_changed_at,
            ))?;
            next_id += 1;
        }
        if sink.get_ref().len() >= CHUNK_BYTES {
            let bytes = std::mem::replace(&mut sink, csv_sink())
                .into_inner()
                .context("failed to finish CSV rows")?;
            copy.send(bytes).await?;
        }
    }
    let bytes = sink.into_inner().context("failed to finish CSV rows")?;
    copy.send(bytes).await?;
    Ok(copy.finish().await?)
}

fn rng_for(seed: u64, stream: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng.set_word_pos(u128::from(id) << 8);
    rng
}

fn write_provider(sink: &mut CsvSink, seed: u64, id: u32) -> anyhow::Result<()> {
    let mut rng = rng_for(seed, 1, u64::from(id));
    let mut name = format!(
        "{} {}",
        FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
        LAST_NAMES[rng.random_range(0..LAST_NAMES.len())]
    );
    let mut email = Some(format!("provider{id}@example.org"));
    let mut zone = ZONES[id as usize % ZONES.len()].to_owned();
    let mut active = true;
    match provider_defect(id) {
        Some("inactive") => active = false,
        Some("missing email") => email = None,
        Some("invalid email") => email = Some(format!("provider{id}.example.org")),
        Some("unknown time zone") => zone = "Mars/Olympus_Mons".to_owned(),
        Some("control characters in name") => {
            name = format!("{name}\r\nBcc: provider{id}@example.org")
        }
        _ => {}
    }
    sink.serialize((id, name, email, zone, active))?;
    Ok(())
}

fn write_member(sink: &mut CsvSink, seed: u64, id: u32) -> anyhow::Result<()> {
    let mut rng = rng_for(seed, 2, u64::from(id));
    let name = format!(
        "{} {}",
        FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
        LAST_NAMES[rng.random_range(0..LAST_NAMES.len())]
    );
    let eligible = !rng.random_bool(0.02);
    let matched = !rng.random_bool(0.02);
    sink.serialize((id, name, eligible, matched))?;
    Ok(())
}

/// One generated session.
struct PlannedSession {
    provider_id: u32,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    status: &'static str,
    status_changed_at: DateTime<Utc>,
}

/// A member's allotment and sessions, regenerated identically from the seed.
struct MemberPlan {
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    spare_sessions: u32,
    sessions: Vec<PlannedSession>,
}

impl MemberPlan {
    fn generate(
        seed: u64,
        member: u32,
        size: DemoSize,
        now: DateTime<Utc>,
        overdue_share: Option<f64>,
    ) -> Self {
        let mut rng = rng_for(seed, 3, u64::from(member));
        let matched_provider = rng.random_range(1..=size.providers);

        // Spread the sessions evenly: every member gets the floor, and the
        // first `remainder` members one more.
        let per_member = size.sessions / u64::from(size.members);
        let remainder = size.sessions % u64::from(size.members);
        let count = per_member + u64::from(u64::from(member) <= remainder);

        // One allotment in ten ends within two weeks, so unused holds are urgent.
        let period_end = if rng.random_bool(0.1) {
            now + Duration::days(rng.random_range(2..13))
        } else {
            now + Duration::days(rng.random_range(20..250))
        };
        let period_start = period_end - Duration::days(365);
        // One member in eight has used or holds every session.
        let spare_sessions = if rng.random_bool(0.125) {
            0
        } else {
            rng.random_range(1..9)
        };

        let sessions = (0..count)
            .map(|_| {
                let provider_id = if rng.random_bool(0.9) {
                    matched_provider
                } else {
                    rng.random_range(1..=size.providers)
                };
                plan_session(&mut rng, provider_id, now, overdue_share)
            })
            .collect();
        Self {
            period_start,
            period_end,
            spare_sessions,
            sessions,
        }
    }

    /// Sessions that count against the allotment: used or on hold.
    fn held_or_used(&self) -> u32 {
        let counted = self
            .sessions
            .iter()
            .filter(|session| {
                matches!(
                    session.status,
                    "scheduled" | "completed" | "late_cancellation" | "no_show"
                )
            })
            .count();
        u32::try_from(counted).unwrap_or(u32::MAX)
    }
}

/// Generates one session. With `overdue_share`, that share of sessions is
/// made overdue and no other session is overdue; without it, the demo's
/// mix applies and the RNG draws are the ones the demo has always made.
fn plan_session(
    rng: &mut ChaCha8Rng,
    provider_id: u32,
    now: DateTime<Utc>,
    overdue_share: Option<f64>,
) -> PlannedSession {
    let forced_overdue = overdue_share.is_some_and(|share| rng.random_bool(share));
    let zone: Tz = ZONES[provider_id as usize % ZONES.len()]
        .parse()
        .expect("every demo zone is a valid IANA name");
    // A session ending 6 to 13 local days ago, between 08:50 and 20:35
    // local time (an hour later after a DST gap), is more than 5 and less
    // than 14 days old at any time of the current local day.
    let day_offset = if forced_overdue {
        rng.random_range(-13..=-6)
    } else {
        rng.random_range(-90..=14)
    };
    let day = now.with_timezone(&zone).date_naive() + Duration::days(day_offset);
    let local_start = day.and_time(
        NaiveTime::from_hms_opt(
            rng.random_range(8..19),
            [0, 15, 30, 45][rng.random_range(0..4)],
            0,
        )
        .expect("hours 8 to 18 and quarter hours are valid"),
    );
    // A local time that falls in a DST gap does not exist; move it an hour on.
    let starts_at = zone
        .from_local_datetime(&local_start)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(local_start + Duration::hours(1)))
                .earliest()
        })
        .map_or_else(|| local_start.and_utc(), |start| start.with_timezone(&Utc));
    let ends_at = starts_at + Duration::minutes(50);

    let age = now - ends_at;
    let status = if forced_overdue {
        "scheduled"
    } else if ends_at > now {
        if rng.random_bool(0.05) {
            "cancelled"
        } else {
            "scheduled"
        }
    } else {
        let still_scheduled = if age <= Duration::days(5) {
            0.55
        } else if age <= Duration::days(14) {
            if overdue_share.is_some() { 0.0 } else { 0.12 }
        } else {
            0.03
        };
        if rng.random_bool(still_scheduled) {
            "scheduled"
        } else {
            match rng.random_range(0..100) {
                0..80 => "completed",
                80..88 => "cancelled",
                88..92 => "late_cancellation",
                92..97 => "no_show",
                _ => "completed_credited",
            }
        }
    };
    let status_changed_at = if status == "scheduled" {
        starts_at - Duration::days(rng.random_range(1..21))
    } else {
        let reported = ends_at + Duration::hours(rng.random_range(1..96));
        reported.min(now)
    };
    PlannedSession {
        provider_id,
        starts_at,
        ends_at,
        status,
        status_changed_at,
    }
}
