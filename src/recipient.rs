//! Checks that a provider row can receive a digest: active, with a valid
//! address, a known IANA time zone and a display name safe for a header.

use std::fmt;

use chrono_tz::Tz;
use lettre::Address;
use lettre::message::Mailbox;

/// The provider columns the checks need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderRow {
    pub id: i64,
    pub name: Option<String>,
    pub email: Option<String>,
    pub time_zone: Option<String>,
    pub active: bool,
}

/// A provider that passed every check.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub provider_id: i64,
    pub mailbox: Mailbox,
    pub time_zone: Tz,
}

/// Reason a provider cannot be reached. The text is stored on flags and in
/// logs, so it names the problem but never repeats the bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    Inactive,
    MissingEmail,
    InvalidEmail,
    UnknownTimeZone,
    UnsafeName,
    DeliveryFailed,
}

impl Unreachable {
    pub fn as_str(&self) -> &'static str {
        match self {
            Unreachable::Inactive => "provider is inactive",
            Unreachable::MissingEmail => "provider has no email address",
            Unreachable::InvalidEmail => "provider email address is invalid",
            Unreachable::UnknownTimeZone => "provider time zone is not a known IANA zone",
            Unreachable::UnsafeName => "provider name contains control characters",
            Unreachable::DeliveryFailed => "last digest to the provider failed permanently",
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Applies every check to `row`, in the order an operator would fix them.
pub fn check(row: &ProviderRow) -> Result<Recipient, Unreachable> {
    if !row.active {
        return Err(Unreachable::Inactive);
    }
    let name = row.name.as_deref().unwrap_or("").trim();
    if name.chars().any(char::is_control) {
        return Err(Unreachable::UnsafeName);
    }
    let email = match row.email.as_deref().map(str::trim) {
        None | Some("") => return Err(Unreachable::MissingEmail),
        Some(email) => email,
    };
    if email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Unreachable::InvalidEmail);
    }
    let address: Address = email.parse().map_err(|_| Unreachable::InvalidEmail)?;
    let time_zone: Tz = row
        .time_zone
        .as_deref()
        .map(str::trim)
        .ok_or(Unreachable::UnknownTimeZone)?
        .parse()
        .map_err(|_| Unreachable::UnknownTimeZone)?;
    let display_name = (!name.is_empty()).then(|| name.to_owned());
    Ok(Recipient {
        provider_id: row.id,
        mailbox: Mailbox::new(display_name, address),
        time_zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ProviderRow {
        ProviderRow {
            id: 7,
            name: Some("Zoë Ångström".to_owned()),
            email: Some("zoe@example.org".to_owned()),
            time_zone: Some("Asia/Kathmandu".to_owned()),
            active: true,
        }
    }

    #[test]
    fn check_accepts_valid_provider() {
        let recipient = check(&row()).expect("row is valid");
        assert_eq!(recipient.mailbox.email.to_string(), "zoe@example.org");
        assert_eq!(recipient.time_zone, chrono_tz::Asia::Kathmandu);
    }

    #[test]
    fn check_accepts_missing_name() {
        let recipient = check(&ProviderRow {
            name: None,
            ..row()
        })
        .expect("a name is optional");
        assert_eq!(recipient.mailbox.name, None);
    }

    #[test]
    fn check_rejects_each_bad_column() {
        let cases: Vec<(ProviderRow, Unreachable)> = vec![
            (
                ProviderRow {
                    active: false,
                    ..row()
                },
                Unreachable::Inactive,
            ),
            (
                ProviderRow {
                    email: None,
                    ..row()
                },
                Unreachable::MissingEmail,
            ),
            (
                ProviderRow {
                    email: Some("  ".into()),
                    ..row()
                },
                Unreachable::MissingEmail,
            ),
            (
                ProviderRow {
                    email: Some("not-an-address".into()),
                    ..row()
                },
                Unreachable::InvalidEmail,
            ),
            (
                ProviderRow {
                    email: Some("a@example.org\r\nBcc: x@example.org".into()),
                    ..row()
                },
                Unreachable::InvalidEmail,
            ),
            (
                ProviderRow {
                    time_zone: Some("Mars/Olympus".into()),
                    ..row()
                },
                Unreachable::UnknownTimeZone,
            ),
            (
                ProviderRow {
                    time_zone: None,
                    ..row()
                },
                Unreachable::UnknownTimeZone,
            ),
            (
                ProviderRow {
                    name: Some("Eve\r\nBcc: x@example.org".into()),
                    ..row()
                },
                Unreachable::UnsafeName,
            ),
        ];
        for (bad_row, expected) in cases {
            assert_eq!(check(&bad_row).unwrap_err(), expected, "row {bad_row:?}");
        }
    }
}
