//! Configuration: a TOML file overlaid with `SESSION_STEWARD_<SECTION>__<KEY>`
//! environment variables, checked once at start-up.
//!
//! Every policy number has a default here, so an empty file is a valid
//! configuration that applies the rules in the README.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::bail;
use chrono::{NaiveTime, Weekday};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use lettre::message::Mailbox;
use serde::{Deserialize, Deserializer};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SESSION_STEWARD_";

/// The whole configuration, one section per concern.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub reminders: ReminderSettings,
    pub flags: FlagSettings,
    pub send_window: SendWindowSettings,
    pub schedule: ScheduleSettings,
    pub support_digest: SupportDigestSettings,
    pub email: EmailSettings,
    pub smtp: Option<SmtpSettings>,
    pub file: FileSettings,
    pub log: LogSettings,
    pub daemon: DaemonSettings,
    pub http: HttpSettings,
    pub support: SupportSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL. `DATABASE_URL` or `--database-url` take precedence.
    pub url: Option<Secret>,
    pub max_connections: u32,
    pub acquire_timeout: Span,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 5,
            acquire_timeout: Span::seconds(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReminderSettings {
    /// A session is overdue once it is still `scheduled` more than this
    /// long after its scheduled end.
    pub reminder_after: Span,
    /// Ages after the session end at which a new digest is due. Each must
    /// be at least `reminder_after` and less than `flags.stale_after`.
    pub stages: Vec<Span>,
    /// Delivery attempts before a digest is marked failed.
    pub max_attempts: u32,
    /// Wait before the first retry; it doubles with each further attempt.
    pub retry_base_delay: Span,
    /// Upper bound for the wait between two attempts.
    pub retry_max_delay: Span,
    /// How long a claimed digest stays reserved for one sender.
    pub lease: Span,
    /// Digests claimed from the outbox per query, shared among the senders.
    pub delivery_batch_size: u32,
    /// Senders delivering side by side, each over its own SMTP connection.
    pub delivery_concurrency: u32,
}

impl Default for ReminderSettings {
    fn default() -> Self {
        Self {
            reminder_after: Span::days(5),
            stages: vec![Span::days(5), Span::days(8), Span::days(12)],
            max_attempts: 10,
            retry_base_delay: Span::seconds(60),
            retry_max_delay: Span::seconds(6 * 3600),
            lease: Span::seconds(300),
            delivery_batch_size: 100,
            delivery_concurrency: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlagSettings {
    /// A session still `scheduled` more than this long after its end is
    /// escalated to support and leaves provider digests.
    pub stale_after: Span,
    /// An overdue hold is flagged when its benefit period ends within this.
    pub period_ending_within: Span,
}

impl Default for FlagSettings {
    fn default() -> Self {
        Self {
            stale_after: Span::days(14),
            period_ending_within: Span::days(14),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendWindowSettings {
    /// Local time of day, in the provider's zone, when sending may start.
    pub start: TimeOfDay,
    /// Local time of day when sending stops (exclusive).
    pub end: TimeOfDay,
    /// Local weekdays on which digests are sent.
    pub business_days: Vec<Day>,
}

impl Default for SendWindowSettings {
    fn default() -> Self {
        let weekdays = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ];
        Self {
            start: TimeOfDay(NaiveTime::from_hms_opt(9, 0, 0).expect("09:00 is a valid time")),
            end: TimeOfDay(NaiveTime::from_hms_opt(17, 0, 0).expect("17:00 is a valid time")),
            business_days: weekdays.into_iter().map(Day).collect(),
        }
    }
}

/// Cron expressions, evaluated in UTC, with a leading seconds field.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSettings {
    pub reminders: String,
    pub flags: String,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            reminders: "0 */15 * * * *".to_owned(),
            flags: "0 5 * * * *".to_owned(),
        }
    }
}

/// The digest email of open flags sent to support.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupportDigestSettings {
    /// Cron expression in UTC, seconds first; each occurrence is one digest.
    pub schedule: String,
    /// Mailboxes that receive the digest. Empty turns the job off.
    pub recipients: MailboxList,
    /// Link to support's flag page placed in every digest.
    pub page_url: String,
}

impl Default for SupportDigestSettings {
    fn default() -> Self {
        Self {
            schedule: "0 0 8 * * Mon-Fri".to_owned(),
            recipients: MailboxList::default(),
            page_url: "http://127.0.0.1:8080/support/flags".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Smtp,
    File,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailSettings {
    /// `smtp` or `file`. When unset, `run` uses SMTP and `demo` uses the
    /// file transport unless an `[smtp]` section is present.
    pub transport: Option<TransportKind>,
    pub from: MailboxSetting,
    pub support_mailbox: MailboxSetting,
    /// Link to the provider dashboard placed in every digest.
    pub dashboard_url: String,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            transport: None,
            from: MailboxSetting::parse("session-steward <reminders@localhost>")
                .expect("the default From address is valid"),
            support_mailbox: MailboxSetting::parse("support@localhost")
                .expect("the default support mailbox is valid"),
            dashboard_url: "http://localhost:8080/dashboard".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<Secret>,
    pub password: Option<Secret>,
    /// Timeout for opening the TCP connection.
    pub timeout: Span,
    /// Upper bound for one whole message: connection, greeting, every
    /// command and the data. It also catches a server that stalls.
    pub send_timeout: Span,
    /// Open connections kept for reuse.
    pub pool_size: u32,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: 25,
            tls: TlsMode::None,
            username: None,
            password: None,
            timeout: Span::seconds(30),
            send_timeout: Span::seconds(120),
            pool_size: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSettings {
    /// Folder that receives one `.eml` file per message.
    pub directory: PathBuf,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("./outbox"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSettings {
    /// How long shutdown waits for running ticks and in-flight messages.
    pub shutdown_grace: Span,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: Span::seconds(30),
        }
    }
}

/// The HTTP server that `run` starts for health checks and metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Whether `run` starts the server.
    pub enabled: bool,
    /// Socket address to listen on. Port 0 picks a free port, which is logged.
    pub address: ListenAddress,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            address: ListenAddress(SocketAddr::from(([127, 0, 0, 1], 8080))),
        }
    }
}

/// Credentials of the support page. Without any, the page is disabled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupportSettings {
    /// Bearer token for scripts, sent as `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// User name for HTTP basic authentication; set together with `password`.
    pub username: Option<Secret>,
    pub password: Option<Secret>,
}

impl SupportSettings {
    /// The shortest token accepted, so that a token cannot be guessed.
    pub const MIN_TOKEN_CHARS: usize = 16;

    /// Returns true when a token or a user name and password are set.
    pub fn has_credential(&self) -> bool {
        self.token.is_some() || self.username.is_some()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(token) = &self.token {
            let length = token.expose().chars().count();
            if length < Self::MIN_TOKEN_CHARS {
                bail!(
                    "invalid configuration: support.token has {length} characters; use at least {}, such as the output of `openssl rand -hex 32`",
                    Self::MIN_TOKEN_CHARS
                );
            }
            if token
                .expose()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                bail!(
                    "invalid configuration: support.token contains whitespace or control characters; use letters, digits and punctuation"
                );
            }
        }
        if self.username.is_some() != self.password.is_some() {
            bail!(
                "invalid configuration: support.username and support.password must be set together"
            );
        }
        if let Some(username) = &self.username {
            let username = username.expose();
            if username.is_empty() || username.contains(':') || username.contains(char::is_control)
            {
                bail!(
                    "invalid configuration: support.username {username:?} must be non-empty, without \":\" or control characters"
                );
            }
        }
        if self
            .password
            .as_ref()
            .is_some_and(|password| password.expose().is_empty())
        {
            bail!("invalid configuration: support.password is empty");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter such as `info` or `session_steward=debug`.
    /// `RUST_LOG` takes precedence.
    pub filter: String,
    /// Layout of each log line on standard error.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info,tokio_cron_scheduler=warn,sqlx::postgres::notice=warn".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Layout of log lines: `text` for a terminal, `json` (one object per line)
/// for a log collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads the file at `path` (if any), applies environment overrides and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.is_file() {
                bail!(
                    "configuration file {} not found: check --config or SESSION_STEWARD_CONFIG",
                    path.display()
                );
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));

        let settings: Settings = figment.extract().map_err(|error| {
            // A TOML syntax error spans several lines; one line reads better in logs.
            let text = error.to_string();
            let one_line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect();
            anyhow::anyhow!("invalid configuration: {}", one_line.join(" "))
        })?;
        let mut settings = settings;
        settings.keep_raw_credentials();
        settings.validate()?;
        Ok(settings)
    }

    /// Takes the SMTP and support credentials from the environment exactly
    /// as written. The environment provider reads `007` as the number 7,
    /// which would change a password.
    fn keep_raw_credentials(&mut self) {
        for (key, is_password) in [("SMTP__USERNAME", false), ("SMTP__PASSWORD", true)] {
            let Ok(raw) = std::env::var(format!("{ENV_PREFIX}{key}")) else {
                continue;
            };
            let smtp = self.smtp.get_or_insert_with(SmtpSettings::default);
            if is_password {
                smtp.password = Some(Secret::new(raw));
            } else {
                smtp.username = Some(Secret::new(raw));
            }
        }
        let support = &mut self.support;
        for (key, field) in [
            ("SUPPORT__TOKEN", &mut support.token),
            ("SUPPORT__USERNAME", &mut support.username),
            ("SUPPORT__PASSWORD", &mut support.password),
        ] {
            if let Ok(raw) = std::env::var(format!("{ENV_PREFIX}{key}")) {
                *field = Some(Secret::new(raw));
            }
        }
    }

    /// Checks the rules that span several keys or need a parser.
    pub fn validate(&self) -> anyhow::Result<()> {
        let reminders = &self.reminders;
        let stale_after = self.flags.stale_after;

        if reminders.stages.is_empty() {
            bail!(
                "invalid configuration: reminders.stages is empty; list at least one age such as \"5d\""
            );
        }
        for pair in reminders.stages.windows(2) {
            if pair[0] >= pair[1] {
                bail!(
                    "invalid configuration: reminders.stages must increase, but \"{}\" is followed by \"{}\"",
                    pair[0],
                    pair[1]
                );
            }
        }
        for stage in &reminders.stages {
            if *stage < reminders.reminder_after || *stage >= stale_after {
                bail!(
                    "invalid configuration: reminders.stages entry \"{stage}\" must be at least reminders.reminder_after (\"{}\") and less than flags.stale_after (\"{stale_after}\")",
                    reminders.reminder_after
                );
            }
        }
        if reminders.retry_base_delay > reminders.retry_max_delay {
            bail!(
                "invalid configuration: reminders.retry_base_delay \"{}\" is longer than reminders.retry_max_delay \"{}\"",
                reminders.retry_base_delay,
                reminders.retry_max_delay
            );
        }
        let send_timeout = self.smtp.clone().unwrap_or_default().send_timeout;
        if reminders.lease <= send_timeout {
            bail!(
                "invalid configuration: reminders.lease \"{}\" must be longer than smtp.send_timeout \"{send_timeout}\", or a slow message could be sent twice",
                reminders.lease
            );
        }
        if self.database.max_connections == 0 {
            bail!("invalid configuration: database.max_connections is 0; set it to 1 or more");
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            bail!(
                "invalid configuration: log.filter \"{}\" ({error}); write a filter such as \"info\"",
                self.log.filter
            );
        }
        if reminders.max_attempts == 0 {
            bail!("invalid configuration: reminders.max_attempts is 0; set it to 1 or more");
        }
        if reminders.delivery_concurrency == 0 {
            bail!(
                "invalid configuration: reminders.delivery_concurrency is 0; set it to 1 or more"
            );
        }
        if reminders.delivery_batch_size == 0 {
            bail!("invalid configuration: reminders.delivery_batch_size is 0; set it to 1 or more");
        }

        if self.send_window.start >= self.send_window.end {
            bail!(
                "invalid configuration: send_window.start \"{}\" must be before send_window.end \"{}\"",
                self.send_window.start,
                self.send_window.end
            );
        }
        if self.send_window.business_days.is_empty() {
            bail!(
                "invalid configuration: send_window.business_days is empty; list days such as \"Mon\""
            );
        }

        self.support.validate()?;

        validate_cron("schedule.reminders", &self.schedule.reminders)?;
        validate_cron("schedule.flags", &self.schedule.flags)?;

        validate_cron("support_digest.schedule", &self.support_digest.schedule)?;

        validate_http_url("email.dashboard_url", &self.email.dashboard_url)?;
        validate_http_url("support_digest.page_url", &self.support_digest.page_url)?;

        if let Some(smtp) = &self.smtp {
            if smtp.host.trim().is_empty() {
                bail!(
                    "invalid configuration: smtp.host is empty; set it to the SMTP server's name"
                );
            }
            if smtp.username.is_some() != smtp.password.is_some() {
                bail!(
                    "invalid configuration: smtp.username and smtp.password must be set together"
                );
            }
            if smtp.pool_size == 0 {
                bail!("invalid configuration: smtp.pool_size is 0; set it to 1 or more");
            }
        }
        Ok(())
    }

    /// Returns the pool size the jobs need: the fixed minimum plus one
    /// connection per delivery sender.
    pub fn required_connections(&self) -> u32 {
        crate::db::MIN_CONNECTIONS + self.reminders.delivery_concurrency
    }

    /// Picks the transport for `run` and `run-once`: SMTP unless the file
    /// transport is chosen explicitly.
    pub fn daemon_transport(&self) -> TransportKind {
        self.email.transport.unwrap_or(TransportKind::Smtp)
    }

    /// Picks the transport for `demo`: the file transport unless SMTP is
    /// chosen or configured.
    pub fn demo_transport(&self) -> TransportKind {
        match (self.email.transport, &self.smtp) {
            (Some(kind), _) => kind,
            (None, Some(_)) => TransportKind::Smtp,
            (None, None) => TransportKind::File,
        }
    }
}

fn validate_cron(key: &str, expression: &str) -> anyhow::Result<()> {
    let usage = "use six fields with seconds first, such as \"0 */15 * * * *\"";
    // The scheduler's own error adds nothing a reader can act on.
    if tokio_cron_scheduler::Job::new_async(expression, |_, _| Box::pin(async {})).is_err() {
        bail!("invalid configuration: {key} \"{expression}\" is not a cron expression; {usage}");
    }
    let next = crate::daemon::parse_schedule(expression)
        .ok()
        .and_then(|cron| cron.find_next_occurrence(&chrono::Utc::now(), false).ok());
    if next.is_none() {
        bail!(
            "invalid configuration: {key} \"{expression}\" never matches a future instant; {usage}"
        );
    }
    Ok(())
}

fn validate_http_url(key: &str, url: &str) -> anyhow::Result<()> {
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .map(|rest| rest.split('/').next().unwrap_or(""));
    if host.is_none_or(str::is_empty) || url.contains(char::is_whitespace) {
        bail!("invalid configuration: {key} \"{url}\" is not an http or https URL with a host");
    }
    Ok(())
}

/// A positive length of time written as `5d`, `36h` or `90s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(std::time::Duration);

impl Span {
    pub const fn seconds(seconds: u64) -> Self {
        Self(std::time::Duration::from_secs(seconds))
    }

    pub const fn days(days: u64) -> Self {
        Self::seconds(days * 86_400)
    }

    pub fn to_std(self) -> std::time::Duration {
        self.0
    }

    pub fn to_chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).expect("a configured span fits in chrono::Duration")
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let duration = humantime::parse_duration(text.trim()).map_err(|error| {
            format!("invalid duration \"{text}\" ({error}); write a positive length such as \"5d\", \"36h\" or \"90s\"")
        })?;
        if duration.is_zero() {
            return Err(format!(
                "invalid duration \"{text}\": it must be longer than zero"
            ));
        }
        // Ten years keeps every span far inside chrono's range.
        if duration > std::time::Duration::from_secs(10 * 365 * 86_400) {
            return Err(format!(
                "invalid duration \"{text}\": it must be at most ten years"
            ));
        }
        Ok(Self(duration))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A socket address to listen on, written as `IP:PORT`, such as
/// `127.0.0.1:8080`, `0.0.0.0:8080` or `[::1]:8080`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddress(pub SocketAddr);

impl FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim().parse().map(ListenAddress).map_err(|_| {
            format!(
                "invalid socket address \"{text}\"; write IP:PORT such as \"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::1]:8080\""
            )
        })
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

impl<'de> Deserialize<'de> for ListenAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A local time of day written as `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(pub NaiveTime);

impl fmt::Display for TimeOfDay {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0.format("%H:%M"))
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim() == "24:00" {
            let last_instant =
                NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999).expect("a valid time");
            return Ok(TimeOfDay(last_instant));
        }
        NaiveTime::parse_from_str(text.trim(), "%H:%M")
            .map(TimeOfDay)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid time of day \"{text}\"; write 24-hour HH:MM such as \"09:00\", or \"24:00\" for the end of the day"
                ))
            })
    }
}

/// A weekday written as `Mon` or `Monday`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day(pub Weekday);

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.trim().parse::<Weekday>().map(Day).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid weekday \"{text}\"; write Mon, Tue, Wed, Thu, Fri, Sat or Sun"
            ))
        })
    }
}

/// An email address with an optional display name, such as
/// `Support <support@example.org>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSetting(pub Mailbox);

impl MailboxSetting {
    pub fn parse(text: &str) -> Result<Self, String> {
        text.trim()
            .parse::<Mailbox>()
            .map(MailboxSetting)
            .map_err(|error| format!("invalid email address \"{text}\" ({error}); write it as name@example.org or Name <name@example.org>"))
    }
}

impl<'de> Deserialize<'de> for MailboxSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MailboxSetting::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A list of email addresses, written as a TOML array of strings or, for
/// an environment variable, as one string with the addresses separated by
/// commas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxList(pub Vec<Mailbox>);

impl MailboxList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for MailboxList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> serde::de::Visitor<'de> for ListVisitor {
            type Value = MailboxList;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(
                    "a list of email addresses such as [\"support@example.org\"], or one string of addresses separated by commas",
                )
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<MailboxList, E> {
                text.split(',')
                    .filter(|entry| !entry.trim().is_empty())
                    .map(|entry| MailboxSetting::parse(entry).map(|mailbox| mailbox.0))
                    .collect::<Result<Vec<Mailbox>, String>>()
                    .map(MailboxList)
                    .map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut entries: A,
            ) -> Result<MailboxList, A::Error> {
                let mut mailboxes = Vec::new();
                while let Some(entry) = entries.next_element::<MailboxSetting>()? {
                    mailboxes.push(entry.0);
                }
                Ok(MailboxList(mailboxes))
            }
        }

        deserializer.deserialize_any(ListVisitor)
    }
}

/// A value that never appears in logs, errors or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    /// Accepts a string, or a number or boolean as its text, because an
    /// environment variable such as `SESSION_STEWARD_SMTP__PASSWORD=1234`
    /// arrives as a number. Other types are rejected without the value.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl serde::de::Visitor<'_> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
                Ok(Secret(value.to_owned()))
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }

            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("[redacted]")
    }
}
