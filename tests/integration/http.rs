//! The HTTP server: health checks against a database that responds, is
//! unreachable, stalls or lacks a migration; metrics that move with the
//! events of real job runs; and the binary serving both beside the
//! scheduler.
//!
//! In-process tests serve `http::router` on an ephemeral loopback port with
//! the metrics of a worker they drive at injected instants, and read them
//! back over HTTP as Prometheus would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use session_steward::config::Settings;
use session_steward::http::{self, AppState};
use session_steward::metrics::Metrics;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::helpers::{
    self, friday_morning_los_angeles, member, provider, session, set_status, settings_for,
};
use crate::smtp::{self, SmtpServer};

const BINARY: &str = env!("CARGO_BIN_EXE_session-steward");
const LOS_ANGELES: &str = "America/Los_Angeles";
/// Upper bound for each wait on a child process or a server.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One HTTP response.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("build the HTTP client")
}

async fn get(url: &str) -> Reply {
    let response = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url} failed: {error}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("read the response body");
    Reply {
        status,
        content_type,
        body,
    }
}

/// `http::router` served on an ephemeral loopback port until dropped.
struct TestServer {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(pool: PgPool, metrics: Metrics) -> Self {
        let listener = http::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind an ephemeral loopback port");
        let address = listener
            .local_addr()
            .expect("bound listener has an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let router = http::router(AppState { pool, metrics });
        let task = tokio::spawn(http::serve(listener, router, async {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{address}"),
            stop: Some(stop),
            task,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        get(&format!("{}{path}", self.base)).await
    }

    /// Returns the text of `/metrics`, which must return 200.
    async fn scrape(&self) -> String {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200, "/metrics answered: {}", reply.body);
        reply.body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns the value of `series`, a metric name with its labels exactly as
/// encoded, such as `session_steward_open_flags{kind="stale_hold"}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            if key == series {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// Returns the value of `series`, which must be present.
fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Returns a loopback port on which nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener
        .local_addr()
        .expect("bound listener has an address")
        .port()
}

/// Returns the connection options of `pool` pointed at 127.0.0.1:`port`.
fn options_at_port(pool: &PgPool, port: u16) -> PgConnectOptions {
    (*pool.connect_options())
        .clone()
        .host("127.0.0.1")
        .port(port)
}

/// Returns a probe pool, as `run` builds one, for a server at 127.0.0.1:`port`.
fn probe_pool_at_port(pool: &PgPool, port: u16) -> PgPool {
    let lazy = PgPoolOptions::new().connect_lazy_with(options_at_port(pool, port));
    session_steward::db::probe_pool(&lazy)
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn endpoints_answer(pool: PgPool) {
    let mut server = TestServer::start(pool.clone(), Metrics::new()).await;

    let health = server.get("/healthz").await;
    assert_eq!(health.status, 200, "healthz: {}", health.body);
    assert_eq!(health.body, "ok\n");

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200, "readyz: {}", ready.body);
    assert_eq!(ready.body, "ready\n");

    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 200, "metrics: {}", metrics.body);
    assert_eq!(
        metrics.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        metrics
            .body
            .contains("# TYPE session_steward_job_runs_total counter\n"),
        "{}",
        metrics.body
    );
    assert_eq!(
        value(
            &metrics.body,
            r#"session_steward_job_runs_total{job="reminders",outcome="succeeded"}"#
        ),
        0.0,
        "job counters start at zero"
    );

    let missing = server.get("/nothing-here").await;
    assert_eq!(missing.status, 404, "unknown path");
    let post = client()
        .post(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("POST /healthz");
    assert_eq!(post.status().as_u16(), 405, "only GET is routed");

    server.stop.take().expect("not stopped yet").send(()).ok();
    let result = tokio::time::timeout(WAIT_LIMIT, &mut server.task)
        .await
        .expect("server stops after the shutdown signal")
        .expect("server task did not panic");
    assert!(result.is_ok(), "server stopped cleanly: {result:?}");
    assert!(
        TcpStream::connect(server.base.trim_start_matches("http://"))
            .await
            .is_err(),
        "the port is closed after shutdown"
    );
}

/// Returns the reason `/readyz` gives when the database does not respond.
fn no_answer() -> String {
    format!(
        "database did not answer within {} ms\n",
        http::READY_TIMEOUT.as_millis()
    )
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn readyz_503_when_database_unreachable(pool: PgPool) {
    let cases = [
        ("closed port", closed_port()),
        // Accepts connections and never responds, like a host that hangs.
        ("silent server", smtp::start_silent_listener()),
    ];
    for (case, port) in cases {
        let server = TestServer::start(probe_pool_at_port(&pool, port), Metrics::new()).await;

        let ready = server.get("/readyz").await;
        assert_eq!(ready.status, 503, "{case}: {}", ready.body);
        assert_eq!(ready.body, no_answer(), "{case}");

        let health = server.get("/healthz").await;
        assert_eq!(health.status, 200, "{case}: the process is still up");
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn readyz_503_when_database_rejects(pool: PgPool) {
    let options = options_at_port(&pool, pool.connect_options().get_port())
        .database("session_steward_no_such_database");
    let lazy = PgPoolOptions::new().connect_lazy_with(options);
    let server = TestServer::start(session_steward::db::probe_pool(&lazy), Metrics::new()).await;

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 503, "readyz: {}", ready.body);
    assert!(
        ready.body.starts_with("database unavailable: "),
        "reason: {}",
        ready.body
    );
    assert!(
        ready.body.contains("session_steward_no_such_database"),
        "the server's error is passed on: {}",
        ready.body
    );
    assert_eq!(ready.body.lines().count(), 1, "one line: {}", ready.body);
}

/// A TCP proxy on loopback to the test database, which a test can cut and
/// restore on the same port.
struct DatabaseProxy {
    port: u16,
    upstream: (String, u16),
    task: JoinHandle<()>,
}

impl DatabaseProxy {
    async fn start(pool: &PgPool) -> Self {
        let options = pool.connect_options();
        let upstream = (options.get_host().to_owned(), options.get_port());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let task = tokio::spawn(forward(listener, upstream.clone()));
        Self {
            port,
            upstream,
            task,
        }
    }

    /// Closes the listener and every proxied connection.
    async fn cut(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Listens on the same port again.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the proxy's port again");
        self.task = tokio::spawn(forward(listener, self.upstream.clone()));
    }
}

impl Drop for DatabaseProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes between each accepted connection and `upstream`. Dropping
/// the future drops the `JoinSet`, which aborts every connection's task.
async fn forward(listener: TcpListener, upstream: (String, u16)) {
    let mut connections = JoinSet::new();
    while let Ok((mut client, _)) = listener.accept().await {
        let upstream = upstream.clone();
        connections.spawn(async move {
            if let Ok(mut server) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn readyz_follows_cut_database(pool: PgPool) {
    let mut proxy = DatabaseProxy::start(&pool).await;
    let server = TestServer::start(probe_pool_at_port(&pool, proxy.port), Metrics::new()).await;

    let before = server.get("/readyz").await;
    assert_eq!(before.status, 200, "through the proxy: {}", before.body);

    proxy.cut().await;
    let during = server.get("/readyz").await;
    assert_eq!(during.status, 503, "while cut: {}", during.body);
    assert_eq!(during.body, no_answer());

    proxy.restore().await;
    let after = server.get("/readyz").await;
    assert_eq!(after.status, 200, "after restore: {}", after.body);
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn readyz_503_while_migration_missing(pool: PgPool) {
    let server = TestServer::start(pool.clone(), Metrics::new()).await;
    assert_eq!(server.get("/readyz").await.status, 200, "all applied");

    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&pool)
    .await
    .expect("forget the latest migration");

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 503, "readyz: {}", ready.body);
    assert_eq!(
        ready.body,
        "database is missing 1 migration(s); run `session-steward migrate`\n"
    );
}

#[sqlx::test(migrations = false)]
async fn readyz_503_before_any_migration(pool: PgPool) {
    let server = TestServer::start(pool, Metrics::new()).await;
    let expected = session_steward::db::MIGRATOR.iter().count();

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 503, "readyz: {}", ready.body);
    assert_eq!(
        ready.body,
        format!("database is missing {expected} migration(s); run `session-steward migrate`\n")
    );
}

/// Inserts a provider in Los Angeles, named after `index`, with one member
/// and one session that ended six days before `now`.
async fn overdue_provider(pool: &PgPool, index: usize, now: DateTime<Utc>) -> i64 {
    let address = format!("provider{index}@example.org");
    let provider_id = provider(
        pool,
        &format!("Provider {index}"),
        Some(&address),
        LOS_ANGELES,
    )
    .await;
    let member_ids = member(pool, &format!("Member {index}"), 20, now).await;
    session(
        pool,
        provider_id,
        member_ids,
        now - chrono::Duration::days(6),
    )
    .await;
    provider_id
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn email_counters_follow_smtp_replies(pool: PgPool) {
    let smtp_server = SmtpServer::start();
    smtp_server.script_replies(&[250, 451, 550]);
    let now = friday_morning_los_angeles();
    for index in 0..3 {
        overdue_provider(&pool, index, now).await;
    }
    let mut settings = settings_for(&smtp_server);
    // One sender, so the three digests meet the replies in one conversation.
    settings.reminders.delivery_concurrency = 1;
    // The digest that gets 451 has one more attempt, then fails.
    settings.reminders.max_attempts = 2;
    let worker = helpers::worker(&pool, &settings);
    let server = TestServer::start(pool.clone(), worker.metrics().clone()).await;

    let before = server.scrape().await;
    assert_eq!(value(&before, "session_steward_emails_sent_total"), 0.0);

    let run = worker.run_reminders(now).await.expect("first tick");
    assert_eq!(run.delivery.digests_sent, 1, "250 accepted: {run:?}");
    let first = server.scrape().await;
    assert_eq!(value(&first, "session_steward_emails_sent_total"), 1.0);
    assert_eq!(value(&first, "session_steward_emails_retried_total"), 1.0);
    assert_eq!(value(&first, "session_steward_emails_failed_total"), 1.0);
    assert_eq!(
        value(&first, "session_steward_outbox_backlog"),
        1.0,
        "the digest that got 451 waits for its retry"
    );

    smtp_server.script_replies(&[451]);
    worker
        .run_reminders(now + chrono::Duration::minutes(10))
        .await
        .expect("second tick");
    let second = server.scrape().await;
    assert_eq!(value(&second, "session_steward_emails_sent_total"), 1.0);
    assert_eq!(
        value(&second, "session_steward_emails_retried_total"),
        1.0,
        "no attempts left, so no retry"
    );
    assert_eq!(
        value(&second, "session_steward_emails_failed_total"),
        2.0,
        "attempts exhausted count as failed"
    );
    assert_eq!(value(&second, "session_steward_outbox_backlog"), 0.0);
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn job_metrics_count_runs(pool: PgPool) {
    let smtp_server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    overdue_provider(&pool, 0, now).await;
    let worker = helpers::worker(&pool, &settings_for(&smtp_server));
    let server = TestServer::start(pool.clone(), worker.metrics().clone()).await;
    let last_success = r#"session_steward_job_last_success_timestamp_seconds{job="reminders"}"#;
    assert_eq!(
        sample(&server.scrape().await, last_success),
        None,
        "no success before the first run"
    );

    let started = Utc::now().timestamp();
    worker.run_reminders(now).await.expect("reminder tick");
    worker.run_reminders(now).await.expect("idle reminder tick");
    worker.run_flags(now).await.expect("flag tick");
    let finished = Utc::now().timestamp();

    let text = server.scrape().await;
    let runs = |job: &str, outcome: &str| {
        value(
            &text,
            &format!(r#"session_steward_job_runs_total{{job="{job}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(runs("reminders", "succeeded"), 2.0);
    assert_eq!(runs("flags", "succeeded"), 1.0);
    assert_eq!(runs("reminders", "failed"), 0.0);
    let durations = value(
        &text,
        r#"session_steward_job_run_duration_seconds_count{job="reminders",outcome="succeeded"}"#,
    );
    assert_eq!(durations, 2.0, "one duration per run");
    let slowest_bucket = value(
        &text,
        r#"session_steward_job_run_duration_seconds_bucket{job="reminders",outcome="succeeded",le="+Inf"}"#,
    );
    assert_eq!(slowest_bucket, 2.0, "every run falls in the +Inf bucket");
    let total_seconds = value(
        &text,
        r#"session_steward_job_run_duration_seconds_sum{job="reminders",outcome="succeeded"}"#,
    );
    assert!(total_seconds > 0.0, "durations add up: {total_seconds}");

    for job in ["reminders", "flags"] {
        let series =
            format!(r#"session_steward_job_last_success_timestamp_seconds{{job="{job}"}}"#);
        let at = value(&text, &series) as i64;
        assert!(
            (started..=finished).contains(&at),
            "{job} last success {at} within the test's {started}..={finished}"
        );
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn failed_run_counted_without_success(pool: PgPool) {
    let smtp_server = SmtpServer::start();
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options_at_port(&pool, closed_port()));
    let worker = helpers::worker(&unreachable, &settings_for(&smtp_server));
    let server = TestServer::start(pool.clone(), worker.metrics().clone()).await;

    let error = worker
        .run_reminders(friday_morning_los_angeles())
        .await
        .expect_err("no database, so the tick fails");
    assert!(
        format!("{error:#}").contains("failed to record the start"),
        "{error:#}"
    );

    let text = server.scrape().await;
    assert_eq!(
        value(
            &text,
            r#"session_steward_job_runs_total{job="reminders",outcome="failed"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"session_steward_job_runs_total{job="reminders",outcome="succeeded"}"#
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            r#"session_steward_job_run_duration_seconds_count{job="reminders",outcome="failed"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"session_steward_job_last_success_timestamp_seconds{job="reminders"}"#
        ),
        None,
        "a failed run records no success"
    );
}

/// Returns the open-flag gauge of each kind, in `FlagKind::ALL` order.
fn open_flags(text: &str) -> Vec<(&'static str, f64)> {
    session_steward::flags::FlagKind::ALL
        .iter()
        .map(|kind| {
            let series = format!(r#"session_steward_open_flags{{kind="{}"}}"#, kind.as_str());
            (kind.as_str(), value(text, &series))
        })
        .collect()
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn open_flag_gauge_follows_flag_job(pool: PgPool) {
    let smtp_server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let days = chrono::Duration::days;
    let reachable = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let unreachable = provider(&pool, "Grace Hopper", None, LOS_ANGELES).await;

    let stale_member = member(&pool, "Jane Doe", 20, now).await;
    let stale = session(&pool, reachable, stale_member, now - days(15)).await;
    let blocked_member = member(&pool, "John Roe", 1, now).await;
    session(&pool, reachable, blocked_member, now - days(6)).await;
    let ending_member = member(&pool, "Mary Major", 20, now).await;
    sqlx::query("UPDATE allotments SET period_end = $2 WHERE id = $1")
        .bind(ending_member.1)
        .bind(now + days(7))
        .execute(&pool)
        .await
        .expect("end the benefit period soon");
    session(&pool, reachable, ending_member, now - days(6)).await;
    let ineligible_member = member(&pool, "Richard Miles", 20, now).await;
    sqlx::query("UPDATE members SET eligible = false WHERE id = $1")
        .bind(ineligible_member.0)
        .execute(&pool)
        .await
        .expect("make the member ineligible");
    session(&pool, reachable, ineligible_member, now + days(2)).await;
    let unreachable_member = member(&pool, "Joe Bloggs", 20, now).await;
    session(&pool, unreachable, unreachable_member, now - days(6)).await;

    let worker = helpers::worker(&pool, &settings_for(&smtp_server));
    let server = TestServer::start(pool.clone(), worker.metrics().clone()).await;

    worker.run_flags(now).await.expect("flag tick");
    let opened = open_flags(&server.scrape().await);
    assert_eq!(
        opened,
        [
            ("member_blocked", 1.0),
            ("period_ending", 1.0),
            ("member_ineligible", 1.0),
            ("provider_unreachable", 1.0),
            ("stale_hold", 1.0),
        ]
    );

    set_status(&pool, stale, "completed").await;
    worker
        .run_flags(now + chrono::Duration::hours(1))
        .await
        .expect("second flag tick");
    let after = open_flags(&server.scrape().await);
    assert_eq!(
        after,
        [
            ("member_blocked", 1.0),
            ("period_ending", 1.0),
            ("member_ineligible", 1.0),
            ("provider_unreachable", 1.0),
            ("stale_hold", 0.0),
        ],
        "the stale hold was reported, so its flag resolved"
    );
}

/// Returns the overdue gauge of stages 1 to 3 and `escalated`.
fn overdue_by_stage(text: &str) -> Vec<f64> {
    ["1", "2", "3", "escalated"]
        .iter()
        .map(|stage| {
            value(
                text,
                &format!(r#"session_steward_overdue_sessions{{stage="{stage}"}}"#),
            )
        })
        .collect()
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn overdue_gauge_buckets_by_stage(pool: PgPool) {
    let smtp_server = SmtpServer::start();
    let now = friday_morning_los_angeles();
    let provider_id = provider(&pool, "Ada Lovelace", Some("ada@example.org"), LOS_ANGELES).await;
    let member_ids = member(&pool, "Jane Doe", 20, now).await;
    let day = chrono::Duration::days(1);
    let second = chrono::Duration::seconds(1);
    // Ages at `now`. A session exactly at a stage's age has not passed it.
    // Each bucket gets a different count, so a swapped label shows.
    let ages = [
        -day,               // not ended yet
        day * 5,            // not overdue
        day * 5 + second,   // stage 1
        day * 8,            // stage 1
        day * 8 + second,   // stage 2
        day * 10,           // stage 2
        day * 12,           // stage 2
        day * 12 + second,  // stage 3
        day * 13,           // stage 3
        day * 13 + day / 2, // stage 3
        day * 14,           // stage 3
        day * 14 + second,  // escalated
    ];
    for age in ages {
        session(&pool, provider_id, member_ids, now - age).await;
    }
    let worker = helpers::worker(&pool, &settings_for(&smtp_server));
    let server = TestServer::start(pool.clone(), worker.metrics().clone()).await;

    worker.run_flags(now).await.expect("flag tick");
    let text = server.scrape().await;
    assert_eq!(overdue_by_stage(&text), [2.0, 3.0, 4.0, 1.0]);
    assert_eq!(
        sample(&text, r#"session_steward_overdue_sessions{stage="0"}"#),
        None,
        "no stage 0 when the first stage is the overdue age"
    );

    // A day later every session is a day older: the one at 5 days enters
    // stage 1, and the ones at 13.5 and 14 days are escalated.
    worker
        .run_flags(now + day)
        .await
        .expect("flag tick a day later");
    let later = server.scrape().await;
    assert_eq!(overdue_by_stage(&later), [2.0, 3.0, 3.0, 3.0]);
}

/// Binds an ephemeral loopback port and returns the listener, which keeps
/// the port taken until dropped, with its address.
fn take_port() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let address = listener.local_addr().expect("bound address").to_string();
    (listener, address)
}

/// A `session-steward run` child with its configuration and standard
/// error in a temporary folder. Dropping it kills the process if it is
/// still running.
struct RunProcess {
    child: std::process::Child,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl RunProcess {
    /// Starts `run` on the database behind `pool` with the file transport.
    /// `overrides` are `SESSION_STEWARD_*` environment variables, set as an
    /// operator would override configuration keys.
    async fn start(pool: &PgPool, overrides: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let database_url = helpers::database_url(pool).await;

        let config = dir.path().join("config.toml");
        let outbox = dir.path().join("outbox");
        std::fs::write(
            &config,
            format!(
                "[email]\ntransport = \"file\"\n\n[file]\ndirectory = \"{}\"\n\n[daemon]\nshutdown_grace = \"5s\"\n",
                outbox.display()
            ),
        )
        .expect("write the configuration");

        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create the stderr file");

        // Only the file, DATABASE_URL and `overrides` configure the child.
        let mut command = Command::new(BINARY);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SESSION_STEWARD_") {
                command.env_remove(key);
            }
        }
        command.envs(overrides.iter().copied());
        let child = command
            .env_remove("RUST_LOG")
            .env("DATABASE_URL", &database_url)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {BINARY} run: {error}"));

        Self {
            child,
            stderr_path,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the "HTTP server listening" log line and returns the
    /// address it names.
    async fn listening_address(&mut self) -> String {
        let started = Instant::now();
        loop {
            let log = self.log();
            let address = log
                .lines()
                .filter(|line| line.contains("HTTP server listening"))
                .find_map(|line| line.split("address=").nth(1))
                .map(|rest| {
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                });
            if let Some(address) = address {
                return address;
            }
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!("run exited with {status} before listening:\n{log}");
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "run did not log its HTTP address:\n{log}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends SIGTERM, the signal a service manager stops the daemon with.
    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid}");
    }

    /// Waits for the process to exit. `goal` names the wait in a failure message.
    async fn wait_for_exit(&mut self, goal: &str) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "timed out waiting for {goal}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn run_serves_health_and_metrics(pool: PgPool) {
    let mut run =
        RunProcess::start(&pool, &[("SESSION_STEWARD_HTTP__ADDRESS", "127.0.0.1:0")]).await;
    let address = run.listening_address().await;
    let base = format!("http://{address}");

    let health = get(&format!("{base}/healthz")).await;
    assert_eq!(health.status, 200, "healthz: {}", health.body);
    let ready = get(&format!("{base}/readyz")).await;
    assert_eq!(ready.status, 200, "readyz: {}", ready.body);

    // Each job runs once at start to catch up.
    let started = Instant::now();
    loop {
        let text = get(&format!("{base}/metrics")).await.body;
        let succeeded = |job: &str| {
            sample(
                &text,
                &format!(r#"session_steward_job_runs_total{{job="{job}",outcome="succeeded"}}"#),
            )
            .unwrap_or(0.0)
        };
        if succeeded("reminders") >= 1.0 && succeeded("flags") >= 1.0 {
            assert!(
                sample(&text, r#"session_steward_open_flags{kind="stale_hold"}"#).is_some(),
                "gauges refreshed after the ticks:\n{text}"
            );
            break;
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "catch-up runs never counted:\n{text}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    run.terminate();
    let status = run.wait_for_exit("exit on SIGTERM").await;
    let log = run.log();
    assert!(status.success(), "run exited with {status}:\n{log}");
    assert!(
        log.contains("HTTP server stopped"),
        "the server stopped with the scheduler:\n{log}"
    );
    assert!(
        TcpStream::connect(&address).await.is_err(),
        "nothing listens on {address} after exit"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn run_names_taken_address(pool: PgPool) {
    let (_taken, address) = take_port();
    let mut run = RunProcess::start(&pool, &[("SESSION_STEWARD_HTTP__ADDRESS", &address)]).await;

    let status = run.wait_for_exit("exit on a taken port").await;
    let log = run.log();
    assert_eq!(status.code(), Some(1), "exit code:\n{log}");
    let error_lines: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "one error line:\n{log}");
    assert!(
        error_lines[0].contains(&format!("failed to bind the HTTP server to {address}")),
        "the error names the address: {}",
        error_lines[0]
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs")
        .fetch_one(&pool)
        .await
        .expect("count job runs");
    assert_eq!(runs, 0, "no tick runs when the server cannot start");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn run_without_http_when_disabled(pool: PgPool) {
    // Binding this taken port would fail, so a clean run shows nothing was bound.
    let (_taken, address) = take_port();
    let mut run = RunProcess::start(
        &pool,
        &[
            ("SESSION_STEWARD_HTTP__ENABLED", "false"),
            ("SESSION_STEWARD_HTTP__ADDRESS", &address),
        ],
    )
    .await;

    let started = Instant::now();
    while !run.log().contains("scheduler started") {
        if let Some(status) = run.child.try_wait().expect("poll the child") {
            panic!("run exited with {status}:\n{}", run.log());
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "the scheduler never started:\n{}",
            run.log()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let log = run.log();
    assert!(log.contains("HTTP server disabled"), "{log}");
    assert!(!log.contains("HTTP server listening"), "{log}");

    run.terminate();
    let status = run.wait_for_exit("exit on SIGTERM").await;
    assert!(status.success(), "run exited with {status}:\n{}", run.log());
}

#[test]
fn bad_http_address_names_key_and_value() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[http]\naddress = \"localhost:8080\"\n").expect("write config");
    let from_file = Command::new(BINARY)
        .env_remove("SESSION_STEWARD_HTTP__ADDRESS")
        .arg("--config")
        .arg(&config)
        .arg("flags")
        .output()
        .expect("run the binary");
    let from_env = Command::new(BINARY)
        .env("SESSION_STEWARD_HTTP__ADDRESS", "127.0.0.1:99999")
        .arg("flags")
        .output()
        .expect("run the binary");

    for (output, value) in [(from_file, "localhost:8080"), (from_env, "127.0.0.1:99999")] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{value} accepted: {stderr}");
        assert!(
            stderr.to_lowercase().contains("http.address"),
            "error names the key: {stderr}"
        );
        assert!(stderr.contains(value), "error names {value}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn http_settings_default_to_loopback() {
    let settings = Settings::default();
    assert!(settings.http.enabled);
    assert_eq!(settings.http.address.to_string(), "127.0.0.1:8080");
}
