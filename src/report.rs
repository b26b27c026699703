//! Support's flag report: open flags, most harmful kind first and oldest
//! session first within a kind, as a terminal table, CSV or JSON.

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
    /// Include resolved flags too.
    pub all: bool,
}

/// One line of the report. It carries initials, never a member's name.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub flag_id: i64,
    pub kind: FlagKind,
    pub session_id: i64,
    pub provider_id: i64,
    pub member_id: i64,
    pub member_ref: String,
    /// Session start in the provider's zone, or in UTC when that zone is unknown.
    pub session_start: String,
    pub days_since_session_end: i64,
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
    member_id: i64,
    member_name: Option<String>,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    time_zone: Option<String>,
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
        "SELECT f.id, f.kind, f.session_id, f.provider_id, f.member_id,
                m.name AS member_name,
                CASE WHEN s.starts_at BETWEEN '0001-01-01' AND '9999-12-31' THEN s.starts_at END AS starts_at,
                CASE WHEN s.ends_at BETWEEN '0001-01-01' AND '9999-12-31' THEN s.ends_at END AS ends_at,
                p.time_zone,
                f.reason, f.opened_at, f.last_seen_at, f.acknowledged_by,
                f.resolved_at, f.resolution::text AS resolution, f.note
         FROM flags f
         LEFT JOIN sessions s ON s.id = f.session_id
         LEFT JOIN members m ON m.id = f.member_id
         LEFT JOIN providers p ON p.id = f.provider_id
         WHERE ($1::flag_kind IS NULL OR f.kind = $1) AND ($2 OR f.resolved_at IS NULL)
         ORDER BY f.resolved_at IS NOT NULL, array_position($3::text[], f.kind::text), s.ends_at NULLS LAST, f.id",
    )
    .bind(filter.kind)
    .bind(filter.all)
    .bind(FlagKind::ALL.map(FlagKind::as_str).to_vec())
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
        member_id: row.member_id,
        member_ref: row
            .member_name
            .as_deref()
            .map(member_reference)
            .unwrap_or_default(),
        session_start,
        days_since_session_end: row.ends_at.map_or(0, |end| (now - end).num_days()),
        reason: row.reason,
        opened_at: row.opened_at,
        last_seen_at: row.last_seen_at,
        acknowledged_by: row.acknowledged_by,
        resolved_at: row.resolved_at,
        resolution: row.resolution,
        note: row.note,
    }
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
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record([
        "flag_id",
        "kind",
        "session_id",
        "provider_id",
        "member_id",
        "member_ref",
        "session_start",
        "days_since_session_end",
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
            row.member_id.to_string(),
            spreadsheet_safe(&row.member_ref),
            row.session_start.clone(),
            row.days_since_session_end.to_string(),
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

fn state_label(row: &ReportRow) -> String {
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
