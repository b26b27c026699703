-- Support digests are rows of the reminders outbox, next to provider
-- digests, so that one claim loop with the same leases, claim tokens,
-- retries and status updates delivers both.

CREATE TYPE reminder_kind AS ENUM (
    'provider_digest', -- one provider's overdue sessions, listed in reminder_items
    'support_digest'   -- support's open flags, described in support_digests
);

ALTER TABLE reminders
    ADD COLUMN kind reminder_kind NOT NULL DEFAULT 'provider_digest',
    ALTER COLUMN provider_id DROP NOT NULL,
    -- A support digest has no provider. Its local_date is the UTC date of
    -- its schedule slot, and permanent_failure means the support mailbox
    -- rejected it.
    ADD CONSTRAINT reminders_provider_only_on_provider_digests
        CHECK ((kind = 'provider_digest') = (provider_id IS NOT NULL));

CREATE TABLE support_digests (
    reminder_id  bigint PRIMARY KEY REFERENCES reminders (id) ON DELETE CASCADE,
    -- The occurrence of support_digest.schedule the digest stands for; one
    -- digest per occurrence, whichever tick or replica records it.
    slot         timestamptz NOT NULL,
    -- The digest lists as new the open flags opened after flags_since and
    -- up to cutoff. flags_since is the cutoff of the digest recorded before
    -- this one (NULL for the first), and cutoff is when this one was recorded.
    flags_since  timestamptz,
    cutoff       timestamptz NOT NULL,
    CONSTRAINT support_digests_one_per_slot UNIQUE (slot)
);
