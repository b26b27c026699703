//! The support page served on a loopback port: authentication, CSRF
//! protection, the listed flags with their filters and order, the actions,
//! the CSV download, and one pass through it in headless Chromium. The
//! flags come from the real flag job.

use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION, ORIGIN, WWW_AUTHENTICATE};
use session_steward::config::{Secret, SupportSettings};
use session_steward::flags::FlagKind;
use session_steward::support_page;
use sqlx::PgPool;

use crate::cli::BINARY;
use crate::flags::{flag_worker, run_flag_job, set_period_end};
use crate::helpers::{friday_morning_los_angeles, member, provider, session};
use crate::webdriver::Browser;

const USERNAME: &str = "support";
const PASSWORD: &str = "correct horse battery";
const TOKEN: &str = "test-token-5f2a9c0e81d34b67";

const HOSTILE_PROVIDER: &str = "<script>alert(\"pwned\")</script>";
const FORMULA_PROVIDER: &str = "=HYPERLINK(\"http://example.invalid\",\"click\")";

/// How long after the flag run the page is opened, so flags show this age.
const PAGE_DELAY_HOURS: i64 = 2;

fn credentials() -> SupportSettings {
    SupportSettings {
        token: Some(Secret::new(TOKEN)),
        username: Some(Secret::new(USERNAME)),
        password: Some(Secret::new(PASSWORD)),
    }
}

/// The flags opened by the flag job over the dataset of `flagged_dataset`.
struct Flagged {
    /// member_blocked: Jane Doe, 1 session in total, with Ana Ruiz.
    blocked: i64,
    /// period_ending: Maria de la Cruz, with the provider named like a formula.
    period_ending: i64,
    /// stale_hold 20 days old: Omar Haddad, with the provider named like a
    /// script tag, in Berlin.
    stale_old: i64,
    /// stale_hold 15 days old: Lee Wong, with Ana Ruiz.
    stale_recent: i64,
    ana: i64,
    hostile: i64,
    formula: i64,
    /// When the flag job ran.
    flagged_at: DateTime<Utc>,
}

impl Flagged {
    /// Returns every flag id in the page's order.
    fn all_in_order(&self) -> Vec<i64> {
        vec![
            self.blocked,
            self.period_ending,
            self.stale_old,
            self.stale_recent,
        ]
    }

    /// Returns the time on the page's clock.
    fn page_time(&self) -> DateTime<Utc> {
        self.flagged_at + Duration::hours(PAGE_DELAY_HOURS)
    }
}

/// Creates providers, members and sessions, runs the reminder job (which
/// sends digests through a real SMTP server) and then the flag job.
async fn flagged_dataset(pool: &PgPool) -> Flagged {
    let (_server, worker) = flag_worker(pool);
    let now = friday_morning_los_angeles();
    let los_angeles = "America/Los_Angeles";
    let ana = provider(pool, "Ana Ruiz", Some("ana@example.org"), los_angeles).await;
    let formula = provider(pool, FORMULA_PROVIDER, Some("f@example.org"), los_angeles).await;
    let hostile = provider(
        pool,
        HOSTILE_PROVIDER,
        Some("h@example.org"),
        "Europe/Berlin",
    )
    .await;

    let jane = member(pool, "Jane Doe", 1, now).await;
    let blocked_session = session(pool, ana, jane, now - Duration::days(6)).await;
    let maria = member(pool, "Maria de la Cruz", 10, now).await;
    set_period_end(pool, maria.1, now + Duration::days(7)).await;
    let ending_session = session(pool, formula, maria, now - Duration::days(6)).await;
    let omar = member(pool, "Omar Haddad", 10, now).await;
    let old_session = session(pool, hostile, omar, now - Duration::days(20)).await;
    let lee = member(pool, "Lee Wong", 10, now).await;
    let recent_session = session(pool, ana, lee, now - Duration::days(15)).await;

    worker
        .run_reminders(now)
        .await
        .expect("run the reminder job");
    run_flag_job(&worker, now).await;

    Flagged {
        blocked: open_flag_id(pool, blocked_session, FlagKind::MemberBlocked).await,
        period_ending: open_flag_id(pool, ending_session, FlagKind::PeriodEnding).await,
        stale_old: open_flag_id(pool, old_session, FlagKind::StaleHold).await,
        stale_recent: open_flag_id(pool, recent_session, FlagKind::StaleHold).await,
        ana,
        hostile,
        formula,
        flagged_at: now,
    }
}

async fn open_flag_id(pool: &PgPool, session_id: i64, kind: FlagKind) -> i64 {
    sqlx::query_scalar(
        "SELECT id FROM flags WHERE session_id = $1 AND kind = $2 AND resolved_at IS NULL",
    )
    .bind(session_id)
    .bind(kind)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|error| panic!("no open {kind} flag on session {session_id}: {error}"))
}

/// Support's changes to one flag: (acknowledged_by, resolution, note).
type Changes = (Option<String>, Option<String>, Option<String>);

async fn changes(pool: &PgPool, flag_id: i64) -> Changes {
    sqlx::query_as("SELECT acknowledged_by, resolution::text, note FROM flags WHERE id = $1")
        .bind(flag_id)
        .fetch_one(pool)
        .await
        .expect("query the flag")
}

const UNCHANGED: Changes = (None, None, None);

/// The page served on an ephemeral loopback port, and a client that does
/// not follow redirects, so tests see each response.
struct Page {
    base: String,
    client: reqwest::Client,
}

impl Page {
    async fn start(pool: &PgPool, settings: &SupportSettings, now: DateTime<Utc>) -> Self {
        let router = support_page::routes_with_clock(pool.clone(), settings, Arc::new(move || now))
            .expect("build the support page's routes");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("read the bound address");
        tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("serve the support page")
        });
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("build the HTTP client");
        Self {
            base: format!("http://{address}"),
            client,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a GET request signed in with basic authentication.
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .basic_auth(USERNAME, Some(PASSWORD))
            .send()
            .await
            .expect("send GET")
    }

    /// Returns the status and body of a signed-in GET.
    async fn html(&self, path: &str) -> (StatusCode, String) {
        let response = self.get(path).await;
        let status = response.status();
        (status, response.text().await.expect("read the body"))
    }

    /// Returns the CSRF token of the rendered page.
    async fn csrf_token(&self) -> String {
        let (_, html) = self.html("/support/flags").await;
        attribute_after(&html, "name=\"csrf_token\" value=\"").expect("the page has a CSRF token")
    }

    /// Posts `fields` signed in with basic authentication and an `Origin`
    /// header naming this server, as a browser would.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.post_from(path, fields, Some(&self.base.clone())).await
    }

    async fn post_from(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url(path))
            .basic_auth(USERNAME, Some(PASSWORD))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(fields));
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        request.send().await.expect("send POST")
    }
}

/// Encodes `fields` as application/x-www-form-urlencoded.
fn form_body(fields: &[(&str, &str)]) -> String {
    let url =
        reqwest::Url::parse_with_params("http://localhost/", fields).expect("encode the form");
    url.query().unwrap_or_default().to_owned()
}

/// Returns the text from after `marker` to the next double quote.
fn attribute_after(html: &str, marker: &str) -> Option<String> {
    let start = html.find(marker)? + marker.len();
    let length = html[start..].find('"')?;
    Some(html[start..start + length].to_owned())
}

/// Returns the flag ids of the table's rows, in order.
fn listed_flags(html: &str) -> Vec<i64> {
    html.split("data-flag-id=\"")
        .skip(1)
        .map(|rest| {
            let id = &rest[..rest.find('"').expect("closing quote")];
            id.parse().expect("a numeric flag id")
        })
        .collect()
}

/// Returns the HTML of the table row of `flag_id`.
fn row_of(html: &str, flag_id: i64) -> &str {
    let marker = format!("data-flag-id=\"{flag_id}\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("flag {flag_id} is not listed"));
    let end = html[start..].find("</tr>").expect("the row ends") + start;
    &html[start..end]
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn requests_without_credential_rejected(pool: PgPool) {
    let flagged = flagged_dataset(&pool).await;
    let page = Page::start(&pool, &credentials(), flagged.page_time()).await;
    let url = page.url("/support/flags");

    let anonymous = page.client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> = anonymous
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert!(
        challenges
            .iter()
            .any(|value| value.starts_with("Basic realm=")),
        "browsers are asked for basic credentials: {challenges:?}"
    );

    let wrong = [
        page.client
            .get(&url)
            .basic_auth(USERNAME, Some("wrong password")),
        page.client.get(&url).basic_auth("someone", Some(PASSWORD)),
        page.client
            .get(&url)
            .bearer_auth("test-token-wrong-0000000000"),
        page.client.get(&url).bearer_auth(PASSWORD),
        page.client.get(page.url("/support/flags.csv")),
        page.client
            .get(page.url("/support/flags.csv"))
            .basic_auth(USERNAME, Some("x")),
    ];
    for (index, request) in wrong.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "request {index}"
        );
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("Jane") && !body.contains("J. D."),
            "request {index} leaks rows: {body}"
        );
    }

    let post = page
        .client
        .post(page.url(&format!("/support/flags/{}/resolve", flagged.blocked)))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form_body(&[("note", "called the provider")]))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED, "anonymous POST");
    assert_eq!(changes(&pool, flagged.blocked).await, UNCHANGED);

    let by_token = page
        .client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_token.status(),
        StatusCode::OK,
        "the bearer token signs in"
    );
    let (status, html) = page.html("/support/flags").await;
    assert_eq!(status, StatusCode::OK, "basic credentials sign in");
    assert_eq!(listed_flags(&html), flagged.all_in_order());
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn page_without_credential_disabled(pool: PgPool) {
    let page = Page::start(
        &pool,
        &SupportSettings::default(),
        friday_morning_los_angeles(),
    )
    .await;
    for path in ["/support/flags", "/support/flags.csv"] {
        let response = page.get(path).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains("support.token"), "names the key: {body}");
        assert!(
            body.contains("SESSION_STEWARD_SUPPORT__TOKEN"),
            "names the variable: {body}"
        );
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn forged_posts_rejected_flag_unchanged(pool: PgPool) {
    let flagged = flagged_dataset(&pool).await;
    let page = Page::start(&pool, &credentials(), flagged.page_time()).await;
    let token = page.csrf_token().await;
    let resolve = format!("/support/flags/{}/resolve", flagged.blocked);
    let acknowledge = format!("/support/flags/{}/acknowledge", flagged.blocked);
    let note = ("note", "cancelled the session");

    let (issued_at, signature) = token.split_once('.').expect("token has two parts");
    let moved_time = format!("{}.{signature}", issued_at.parse::<i64>().unwrap() - 60);
    let other_page = Page::start(
        &pool,
        &SupportSettings {
            token: Some(Secret::new("another-token-0123456789")),
            ..credentials()
        },
        flagged.page_time(),
    )
    .await;
    let token_of_other_credential = other_page.csrf_token().await;
    let bad_tokens = [
        None,
        Some(""),
        Some("garbage"),
        Some(moved_time.as_str()),
        Some(token_of_other_credential.as_str()),
    ];
    for bad_token in bad_tokens {
        for path in [&resolve, &acknowledge] {
            let mut fields = vec![note];
            if let Some(bad_token) = bad_token {
                fields.push(("csrf_token", bad_token));
            }
            let response = page.post(path, &fields).await;
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "POST {path} with token {bad_token:?}"
            );
            let body = response.text().await.unwrap();
            assert!(
                body.contains("CSRF token"),
                "explains the rejection: {body}"
            );
        }
    }

    let fields = [note, ("csrf_token", token.as_str())];
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let response = page.post_from(&resolve, &fields, Some(origin)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "Origin {origin}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains("another origin"),
            "explains the rejection: {body}"
        );
    }
    assert_eq!(changes(&pool, flagged.blocked).await, UNCHANGED);

    let accepted = page.post_from(&resolve, &fields, None).await;
    assert_eq!(
        accepted.status(),
        StatusCode::SEE_OTHER,
        "a valid token without Origin passes, as from an older browser"
    );
    assert_eq!(
        changes(&pool, flagged.blocked).await,
        (
            None,
            Some("resolved_by_support".to_owned()),
            Some("cancelled the session".to_owned())
        )
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn filters_select_kind_and_provider(pool: PgPool) {
    let flagged = flagged_dataset(&pool).await;
    let page = Page::start(&pool, &credentials(), flagged.page_time()).await;

    let cases: [(String, Vec<i64>); 9] = [
        ("/support/flags".to_owned(), flagged.all_in_order()),
        (
            "/support/flags?kind=&provider=".to_owned(),
            flagged.all_in_order(),
        ),
        (
            "/support/flags?kind=stale_hold".to_owned(),
            vec![flagged.stale_old, flagged.stale_recent],
        ),
        (
            "/support/flags?kind=member_blocked".to_owned(),
            vec![flagged.blocked],
        ),
        (
            "/support/flags?kind=provider_unreachable".to_owned(),
            vec![],
        ),
        (
            format!("/support/flags?provider={}", flagged.ana),
            vec![flagged.blocked, flagged.stale_recent],
        ),
        (
            format!("/support/flags?provider={}", flagged.formula),
            vec![flagged.period_ending],
        ),
        (
            format!("/support/flags?kind=stale_hold&provider={}", flagged.ana),
            vec![flagged.stale_recent],
        ),
        (
            format!(
                "/support/flags?kind=period_ending&provider={}",
                flagged.hostile
            ),
            vec![],
        ),
    ];
    for (path, expected) in cases {
        let (status, html) = page.html(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(listed_flags(&html), expected, "rows of {path}");
    }

    let (_, html) = page.html("/support/flags?kind=stale_hold").await;
    assert!(
        html.contains("<option value=\"stale_hold\" selected>"),
        "the form shows the applied kind"
    );
    assert!(
        html.contains("flags.csv?kind=stale_hold\" id=\"csv-link\""),
        "the CSV link carries the filter"
    );

    for (path, message) in [
        ("/support/flags?kind=stale", "unknown flag kind \"stale\""),
        ("/support/flags?provider=abc", "invalid provider \"abc\""),
    ] {
        let (status, html) = page.html(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            html.contains(&message.replace('"', "&quot;")),
            "{path} explains: {html}"
        );
        assert_eq!(
            listed_flags(&html),
            Vec::<i64>::new(),
            "{path} lists nothing"
        );
        assert!(
            !html.contains("No open flags") && !html.contains("0 open flags"),
            "{path} does not claim that nothing is open"
        );
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn rows_show_what_support_needs(pool: PgPool) {
    let flagged = flagged_dataset(&pool).await;
    let page = Page::start(&pool, &credentials(), flagged.page_time()).await;
    let (_, html) = page.html("/support/flags").await;

    for full_name in ["Jane Doe", "Maria de la Cruz", "Omar Haddad", "Lee Wong"] {
        assert!(!html.contains(full_name), "the page shows {full_name}");
    }
    for email in ["ana@example.org", "f@example.org", "h@example.org"] {
        assert!(!html.contains(email), "the page shows {email}");
    }

    let blocked = row_of(&html, flagged.blocked);
    assert!(
        blocked.contains("<td>J. D.</td>"),
        "member by initials: {blocked}"
    );
    assert!(blocked.contains("Ana Ruiz"), "provider name: {blocked}");
    // The session ended six days before the flag run at 18:00 UTC and
    // lasted 50 minutes: 17:10 UTC is 09:10 in Los Angeles.
    assert!(
        blocked.contains("2026-11-28 09:10 PST"),
        "session time in the provider's zone: {blocked}"
    );
    assert!(blocked.contains("<td>2 h</td>"), "flag age: {blocked}");
    assert!(
        blocked.contains("<td class=\"number\">1</td>"),
        "one digest listed the session: {blocked}"
    );
    assert!(
        blocked.contains("1 on hold, 0 of 1 left (cannot book)"),
        "balance effect: {blocked}"
    );

    let old = row_of(&html, flagged.stale_old);
    assert!(old.contains("<td>O. H.</td>"), "member by initials: {old}");
    assert!(old.contains("2026-11-14 18:10 CET"), "Berlin time: {old}");
    assert!(
        old.contains("<td class=\"number\">0</td>"),
        "an escalated session gets no digest: {old}"
    );
    assert!(
        old.contains("1 on hold, 9 of 10 left"),
        "balance effect: {old}"
    );

    let ending = row_of(&html, flagged.period_ending);
    assert!(
        ending.contains("benefit period ends 2026-12-11"),
        "reason: {ending}"
    );
    assert!(ending.contains("M. C."), "member by initials: {ending}");
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn hostile_names_escaped(pool: PgPool) {
    let flagged = flagged_dataset(&pool).await;
    let page = Page::start(&pool, &credentials(), flagged.page_time()).await;

    let (_, html) = page.html("/support/flags").await;
    assert!(
        !html.contains("<script"),
        "a raw script tag reached the page"
    );
    let escaped = "&lt;script&gt;alert(&quot;pwned&quot;)&lt;&#x2f;script&gt;";
    assert!(
        row_of(&html, flagged.stale_old).contains(escaped),
        "the provider's name is shown escaped in its row"
    );
    let option = format!("<option value=\"{}\">{escaped}", flagged.hostile);
    assert!(html.contains(&option), "and in the provider filter");

    let (status, html) = page.html("/support/flags?kind=%3Cscript%3E").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        !html.contains("<script"),
        "the rejected filter is echoed escaped"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn actions_confirm_or_explain(pool: PgPool) {
    let flagged = flagged_dataset(&pool).await;
    let page = Page::start(&pool, &credentials(), flagged.page_time()).await;
    let token = page.csrf_token().await;
    let kind = ("kind", "stale_hold");
    let provider = flagged.hostile.to_string();
    let filter = [
        kind,
        ("provider", provider.as_str()),
        ("csrf_token", token.as_str()),
    ];

    let acknowledged = page
        .post(
            &format!("/support/flags/{}/acknowledge", flagged.stale_old),
            &filter,
        )
        .await;
    assert_eq!(acknowledged.status(), StatusCode::SEE_OTHER);
    let location = acknowledged.headers()[LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        location,
        format!(
            "/support/flags?kind=stale_hold&provider={provider}&done=acknowledged&flag={}",
            flagged.stale_old
        ),
        "back to the same filtered view"
    );
    assert_eq!(
        changes(&pool, flagged.stale_old).await,
        (Some(USERNAME.to_owned()), None, None)
    );
    let (_, html) = page.html(&location).await;
    assert!(html.contains(&format!("Flag {} acknowledged.", flagged.stale_old)));
    // A link cannot claim an action the flags do not bear out.
    let (_, forged) = page
        .html("/support/flags?done=acknowledged&flag=999999")
        .await;
    assert!(!forged.contains("Flag 999999 acknowledged."), "{forged}");
    let (_, forged) = page
        .html(&format!(
            "/support/flags?done=resolved&flag={}",
            flagged.stale_old
        ))
        .await;
    assert!(!forged.contains("resolved. It no longer"), "{forged}");
    assert_eq!(listed_flags(&html), vec![flagged.stale_old], "filter kept");
    assert!(
        row_of(&html, flagged.stale_old)
            .contains("acknowledged<div class=\"muted\">by support</div>")
    );

    let resolve = format!("/support/flags/{}/resolve", flagged.stale_old);
    let mut with_note = filter.to_vec();
    with_note.push(("note", "   "));
    let blank = page.post(&resolve, &with_note).await;
    assert_eq!(
        blank.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "blank note"
    );
    let html = blank.text().await.unwrap();
    assert!(
        html.contains(&format!(
            "Flag {} was not resolved: the note is empty",
            flagged.stale_old
        )),
        "explains the blank note: {html}"
    );
    assert_eq!(
        listed_flags(&html),
        vec![flagged.stale_old],
        "the list stays filtered"
    );

    with_note.pop();
    with_note.push(("note", "bad \u{7} bell"));
    let control = page.post(&resolve, &with_note).await;
    assert_eq!(
        control.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "control characters"
    );
    let html = control.text().await.unwrap();
    assert!(
        html.contains("control characters"),
        "explains the note: {html}"
    );
    assert!(
        html.contains("<details open>"),
        "the rejected note's form stays open"
    );

    // What the form decoder makes of bytes that are not UTF-8.
    with_note.pop();
    with_note.push(("note", "abc\u{fffd}def"));
    let garbled = page.post(&resolve, &with_note).await;
    assert_eq!(
        garbled.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "a note with replaced bytes"
    );
    assert_eq!(
        changes(&pool, flagged.stale_old).await,
        (Some(USERNAME.to_owned()), None, None),
        "rejected notes change nothing"
    );

    let unknown = page
        .post(
            "/support/flags/999999/resolve",
            &[("csrf_token", token.as_str()), ("note", "done")],
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let html = unknown.text().await.unwrap();
    assert!(
        html.contains("Flag 999999 was not found"),
        "explains: {html}"
    );

    with_note.pop();
    with_note.push(("note", "Provider confirmed a no-show; invoice submitted."));
    let resolved = page.post(&resolve, &with_note).await;
    assert_eq!(resolved.status(), StatusCode::SEE_OTHER);
    let location = resolved.headers()[LOCATION].to_str().unwrap().to_owned();
    let (_, html) = page.html(&location).await;
    assert!(
        html.contains(&format!("Flag {} resolved.", flagged.stale_old)),
        "confirms: {html}"
    );
    assert_eq!(
        listed_flags(&html),
        Vec::<i64>::new(),
        "the resolved flag left the list"
    );
    assert_eq!(
        changes(&pool, flagged.stale_old).await,
        (
            Some(USERNAME.to_owned()),
            Some("resolved_by_support".to_owned()),
            Some("Provider confirmed a no-show; invoice submitted.".to_owned())
        )
    );

    for action in ["resolve", "acknowledge"] {
        let again = page
            .post(
                &format!("/support/flags/{}/{action}", flagged.stale_old),
                &with_note,
            )
            .await;
        assert_eq!(
            again.status(),
            StatusCode::CONFLICT,
            "{action} a resolved flag"
        );
        let html = again.text().await.unwrap();
        assert!(html.contains("is already resolved"), "explains: {html}");
    }
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn csv_matches_view_and_spreadsheet_safe(pool: PgPool) {
    let flagged = flagged_dataset(&pool).await;
    let page = Page::start(&pool, &credentials(), flagged.page_time()).await;
    let token = page.csrf_token().await;
    let acknowledged = page
        .post(
            &format!("/support/flags/{}/acknowledge", flagged.period_ending),
            &[("csrf_token", token.as_str())],
        )
        .await;
    assert_eq!(acknowledged.status(), StatusCode::SEE_OTHER);

    let response = page.get("/support/flags.csv").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "text/csv; charset=utf-8");
    assert_eq!(
        response.headers()[CONTENT_DISPOSITION],
        "attachment; filename=\"support-flags-2026-12-04.csv\""
    );
    let body = response.bytes().await.unwrap();
    let text = std::str::from_utf8(&body).expect("UTF-8");
    let text = text
        .strip_prefix('\u{feff}')
        .expect("starts with a byte order mark");
    assert!(text.ends_with("\r\n"), "ends with CRLF");
    assert_eq!(
        text.matches('\n').count(),
        text.matches("\r\n").count(),
        "every line ends with CRLF"
    );

    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|title| title == name)
            .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
    };
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let ids: Vec<i64> = records
        .iter()
        .map(|record| record[column("flag_id")].parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        flagged.all_in_order(),
        "the same rows as the page, in order"
    );

    let by_id = |id: i64| &records[ids.iter().position(|listed| *listed == id).unwrap()];
    let ending = by_id(flagged.period_ending);
    assert_eq!(
        &ending[column("provider_name")],
        format!("'{FORMULA_PROVIDER}")
    );
    assert_eq!(&ending[column("state")], "acknowledged");
    assert_eq!(&ending[column("member_ref")], "M. C.");
    let old = by_id(flagged.stale_old);
    assert_eq!(
        &old[column("provider_name")],
        HOSTILE_PROVIDER,
        "CSV is not HTML"
    );
    assert_eq!(&old[column("reminders_sent")], "0");
    assert_eq!(&old[column("balance_effect")], "1 on hold, 9 of 10 left");
    for record in &records {
        for cell in record {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t']),
                "cell {cell:?} would run as a formula"
            );
        }
    }

    let filtered = page.get("/support/flags.csv?kind=stale_hold").await;
    let text = filtered.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let ids: Vec<i64> = reader
        .records()
        .map(|record| record.unwrap()[0].parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![flagged.stale_old, flagged.stale_recent],
        "the filter applies"
    );

    let bad = page.get("/support/flags.csv?kind=nope").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("unknown flag kind \"nope\"")
    );
}

#[test]
fn support_credentials_from_environment() {
    let cases = [
        // Kept as written: read as a number, "000123" would be 3 characters.
        (
            vec![("SESSION_STEWARD_SUPPORT__TOKEN", "000123")],
            "support.token has 6 characters",
        ),
        (
            vec![("SESSION_STEWARD_SUPPORT__USERNAME", "support")],
            "support.username and support.password must be set together",
        ),
        (
            vec![
                ("SESSION_STEWARD_SUPPORT__USERNAME", "a:b"),
                ("SESSION_STEWARD_SUPPORT__PASSWORD", "secret-value"),
            ],
            "support.username \"a:b\"",
        ),
    ];
    for (variables, expected) in cases {
        let output = Command::new(BINARY)
            .env_remove("DATABASE_URL")
            .envs(variables.iter().copied())
            .args(["flags"])
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variables:?} accepted");
        assert!(stderr.contains(expected), "{variables:?}: {stderr}");
        assert!(
            !stderr.contains("secret-value"),
            "password printed: {stderr}"
        );
    }

    let output = Command::new(BINARY)
        .env_remove("DATABASE_URL")
        .env("SESSION_STEWARD_SUPPORT__TOKEN", "0000111122223333")
        .env("SESSION_STEWARD_SUPPORT__USERNAME", "1234")
        .env("SESSION_STEWARD_SUPPORT__PASSWORD", "5678")
        .args(["flags"])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no database configured"),
        "numeric credentials accepted, then the missing database reported: {stderr}"
    );
}

#[sqlx::test(migrator = "session_steward::db::MIGRATOR")]
async fn chromium_filters_resolves_downloads(pool: PgPool) {
    let flagged = flagged_dataset(&pool).await;
    let page = Page::start(&pool, &credentials(), flagged.page_time()).await;
    let browser = Browser::start().await;
    browser.set_window_size(1400, 900).await;

    // Chromium takes credentials in the URL for a top-level navigation and
    // answers the server's basic-auth challenge with them.
    let signed_in_base = page.base.replacen(
        "http://",
        &format!("http://{USERNAME}:{}@", PASSWORD.replace(' ', "%20")),
        1,
    );
    browser
        .open(&format!("{signed_in_base}/support/flags"))
        .await;
    browser.wait_for_text("4 open flags").await;

    let kind_option = browser
        .find("select[name=kind] option[value=stale_hold]")
        .await;
    browser.click(&kind_option).await;
    let filter_button = browser.find("form.filters button[type=submit]").await;
    browser.click(&filter_button).await;
    browser
        .wait_for_text("2 open flags matching the filter")
        .await;
    assert!(
        browser
            .current_url()
            .await
            .ends_with("/support/flags?kind=stale_hold&provider="),
        "the filter is a plain GET form"
    );
    let rows = browser.find_all("#flags tbody tr[data-flag-id]").await;
    let mut listed = Vec::new();
    for row in &rows {
        let id = browser
            .attribute(row, "data-flag-id")
            .await
            .expect("row has a flag id");
        listed.push(id.parse::<i64>().unwrap());
    }
    assert_eq!(listed, vec![flagged.stale_old, flagged.stale_recent]);
    let source = browser.page_source().await;
    assert!(!source.contains("<script"), "the hostile name stayed text");
    let table = browser.find("#flags").await;
    assert!(
        browser.text(&table).await.contains(HOSTILE_PROVIDER),
        "the hostile name is shown as written"
    );

    let screenshot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/support-page.png");
    browser.screenshot(&screenshot).await;

    let row = format!("tr[data-flag-id=\"{}\"]", flagged.stale_recent);
    let summary = browser.find(&format!("{row} summary")).await;
    browser.click(&summary).await;
    let note = browser.find(&format!("{row} textarea[name=note]")).await;
    browser
        .type_text(&note, "Provider cancelled; the member was told.")
        .await;
    let resolve = browser
        .find(&format!("{row} form[action$=\"/resolve\"] button"))
        .await;
    browser.click(&resolve).await;
    browser
        .wait_for_text(&format!("Flag {} resolved.", flagged.stale_recent))
        .await;
    assert!(
        browser.current_url().await.contains("kind=stale_hold"),
        "back to the filtered view"
    );
    assert_eq!(
        changes(&pool, flagged.stale_recent).await,
        (
            None,
            Some("resolved_by_support".to_owned()),
            Some("Provider cancelled; the member was told.".to_owned())
        )
    );

    let csv_link = browser.find("#csv-link").await;
    browser.click(&csv_link).await;
    let download = browser.wait_for_download(".csv").await;
    assert_eq!(
        download.file_name().unwrap().to_string_lossy(),
        "support-flags-2026-12-04.csv"
    );
    let bytes = std::fs::read(&download).expect("read the download");
    let text = String::from_utf8(bytes).expect("UTF-8");
    let text = text.strip_prefix('\u{feff}').expect("byte order mark");
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert_eq!(
        lines.len(),
        2,
        "a header and the remaining stale_hold flag: {text}"
    );
    assert!(
        lines[0].starts_with("flag_id,kind,"),
        "header row: {}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("{},stale_hold,", flagged.stale_old)),
        "the filtered view: {}",
        lines[1]
    );
}
