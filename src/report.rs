//! Support's flag report: open flags, most harmful kind first and oldest
//! session first within a kind, as a terminal table, CSV or JSON. The
//! support page renders the same rows.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::PgPool;

use crate::compose::member_reference;
use crate::flags::FlagKind;

/// Filter that selects the flags the report lists.
#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    pub kind: Option<FlagKind>,
    pub provider_id: Option<i64>,
    /// Include resolved flags too.
    pub all: bool,
    /// Return at most this many rows, from the top of the report.
    pub limit: Option<i64>,
}

/// One line of the report. It carries initials, never a member's name.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub flag_id: i64,
    pub kind: FlagKind,
    pub session_id: i64,
    pub provider_id: i64,
    /// The provider's name as stored, unchecked: escape it before display.
    pub provider_name: Option<String>,
    pub member_id: i64,
    pub member_ref: String,
    /// Session start in the provider's zone, or in UTC when that zone is unknown.
    pub session_start: String,
    pub days_since_session_end: i64,
    /// Digests sent to the provider that listed this session.
    pub reminders_sent: i64,
    /// The session's status, or None when the session row is missing.
    pub session_status: Option<String>,
    /// Sessions in the allotment the session counts against.
    pub sessions_total: Option<i32>,
    /// Sessions the member can still book in that allotment; zero or less
    /// means the member cannot book.
    pub sessions_remaining: Option<i32>,
    pub reason: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
    pub note: Option<String>,
}

#[derive(sqlx::FromRow)]
struct FlagRow {
    id: i64,
    kind: FlagKind,
    session_id: i64,
    provider_id: i64,
    provider_name: Option<String>,
    member_id: i64,
    member_name: Option<String>,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    time_zone: Option<String>,
    reminders_sent: i64,
    session_status: Option<String>,
    sessions_total: Option<i32>,
    sessions_remaining: Option<i32>,
    reason: Option<String>,
    opened_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    acknowledged_by: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
    resolution: Option<String>,
    note: Option<String>,
}

/// Loads the rows the filter selects, in report order.
pub async fn load(
    pool: &PgPool,
    filter: &ReportFilter,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<ReportRow>> {
    let rows: Vec<FlagRow> = sqlx::query_as(
        "SELECT f.id, f.kind, f.session_id, f.provider_id, p.name AS provider_name, f.member_id,
                m.name AS member_name,
                CASE WHEN s.starts_at BETWEEN '0001-01-01' AND '9999-12-31' THEN s.starts_at END AS starts_at,
                CASE WHEN s.ends_at BETWEEN '0001-01-01' AND '9999-12-31' THEN s.ends_at END AS ends_at,
                p.time_zone,
                (SELECT count(*) FROM reminder_items ri JOIN reminders r ON r.id = ri.reminder_id
                 WHERE ri.session_id = f.session_id AND r.status = 'sent' AND NOT ri.dropped) AS reminders_sent,
                s.status::text AS session_status,
                balance.sessions_total, balance.remaining AS sessions_remaining,
                f.reason, f.opened_at, f.last_seen_at, f.acknowledged_by,
                f.resolved_at, f.resolution::text AS resolution, f.note
         FROM flags f
         LEFT JOIN sessions s ON s.id = f.session_id
         LEFT JOIN members m ON m.id = f.member_id
         LEFT JOIN providers p ON p.id = f.provider_id
         LEFT JOIN LATERAL (
             SELECT b.sessions_total, b.remaining FROM allotment_balances b WHERE b.allotment_id = s.allotment_id
         ) balance ON true
         WHERE ($1::flag_kind IS NULL OR f.kind = $1) AND ($2 OR f.resolved_at IS NULL)
           AND ($4::bigint IS NULL OR f.provider_id = $4)
         ORDER BY f.resolved_at IS NOT NULL, array_position($3::text[], f.kind::text), s.ends_at NULLS LAST, f.id
         LIMIT $5",
    )
    .bind(filter.kind)
    .bind(filter.all)
    .bind(FlagKind::ALL.map(FlagKind::as_str).to_vec())
    .bind(filter.provider_id)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| to_report_row(row, now))
        .collect())
}

fn to_report_row(row: FlagRow, now: DateTime<Utc>) -> ReportRow {
    let zone: Option<Tz> = row.time_zone.as_deref().and_then(|name| name.parse().ok());
    let session_start = match (row.starts_at, zone) {
        (Some(start), Some(zone)) => start
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
        (Some(start), None) => start.format("%Y-%m-%d %H:%M UTC").to_string(),
        (None, _) => "(missing or out of range)".to_owned(),
    };
    ReportRow {
        flag_id: row.id,
        kind: row.kind,
        session_id: row.session_id,
        provider_id: row.provider_id,
        provider_name: row.provider_name,
        member_id: row.member_id,
        member_ref: row
            .member_name
            .as_deref()
            .map(member_reference)
            .unwrap_or_default(),
        session_start,
        days_since_session_end: row.ends_at.map_or(0, |end| (now - end).num_days()),
        reminders_sent: row.reminders_sent,
        session_status: row.session_status,
        sessions_total: row.sessions_total,
        sessions_remaining: row.sessions_remaining,
        reason: row.reason,
        opened_at: row.opened_at,
        last_seen_at: row.last_seen_at,
        acknowledged_by: row.acknowledged_by,
        resolved_at: row.resolved_at,
        resolution: row.resolution,
        note: row.note,
    }
}

impl ReportRow {
    /// Describes what the flagged session does to the member's balance,
    /// such as "1 on hold, 0 of 10 left (cannot book)".
    pub fn balance_effect(&self) -> String {
        let (Some(status), Some(total), Some(remaining)) = (
            self.session_status.as_deref(),
            self.sessions_total,
            self.sessions_remaining,
        ) else {
            return "unknown: session or allotment missing".to_owned();
        };
        let hold = if status == "scheduled" {
            "1 on hold".to_owned()
        } else {
            format!("no hold (session is {status})")
        };
        let blocked = if remaining <= 0 { " (cannot book)" } else { "" };
        format!("{hold}, {} of {total} left{blocked}", remaining.max(0))
    }
}

/// A provider that has open flags, for choosing a filter.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FlaggedProvider {
    pub provider_id: i64,
    /// The name as stored, unchecked: escape it before display.
    pub name: Option<String>,
    pub open_flags: i64,
}

/// Lists the providers that have open flags, by name then id.
pub async fn providers_with_open_flags(pool: &PgPool) -> sqlx::Result<Vec<FlaggedProvider>> {
    sqlx::query_as(
        "SELECT f.provider_id, p.name, count(*) AS open_flags
         FROM flags f
         LEFT JOIN providers p ON p.id = f.provider_id
         WHERE f.resolved_at IS NULL
         GROUP BY f.provider_id, p.name
         ORDER BY p.name, f.provider_id",
    )
    .fetch_all(pool)
    .await
}

/// Writes the rows as an aligned plain-text table.
pub fn write_table(out: &mut impl Write, rows: &[ReportRow]) -> anyhow::Result<()> {
    let header = [
        "FLAG",
        "KIND",
        "SESSION",
        "PROVIDER",
        "MEMBER",
        "SESSION START",
        "DAYS",
        "STATE",
        "REASON",
    ];
    let lines: Vec<[String; 9]> = rows
        .iter()
        .map(|row| {
            [
                row.flag_id.to_string(),
                row.kind.to_string(),
                row.session_id.to_string(),
                row.provider_id.to_string(),
                row.member_ref.clone(),
                row.session_start.clone(),
                row.days_since_session_end.to_string(),
                state_label(row),
                printable(row.reason.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    write_columns(out, &header, &lines)?;
    writeln!(out, "{} flag(s)", rows.len())?;
    Ok(())
}

/// Writes `header` and `rows` as left-aligned columns two spaces apart,
/// each as wide as its widest cell.
pub fn write_columns<const N: usize>(
    out: &mut impl Write,
    header: &[&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = header.map(|title| title.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut write_row = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", padded.join("  ").trim_end())
    };
    write_row(header.to_vec())?;
    for row in rows {
        write_row(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// Writes the rows as CSV with a header line. Cells that a spreadsheet
/// would run as a formula get a leading apostrophe.
pub fn write_csv(out: &mut impl Write, rows: &[ReportRow]) -> anyhow::Result<()> {
    write_csv_records(csv::Writer::from_writer(out), rows)
}

/// Writes the rows as `write_csv` does, for a spreadsheet to open. A UTF-8
/// byte order mark gives Excel the encoding, and lines end in CRLF as
/// RFC 4180 specifies.
pub fn write_spreadsheet_csv(out: &mut impl Write, rows: &[ReportRow]) -> anyhow::Result<()> {
    out.write_all("\u{feff}".as_bytes())?;
    let writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    write_csv_records(writer, rows)
}

fn write_csv_records<W: Write>(
    mut writer: csv::Writer<W>,
    rows: &[ReportRow],
) -> anyhow::Result<()> {
    writer.write_record([
        "flag_id",
        "kind",
        "session_id",
        "provider_id",
        "provider_name",
        "member_id",
        "member_ref",
        "session_start",
        "days_since_session_end",
        "reminders_sent",
        "balance_effect",
        "state",
        "reason",
        "opened_at",
        "last_seen_at",
        "acknowledged_by",
        "resolved_at",
        "resolution",
        "note",
    ])?;
    for row in rows {
        let optional_time =
            |time: Option<DateTime<Utc>>| time.map(|time| time.to_rfc3339()).unwrap_or_default();
        writer.write_record([
            row.flag_id.to_string(),
            row.kind.to_string(),
            row.session_id.to_string(),
            row.provider_id.to_string(),
            spreadsheet_safe(row.provider_name.as_deref().unwrap_or("")),
            row.member_id.to_string(),
            spreadsheet_safe(&row.member_ref),
            row.session_start.clone(),
            row.days_since_session_end.to_string(),
            row.reminders_sent.to_string(),
            row.balance_effect(),
            state_label(row),
            spreadsheet_safe(row.reason.as_deref().unwrap_or("")),
            row.opened_at.to_rfc3339(),
            row.last_seen_at.to_rfc3339(),
            spreadsheet_safe(row.acknowledged_by.as_deref().unwrap_or("")),
            optional_time(row.resolved_at),
            row.resolution.clone().unwrap_or_default(),
            spreadsheet_safe(row.note.as_deref().unwrap_or("")),
        ])?;
    }
    writer.flush().context("failed to write CSV")?;
    Ok(())
}

/// Writes the rows as a JSON array.
pub fn write_json(out: &mut impl Write, rows: &[ReportRow]) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, rows)?;
    writeln!(out)?;
    Ok(())
}

/// Names the state of a flag: its resolution, "acknowledged" or "open".
pub fn state_label(row: &ReportRow) -> String {
    match (&row.resolution, &row.acknowledged_by) {
        (Some(resolution), _) => resolution.clone(),
        (None, Some(_)) => "acknowledged".to_owned(),
        (None, None) => "open".to_owned(),
    }
}

/// Replaces control characters so a stored value cannot garble a terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn spreadsheet_safe(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn row(provider_name: &str, remaining: i32) -> ReportRow {
        let opened_at = Utc.with_ymd_and_hms(2026, 12, 4, 18, 0, 0).unwrap();
        ReportRow {
            flag_id: 1,
            kind: FlagKind::StaleHold,
            session_id: 2,
            provider_id: 3,
            provider_name: Some(provider_name.to_owned()),
            member_id: 4,
            member_ref: "J. D.".to_owned(),
            session_start: "2026-11-19 09:10 PST".to_owned(),
            days_since_session_end: 15,
            reminders_sent: 2,
            session_status: Some("scheduled".to_owned()),
            sessions_total: Some(10),
            sessions_remaining: Some(remaining),
            reason: None,
            opened_at,
            last_seen_at: opened_at,
            acknowledged_by: None,
            resolved_at: None,
            resolution: None,
            note: None,
        }
    }

    #[test]
    fn spreadsheet_csv_neutralises_formulas() {
        let names = [
            "=1+1", "+1", "-1", "@SUM(A1)", "\tTab", "\rReturn", "Ana Ruiz",
        ];
        let rows: Vec<ReportRow> = names.iter().map(|name| row(name, 3)).collect();
        let mut out = Vec::new();
        write_spreadsheet_csv(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();

        let text = text.strip_prefix('\u{feff}').expect("a byte order mark");
        assert!(text.ends_with("\r\n"), "CRLF line ends");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let column = reader
            .headers()
            .unwrap()
            .iter()
            .position(|title| title == "provider_name")
            .expect("a provider_name column");
        let cells: Vec<String> = reader
            .records()
            .map(|record| record.unwrap()[column].to_owned())
            .collect();
        let expected: Vec<String> = names
            .iter()
            .map(|name| match name.chars().next() {
                Some('A') => (*name).to_owned(),
                _ => format!("'{name}"),
            })
            .collect();
        assert_eq!(cells, expected);
    }

    #[test]
    fn balance_effect_names_blocked_member() {
        assert_eq!(row("", 3).balance_effect(), "1 on hold, 3 of 10 left");
        assert_eq!(
            row("", -1).balance_effect(),
            "1 on hold, 0 of 10 left (cannot book)"
        );
        let mut completed = row("", 2);
        completed.session_status = Some("completed".to_owned());
        assert_eq!(
            completed.balance_effect(),
            "no hold (session is completed), 2 of 10 left"
        );
        let mut missing = row("", 2);
        missing.sessions_total = None;
        assert_eq!(
            missing.balance_effect(),
            "unknown: session or allotment missing"
        );
    }
}
