//! Builds the emails: the provider digest, with times in the provider's
//! zone, and the support digest of open flags, with its CSV attachment.
//! Plain text and HTML come from the templates in `templates/`, and members
//! are shown by initials.

use anyhow::Context;
use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MessageBuilder, MultiPart, SinglePart};
use minijinja::{Environment, context};
use serde::Serialize;

use crate::config::Settings;
use crate::recipient::Recipient;
use crate::support_digest::{NewFlag, SupportDigest};

const TEXT_TEMPLATE: &str = "digest.txt";
const HTML_TEMPLATE: &str = "digest.html";
const SUPPORT_TEXT_TEMPLATE: &str = "support_digest.txt";
const SUPPORT_HTML_TEMPLATE: &str = "support_digest.html";

/// New flags listed in the body of a support digest. The rest are counted
/// and left to the attachment, which contains every open flag, so a backlog
/// cannot turn the email into thousands of lines.
pub const SUPPORT_NEW_FLAGS_LISTED: usize = 200;

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

#[derive(Serialize)]
struct KindCountView {
    kind: &'static str,
    count: u64,
}

#[derive(Serialize)]
struct NewFlagView {
    kind: &'static str,
    flag_id: i64,
    provider_id: i64,
    session_date: String,
    member_ref: String,
}

/// Renders digests with the settings fixed at start-up.
pub struct Composer {
    templates: Environment<'static>,
    from: Mailbox,
    support: Mailbox,
    dashboard_url: String,
    reminder_after: String,
    support_digest_recipients: Vec<Mailbox>,
    support_page_url: String,
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
        templates
            .add_template(
                SUPPORT_TEXT_TEMPLATE,
                include_str!("../templates/support_digest.txt"),
            )
            .context("failed to parse templates/support_digest.txt")?;
        templates
            .add_template(
                SUPPORT_HTML_TEMPLATE,
                include_str!("../templates/support_digest.html"),
            )
            .context("failed to parse templates/support_digest.html")?;
        Ok(Self {
            templates,
            from: settings.email.from.0.clone(),
            support: settings.email.support_mailbox.0.clone(),
            dashboard_url: settings.email.dashboard_url.clone(),
            reminder_after: describe_span(settings.reminders.reminder_after.to_chrono()),
            support_digest_recipients: settings.support_digest.recipients.0.clone(),
            support_page_url: settings.support_digest.page_url.clone(),
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
        let (text, html) = self.render_pair(TEXT_TEMPLATE, HTML_TEMPLATE, &values)?;

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
        self.message_builder(key, now)
            .to(recipient.mailbox.clone())
            .subject(rendered.subject.clone())
            .multipart(alternative(rendered.text.clone(), rendered.html.clone()))
            .context("failed to build the digest message")
    }

    /// Builds the support digest for `support_digest.recipients`, with every
    /// open flag attached as `open-flags-YYYY-MM-DD.csv` (the UTC date of
    /// `now`). `key` gives the stable Message-ID.
    pub fn support_digest(
        &self,
        key: &str,
        digest: &SupportDigest,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Message> {
        anyhow::ensure!(
            !self.support_digest_recipients.is_empty(),
            "support_digest.recipients is empty; list at least one mailbox to send support digests"
        );

        let new_total = digest.new_flags.len();
        let listed: Vec<NewFlagView> = digest
            .new_flags
            .iter()
            .take(SUPPORT_NEW_FLAGS_LISTED)
            .map(new_flag_view)
            .collect();
        let attachment_name = format!("open-flags-{}.csv", now.format("%Y-%m-%d"));
        let values = context! {
            open_total => digest.open_total,
            kinds => digest
                .open_by_kind
                .iter()
                .map(|(kind, count)| KindCountView { kind: kind.as_str(), count: *count })
                .collect::<Vec<_>>(),
            new_total,
            new_flags => listed,
            new_not_listed => new_total.saturating_sub(SUPPORT_NEW_FLAGS_LISTED),
            flags_since => digest.flags_since.map(|since| since.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
            cutoff => digest.cutoff.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            page_url => self.support_page_url,
            attachment_name,
        };
        let (text, html) =
            self.render_pair(SUPPORT_TEXT_TEMPLATE, SUPPORT_HTML_TEMPLATE, &values)?;
        let body = alternative(text, html);
        let csv_type =
            ContentType::parse("text/csv; charset=utf-8").expect("a constant, valid content type");
        let attachment = Attachment::new(attachment_name).body(digest.csv.clone(), csv_type);

        let subject = format!(
            "Support digest: {} open flag{}, {new_total} new",
            digest.open_total,
            if digest.open_total == 1 { "" } else { "s" }
        );
        let mut builder = self.message_builder(key, now).subject(subject);
        for mailbox in &self.support_digest_recipients {
            builder = builder.to(mailbox.clone());
        }
        builder
            .multipart(MultiPart::mixed().multipart(body).singlepart(attachment))
            .context("failed to build the support digest message")
    }

    /// Starts a message with the headers every email carries: From, a
    /// Message-ID derived from `key`, Date and `Auto-Submitted`.
    fn message_builder(&self, key: &str, now: DateTime<Utc>) -> MessageBuilder {
        Message::builder()
            .from(self.from.clone())
            .message_id(Some(message_id(key, self.from.email.domain())))
            .date(now.into())
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
    }

    /// Renders a pair of templates with the same values: plain text, HTML.
    fn render_pair(
        &self,
        text_template: &str,
        html_template: &str,
        values: &minijinja::Value,
    ) -> anyhow::Result<(String, String)> {
        let text = self.templates.get_template(text_template)?.render(values)?;
        let html = self.templates.get_template(html_template)?.render(values)?;
        Ok((text, html))
    }
}

/// Puts a plain text and an HTML body into a multipart/alternative body,
/// plain text first.
fn alternative(text: String, html: String) -> MultiPart {
    MultiPart::alternative()
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html),
        )
}

fn new_flag_view(flag: &NewFlag) -> NewFlagView {
    NewFlagView {
        kind: flag.kind.as_str(),
        flag_id: flag.flag_id,
        provider_id: flag.provider_id,
        session_date: flag
            .session_date
            .map_or_else(|| "unknown".to_owned(), |date| date.to_string()),
        member_ref: flag.member_ref.clone(),
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
