//! The benchmark at a reduced size, against the embedded SMTP server and
//! the built-in load generator, so its table keeps working.

use chrono::{TimeZone, Utc};
use session_steward::benchmark::{self, BenchConfig, ReferenceLoad};
use session_steward::dataset::DemoSize;

use crate::smtp::SmtpServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduced_run_fills_every_row() {
    let server_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is set for the tests")
        .rsplit_once('/')
        .expect("DATABASE_URL has a database path")
        .0
        .to_owned();
    let smtp = SmtpServer::start();
    let config = BenchConfig {
        server_url,
        database_prefix: format!("session_steward_bench_test_{}", std::process::id()),
        seed: 7,
        now: Utc.with_ymd_and_hms(2026, 12, 2, 12, 30, 0).unwrap(),
        size: DemoSize {
            providers: 50,
            members: 200,
            sessions: 3_000,
        },
        overdue: 150,
        large_sessions: 6_000,
        memory_overdue: [50, 300],
        repeats: 1,
        delivery_concurrency: 2,
        smtp_port: smtp.port,
        reference: ReferenceLoad::Builtin,
        binary: env!("CARGO_BIN_EXE_session-steward").into(),
    };

    let report = benchmark::run(&config).await.expect("benchmark runs");
    let table = report.render();

    let rows: Vec<&str> = table
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| figure"))
        .collect();
    for (index, prefix) in [
        "1. scan",
        "1b. scan with its writes",
        "2. delivery",
        "3. memory",
        "4. growth",
        "5. idle tick",
    ]
    .iter()
    .enumerate()
    {
        let row = rows
            .get(index)
            .unwrap_or_else(|| panic!("row {prefix} missing in:\n{table}"));
        assert!(
            row.starts_with(&format!("| {prefix}")),
            "row {index} is not {prefix}:\n{table}"
        );
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for (column, cell) in [(2, cells[2]), (3, cells[3])] {
            let number = cell.split(' ').next().unwrap_or_default();
            // The idle tick's statement count comes from tracing events.
            // Tests running in parallel threads can leave tracing's
            // per-callsite cache saying "no subscriber", so it may read 0
            // here, though not in the benchmark's single-threaded run.
            let minimum_ok = |value: f64| {
                if index == 5 && column == 3 {
                    value >= 0.0
                } else {
                    value > 0.0
                }
            };
            assert!(
                number.parse::<f64>().is_ok_and(minimum_ok),
                "row {prefix} has a non-numeric figure \"{cell}\":\n{table}"
            );
        }
        if index < 5 {
            assert!(
                cells[4].parse::<f64>().is_ok_and(|value| value > 0.0),
                "row {prefix} has no ratio:\n{table}"
            );
        }
    }
    assert!(
        smtp.messages().len() > 100,
        "the embedded server received {} messages",
        smtp.messages().len()
    );
}
