//! Email transports: SMTP through lettre, or one `.eml` file per message in
//! a folder. Failures are split into transient and permanent so the outbox
//! can decide whether to retry.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

use crate::config::{Settings, SmtpSettings, TlsMode, TransportKind};

/// A failed delivery attempt. The text may contain the server's reply, so
/// it is stored in the database but not logged.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: a 4xx reply, a 5xx reply that is not about the
    /// mailbox, a refused or dropped connection, a timeout, a setup error.
    #[error("transient delivery failure: {detail}")]
    Transient { code: Option<u16>, detail: String },
    /// Not worth retrying: the server rejected the recipient's mailbox.
    #[error("permanent delivery failure: {detail}")]
    Permanent { code: Option<u16>, detail: String },
}

impl SendError {
    /// Returns the SMTP reply code, if the server sent one. Safe to log.
    pub fn code(&self) -> Option<u16> {
        match self {
            SendError::Transient { code, .. } | SendError::Permanent { code, .. } => *code,
        }
    }

    /// Returns the failure's text without the transient or permanent label.
    pub fn detail(&self) -> &str {
        match self {
            SendError::Transient { detail, .. } | SendError::Permanent { detail, .. } => detail,
        }
    }
}

/// Destination of outgoing messages.
#[derive(Clone)]
pub enum Transport {
    Smtp(SmtpSender),
    File(FileOutbox),
}

/// An SMTP client that keeps up to `smtp.pool_size` connections open for
/// reuse and bounds each whole message by `smtp.send_timeout`.
///
/// It opens its own TCP connections with `TCP_NODELAY`. lettre 0.11 writes
/// a message and its closing `.` line in two writes, and with Nagle's
/// algorithm on, the second waits for the server's delayed ACK, which costs
/// about 40 ms per message on Linux.
#[derive(Clone)]
pub struct SmtpSender {
    config: Arc<SmtpConfig>,
    idle: Arc<Mutex<Vec<IdleConnection>>>,
}

struct SmtpConfig {
    host: String,
    port: u16,
    tls: TlsMode,
    tls_parameters: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
    connect_timeout: Duration,
    send_timeout: Duration,
    pool_size: usize,
}

struct IdleConnection {
    connection: AsyncSmtpConnection,
    since: Instant,
}

/// Idle time after which a kept connection is checked with NOOP before
/// use, since servers close connections that sit idle.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);

impl Transport {
    /// Builds the transport of `kind` from the settings.
    pub fn from_settings(settings: &Settings, kind: TransportKind) -> anyhow::Result<Self> {
        match kind {
            TransportKind::Smtp => {
                let defaults = SmtpSettings::default();
                let smtp = settings.smtp.as_ref().unwrap_or(&defaults);
                Ok(Transport::Smtp(SmtpSender::new(smtp)?))
            }
            TransportKind::File => Ok(Transport::File(FileOutbox::new(&settings.file.directory))),
        }
    }

    /// Returns a short label for logs and the demo summary.
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp(_) => "SMTP".to_owned(),
            Transport::File(outbox) => format!("files in {}", outbox.directory.display()),
        }
    }

    /// Checks that the transport could deliver, without sending anything:
    /// the SMTP steps before a message, or a test file written to and
    /// removed from the output directory. Returns what passed.
    pub async fn check(&self) -> Result<String, TransportCheckError> {
        match self {
            Transport::Smtp(sender) => sender.check().await,
            Transport::File(outbox) => outbox.check().await,
        }
    }

    /// Delivers `message`. `key` identifies it: the file transport names the
    /// file after it, so a retried message overwrites its earlier copy.
    pub async fn send(&self, key: &str, message: &Message) -> Result<(), SendError> {
        match self {
            Transport::Smtp(sender) => sender.send(message).await,
            Transport::File(outbox) => outbox.write(key, message).await,
        }
    }
}

impl SmtpSender {
    fn new(smtp: &SmtpSettings) -> anyhow::Result<Self> {
        let tls_parameters = match smtp.tls {
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Tls => {
                Some(TlsParameters::new(smtp.host.clone()).with_context(|| {
                    format!("failed to set up TLS for smtp.host \"{}\"", smtp.host)
                })?)
            }
        };
        let credentials = match (&smtp.username, &smtp.password) {
            (Some(username), Some(password)) => Some(Credentials::new(
                username.expose().to_owned(),
                password.expose().to_owned(),
            )),
            _ => None,
        };
        let config = SmtpConfig {
            host: smtp.host.clone(),
            port: smtp.port,
            tls: smtp.tls,
            tls_parameters,
            credentials,
            hello: ClientId::default(),
            connect_timeout: smtp.timeout.to_std(),
            send_timeout: smtp.send_timeout.to_std(),
            pool_size: usize::try_from(smtp.pool_size).unwrap_or(usize::MAX),
        };
        Ok(Self {
            config: Arc::new(config),
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        // The deadline covers connecting, the greeting, every command and
        // the data. Dropping the future drops its connection, which is
        // then never reused.
        match tokio::time::timeout(self.config.send_timeout, self.send_on_connection(message)).await
        {
            Ok(result) => result,
            Err(_) => Err(SendError::Transient {
                code: None,
                detail: format!(
                    "timed out after {} s; the SMTP server did not finish the conversation",
                    self.config.send_timeout.as_secs()
                ),
            }),
        }
    }

    async fn send_on_connection(&self, message: &Message) -> Result<(), SendError> {
        let mut connection = match self.take_idle().await {
            Some(connection) => connection,
            None => self.connect().await.map_err(|(_, error)| error)?,
        };
        match connection
            .send(message.envelope(), &message.formatted())
            .await
        {
            Ok(_) => {
                self.put_idle(connection);
                Ok(())
            }
            // lettre marks the connection broken on any error; it is dropped.
            Err(error) => Err(classify_smtp_error(error)),
        }
    }

    /// Takes a kept connection, checking one that sat idle for a while.
    async fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let idle = self
                .idle
                .lock()
                .expect("idle lock is never poisoned")
                .pop()?;
            let mut connection = idle.connection;
            if connection.has_broken() {
                continue;
            }
            if idle.since.elapsed() < CHECK_IDLE_AFTER || connection.test_connected().await {
                return Some(connection);
            }
        }
    }

    fn put_idle(&self, connection: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().expect("idle lock is never poisoned");
        if idle.len() < self.config.pool_size && !connection.has_broken() {
            idle.push(IdleConnection {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection ready for a message: greeting, EHLO, STARTTLS and
    /// login as configured. A failure names the step that failed.
    async fn connect(&self) -> Result<AsyncSmtpConnection, (SmtpStep, SendError)> {
        let config = &*self.config;
        let failed_at = |step: SmtpStep| move |error| (step, classify_smtp_error(error));
        let mut connection = if config.tls == TlsMode::Tls {
            // Implicit TLS goes through lettre's own connector, which does
            // not set TCP_NODELAY.
            AsyncSmtpConnection::connect_tokio1(
                (config.host.as_str(), config.port),
                Some(config.connect_timeout),
                &config.hello,
                config.tls_parameters.clone(),
                None,
            )
            .await
            .map_err(failed_at(SmtpStep::Connect))?
        } else {
            let stream = self
                .connect_tcp()
                .await
                .map_err(|error| (SmtpStep::Connect, error))?;
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &config.hello)
                .await
                .map_err(failed_at(SmtpStep::Greeting))?
        };
        if let (TlsMode::Starttls, Some(parameters)) = (config.tls, &config.tls_parameters) {
            connection
                .starttls(parameters.clone(), &config.hello)
                .await
                .map_err(failed_at(SmtpStep::Starttls))?;
        }
        if let Some(credentials) = &config.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(failed_at(SmtpStep::Login))?;
        }
        Ok(connection)
    }

    /// Runs every step before a message (greeting, EHLO, STARTTLS and login
    /// as configured), then QUIT, within `smtp.send_timeout`. Returns the
    /// steps that passed.
    async fn check(&self) -> Result<String, TransportCheckError> {
        let config = &*self.config;
        let timeout = config.send_timeout;
        let mut connection = match tokio::time::timeout(timeout, self.connect()).await {
            Ok(Ok(connection)) => connection,
            Ok(Err((step, error))) => return Err(TransportCheckError::Smtp { step, error }),
            Err(_) => return Err(TransportCheckError::TimedOut(timeout)),
        };
        // The check has passed once login succeeded, so a server that drops
        // the connection instead of replying to QUIT changes nothing.
        let _ = tokio::time::timeout(timeout, connection.quit()).await;

        let mut steps = vec!["greeting and EHLO"];
        if config.tls == TlsMode::Starttls {
            steps.push("STARTTLS");
        }
        if config.tls == TlsMode::Tls {
            steps.push("implicit TLS");
        }
        if config.credentials.is_some() {
            steps.push("login");
        }
        Ok(format!(
            "{} accepted by {}:{}; no message sent",
            steps.join(", "),
            config.host,
            config.port
        ))
    }

    async fn connect_tcp(&self) -> Result<tokio::net::TcpStream, SendError> {
        let config = &*self.config;
        let transient = |detail: String| SendError::Transient { code: None, detail };
        let address = (config.host.as_str(), config.port);
        let stream = tokio::time::timeout(
            config.connect_timeout,
            tokio::net::TcpStream::connect(address),
        )
        .await
        .map_err(|_| {
            transient(format!(
                "connecting timed out after {} s",
                config.connect_timeout.as_secs()
            ))
        })?
        .map_err(|error| transient(format!("failed to connect: {error}")))?;
        stream
            .set_nodelay(true)
            .map_err(|error| transient(format!("failed to set TCP_NODELAY: {error}")))?;
        Ok(stream)
    }
}

/// A step of opening an SMTP connection, named in a failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpStep {
    Connect,
    Greeting,
    Starttls,
    Login,
}

impl SmtpStep {
    /// Describes the step and what an operator should look at when it fails.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            SmtpStep::Connect => (
                "connection",
                "check smtp.host, smtp.port, smtp.tls and that the server is reachable from this host",
            ),
            SmtpStep::Greeting => (
                "greeting or EHLO",
                "check that smtp.port is an SMTP port and smtp.tls matches it (\"tls\" for port 465)",
            ),
            SmtpStep::Starttls => (
                "STARTTLS",
                "check that the server offers STARTTLS with a certificate valid for smtp.host, or change smtp.tls",
            ),
            SmtpStep::Login => (
                "login",
                "check smtp.username and the password in SESSION_STEWARD_SMTP__PASSWORD",
            ),
        }
    }
}

/// A transport that cannot deliver, found by [`Transport::check`].
#[derive(Debug, thiserror::Error)]
pub enum TransportCheckError {
    #[error("SMTP {} failed: {}; {}", step.describe().0, error.detail(), step.describe().1)]
    Smtp { step: SmtpStep, error: SendError },
    #[error(
        "SMTP server did not finish greeting, EHLO, STARTTLS and login within smtp.send_timeout ({} s); check that smtp.host and smtp.port point at an SMTP server",
        .0.as_secs()
    )]
    TimedOut(Duration),
    #[error(
        "file transport directory {} is not writable: {error}; create it or give this user write access, or set file.directory",
        directory.display()
    )]
    Directory {
        directory: PathBuf,
        error: std::io::Error,
    },
}

/// Reply codes that reject the recipient's mailbox itself (RFC 5321:
/// mailbox unavailable, not local, storage exceeded, name not allowed).
/// Only these show that the provider cannot be reached.
const MAILBOX_REJECTED: [u16; 4] = [550, 551, 552, 553];

fn classify_smtp_error(error: lettre::transport::smtp::Error) -> SendError {
    let code = error.status().map(|code| {
        let text = code.to_string();
        text.parse::<u16>().unwrap_or(0)
    });
    let detail = error.to_string();
    if error.is_permanent() && code.is_some_and(|code| MAILBOX_REJECTED.contains(&code)) {
        SendError::Permanent { code, detail }
    } else {
        // Everything else may succeed later or once operations fix the
        // relay: 4xx replies, other 5xx replies (a relay that refuses
        // service or authentication), timeouts, refused or reset
        // connections, TLS and client-side setup errors such as STARTTLS
        // missing on the server. Attempts are bounded by max_attempts, and
        // running out of them flags no provider.
        SendError::Transient { code, detail }
    }
}

/// Writes each message to `<directory>/<key>.eml`.
#[derive(Debug, Clone)]
pub struct FileOutbox {
    pub directory: PathBuf,
}

impl FileOutbox {
    pub fn new(directory: &Path) -> Self {
        Self {
            directory: directory.to_owned(),
        }
    }

    async fn check(&self) -> Result<String, TransportCheckError> {
        let directory_error = |error| TransportCheckError::Directory {
            directory: self.directory.clone(),
            error,
        };
        tokio::fs::create_dir_all(&self.directory)
            .await
            .map_err(directory_error)?;
        // Dot files are what `write` uses for partial messages, so a reader
        // of the folder skips this one too.
        let probe = self
            .directory
            .join(format!(".session-steward-check-{}", std::process::id()));
        tokio::fs::write(&probe, b"")
            .await
            .map_err(directory_error)?;
        tokio::fs::remove_file(&probe)
            .await
            .map_err(directory_error)?;
        Ok(format!("{} is writable", self.directory.display()))
    }

    async fn write(&self, key: &str, message: &Message) -> Result<(), SendError> {
        let transient = |action: &str, error: std::io::Error| SendError::Transient {
            code: None,
            detail: format!(
                "failed to {action} in {}: {error}",
                self.directory.display()
            ),
        };
        tokio::fs::create_dir_all(&self.directory)
            .await
            .map_err(|error| transient("create the outbox folder", error))?;

        // Write then rename, so a reader never sees half a message.
        let final_path = self.directory.join(format!("{key}.eml"));
        let partial_path = self.directory.join(format!(".{key}.eml.partial"));
        tokio::fs::write(&partial_path, message.formatted())
            .await
            .map_err(|error| transient("write a message", error))?;
        tokio::fs::rename(&partial_path, &final_path)
            .await
            .map_err(|error| transient("rename a message", error))?;
        Ok(())
    }
}
