//! The support page: support's review list in a browser at
//! `/support/flags`, filtered by kind and provider, with forms to
//! acknowledge and resolve flags and a CSV download of the same view.
//!
//! The HTTP server merges [`routes`] into its router and calls
//! [`check_exposure`] before binding. Every route requires a credential
//! from `[support]` (see [`auth`]), and every POST a CSRF token.

mod auth;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use minijinja::{Environment, context};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::config::SupportSettings;
use crate::flags::{self, FlagKind, FlagUpdateError};
use crate::report::{self, ReportFilter, ReportRow};

pub use auth::{CSRF_TOKEN_LIFETIME, Principal};

const LIST_TEMPLATE: &str = "support_flags.html";

/// Rows the page shows at most; the CSV download has every row. It keeps
/// the page quick when a backlog has thousands of flags.
pub const PAGE_ROWS: usize = 500;

/// The path of the page.
pub const FLAGS_PATH: &str = "/support/flags";

/// The source of the current time; tests pin it.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Builds the page's routes with the state applied, ready to merge into
/// the server's router.
pub fn routes(pool: PgPool, settings: &SupportSettings) -> anyhow::Result<Router> {
    routes_with_clock(pool, settings, Arc::new(Utc::now))
}

/// Builds the routes as [`routes`] does, reading the time from `clock`.
pub fn routes_with_clock(
    pool: PgPool,
    settings: &SupportSettings,
    clock: Clock,
) -> anyhow::Result<Router> {
    let mut templates = Environment::new();
    // The template's name ends in ".html", so minijinja escapes every
    // value placed into it.
    templates
        .add_template(
            LIST_TEMPLATE,
            include_str!("../templates/support_flags.html"),
        )
        .context("failed to parse templates/support_flags.html")?;
    let state = Arc::new(PageState {
        pool,
        guard: auth::Guard::new(settings),
        templates,
        clock,
    });
    Ok(Router::new()
        .route(FLAGS_PATH, get(show_flags))
        .route("/support/flags.csv", get(download_csv))
        .route("/support/flags/{id}/{action}", post(change_flag))
        .layer(axum::middleware::map_response(add_security_headers))
        .with_state(state))
}

/// Fails when the page would be served on `address`, which is not a
/// loopback address, while no credential is configured.
pub fn check_exposure(address: SocketAddr, settings: &SupportSettings) -> anyhow::Result<()> {
    if settings.has_credential() || address.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "the support page would listen on {address}, which is not a loopback address, without a credential; set support.token, or support.username and support.password, or listen on 127.0.0.1"
    )
}

struct PageState {
    pool: PgPool,
    guard: Option<auth::Guard>,
    templates: Environment<'static>,
    clock: Clock,
}

impl PageState {
    /// Returns the current time to the microsecond, the precision that
    /// PostgreSQL stores, so a time written and read back compares equal.
    fn now(&self) -> DateTime<Utc> {
        (self.clock)().trunc_subsecs(6)
    }
}

/// A signed-in request. Extracting it returns 503 when the page has no
/// credential configured and 401 when the request does not carry one.
struct SignedIn {
    principal: Principal,
}

impl FromRequestParts<Arc<PageState>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<PageState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(guard) = &state.guard else {
            return Err(plain_text(
                StatusCode::SERVICE_UNAVAILABLE,
                "The support page is disabled because no credential is configured. Set support.token (SESSION_STEWARD_SUPPORT__TOKEN), or support.username and support.password (SESSION_STEWARD_SUPPORT__USERNAME and SESSION_STEWARD_SUPPORT__PASSWORD), then restart.",
            ));
        };
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match guard.authenticate(authorization) {
            Ok(principal) => Ok(SignedIn { principal }),
            Err(error) => {
                if error == auth::AuthError::Invalid {
                    tracing::warn!(path = %parts.uri.path(), "support page request with invalid credentials");
                }
                Err(unauthorized(guard))
            }
        }
    }
}

fn unauthorized(guard: &auth::Guard) -> Response {
    let mut response = plain_text(
        StatusCode::UNAUTHORIZED,
        "Sign in to the support page with the support user name and password, or send Authorization: Bearer <token>.",
    );
    let headers = response.headers_mut();
    if guard.accepts_basic() {
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"session-steward support\", charset=\"UTF-8\""),
        );
    }
    if guard.accepts_token() {
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"session-steward support\""),
        );
    }
    response
}

/// The query string of the page and the CSV download.
#[derive(Debug, Default, Deserialize)]
struct ViewQuery {
    kind: Option<String>,
    provider: Option<String>,
    /// The action of the last POST, shown as a confirmation.
    done: Option<String>,
    flag: Option<String>,
}

/// Parses the filter fields of a query or form. An empty field means all.
fn parse_filter(kind: Option<&str>, provider: Option<&str>) -> Result<ReportFilter, String> {
    let kind = match kind.map(str::trim).filter(|kind| !kind.is_empty()) {
        None => None,
        Some(text) => Some(text.parse::<FlagKind>()?),
    };
    let provider_id = match provider.map(str::trim).filter(|id| !id.is_empty()) {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    format!(
                        "invalid provider \"{}\"; choose a provider from the list",
                        text.escape_debug()
                    )
                })?,
        ),
    };
    Ok(ReportFilter {
        kind,
        provider_id,
        ..ReportFilter::default()
    })
}

/// Builds the page's URL for `filter`, with an optional confirmation.
fn view_url(filter: &ReportFilter, done: Option<(&str, i64)>) -> String {
    let mut parameters = Vec::new();
    if let Some(kind) = filter.kind {
        parameters.push(format!("kind={kind}"));
    }
    if let Some(provider_id) = filter.provider_id {
        parameters.push(format!("provider={provider_id}"));
    }
    if let Some((done, flag_id)) = done {
        parameters.push(format!("done={done}&flag={flag_id}"));
    }
    if parameters.is_empty() {
        FLAGS_PATH.to_owned()
    } else {
        format!("{FLAGS_PATH}?{}", parameters.join("&"))
    }
}

/// A message above the table.
#[derive(Debug, Clone, Serialize)]
struct Notice {
    /// "success" or "error", also the CSS class.
    level: &'static str,
    text: String,
}

impl Notice {
    fn success(text: String) -> Self {
        Self {
            level: "success",
            text,
        }
    }

    fn error(text: String) -> Self {
        Self {
            level: "error",
            text,
        }
    }
}

/// The note a rejected resolve form carried, shown again for correction.
#[derive(Debug, Clone, Serialize)]
struct Draft {
    flag_id: i64,
    note: String,
}

/// Builds the confirmation named by the query, if the flag's recorded
/// state bears it out. A link alone cannot make the page claim an action
/// that did not happen.
async fn confirmation(pool: &PgPool, query: &ViewQuery) -> Option<Notice> {
    let flag_id: i64 = query.flag.as_deref()?.parse().ok()?;
    let done = query.done.as_deref()?;
    let (acknowledged, resolved): (bool, bool) = sqlx::query_as(
        "SELECT acknowledged_at IS NOT NULL, resolved_at IS NOT NULL FROM flags WHERE id = $1",
    )
    .bind(flag_id)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()?;
    let text = match done {
        "acknowledged" if acknowledged => format!("Flag {flag_id} acknowledged."),
        "already_acknowledged" if acknowledged => {
            format!("Flag {flag_id} was already acknowledged; the first acknowledgement stands.")
        }
        "resolved" if resolved => {
            format!("Flag {flag_id} resolved. It no longer appears in the list.")
        }
        _ => return None,
    };
    Some(Notice::success(text))
}

async fn show_flags(
    State(state): State<Arc<PageState>>,
    signed_in: SignedIn,
    Query(query): Query<ViewQuery>,
) -> Response {
    let filter = parse_filter(query.kind.as_deref(), query.provider.as_deref());
    let notice = confirmation(&state.pool, &query)
        .await
        .map(|notice| (StatusCode::OK, notice));
    render_page(&state, &signed_in.principal, filter, notice, None).await
}

/// Renders the list for `filter`, or the error that replaced it. A
/// rejected filter gives 400, an error notice from a rejected action the
/// status the notice goes with.
async fn render_page(
    state: &PageState,
    principal: &Principal,
    filter: Result<ReportFilter, String>,
    notice: Option<(StatusCode, Notice)>,
    draft: Option<Draft>,
) -> Response {
    let now = state.now();
    let (status, notice, filter) = match (filter, notice) {
        (Err(message), _) => (StatusCode::BAD_REQUEST, Some(Notice::error(message)), None),
        (Ok(filter), Some((status, notice))) => (status, Some(notice), Some(filter)),
        (Ok(filter), None) => (StatusCode::OK, None, Some(filter)),
    };
    match page_html(state, principal, filter.as_ref(), notice, draft, now).await {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => internal_error(&error),
    }
}

/// One row of the table, formatted for display.
#[derive(Serialize)]
struct RowView {
    flag_id: i64,
    kind: &'static str,
    member_ref: String,
    provider_id: i64,
    provider_name: Option<String>,
    session_id: i64,
    session_start: String,
    days_since_session_end: i64,
    flag_age: String,
    reminders_sent: i64,
    balance_effect: String,
    cannot_book: bool,
    state: String,
    acknowledged_by: Option<String>,
    reason: Option<String>,
}

impl RowView {
    fn new(row: &ReportRow, now: DateTime<Utc>) -> Self {
        Self {
            flag_id: row.flag_id,
            kind: row.kind.as_str(),
            member_ref: row.member_ref.clone(),
            provider_id: row.provider_id,
            provider_name: row.provider_name.clone(),
            session_id: row.session_id,
            session_start: row.session_start.clone(),
            days_since_session_end: row.days_since_session_end,
            flag_age: describe_age(now - row.opened_at),
            reminders_sent: row.reminders_sent,
            balance_effect: row.balance_effect(),
            cannot_book: row
                .sessions_remaining
                .is_some_and(|remaining| remaining <= 0),
            state: report::state_label(row),
            acknowledged_by: row.acknowledged_by.clone(),
            reason: row.reason.clone(),
        }
    }
}

#[derive(Serialize)]
struct OptionView {
    value: String,
    label: String,
    selected: bool,
}

async fn page_html(
    state: &PageState,
    principal: &Principal,
    filter: Option<&ReportFilter>,
    notice: Option<Notice>,
    draft: Option<Draft>,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    let mut rows = match filter {
        Some(filter) => {
            // Loading one row more than shown reveals whether the list was cut.
            let page_filter = ReportFilter {
                limit: Some(PAGE_ROWS as i64 + 1),
                ..filter.clone()
            };
            report::load(&state.pool, &page_filter, now).await?
        }
        None => Vec::new(),
    };
    let truncated = rows.len() > PAGE_ROWS;
    rows.truncate(PAGE_ROWS);
    let providers = report::providers_with_open_flags(&state.pool).await?;
    // Without a valid filter no list was loaded, which the page must not
    // present as "no open flags".
    let listed = filter.is_some();
    let filter = filter.cloned().unwrap_or_default();

    let kinds: Vec<OptionView> = FlagKind::ALL
        .into_iter()
        .map(|kind| OptionView {
            value: kind.as_str().to_owned(),
            label: kind.as_str().to_owned(),
            selected: filter.kind == Some(kind),
        })
        .collect();
    let mut provider_options: Vec<OptionView> = providers
        .iter()
        .map(|provider| OptionView {
            value: provider.provider_id.to_string(),
            label: format!(
                "{} (#{}, {} open)",
                provider.name.as_deref().unwrap_or("(no name)"),
                provider.provider_id,
                provider.open_flags
            ),
            selected: filter.provider_id == Some(provider.provider_id),
        })
        .collect();
    // A provider whose flags were all resolved stays selectable while the
    // filter names it, so the form shows the filter that is applied.
    if let Some(provider_id) = filter.provider_id {
        if !provider_options.iter().any(|option| option.selected) {
            provider_options.push(OptionView {
                value: provider_id.to_string(),
                label: format!("#{provider_id} (no open flags)"),
                selected: true,
            });
        }
    }
    let views: Vec<RowView> = rows.iter().map(|row| RowView::new(row, now)).collect();
    let guard = state
        .guard
        .as_ref()
        .context("the page is rendered only for signed-in requests")?;

    let values = context! {
        rows => views,
        kinds,
        providers => provider_options,
        kind => filter.kind.map(FlagKind::as_str).unwrap_or(""),
        provider => filter.provider_id.map(|id| id.to_string()).unwrap_or_default(),
        filtered => filter.kind.is_some() || filter.provider_id.is_some(),
        listed,
        truncated,
        page_rows => PAGE_ROWS,
        csv_url => view_url(&filter, None).replacen(FLAGS_PATH, "/support/flags.csv", 1),
        notice,
        draft,
        csrf_token => guard.csrf_token(principal, now),
        signed_in_as => principal.actor(),
        generated_at => now.format("%Y-%m-%d %H:%M UTC").to_string(),
    };
    let html = state
        .templates
        .get_template(LIST_TEMPLATE)?
        .render(values)?;
    Ok(html)
}

/// Writes the age of a flag as "25 min", "5 h" or "3 d 4 h".
fn describe_age(age: Duration) -> String {
    let minutes = age.num_minutes().max(0);
    match minutes {
        0..60 => format!("{minutes} min"),
        60..1440 => format!("{} h", minutes / 60),
        _ => format!("{} d {} h", minutes / 1440, minutes % 1440 / 60),
    }
}

async fn download_csv(
    State(state): State<Arc<PageState>>,
    _signed_in: SignedIn,
    Query(query): Query<ViewQuery>,
) -> Response {
    let filter = match parse_filter(query.kind.as_deref(), query.provider.as_deref()) {
        Ok(filter) => filter,
        Err(message) => return plain_text(StatusCode::BAD_REQUEST, &message),
    };
    let now = state.now();
    let csv = async {
        let rows = report::load(&state.pool, &filter, now).await?;
        let mut body = Vec::new();
        report::write_spreadsheet_csv(&mut body, &rows)?;
        anyhow::Ok(body)
    };
    match csv.await {
        Ok(body) => {
            let disposition = format!(
                "attachment; filename=\"support-flags-{}.csv\"",
                now.format("%Y-%m-%d")
            );
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response()
        }
        Err(error) => internal_error(&error),
    }
}

/// The fields of the acknowledge and resolve forms. The filter fields
/// bring the browser back to the view it came from.
#[derive(Debug, Deserialize)]
struct ActionForm {
    csrf_token: Option<String>,
    kind: Option<String>,
    provider: Option<String>,
    note: Option<String>,
}

/// Reason an action's form was rejected before the flag was touched.
enum FormRejection {
    Forgery(auth::ForgeryError),
    Filter(String),
}

/// Checks the origin and the CSRF token of a POST, then parses the filter
/// it carries.
fn check_action_form(
    state: &PageState,
    principal: &Principal,
    headers: &HeaderMap,
    form: &ActionForm,
) -> Result<ReportFilter, FormRejection> {
    let origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    let guard = state
        .guard
        .as_ref()
        .expect("a signed-in request implies a configured guard");
    auth::check_origin(origin, host)
        .and_then(|()| guard.check_csrf_token(principal, form.csrf_token.as_deref(), state.now()))
        .map_err(FormRejection::Forgery)?;
    parse_filter(form.kind.as_deref(), form.provider.as_deref()).map_err(FormRejection::Filter)
}

async fn reject_form(
    state: &PageState,
    principal: &Principal,
    rejection: FormRejection,
) -> Response {
    match rejection {
        FormRejection::Forgery(error) => {
            tracing::warn!(%error, "support page POST rejected");
            plain_text(StatusCode::FORBIDDEN, &error.to_string())
        }
        FormRejection::Filter(message) => {
            render_page(state, principal, Err(message), None, None).await
        }
    }
}

/// Action a POST takes on a flag, named by the last segment of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FlagAction {
    Acknowledge,
    Resolve,
}

/// Acknowledges or resolves a flag, then sends the browser back to the
/// filtered view it came from, with a confirmation.
async fn change_flag(
    State(state): State<Arc<PageState>>,
    signed_in: SignedIn,
    Path((flag_id, action)): Path<(i64, FlagAction)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let principal = &signed_in.principal;
    let filter = match check_action_form(&state, principal, &headers, &form) {
        Ok(filter) => filter,
        Err(rejection) => return reject_form(&state, principal, rejection).await,
    };
    let now = state.now();
    let actor = principal.actor();
    let note = form.note.unwrap_or_default();

    let outcome = match action {
        FlagAction::Acknowledge => flags::acknowledge(&state.pool, flag_id, &actor, now)
            .await
            .map(|first| {
                if first.at == now && first.by == actor {
                    "acknowledged"
                } else {
                    "already_acknowledged"
                }
            }),
        FlagAction::Resolve => flags::resolve(&state.pool, flag_id, &actor, &note, now)
            .await
            .map(|()| "resolved"),
    };
    match outcome {
        Ok(done) => {
            // Who acted is recorded on the flag; the log keeps the event.
            tracing::info!(
                flag_id,
                outcome = done,
                "flag updated from the support page"
            );
            Redirect::to(&view_url(&filter, Some((done, flag_id)))).into_response()
        }
        Err(error) => {
            let draft = (action == FlagAction::Resolve).then_some(Draft { flag_id, note });
            action_failed(&state, principal, filter, flag_id, error, draft).await
        }
    }
}

/// Shows why an action on `flag_id` failed above the current list.
async fn action_failed(
    state: &PageState,
    principal: &Principal,
    filter: ReportFilter,
    flag_id: i64,
    error: FlagUpdateError,
    draft: Option<Draft>,
) -> Response {
    if !matches!(error, FlagUpdateError::Database(_)) {
        tracing::info!(flag_id, %error, "support page action rejected");
    }
    let (status, text) = match error {
        FlagUpdateError::NotFound(_) => (
            StatusCode::NOT_FOUND,
            format!("Flag {flag_id} was not found. The list below is current."),
        ),
        FlagUpdateError::AlreadyResolved(_) => (
            StatusCode::CONFLICT,
            format!("Flag {flag_id} is already resolved, so it was not changed."),
        ),
        FlagUpdateError::InvalidNote(reason) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Flag {flag_id} was not resolved: {reason}."),
        ),
        FlagUpdateError::Database(error) => return internal_error(&error.into()),
    };
    let notice = Some((status, Notice::error(text)));
    render_page(state, principal, Ok(filter), notice, draft).await
}

fn plain_text(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

fn internal_error(error: &anyhow::Error) -> Response {
    tracing::error!(error = format!("{error:#}"), "support page request failed");
    plain_text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The support page failed to read or change the flags; the server log has the cause. Try again.",
    )
}

/// Adds the headers every response of the page carries. Nothing is cached,
/// because the page shows member references. No script runs, no other site
/// may frame the page, and forms post only to this origin.
async fn add_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 5] = [
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_exposure_requires_credential_off_loopback() {
        let none = SupportSettings::default();
        let token = SupportSettings {
            token: Some(crate::config::Secret::new("0123456789abcdef")),
            ..SupportSettings::default()
        };
        for loopback in ["127.0.0.1:8080", "[::1]:8080", "[::ffff:127.0.0.1]:8080"] {
            let address: SocketAddr = loopback.parse().unwrap();
            assert!(check_exposure(address, &none).is_ok(), "{loopback}");
        }
        for exposed in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:8080"] {
            let address: SocketAddr = exposed.parse().unwrap();
            let error = check_exposure(address, &none).unwrap_err().to_string();
            assert!(error.contains(exposed), "error names {exposed}: {error}");
            assert!(
                error.contains("support.token"),
                "error names the key: {error}"
            );
            assert!(!error.contains('\n'), "one line: {error}");
            assert!(
                check_exposure(address, &token).is_ok(),
                "{exposed} with a token"
            );
        }
    }

    #[test]
    fn parse_filter_rejects_bad_values() {
        assert!(parse_filter(Some(""), Some("")).is_ok());
        let filter = parse_filter(Some("stale_hold"), Some("42")).unwrap();
        assert_eq!(filter.kind, Some(FlagKind::StaleHold));
        assert_eq!(filter.provider_id, Some(42));
        let error = parse_filter(Some("<b>"), None).unwrap_err();
        assert!(error.contains("<b>"), "names the value: {error}");
        for provider in ["x", "-1", "0"] {
            let error = parse_filter(None, Some(provider)).unwrap_err();
            assert!(error.contains(provider), "names the value: {error}");
        }
    }

    #[test]
    fn view_url_keeps_filter() {
        let filter = ReportFilter {
            kind: Some(FlagKind::MemberBlocked),
            provider_id: Some(7),
            ..ReportFilter::default()
        };
        assert_eq!(
            view_url(&filter, Some(("resolved", 3))),
            "/support/flags?kind=member_blocked&provider=7&done=resolved&flag=3"
        );
        assert_eq!(view_url(&ReportFilter::default(), None), "/support/flags");
    }

    #[test]
    fn describe_age_picks_unit() {
        assert_eq!(describe_age(Duration::minutes(25)), "25 min");
        assert_eq!(describe_age(Duration::minutes(5 * 60 + 59)), "5 h");
        assert_eq!(describe_age(Duration::hours(76)), "3 d 4 h");
        assert_eq!(describe_age(Duration::seconds(-5)), "0 min");
    }
}
