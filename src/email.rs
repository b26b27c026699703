//! Email transports: SMTP through lettre, or one `.eml` file per message in
//! a folder. Failures are split into transient and permanent so the outbox
//! can decide whether to retry.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

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
}

/// Destination of outgoing messages.
#[derive(Clone)]
pub enum Transport {
    Smtp(SmtpSender),
    File(FileOutbox),
}

/// A pooled SMTP client with a bound on each whole message.
#[derive(Clone)]
pub struct SmtpSender {
    client: AsyncSmtpTransport<Tokio1Executor>,
    send_timeout: std::time::Duration,
}

impl Transport {
    /// Builds the transport of `kind` from the settings.
    pub fn from_settings(settings: &Settings, kind: TransportKind) -> anyhow::Result<Self> {
        match kind {
            TransportKind::Smtp => {
                let defaults = SmtpSettings::default();
                let smtp = settings.smtp.as_ref().unwrap_or(&defaults);
                Ok(Transport::Smtp(SmtpSender {
                    client: build_smtp(smtp)?,
                    send_timeout: smtp.send_timeout.to_std(),
                }))
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
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        // lettre's own timeout applies to the connection and to each read,
        // but a server that trickles bytes could still hold a send open, so
        // the whole conversation gets a deadline too. Dropping the future
        // drops its connection instead of returning it to the pool.
        match tokio::time::timeout(self.send_timeout, self.client.send(message.clone())).await {
            Ok(result) => result.map(|_| ()).map_err(classify_smtp_error),
            Err(_) => Err(SendError::Transient {
                code: None,
                detail: format!(
                    "timed out after {} s; the SMTP server did not finish the conversation",
                    self.send_timeout.as_secs()
                ),
            }),
        }
    }
}

fn build_smtp(smtp: &SmtpSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let tls = match smtp.tls {
        TlsMode::None => Tls::None,
        TlsMode::Starttls | TlsMode::Tls => {
            let parameters = TlsParameters::new(smtp.host.clone())
                .with_context(|| format!("failed to set up TLS for smtp.host \"{}\"", smtp.host))?;
            if smtp.tls == TlsMode::Starttls {
                Tls::Required(parameters)
            } else {
                Tls::Wrapper(parameters)
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(smtp.timeout.to_std()))
        .pool_config(PoolConfig::new().max_size(smtp.pool_size));
    if let (Some(username), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(
            username.expose().to_owned(),
            password.expose().to_owned(),
        ));
    }
    Ok(builder.build())
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
