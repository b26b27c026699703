//! Builds the provider digest: plain text and HTML from the templates in
//! `templates/`, times in the provider's zone, members shown by initials.

use anyhow::Context;
use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use minijinja::{Environment, context};
use serde::Serialize;

use crate::config::Settings;
use crate::recipient::Recipient;

const TEXT_TEMPLATE: &str = "digest.txt";
const HTML_TEMPLATE: &str = "digest.html";

/// One session listed in a digest.
#[derive(Debug, Clone)]
pub struct DigestSession {
    pub session_id: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub member_name: String,
}

#[derive(Serialize)]
struct SessionView {
    date: String,
    time: String,
    member_ref: String,
    days_ago: i64,
}

/// Renders digests with the settings fixed at start-up.
pub struct Composer {
    templates: Environment<'static>,
    from: Mailbox,
    support: Mailbox,
    dashboard_url: String,
    reminder_after: String,
}

impl Composer {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let mut templates = Environment::new();
        // The HTML template's name ends in ".html", so minijinja escapes
        // every value placed into it.
        templates
            .add_template(TEXT_TEMPLATE, include_str!("../templates/digest.txt"))
            .context("failed to parse templates/digest.txt")?;
        templates
            .add_template(HTML_TEMPLATE, include_str!("../templates/digest.html"))
            .context("failed to parse templates/digest.html")?;
        Ok(Self {
            templates,
            from: settings.email.from.0.clone(),
            support: settings.email.support_mailbox.0.clone(),
            dashboard_url: settings.email.dashboard_url.clone(),
            reminder_after: describe_span(settings.reminders.reminder_after.to_chrono()),
        })
    }

    /// Builds the digest for `recipient` listing `sessions`, which must be
    /// non-empty and sorted oldest first. `key` gives the stable Message-ID.
    pub fn digest(
        &self,
        key: &str,
        recipient: &Recipient,
        sessions: &[DigestSession],
        now: DateTime<Utc>,
    ) -> anyhow::Result<Message> {
        let rendered = self.render(recipient, sessions, now)?;
        self.build(key, recipient, &rendered, now)
    }

    /// Renders the subject and both bodies of a digest, as [`Composer::digest`]
    /// sends them.
    pub fn render(
        &self,
        recipient: &Recipient,
        sessions: &[DigestSession],
        now: DateTime<Utc>,
    ) -> anyhow::Result<RenderedDigest> {
        anyhow::ensure!(!sessions.is_empty(), "a digest needs at least one session");

        let zone = recipient.time_zone;
        let views: Vec<SessionView> = sessions
            .iter()
            .map(|session| {
                let start = session.starts_at.with_timezone(&zone);
                let end = session.ends_at.with_timezone(&zone);
                SessionView {
                    date: start.format("%a %-d %b %Y").to_string(),
                    time: format!(
                        "{}–{} {}",
                        start.format("%H:%M"),
                        end.format("%H:%M"),
                        end.format("%Z")
                    ),
                    member_ref: member_reference(&session.member_name),
                    days_ago: (now - session.ends_at).num_days(),
                }
            })
            .collect();
        let provider_name = recipient
            .mailbox
            .name
            .clone()
            .unwrap_or_else(|| "provider".to_owned());
        let values = context! {
            provider_name,
            sessions => views,
            time_zone => zone.name(),
            dashboard_url => self.dashboard_url,
            support_address => self.support.email.to_string(),
            reminder_after => self.reminder_after,
        };
        let text = self
            .templates
            .get_template(TEXT_TEMPLATE)?
            .render(&values)?;
        let html = self
            .templates
            .get_template(HTML_TEMPLATE)?
            .render(&values)?;

        let subject = match sessions.len() {
            1 => "Reminder: 1 session is waiting for your invoice".to_owned(),
            count => format!("Reminder: {count} sessions are waiting for your invoice"),
        };
        Ok(RenderedDigest {
            subject,
            text,
            html,
        })
    }

    /// Builds the message for a rendered digest, dated `now`.
    pub fn build(
        &self,
        key: &str,
        recipient: &Recipient,
        rendered: &RenderedDigest,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Message> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(recipient.mailbox.clone())
            .subject(rendered.subject.clone())
            .message_id(Some(message_id(key, self.from.email.domain())))
            .date(now.into())
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(rendered.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(rendered.html.clone()),
                    ),
            )
            .context("failed to build the digest message")?;
        Ok(message)
    }
}

/// The parts of a digest before they are put into a message.
#[derive(Debug, Clone)]
pub struct RenderedDigest {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Writes a span as "5 days" or "36 hours" for the email text.
pub fn describe_span(span: chrono::Duration) -> String {
    let plural =
        |count: i64, unit: &str| format!("{count} {unit}{}", if count == 1 { "" } else { "s" });
    if span.num_seconds() % 86_400 == 0 {
        plural(span.num_days(), "day")
    } else {
        plural(span.num_hours().max(1), "hour")
    }
}

/// Builds a `Message-ID` from a reminder key, so every attempt to send the
/// same digest carries the same id and receivers can drop duplicates.
pub fn message_id(key: &str, domain: &str) -> String {
    format!("<{key}@{domain}>")
}

/// Reduces a member's name to initials, such as "J. D." for "Jane Doe", so
/// that no more than that appears in a provider email.
pub fn member_reference(name: &str) -> String {
    let initials: Vec<String> = name
        .split_whitespace()
        .filter_map(|word| word.chars().find(|c| c.is_alphabetic()))
        .flat_map(char::to_uppercase)
        .map(|initial| format!("{initial}."))
        .collect();
    match initials.as_slice() {
        [] => "(no initials)".to_owned(),
        [only] => only.clone(),
        [first, .., last] => format!("{first} {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_reference_keeps_first_and_last_initials() {
        assert_eq!(member_reference("Jane Doe"), "J. D.");
        assert_eq!(member_reference("  maria  de la  cruz "), "M. C.");
        assert_eq!(member_reference("Ødegaard"), "Ø.");
        assert_eq!(member_reference("\u{7}\r\n"), "(no initials)");
    }
}
