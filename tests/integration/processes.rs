//! The daemon as separate processes: replicas sharing one database, a crash
//! in the middle of a delivery pass, and a clean stop on SIGTERM.
//!
//! Each test starts the real binary with `run` against its own database and
//! a loopback SMTP server. The children read the real clock, so sessions are
//! dated relative to now, and the send window in their configuration is open
//! all week. Every child is wrapped in a `Daemon`, which kills it when
//! dropped, so a failed assert never leaves a process behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::helpers::{self, member, provider, session};
use crate::smtp::{Received, SmtpServer};

const BINARY: &str = env!("CARGO_BIN_EXE_session-steward");
const LOS_ANGELES: &str = "America/Los_Angeles";

const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Upper bound for each wait on the children. A healthy run needs a fraction of it.
const WAIT_LIMIT: Duration = Duration::from_secs(90);
/// `[daemon] shutdown_grace` in every configuration written here.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Time allowed on top of the grace period for the process to exit.
const EXIT_MARGIN: Duration = Duration::from_secs(3);
/// Reminder ticks per running daemon that must succeed after a condition is
/// met before the test counts messages, so that a late duplicate would
/// have been sent by then.
const SETTLE_TICKS_PER_DAEMON: i64 = 3;
/// Lines of each child's standard error shown in a failure message.
const LOG_TAIL_LINES: usize = 40;

/// A `session-steward run` child process with its standard error in a file.
/// Dropping it kills the process if it is still running.
struct Daemon {
    name: String,
    child: Child,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `run` with `config` on `database_url`, logging to
    /// `<dir>/<name>.stderr.log`.
    fn start(name: &str, dir: &Path, config: &Path, database_url: &str) -> Self {
        let stderr_path = dir.join(format!("{name}.stderr.log"));
        let stderr = File::create(&stderr_path).expect("create the child's stderr file");
        let mut command = Command::new(BINARY);
        // Only the file and DATABASE_URL configure the child, so overrides
        // in the test's environment cannot change what it does.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SESSION_STEWARD_") {
                command.env_remove(key);
            }
        }
        command
            .env_remove("RUST_LOG")
            .env("DATABASE_URL", database_url)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {BINARY} run: {error}"));
        Self {
            name: name.to_owned(),
            child,
            stderr_path,
        }
    }

    /// Sends SIGTERM, the signal a service manager stops the daemon with.
    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed with {status}");
    }

    /// Sends SIGKILL and reaps the process.
    fn kill(&mut self) {
        self.child.kill().expect("send SIGKILL to the child");
        self.child.wait().expect("reap the killed child");
    }

    /// Returns the exit status if the process has exited.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll the child's status")
    }

    /// Waits up to `limit` for the process to exit and returns its status
    /// with the time it took, or `None` if it is still running.
    async fn wait_for_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Some((status, started.elapsed()));
            }
            if started.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the last lines of the child's standard error under a header
    /// that names the child.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_else(|error| {
            format!("(cannot read {}: {error})", self.stderr_path.display())
        });
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        format!(
            "--- {} stderr, last {} of {} lines ---\n{}",
            self.name,
            tail.len(),
            lines.len(),
            tail.join("\n")
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Joins the log tails of `daemons` for a failure message.
fn logs(daemons: &[Daemon]) -> String {
    daemons
        .iter()
        .map(Daemon::log_tail)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `condition` every 100 ms until it returns true. Panics with the
/// children's logs after `WAIT_LIMIT`, or as soon as one of them exits,
/// because every wait here expects all of them to keep running.
async fn wait_until(
    goal: &str,
    daemons: &mut [Daemon],
    server: &SmtpServer,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        for index in 0..daemons.len() {
            if let Some(status) = daemons[index].exit_status() {
                panic!(
                    "{} exited with {status} while waiting for {goal}, after {} accepted messages\n{}",
                    daemons[index].name,
                    server.messages().len(),
                    logs(daemons)
                );
            }
        }
        if started.elapsed() >= WAIT_LIMIT {
            panic!(
                "timed out after {} s waiting for {goal}, with {} accepted messages and {} attempts\n{}",
                WAIT_LIMIT.as_secs(),
                server.messages().len(),
                server.attempts(),
                logs(daemons)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until `SETTLE_TICKS_PER_DAEMON` reminder ticks per daemon that
/// started after this call have succeeded.
async fn wait_for_more_ticks(pool: &PgPool, daemons: &mut [Daemon], server: &SmtpServer) {
    let since = database_clock(pool).await;
    let ticks = SETTLE_TICKS_PER_DAEMON * daemons.len() as i64;
    let goal = format!("{ticks} more successful reminder ticks");
    wait_until(&goal, daemons, server, async || {
        finished_reminder_ticks_since(pool, since).await >= ticks
    })
    .await;
}

/// Writes a configuration for `run` that ticks the reminder job every
/// second, keeps the send window open all week and delivers to the test's
/// SMTP server. `smtp_keys` and `reminder_keys` contain extra TOML lines for
/// `[smtp]` and `[reminders]`.
fn write_config(dir: &Path, smtp_port: u16, smtp_keys: &str, reminder_keys: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let contents = format!(
        r#"[send_window]
start = "00:00"
end = "23:59"
business_days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

[schedule]
reminders = "* * * * * *"
flags = "*/5 * * * * *"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
{smtp_keys}

[email]
transport = "smtp"

[daemon]
shutdown_grace = "{grace}s"

# Replicas share the host, so each takes a free port.
[http]
address = "127.0.0.1:0"

[reminders]
{reminder_keys}
"#,
        grace = SHUTDOWN_GRACE.as_secs()
    );
    std::fs::write(&path, contents).expect("write the daemon configuration");
    path
}

/// Inserts `providers` reachable providers in Los Angeles, each with one
/// member and `sessions_each` sessions that ended about six days ago. Each
/// provider is then owed exactly one stage-1 digest. Returns the providers'
/// email addresses.
async fn seed_overdue(pool: &PgPool, providers: usize, sessions_each: usize) -> Vec<String> {
    let now = Utc::now();
    let mut addresses = Vec::with_capacity(providers);
    for i in 0..providers {
        let address = format!("provider{i}@example.org");
        let provider_id =
            provider(pool, &format!("Provider {i}"), Some(&address), LOS_ANGELES).await;
        let member_ids = member(pool, &format!("Member {i}"), 20, now).await;
        for hours in 0..sessions_each {
            let ends_at = now - chrono::Duration::days(6) - chrono::Duration::hours(hours as i64);
            session(pool, provider_id, member_ids, ends_at).await;
        }
        addresses.push(address);
    }
    addresses
}

fn distinct_message_ids(messages: &[Received]) -> BTreeSet<String> {
    messages.iter().filter_map(Received::message_id).collect()
}

/// Counts the accepted messages per recipient address.
fn messages_per_recipient(messages: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for message in messages {
        for recipient in &message.recipients {
            *counts.entry(recipient.clone()).or_default() += 1;
        }
    }
    counts
}

/// Returns the providers in `addresses` whose message count fails
/// `expected`, with their counts.
fn providers_where(
    messages: &[Received],
    addresses: &[String],
    expected: impl Fn(usize) -> bool,
) -> Vec<(String, usize)> {
    let counts = messages_per_recipient(messages);
    addresses
        .iter()
        .map(|address| (address.clone(), counts.get(address).copied().unwrap_or(0)))
        .filter(|(_, count)| !expected(*count))
        .collect()
}

async fn database_clock(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .expect("read the database clock")
}

async fn finished_reminder_ticks_since(pool: &PgPool, since: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM job_runs
         WHERE job = 'reminders' AND outcome = 'succeeded' AND started_at > $1",
    )
    .bind(since)
    .fetch_one(pool)
    .await
    .expect("count reminder ticks")
}

async fn reminders_with_status(pool: &PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM reminders WHERE status = $1::reminder_status")
        .bind(status)
        .fetch_one(pool)
        .await
        .expect("count reminders by status")
}

async fn all_reminders(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM reminders")
        .fetch_one(pool)
        .await
        .expect("count reminders")
}

/// Counts pending digests whose lease is still set, so that no other sender
/// may take them before it expires.
async fn leased_pending_reminders(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM reminders WHERE status = 'pending' AND lease_until IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .expect("count leased reminders")
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn three_replicas_deliver_each_digest_once(pool: PgPool) {
    let server = SmtpServer::start();
    // A short delay and small claim batches spread the delivery over all
    // three replicas instead of letting the first one claim everything.
    server.set_delay(Duration::from_millis(20));
    let addresses = seed_overdue(&pool, 100, 5).await;
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let config = write_config(dir.path(), server.port, "", "delivery_batch_size = 10");
    let database_url = helpers::database_url(&pool).await;

    let mut daemons: Vec<Daemon> = ["replica-1", "replica-2", "replica-3"]
        .into_iter()
        .map(|name| Daemon::start(name, dir.path(), &config, &database_url))
        .collect();

    wait_until("100 messages", &mut daemons, &server, async || {
        server.messages().len() >= 100
    })
    .await;
    wait_for_more_ticks(&pool, &mut daemons, &server).await;

    let messages = server.messages();
    let failure_logs = logs(&daemons);
    assert_eq!(
        messages.len(),
        100,
        "one message per provider in total\n{failure_logs}"
    );
    assert!(
        messages
            .iter()
            .all(|message| message.message_id().is_some()),
        "every message has a Message-ID"
    );
    assert_eq!(
        distinct_message_ids(&messages).len(),
        100,
        "100 distinct Message-IDs\n{failure_logs}"
    );
    assert_eq!(
        providers_where(&messages, &addresses, |count| count == 1),
        Vec::<(String, usize)>::new(),
        "providers without exactly one digest\n{failure_logs}"
    );
    assert_eq!(
        all_reminders(&pool).await,
        100,
        "one digest recorded per provider"
    );
    assert_eq!(
        reminders_with_status(&pool, "sent").await,
        100,
        "every digest marked sent"
    );

    for daemon in &daemons {
        daemon.terminate();
    }
    for index in 0..daemons.len() {
        let exit = daemons[index]
            .wait_for_exit(SHUTDOWN_GRACE + EXIT_MARGIN)
            .await;
        let Some((status, _)) = exit else {
            panic!(
                "{} still running {} s after SIGTERM\n{}",
                daemons[index].name,
                (SHUTDOWN_GRACE + EXIT_MARGIN).as_secs(),
                logs(&daemons)
            );
        };
        assert_eq!(
            status.code(),
            Some(0),
            "{} exits with 0 after SIGTERM\n{}",
            daemons[index].name,
            logs(&daemons)
        );
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn sigkill_then_restart_delivers_rest(pool: PgPool) {
    let server = SmtpServer::start();
    // About 10 messages a second, so the kill lands in the middle of the pass.
    server.set_delay(Duration::from_millis(100));
    let addresses = seed_overdue(&pool, 100, 1).await;
    let dir = tempfile::tempdir().expect("create a temporary directory");
    // The restarted process may take over the killed one's digests once
    // this short lease has expired. The configuration requires the lease to
    // exceed smtp.send_timeout, which stays far above 100 ms per message.
    // One sender means at most one message is mid-conversation at the kill,
    // so at most one digest is sent twice.
    let config = write_config(
        dir.path(),
        server.port,
        r#"send_timeout = "3s""#,
        "lease = \"4s\"\ndelivery_concurrency = 1",
    );
    let database_url = helpers::database_url(&pool).await;

    let mut first = vec![Daemon::start("first", dir.path(), &config, &database_url)];
    wait_until("20 messages", &mut first, &server, async || {
        server.messages().len() >= 20
    })
    .await;
    first[0].kill();
    let sent_before_kill = server.messages().len();
    let first_logs = logs(&first);
    assert!(
        sent_before_kill < 100,
        "the kill came before the pass finished, but {sent_before_kill} messages were accepted\n{first_logs}"
    );
    assert!(
        reminders_with_status(&pool, "pending").await > 0,
        "the kill left pending digests behind\n{first_logs}"
    );

    let mut second = vec![Daemon::start("second", dir.path(), &config, &database_url)];
    wait_until(
        "100 distinct Message-IDs",
        &mut second,
        &server,
        async || distinct_message_ids(&server.messages()).len() >= 100,
    )
    .await;
    wait_for_more_ticks(&pool, &mut second, &server).await;

    let messages = server.messages();
    let failure_logs = format!("{first_logs}\n{}", logs(&second));
    assert!(
        messages.len() <= 101,
        "at most the message in flight at the kill is sent twice, but {} messages were accepted\n{failure_logs}",
        messages.len()
    );
    assert_eq!(
        distinct_message_ids(&messages).len(),
        100,
        "100 distinct Message-IDs\n{failure_logs}"
    );
    assert_eq!(
        providers_where(&messages, &addresses, |count| count >= 1),
        Vec::<(String, usize)>::new(),
        "providers without a digest\n{failure_logs}"
    );
    let sent_twice = providers_where(&messages, &addresses, |count| count <= 1);
    assert!(
        sent_twice.len() <= 1,
        "at most one provider gets a second copy: {sent_twice:?}\n{failure_logs}"
    );
    assert_eq!(
        reminders_with_status(&pool, "sent").await,
        100,
        "every digest marked sent after the restart"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn sigterm_during_delivery_loses_nothing(pool: PgPool) {
    let server = SmtpServer::start();
    server.set_delay(Duration::from_millis(100));
    let addresses = seed_overdue(&pool, 100, 1).await;
    let dir = tempfile::tempdir().expect("create a temporary directory");
    // The default lease of 300 s applies, so a digest left leased at the stop
    // would stay out of reach of the restarted process for the whole test.
    let config = write_config(dir.path(), server.port, "", "");
    let database_url = helpers::database_url(&pool).await;

    let mut first = vec![Daemon::start("first", dir.path(), &config, &database_url)];
    wait_until("20 messages", &mut first, &server, async || {
        server.messages().len() >= 20
    })
    .await;
    first[0].terminate();
    // Wait past the allowed time, so a slow exit is measured, not cut off.
    let exit = first[0].wait_for_exit(WAIT_LIMIT).await;
    let first_logs = logs(&first);
    let Some((status, stop_time)) = exit else {
        panic!(
            "still running {} s after SIGTERM\n{first_logs}",
            WAIT_LIMIT.as_secs()
        );
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM\n{first_logs}"
    );
    assert!(
        stop_time <= SHUTDOWN_GRACE + EXIT_MARGIN,
        "exited {stop_time:?} after SIGTERM, more than the grace period plus {EXIT_MARGIN:?}\n{first_logs}"
    );
    let sent_before_stop = server.messages().len();
    assert!(
        sent_before_stop < 100,
        "SIGTERM came before the pass finished, but {sent_before_stop} messages were accepted\n{first_logs}"
    );
    assert_eq!(
        leased_pending_reminders(&pool).await,
        0,
        "no pending digest keeps its lease after the stop\n{first_logs}"
    );
    assert!(
        reminders_with_status(&pool, "pending").await > 0,
        "the stop left pending digests for the next process\n{first_logs}"
    );

    let mut second = vec![Daemon::start("second", dir.path(), &config, &database_url)];
    wait_until("100 messages", &mut second, &server, async || {
        server.messages().len() >= 100
    })
    .await;
    wait_for_more_ticks(&pool, &mut second, &server).await;

    let messages = server.messages();
    let failure_logs = format!("{first_logs}\n{}", logs(&second));
    assert_eq!(
        messages.len(),
        100,
        "no message sent twice across the stop\n{failure_logs}"
    );
    assert_eq!(
        distinct_message_ids(&messages).len(),
        100,
        "100 distinct Message-IDs\n{failure_logs}"
    );
    assert_eq!(
        providers_where(&messages, &addresses, |count| count == 1),
        Vec::<(String, usize)>::new(),
        "providers without exactly one digest\n{failure_logs}"
    );
    assert_eq!(
        server.attempts(),
        100,
        "the server saw no second attempt at any message\n{failure_logs}"
    );
    assert_eq!(
        reminders_with_status(&pool, "sent").await,
        100,
        "every digest marked sent after the restart"
    );
}
