//! The reminder cycle benchmark at platform scale. `bench/run.sh` starts
//! `smtp-sink` and runs this; see BENCHMARKS.md for the figures.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Parser;
use session_steward::benchmark::{self, BenchConfig, ReferenceLoad};
use session_steward::dataset::DemoSize;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks the reminder cycle and prints one table of ratios")]
struct Args {
    /// PostgreSQL server, without a database; the benchmark creates and drops its own.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    server_url: String,
    /// Port of the SMTP sink on 127.0.0.1.
    #[arg(long)]
    smtp_port: u16,
    /// The reference load generator.
    #[arg(long, default_value = "/usr/sbin/smtp-source")]
    smtp_source: PathBuf,
    /// The session-steward binary for the memory runs (default: next to this example's binary).
    #[arg(long)]
    binary: Option<PathBuf>,
    #[arg(long, default_value_t = 20_000)]
    providers: u32,
    #[arg(long, default_value_t = 100_000)]
    members: u32,
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u64,
    /// Overdue sessions in the scan and growth datasets.
    #[arg(long, default_value_t = 20_000)]
    overdue: u64,
    /// Sessions in the growth dataset.
    #[arg(long, default_value_t = 10_000_000)]
    large_sessions: u64,
    /// Overdue sessions of the two memory runs.
    #[arg(long, num_args = 2, default_values_t = [10_000, 100_000])]
    memory_overdue: Vec<u64>,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// reminders.delivery_concurrency, the SMTP pool size and smtp-source's session count.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// The instant the datasets are dated around, a Wednesday at half past the hour UTC.
    #[arg(long, default_value = "2026-12-02T12:30:00Z")]
    now: DateTime<Utc>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = match args.binary {
        Some(binary) => binary,
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .map(|profile| profile.join("session-steward"))
            .ok_or_else(|| {
                anyhow::anyhow!("cannot locate the session-steward binary; pass --binary")
            })?,
    };
    anyhow::ensure!(
        binary.is_file(),
        "{} not found; build it with `cargo build --release` or pass --binary",
        binary.display()
    );
    let config = BenchConfig {
        server_url: args.server_url,
        database_prefix: "session_steward_bench".to_owned(),
        seed: 1,
        now: args.now,
        size: DemoSize {
            providers: args.providers,
            members: args.members,
            sessions: args.sessions,
        },
        overdue: args.overdue,
        large_sessions: args.large_sessions,
        memory_overdue: [args.memory_overdue[0], args.memory_overdue[1]],
        repeats: args.repeats,
        delivery_concurrency: args.concurrency,
        smtp_port: args.smtp_port,
        reference: ReferenceLoad::SmtpSource(args.smtp_source),
        binary,
    };
    let report = benchmark::run(&config).await?;
    print!("{}", report.render());
    Ok(())
}
