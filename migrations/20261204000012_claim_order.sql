-- Senders claim due digests in (next_attempt_at, id) order. The index on
-- next_attempt_at alone made every claim read and sort all the due
-- digests, since a planning pass gives its digests one next_attempt_at:
-- with 5,584 due, a claim of 5 took 4.4 ms, and a pass grew with the
-- square of the backlog. With id in the index, a claim reads the first
-- rows it can lock.
DROP INDEX reminders_due;
CREATE INDEX reminders_due ON reminders (next_attempt_at, id) WHERE status = 'pending';
