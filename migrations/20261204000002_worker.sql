-- session-steward's own tables. The worker writes only these.

CREATE TYPE reminder_status AS ENUM (
    'pending',   -- recorded, not yet delivered
    'sent',      -- delivered to the transport
    'empty',     -- every session left 'scheduled' before sending, so nothing was sent
    'failed',    -- delivery failed permanently or ran out of attempts
    'superseded' -- still unsent when a newer digest for the provider was recorded
);

CREATE TABLE reminders (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reminder_key     text NOT NULL UNIQUE,
    provider_id      bigint NOT NULL,
    local_date       date NOT NULL,
    status           reminder_status NOT NULL DEFAULT 'pending',
    created_at       timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    lease_until      timestamptz,
    -- Identifies the claim that holds the lease; a sender checks it before
    -- each message, so a digest whose lease passed to another sender is skipped.
    lease_token      bigint,
    last_error       text,
    -- True when the failure says the provider cannot be reached (a 5xx
    -- reply, an address the server rejects, a provider row that fails the
    -- checks), as opposed to running out of attempts on transient errors.
    permanent_failure boolean NOT NULL DEFAULT false,
    finished_at      timestamptz,
    -- One digest per provider per local day, whatever happens to it.
    CONSTRAINT reminders_one_per_provider_day UNIQUE (provider_id, local_date)
);

CREATE INDEX reminders_due ON reminders (next_attempt_at) WHERE status = 'pending';

CREATE TABLE reminder_items (
    reminder_id  bigint NOT NULL REFERENCES reminders (id) ON DELETE CASCADE,
    session_id   bigint NOT NULL,
    stage        smallint NOT NULL CHECK (stage >= 0),
    -- Set when the session had left 'scheduled' by the time the digest was sent.
    dropped      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (reminder_id, session_id)
);

CREATE INDEX reminder_items_session_id ON reminder_items (session_id);

CREATE TYPE flag_kind AS ENUM (
    'stale_hold',
    'member_blocked',
    'period_ending',
    'provider_unreachable',
    'member_ineligible'
);

CREATE TYPE flag_resolution AS ENUM (
    'condition_cleared',   -- the worker saw the condition stop holding
    'resolved_by_support'
);

CREATE TABLE flags (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             flag_kind NOT NULL,
    session_id       bigint NOT NULL,
    member_id        bigint NOT NULL,
    provider_id      bigint NOT NULL,
    reason           text,
    opened_at        timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,
    resolution       flag_resolution,
    note             text,
    CHECK ((resolved_at IS NULL) = (resolution IS NULL))
);

-- At most one open flag per session and kind.
CREATE UNIQUE INDEX flags_one_open_per_session_kind ON flags (session_id, kind) WHERE resolved_at IS NULL;
CREATE INDEX flags_session_kind ON flags (session_id, kind);

CREATE TYPE job_outcome AS ENUM ('running', 'succeeded', 'failed');

CREATE TABLE job_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job          text NOT NULL,
    clock_now    timestamptz NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    outcome      job_outcome NOT NULL DEFAULT 'running',
    counts       jsonb NOT NULL DEFAULT '{}',
    error        text
);

CREATE INDEX job_runs_job_started ON job_runs (job, started_at DESC);
