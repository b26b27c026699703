-- Creates or updates the login role that session-steward runs as. The role
-- may read the platform's tables, read and write the worker's own tables,
-- and read the migrations table, and nothing else.
--
-- Migrations are not run by this role: the owner of the tables runs
-- `session-steward migrate` first, then this script, with a connection
-- that may create roles (a superuser, or a role with CREATEROLE that can
-- grant on the tables):
--
--   psql -v ON_ERROR_STOP=1 -v role=session_steward -v password="$PASSWORD" \
--        -f deploy/least-privilege.sql postgres://owner@db.internal/platform
--
-- Variables:
--   role      name of the login role (default: session_steward)
--   password  sets the role's password; leave it out to keep the current one
--
-- Running the script again resets the role's privileges on the tables of
-- schema public to exactly the ones below, so run it again after a release
-- whose migrations add a table.

\set ON_ERROR_STOP on

\if :{?role}
\else
\set role session_steward
\endif

BEGIN;

SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role')
\gexec

-- A superuser bypasses every privilege check, so this script cannot
-- restrict one.
SELECT rolsuper AS role_is_superuser FROM pg_roles WHERE rolname = :'role' \gset
\if :role_is_superuser
DO $$ BEGIN
    RAISE EXCEPTION 'the role is a superuser, which no grant can restrict; choose another role name';
END $$;
\endif

ALTER ROLE :"role" LOGIN NOCREATEDB NOCREATEROLE;

\if :{?password}
ALTER ROLE :"role" PASSWORD :'password';
\endif

-- Start from no privilege on the tables and sequences of this schema, so a
-- rerun also takes back grants made by hand.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"role";

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role')
\gexec
GRANT USAGE ON SCHEMA public TO :"role";

-- The platform's tables and the balance view: read only.
GRANT SELECT ON providers, members, allotments, sessions, allotment_balances TO :"role";

-- The worker's own tables and the sequences of their ids. It never
-- deletes a row. PostgreSQL 15 draws identity values without USAGE on the
-- sequence, so that grant only matters if an id column becomes serial.
GRANT SELECT, INSERT, UPDATE ON reminders, reminder_items, support_digests, flags, job_runs TO :"role";
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I', pg_get_serial_sequence(owner_table, 'id'), :'role')
FROM unnest(ARRAY['reminders', 'flags', 'job_runs']) AS owner_table
\gexec

-- `run`, `check` and the other commands compare the applied migrations
-- with their own before they start.
GRANT SELECT ON _sqlx_migrations TO :"role";

-- After a large planning pass the reminder job runs ANALYZE on its tables.
-- Before PostgreSQL 17 only the owner may, and for this role PostgreSQL
-- skips the tables with a warning and autovacuum analyzes them later.
SELECT current_setting('server_version_num')::integer >= 170000 AS has_maintain_privilege \gset
\if :has_maintain_privilege
GRANT MAINTAIN ON reminders, reminder_items TO :"role";
\endif

COMMIT;
