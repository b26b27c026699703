//! Access to the support page: its credentials, and the checks that keep
//! another site from acting through a signed-in browser.
//!
//! Browsers sign in with HTTP basic authentication and scripts send a
//! bearer token. Both are compared in constant time, through SHA-256
//! digests, so neither the content nor the length of a secret leaks
//! through response times. A browser resends basic credentials on its own,
//! so every POST also carries a CSRF token. The token is an HMAC of the
//! signed-in identity and the time the page was rendered, keyed by the
//! configured credentials, so changing a credential invalidates it.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Secret, SupportSettings};

type HmacSha256 = Hmac<Sha256>;

/// How long a rendered form stays valid. A page left open longer has to
/// be reloaded before its buttons work.
pub const CSRF_TOKEN_LIFETIME: Duration = Duration::hours(12);

/// Clock difference between replicas tolerated for a token's issue time.
const CSRF_CLOCK_SKEW: Duration = Duration::minutes(5);

/// The signed-in caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A browser or script that sent the basic-auth user name and password.
    User(String),
    /// A script that sent the bearer token.
    Token,
}

impl Principal {
    /// Names the caller in `acknowledged_by` and `resolved_by`.
    pub fn actor(&self) -> String {
        match self {
            Principal::User(name) => name.clone(),
            Principal::Token => "support token".to_owned(),
        }
    }

    /// Identifies the caller inside a CSRF token, so that a token issued to
    /// one credential is rejected for the other.
    fn csrf_subject(&self) -> String {
        match self {
            Principal::User(name) => format!("user:{name}"),
            Principal::Token => "token".to_owned(),
        }
    }
}

/// Reasons a request is not signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// A header with an unknown scheme, malformed content or wrong secret.
    Invalid,
}

/// Reasons a POST is rejected before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeryError {
    #[error("the form carries no CSRF token; reload the page and submit the form again")]
    MissingToken,
    #[error("the form's CSRF token is invalid; reload the page and submit the form again")]
    InvalidToken,
    #[error(
        "the form's CSRF token expired after {} hours; reload the page and submit the form again",
        CSRF_TOKEN_LIFETIME.num_hours()
    )]
    ExpiredToken,
    #[error("the request comes from another origin ({0}); submit the form from this page")]
    CrossOrigin(String),
}

/// The configured credentials, kept as digests, and the CSRF key.
pub struct Guard {
    token: Option<[u8; 32]>,
    user: Option<BasicUser>,
    csrf_key: [u8; 32],
}

struct BasicUser {
    name: String,
    name_digest: [u8; 32],
    password_digest: [u8; 32],
}

impl Guard {
    /// Builds the guard, or returns None when no credential is configured.
    pub fn new(settings: &SupportSettings) -> Option<Self> {
        if !settings.has_credential() {
            return None;
        }
        let user = match (&settings.username, &settings.password) {
            (Some(name), Some(password)) => Some(BasicUser {
                name: name.expose().to_owned(),
                name_digest: digest(name.expose()),
                password_digest: digest(password.expose()),
            }),
            _ => None,
        };
        Some(Self {
            token: settings.token.as_ref().map(|token| digest(token.expose())),
            user,
            csrf_key: derive_csrf_key(settings),
        })
    }

    /// True when browsers can sign in with a user name and password.
    pub fn accepts_basic(&self) -> bool {
        self.user.is_some()
    }

    /// True when scripts can sign in with a bearer token.
    pub fn accepts_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks the value of an `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Invalid)?;
        let (scheme, credential) = header.trim().split_once(' ').ok_or(AuthError::Invalid)?;
        let credential = credential.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let expected = self.token.as_ref().ok_or(AuthError::Invalid)?;
            if bool::from(digest(credential).ct_eq(expected)) {
                return Ok(Principal::Token);
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            let user = self.user.as_ref().ok_or(AuthError::Invalid)?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credential)
                .map_err(|_| AuthError::Invalid)?;
            let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
            let (name, password) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
            // Both comparisons always run, so the time taken does not reveal
            // whether the user name alone was right.
            let name_matches = digest(name).ct_eq(&user.name_digest);
            let password_matches = digest(password).ct_eq(&user.password_digest);
            if bool::from(name_matches & password_matches) {
                return Ok(Principal::User(user.name.clone()));
            }
        }
        Err(AuthError::Invalid)
    }

    /// Issues a CSRF token for `principal`, valid for `CSRF_TOKEN_LIFETIME`
    /// from `now`.
    pub fn csrf_token(&self, principal: &Principal, now: DateTime<Utc>) -> String {
        let issued_at = now.timestamp();
        let signature = self.csrf_mac(principal, issued_at).finalize().into_bytes();
        format!("{issued_at}.{}", to_hex(&signature))
    }

    /// Checks a CSRF token sent with a POST by `principal` at `now`.
    pub fn check_csrf_token(
        &self,
        principal: &Principal,
        token: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), ForgeryError> {
        let token = token
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(ForgeryError::MissingToken)?;
        let (issued_at, signature) = token.split_once('.').ok_or(ForgeryError::InvalidToken)?;
        let issued_at: i64 = issued_at.parse().map_err(|_| ForgeryError::InvalidToken)?;
        let signature = from_hex(signature).ok_or(ForgeryError::InvalidToken)?;
        self.csrf_mac(principal, issued_at)
            .verify_slice(&signature)
            .map_err(|_| ForgeryError::InvalidToken)?;

        let issued = DateTime::from_timestamp(issued_at, 0).ok_or(ForgeryError::InvalidToken)?;
        if issued > now + CSRF_CLOCK_SKEW {
            return Err(ForgeryError::InvalidToken);
        }
        if now - issued > CSRF_TOKEN_LIFETIME {
            return Err(ForgeryError::ExpiredToken);
        }
        Ok(())
    }

    fn csrf_mac(&self, principal: &Principal, issued_at: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.csrf_key)
            .expect("HMAC-SHA256 accepts a key of any length");
        mac.update(principal.csrf_subject().as_bytes());
        mac.update(b"\0");
        mac.update(issued_at.to_string().as_bytes());
        mac
    }
}

/// Checks the `Origin` header of a POST against its `Host` header. A
/// request without `Origin` passes, because older browsers and scripts do
/// not send it, and the CSRF token still protects it.
pub fn check_origin(origin: Option<&[u8]>, host: Option<&[u8]>) -> Result<(), ForgeryError> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin);
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = host.map(String::from_utf8_lossy);
    match (origin_host, host) {
        (Some(origin_host), Some(host)) if origin_host.eq_ignore_ascii_case(host.trim()) => Ok(()),
        _ => Err(ForgeryError::CrossOrigin(origin.escape_debug().to_string())),
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Derives the CSRF key from every configured credential, each prefixed
/// with its length so that no two configurations give the same input.
fn derive_csrf_key(settings: &SupportSettings) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"session-steward support page CSRF key");
    let fields: [&Option<Secret>; 3] = [&settings.token, &settings.username, &settings.password];
    for field in fields {
        let value = field.as_ref().map_or("", Secret::expose);
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    hasher.finalize().into()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const TOKEN: &str = "0123456789abcdef0123";

    fn settings() -> SupportSettings {
        SupportSettings {
            token: Some(Secret::new(TOKEN)),
            username: Some(Secret::new("support")),
            password: Some(Secret::new("correct horse")),
        }
    }

    fn basic(user_and_password: &str) -> String {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_and_password);
        format!("Basic {encoded}")
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 18, 0, 0).unwrap()
    }

    #[test]
    fn guard_absent_without_credentials() {
        assert!(Guard::new(&SupportSettings::default()).is_none());
    }

    #[test]
    fn authenticate_accepts_right_credentials() {
        let guard = Guard::new(&settings()).unwrap();
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            guard.authenticate(Some(bearer.as_bytes())),
            Ok(Principal::Token)
        );
        let lower_case = format!("bearer {TOKEN}");
        assert_eq!(
            guard.authenticate(Some(lower_case.as_bytes())),
            Ok(Principal::Token)
        );
        assert_eq!(
            guard.authenticate(Some(basic("support:correct horse").as_bytes())),
            Ok(Principal::User("support".to_owned()))
        );
    }

    #[test]
    fn authenticate_rejects_wrong_credentials() {
        let guard = Guard::new(&settings()).unwrap();
        assert_eq!(guard.authenticate(None), Err(AuthError::Missing));
        let cases = [
            format!("Bearer {TOKEN}x"),
            "Bearer ".to_owned(),
            format!("Token {TOKEN}"),
            basic("support:wrong"),
            basic("other:correct horse"),
            basic("support"),
            "Basic not-base64!".to_owned(),
            TOKEN.to_owned(),
        ];
        for header in cases {
            assert_eq!(
                guard.authenticate(Some(header.as_bytes())),
                Err(AuthError::Invalid),
                "header {header:?}"
            );
        }
    }

    #[test]
    fn authenticate_rejects_scheme_not_configured() {
        let token_only = SupportSettings {
            token: Some(Secret::new(TOKEN)),
            ..SupportSettings::default()
        };
        let guard = Guard::new(&token_only).unwrap();
        assert_eq!(
            guard.authenticate(Some(basic(":").as_bytes())),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn csrf_token_round_trip() {
        let guard = Guard::new(&settings()).unwrap();
        let user = Principal::User("support".to_owned());
        let token = guard.csrf_token(&user, now());
        assert_eq!(guard.check_csrf_token(&user, Some(&token), now()), Ok(()));
        let later = now() + Duration::hours(11);
        assert_eq!(guard.check_csrf_token(&user, Some(&token), later), Ok(()));
    }

    #[test]
    fn csrf_token_rejected_when_forged() {
        let guard = Guard::new(&settings()).unwrap();
        let user = Principal::User("support".to_owned());
        let token = guard.csrf_token(&user, now());

        assert_eq!(
            guard.check_csrf_token(&user, None, now()),
            Err(ForgeryError::MissingToken)
        );
        assert_eq!(
            guard.check_csrf_token(&Principal::Token, Some(&token), now()),
            Err(ForgeryError::InvalidToken),
            "a token is bound to the identity it was issued to"
        );
        let (issued_at, signature) = token.split_once('.').unwrap();
        let moved = format!("{}.{signature}", issued_at.parse::<i64>().unwrap() + 3600);
        assert_eq!(
            guard.check_csrf_token(&user, Some(&moved), now()),
            Err(ForgeryError::InvalidToken),
            "the issue time is signed"
        );
        let other_settings = SupportSettings {
            password: Some(Secret::new("another password")),
            ..settings()
        };
        let other_guard = Guard::new(&other_settings).unwrap();
        assert_eq!(
            other_guard.check_csrf_token(&user, Some(&token), now()),
            Err(ForgeryError::InvalidToken),
            "a new password invalidates issued tokens"
        );
        let expired = now() + CSRF_TOKEN_LIFETIME + Duration::seconds(1);
        assert_eq!(
            guard.check_csrf_token(&user, Some(&token), expired),
            Err(ForgeryError::ExpiredToken)
        );
    }

    #[test]
    fn origin_must_match_host() {
        let host = Some(b"127.0.0.1:8080".as_slice());
        assert_eq!(check_origin(None, host), Ok(()));
        assert_eq!(check_origin(Some(b"http://127.0.0.1:8080"), host), Ok(()));
        assert_eq!(check_origin(Some(b"https://127.0.0.1:8080"), host), Ok(()));
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:9090",
            "null",
            "http://127.0.0.1:8080.evil.example",
        ] {
            assert!(
                check_origin(Some(origin.as_bytes()), host).is_err(),
                "origin {origin}"
            );
        }
        assert!(check_origin(Some(b"http://127.0.0.1:8080"), None).is_err());
    }
}
