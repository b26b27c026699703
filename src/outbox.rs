//! The outbox's delivery step: claims recorded digests, re-checks their
//! sessions, sends each one and records the result right after its own
//! conversation with the transport.
//!
//! A digest is recorded before any sending starts and marked after, so a
//! crash leaves it `pending` and a later pass sends it. Only a message that
//! was mid-conversation at a crash can go out twice, and it then carries
//! the same `Message-ID`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sqlx::PgPool;
use tracing::{debug, info, warn};

use crate::compose::{Composer, DigestSession};
use crate::config::ReminderSettings;
use crate::email::{SendError, Transport};
use crate::flags::{self, FlagKind};
use crate::metrics::{EmailOutcome, Metrics};
use crate::policy::SendWindow;
use crate::recipient::{self, ProviderRow, Recipient, Unreachable};
use crate::shutdown::Shutdown;

/// Counts from one delivery pass.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeliveryCounts {
    pub digests_sent: u64,
    /// Digests not sent because every session had left `scheduled`.
    pub digests_empty: u64,
    pub digests_retrying: u64,
    /// Retries or leftovers whose provider's send window was closed; they
    /// wait for the next opening.
    pub digests_deferred: u64,
    pub digests_failed: u64,
    /// Sessions dropped from digests because they had left `scheduled`.
    pub sessions_dropped: u64,
    /// Sessions in the sent digests, by reminder stage.
    pub sessions_by_stage: BTreeMap<i16, u64>,
}

impl DeliveryCounts {
    /// Adds another sender's counts to these.
    pub fn add(&mut self, other: &DeliveryCounts) {
        self.digests_sent += other.digests_sent;
        self.digests_empty += other.digests_empty;
        self.digests_retrying += other.digests_retrying;
        self.digests_deferred += other.digests_deferred;
        self.digests_failed += other.digests_failed;
        self.sessions_dropped += other.sessions_dropped;
        for (stage, count) in &other.sessions_by_stage {
            *self.sessions_by_stage.entry(*stage).or_default() += count;
        }
    }
}

/// Kind of an outbox row, stored in the column `reminders.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "reminder_kind", rename_all = "snake_case")]
pub enum DigestKind {
    ProviderDigest,
    SupportDigest,
}

#[derive(Debug, sqlx::FromRow)]
struct ClaimedDigest {
    id: i64,
    reminder_key: String,
    kind: DigestKind,
    /// `None` for a support digest.
    provider_id: Option<i64>,
    attempts: i32,
}

/// One digest item. Times a chrono value cannot hold (PostgreSQL's
/// `infinity`, or years past 9999) arrive as NULL.
#[derive(Debug, sqlx::FromRow)]
struct ItemRow {
    reminder_id: i64,
    session_id: i64,
    stage: i16,
    still_scheduled: bool,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    member_name: Option<String>,
}

/// Sessions and providers of a claimed batch, read in two queries for the
/// whole batch rather than two per message.
struct BatchContext {
    items: HashMap<i64, Vec<ItemRow>>,
    recipients: HashMap<i64, Result<Recipient, String>>,
}

impl BatchContext {
    /// Returns the provider as checked when the batch was claimed, or the
    /// reason it cannot be reached.
    fn recipient(&self, provider_id: Option<i64>) -> Result<&Recipient, String> {
        let Some(provider_id) = provider_id else {
            return Err("digest has no provider".to_owned());
        };
        match self.recipients.get(&provider_id) {
            Some(Ok(recipient)) => Ok(recipient),
            Some(Err(reason)) => Err(reason.clone()),
            None => Err("provider not found".to_owned()),
        }
    }
}

/// The digests of a batch still waiting for their turn, whose leases the
/// statement that records a message's outcome extends.
struct LeaseRenewal<'a> {
    waiting: &'a [i64],
    token: i64,
    until: DateTime<Utc>,
}

/// The outcome recorded for one digest.
enum Outcome {
    Sent,
    Empty,
    Retry {
        error: String,
        next_attempt_at: DateTime<Utc>,
    },
    /// Not attempted: the provider's send window is closed.
    Defer {
        next_attempt_at: DateTime<Utc>,
    },
    /// `permanent` marks failures that say the provider cannot be reached,
    /// which open provider_unreachable flags; running out of attempts on
    /// transient errors does not.
    Failed {
        error: String,
        permanent: bool,
    },
}

/// Delivers due digests, with the policies fixed at start-up.
pub struct Deliverer {
    pub composer: Composer,
    pub transport: Transport,
    pub settings: ReminderSettings,
    pub window: SendWindow,
    /// Checked before each message: once requested, the pass hands the
    /// rest of its batch back and returns.
    pub shutdown: Shutdown,
    /// Claim tokens of the batches the senders hold right now.
    pub held_tokens: Mutex<HashSet<i64>>,
    /// Counts each message sent, retried or failed.
    pub metrics: Metrics,
}

/// Most digests one sender claims at a time.
const MAX_CLAIM: u32 = 5;

/// Transient failures in a row after which a sender stops for this pass,
/// so a relay outage costs each digest one attempt per tick, not all.
const CIRCUIT_BREAKER_FAILURES: u32 = 3;

/// The instant a pass started, in the job's clock, and when, in real time,
/// so leases follow the time that really passes during a long pass.
#[derive(Debug, Clone, Copy)]
struct PassClock {
    started_at: DateTime<Utc>,
    started: Instant,
}

impl PassClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.started.elapsed()).unwrap_or_default();
        self.started_at + elapsed
    }
}

impl Deliverer {
    pub fn new(
        composer: Composer,
        transport: Transport,
        settings: ReminderSettings,
        window: SendWindow,
    ) -> Self {
        Self {
            composer,
            transport,
            settings,
            window,
            shutdown: Shutdown::never(),
            held_tokens: Mutex::new(HashSet::new()),
            metrics: Metrics::new(),
        }
    }

    /// Sends every digest that is due at `now`. `delivery_concurrency`
    /// senders run side by side, each claiming its own batches, so each
    /// digest still gets its own conversation and its own status update.
    pub async fn run_once(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
    ) -> anyhow::Result<DeliveryCounts> {
        let clock = PassClock {
            started_at: now,
            started: Instant::now(),
        };
        let senders = self.settings.delivery_concurrency.max(1);
        // Small claims let every sender get work and bound what a stalled
        // sender holds.
        let claim_size = (self.settings.delivery_batch_size / senders).clamp(1, MAX_CLAIM);
        let results = futures_util::future::join_all(
            (0..senders).map(|_| self.run_sender(pool, clock, claim_size)),
        )
        .await;

        // The first error fails the pass and is logged with the job run;
        // any others would be lost, so they are logged here.
        let mut counts = DeliveryCounts::default();
        let mut first_error = None;
        for result in results {
            match result {
                Ok(sender_counts) => counts.add(&sender_counts),
                Err(error) if first_error.is_none() => first_error = Some(error),
                Err(error) => {
                    warn!(error = %format!("{error:#}"), "another sender failed in the same pass")
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(counts),
        }
    }

    /// Runs one sender, which claims batches until none is due, shutdown is
    /// requested, or the SMTP server keeps failing.
    async fn run_sender(
        &self,
        pool: &PgPool,
        clock: PassClock,
        claim_size: u32,
    ) -> anyhow::Result<DeliveryCounts> {
        let mut counts = DeliveryCounts::default();
        let mut failures_in_a_row = 0;
        loop {
            if self.shutdown.is_requested() {
                return Ok(counts);
            }
            let token = new_lease_token();
            let batch = self.claim_batch(pool, clock, claim_size, token).await?;
            if batch.is_empty() {
                break;
            }
            self.held_tokens
                .lock()
                .expect("token lock is never poisoned")
                .insert(token);

            let context = load_batch(pool, &batch).await?;
            // The claim gave every digest of the batch a fresh lease. Each
            // outcome recorded below extends the leases of the digests still
            // waiting, and leaves out those another sender has taken since.
            let mut leased: HashSet<i64> = batch.iter().map(|digest| digest.id).collect();
            for (index, digest) in batch.iter().enumerate() {
                let stop = if self.shutdown.is_requested() {
                    Some("delivery stopped for shutdown; unsent digests released")
                } else if failures_in_a_row >= CIRCUIT_BREAKER_FAILURES {
                    Some("SMTP server keeps failing; unsent digests released until the next tick")
                } else {
                    None
                };
                if let Some(reason) = stop {
                    let unsent: Vec<i64> = batch[index..].iter().map(|digest| digest.id).collect();
                    release_leases(pool, &unsent, token).await?;
                    self.held_tokens
                        .lock()
                        .expect("token lock is never poisoned")
                        .remove(&token);
                    warn!(released = unsent.len(), failures_in_a_row, "{reason}");
                    return Ok(counts);
                }

                // A digest that waited in this batch past its lease may have
                // been claimed by another sender; only the lease holder sends.
                if !leased.contains(&digest.id) {
                    debug!(
                        reminder_id = digest.id,
                        "lease lost to another sender; digest skipped"
                    );
                    continue;
                }
                let waiting: Vec<i64> = batch[index + 1..]
                    .iter()
                    .map(|digest| digest.id)
                    .filter(|id| leased.contains(id))
                    .collect();
                let renewal = LeaseRenewal {
                    waiting: &waiting,
                    token,
                    until: clock.now() + self.settings.lease.to_chrono(),
                };
                let retrying_before = counts.digests_retrying;
                leased = self
                    .deliver(pool, clock.now(), digest, &context, renewal, &mut counts)
                    .await?;
                if counts.digests_retrying > retrying_before {
                    failures_in_a_row += 1;
                } else {
                    failures_in_a_row = 0;
                }
            }
            self.held_tokens
                .lock()
                .expect("token lock is never poisoned")
                .remove(&token);
        }
        Ok(counts)
    }

    /// Hands back every digest this deliverer still holds a claim on. The
    /// daemon calls it when the shutdown grace period ends with a sender
    /// stuck in a conversation, so other processes need not wait for the
    /// lease. The digest in that conversation may then be sent twice.
    pub async fn release_all_claims(&self, pool: &PgPool) -> sqlx::Result<u64> {
        let tokens: Vec<i64> = self
            .held_tokens
            .lock()
            .expect("token lock is never poisoned")
            .drain()
            .collect();
        let released = sqlx::query(
            "UPDATE reminders SET lease_until = NULL, lease_token = NULL, attempts = attempts - 1
             WHERE lease_token = ANY($1) AND status = 'pending'",
        )
        .bind(&tokens)
        .execute(pool)
        .await?;
        Ok(released.rows_affected())
    }

    /// Leases up to `claim_size` digests with `token`. Only digests due when
    /// the pass started qualify, so a retry scheduled during the pass waits
    /// for the next tick instead of stretching this one. `SKIP LOCKED` and
    /// the lease keep two senders from taking the same digest.
    async fn claim_batch(
        &self,
        pool: &PgPool,
        clock: PassClock,
        claim_size: u32,
        token: i64,
    ) -> sqlx::Result<Vec<ClaimedDigest>> {
        let now = clock.now();
        sqlx::query_as(
            "UPDATE reminders SET lease_until = $2, lease_token = $4, attempts = attempts + 1
             WHERE id IN (
                 SELECT id FROM reminders
                 WHERE status = 'pending' AND next_attempt_at <= $5
                   AND (lease_until IS NULL OR lease_until <= $1)
                 ORDER BY next_attempt_at, id
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, reminder_key, kind, provider_id, attempts",
        )
        .bind(now)
        .bind(now + self.settings.lease.to_chrono())
        .bind(i64::from(claim_size))
        .bind(token)
        .bind(clock.started_at)
        .fetch_all(pool)
        .await
    }

    /// Sends one digest and records its outcome. Returns the waiting
    /// digests whose leases this sender still holds.
    async fn deliver(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
        digest: &ClaimedDigest,
        context: &BatchContext,
        renewal: LeaseRenewal<'_>,
        counts: &mut DeliveryCounts,
    ) -> anyhow::Result<HashSet<i64>> {
        if digest.kind == DigestKind::SupportDigest {
            return self
                .deliver_support_digest(pool, now, digest, renewal, counts)
                .await;
        }
        let no_items = Vec::new();
        let items = context.items.get(&digest.id).unwrap_or(&no_items);
        let dropped: Vec<i64> = items
            .iter()
            .filter(|item| {
                !item.still_scheduled || item.starts_at.is_none() || item.ends_at.is_none()
            })
            .map(|item| item.session_id)
            .collect();
        for item in items
            .iter()
            .filter(|item| item.still_scheduled && dropped.contains(&item.session_id))
        {
            warn!(
                reminder_id = digest.id,
                session_id = item.session_id,
                "session skipped: its start or end time is out of range"
            );
        }
        if !dropped.is_empty() {
            mark_dropped(pool, digest.id, &dropped).await?;
            counts.sessions_dropped += dropped.len() as u64;
        }
        let kept: Vec<DigestSession> = items
            .iter()
            .filter(|item| !dropped.contains(&item.session_id))
            .filter_map(|item| {
                Some(DigestSession {
                    session_id: item.session_id,
                    starts_at: item.starts_at?,
                    ends_at: item.ends_at?,
                    member_name: item.member_name.clone().unwrap_or_default(),
                })
            })
            .collect();

        let outcome = if kept.is_empty() {
            Outcome::Empty
        } else {
            self.send(now, digest, context, &kept).await?
        };

        self.count(&outcome, counts);
        if let Outcome::Sent = outcome {
            for item in items
                .iter()
                .filter(|item| !dropped.contains(&item.session_id))
            {
                *counts.sessions_by_stage.entry(item.stage).or_default() += 1;
            }
        }
        let leased = record_outcome(pool, now, digest.id, &outcome, &renewal).await?;

        if let Outcome::Failed {
            permanent: true, ..
        } = outcome
        {
            let session_ids: Vec<i64> = kept.iter().map(|session| session.session_id).collect();
            let reason = Unreachable::DeliveryFailed.to_string();
            flags::open_for_sessions(
                pool,
                FlagKind::ProviderUnreachable,
                &session_ids,
                &reason,
                now,
            )
            .await?;
        }
        Ok(leased)
    }

    /// Builds a support digest from the flags open at `now`, sends it and
    /// records the outcome. Support digests have no send window and open
    /// no flags when they fail.
    async fn deliver_support_digest(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
        digest: &ClaimedDigest,
        renewal: LeaseRenewal<'_>,
        counts: &mut DeliveryCounts,
    ) -> anyhow::Result<HashSet<i64>> {
        let content = crate::support_digest::load(pool, digest.id, now).await?;
        let outcome = match self
            .composer
            .support_digest(&digest.reminder_key, &content, now)
        {
            Ok(message) => match self.transport.send(&digest.reminder_key, &message).await {
                Ok(()) => {
                    debug!(reminder_id = digest.id, "support digest sent");
                    Outcome::Sent
                }
                Err(error) => self.outcome_of_failure(now, digest, error),
            },
            Err(error) => {
                warn!(reminder_id = digest.id, error = %format!("{error:#}"), "failed to compose support digest");
                Outcome::Failed {
                    error: format!("failed to compose: {error:#}"),
                    permanent: false,
                }
            }
        };
        self.count(&outcome, counts);
        Ok(record_outcome(pool, now, digest.id, &outcome, &renewal).await?)
    }

    /// Counts an outcome in the pass's counts and in the email metrics.
    fn count(&self, outcome: &Outcome, counts: &mut DeliveryCounts) {
        match outcome {
            Outcome::Sent => {
                counts.digests_sent += 1;
                self.metrics.count_email(EmailOutcome::Sent);
            }
            Outcome::Empty => counts.digests_empty += 1,
            Outcome::Retry { .. } => {
                counts.digests_retrying += 1;
                self.metrics.count_email(EmailOutcome::Retried);
            }
            Outcome::Defer { .. } => counts.digests_deferred += 1,
            Outcome::Failed { .. } => {
                counts.digests_failed += 1;
                self.metrics.count_email(EmailOutcome::Failed);
            }
        }
    }

    /// Checks the provider and its send window again, composes the message
    /// and sends it.
    async fn send(
        &self,
        now: DateTime<Utc>,
        digest: &ClaimedDigest,
        context: &BatchContext,
        sessions: &[DigestSession],
    ) -> anyhow::Result<Outcome> {
        let recipient = match context.recipient(digest.provider_id) {
            Ok(recipient) => recipient,
            Err(reason) => {
                warn!(reminder_id = digest.id, provider_id = digest.provider_id, %reason, "digest not sent");
                return Ok(Outcome::Failed {
                    error: reason,
                    permanent: true,
                });
            }
        };

        // A retry or a digest left over from a stopped process can come due
        // at night. It waits for the provider's next window like a new one.
        if !self
            .window
            .is_open(&now.with_timezone(&recipient.time_zone))
        {
            return Ok(Outcome::Defer {
                next_attempt_at: self.window.next_opening(now, recipient.time_zone),
            });
        }

        let message = match self
            .composer
            .digest(&digest.reminder_key, recipient, sessions, now)
        {
            Ok(message) => message,
            Err(error) => {
                warn!(reminder_id = digest.id, provider_id = digest.provider_id, error = %format!("{error:#}"), "failed to compose digest");
                return Ok(Outcome::Failed {
                    error: format!("failed to compose: {error:#}"),
                    permanent: false,
                });
            }
        };

        match self.transport.send(&digest.reminder_key, &message).await {
            Ok(()) => {
                debug!(
                    reminder_id = digest.id,
                    provider_id = digest.provider_id,
                    sessions = sessions.len(),
                    "digest sent"
                );
                Ok(Outcome::Sent)
            }
            Err(error) => Ok(self.outcome_of_failure(now, digest, error)),
        }
    }

    fn outcome_of_failure(
        &self,
        now: DateTime<Utc>,
        digest: &ClaimedDigest,
        error: SendError,
    ) -> Outcome {
        let code = error.code();
        let attempts = u32::try_from(digest.attempts).unwrap_or(u32::MAX);
        match error {
            SendError::Transient { .. } if attempts < self.settings.max_attempts => {
                let delay = retry_delay(&self.settings, digest.id, attempts);
                info!(reminder_id = digest.id, provider_id = digest.provider_id, attempts, smtp_code = ?code, retry_in_seconds = delay.num_seconds(), "digest delivery failed, will retry");
                Outcome::Retry {
                    error: error.to_string(),
                    next_attempt_at: now + delay,
                }
            }
            SendError::Transient { .. } => {
                warn!(reminder_id = digest.id, provider_id = digest.provider_id, attempts, smtp_code = ?code, "digest delivery failed, no attempts left");
                Outcome::Failed {
                    error: error.to_string(),
                    permanent: false,
                }
            }
            SendError::Permanent { .. } => {
                warn!(reminder_id = digest.id, provider_id = digest.provider_id, attempts, smtp_code = ?code, "digest delivery failed permanently");
                Outcome::Failed {
                    error: error.to_string(),
                    permanent: true,
                }
            }
        }
    }
}

/// Reads the sessions and providers of a claimed batch. Providers are
/// read again, not taken from the scan, so a change since then counts.
async fn load_batch(pool: &PgPool, batch: &[ClaimedDigest]) -> sqlx::Result<BatchContext> {
    let reminder_ids: Vec<i64> = batch.iter().map(|digest| digest.id).collect();
    let provider_ids: Vec<i64> = batch
        .iter()
        .filter_map(|digest| digest.provider_id)
        .collect();
    let mut items: HashMap<i64, Vec<ItemRow>> = HashMap::new();
    for item in load_items(pool, &reminder_ids).await? {
        items.entry(item.reminder_id).or_default().push(item);
    }
    let providers: Vec<ProviderRow> = sqlx::query_as(
        "SELECT id, name, email, time_zone, active FROM providers WHERE id = ANY($1)",
    )
    .bind(&provider_ids)
    .fetch_all(pool)
    .await?;
    let recipients = providers
        .iter()
        .map(|row| {
            let checked = recipient::check(row).map_err(|reason| reason.to_string());
            (row.id, checked)
        })
        .collect();
    Ok(BatchContext { items, recipients })
}

/// Backoff before the attempt after `attempts`: the base delay doubled for
/// each earlier attempt, capped, then scaled into [50 %, 100 %] by jitter
/// seeded from the digest id so that replicas spread their retries.
pub fn retry_delay(
    settings: &ReminderSettings,
    reminder_id: i64,
    attempts: u32,
) -> chrono::Duration {
    let base = settings.retry_base_delay.to_std().as_secs_f64();
    let cap = settings.retry_max_delay.to_std().as_secs_f64();
    let exponent = attempts.saturating_sub(1).min(30);
    let full = (base * f64::from(1u32 << exponent)).min(cap);
    let seed = (reminder_id as u64)
        .wrapping_mul(31)
        .wrapping_add(u64::from(attempts));
    let factor: f64 = ChaCha8Rng::seed_from_u64(seed).random_range(0.5..=1.0);
    chrono::Duration::milliseconds((full * factor * 1000.0) as i64)
}

/// Creates a token that distinguishes one claim from every other, across processes.
fn new_lease_token() -> i64 {
    let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
    high as i64
}

// Times outside chrono's range (infinity, years past 9999) come back as
// NULL, so one odd platform row cannot fail the whole pass.
async fn load_items(pool: &PgPool, reminder_ids: &[i64]) -> sqlx::Result<Vec<ItemRow>> {
    sqlx::query_as(
        "SELECT ri.reminder_id, ri.session_id, ri.stage, s.status = 'scheduled' AS still_scheduled,
                CASE WHEN s.starts_at BETWEEN '0001-01-01' AND '9999-12-31' THEN s.starts_at END AS starts_at,
                CASE WHEN s.ends_at BETWEEN '0001-01-01' AND '9999-12-31' THEN s.ends_at END AS ends_at,
                m.name AS member_name
         FROM reminder_items ri
         JOIN sessions s ON s.id = ri.session_id
         LEFT JOIN members m ON m.id = s.member_id
         WHERE ri.reminder_id = ANY($1) AND NOT ri.dropped
         ORDER BY ri.reminder_id, s.ends_at, s.id",
    )
    .bind(reminder_ids)
    .fetch_all(pool)
    .await
}

/// Hands claimed but unsent digests back, so another process can send
/// them at once instead of after the lease.
async fn release_leases(pool: &PgPool, reminder_ids: &[i64], token: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE reminders SET lease_until = NULL, lease_token = NULL, attempts = attempts - 1
         WHERE id = ANY($1) AND lease_token = $2 AND status = 'pending'",
    )
    .bind(reminder_ids)
    .bind(token)
    .execute(pool)
    .await
    .map(|_| ())
}

async fn mark_dropped(pool: &PgPool, reminder_id: i64, session_ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE reminder_items SET dropped = true WHERE reminder_id = $1 AND session_id = ANY($2)",
    )
    .bind(reminder_id)
    .bind(session_ids)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records a digest's outcome and, in the same statement, extends the
/// leases of the batch's waiting digests that `renewal.token` still holds.
/// Returns those digests. One round trip and one commit per message.
async fn record_outcome(
    pool: &PgPool,
    now: DateTime<Utc>,
    reminder_id: i64,
    outcome: &Outcome,
    renewal: &LeaseRenewal<'_>,
) -> sqlx::Result<HashSet<i64>> {
    // (status, next attempt, error, permanent failure, whether the attempt counts)
    let (status, next_attempt_at, error, permanent, attempted) = match outcome {
        Outcome::Sent => ("sent", None, None, false, true),
        Outcome::Empty => ("empty", None, None, false, false),
        Outcome::Retry {
            error,
            next_attempt_at,
        } => (
            "pending",
            Some(*next_attempt_at),
            Some(error.as_str()),
            false,
            true,
        ),
        Outcome::Defer { next_attempt_at } => {
            ("pending", Some(*next_attempt_at), None, false, false)
        }
        Outcome::Failed { error, permanent } => {
            ("failed", None, Some(error.as_str()), *permanent, true)
        }
    };
    let renewed: Vec<i64> = sqlx::query_scalar(
        "WITH recorded AS (
         UPDATE reminders SET
             status = $2::reminder_status,
             finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE $3 END,
             next_attempt_at = COALESCE($4, next_attempt_at),
             last_error = COALESCE($5, CASE WHEN $2 = 'pending' THEN last_error END),
             permanent_failure = $6,
             attempts = CASE WHEN $7 THEN attempts ELSE attempts - 1 END,
             lease_until = NULL,
             lease_token = NULL
         WHERE id = $1)
         UPDATE reminders SET lease_until = $10
         WHERE id = ANY($8) AND lease_token = $9 AND status = 'pending'
         RETURNING id",
    )
    .bind(reminder_id)
    .bind(status)
    .bind(now)
    .bind(next_attempt_at)
    .bind(error)
    .bind(permanent)
    .bind(attempted)
    .bind(renewal.waiting)
    .bind(renewal.token)
    .bind(renewal.until)
    .fetch_all(pool)
    .await?;
    Ok(renewed.into_iter().collect())
}
