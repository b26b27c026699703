-- The planner writes a digest's items in the same transaction that creates
-- the digest, with the ids that insert returned, and nothing deletes
-- digests. The foreign key's per-row check and row lock on `reminders`
-- doubled the cost of recording a pass (22,000 items: 137 ms with it,
-- 66 ms without, on the benchmark machine), so the worker keeps the rule
-- in its code instead. Delete a digest's items before the digest if you
-- ever prune the outbox.
ALTER TABLE reminder_items DROP CONSTRAINT reminder_items_reminder_id_fkey;
