-- Least privilege (issue 8): a writer role for the pipeline, and the read-only
-- newsmon_analyst (created in 0004) kept away from tables that hold secrets or internals.
-- Forward-only: add a new numbered file instead of editing this one once applied.
--
-- Roles are cluster-wide (many databases on one server share them), so they are created
-- only when missing; a concurrent migration of another database may win the race, which
-- is fine. Grants are per database and idempotent.
--
-- Who runs what:
--   owner (the migrating login)   migrations, `prepare` (topic partitions = DDL), maintenance
--   newsmon_writer                poll and process passes: DML on the news tables, no DDL
--   newsmon_analyst               SELECT on articles, sightings, views; nothing else
-- Give a login role the rights with `GRANT newsmon_writer TO <login>`.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'newsmon_writer') THEN
        CREATE ROLE newsmon_writer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created by a concurrent migration of another database
END
$$;

-- Writer: read and write rows, use sequences and functions. Not the owner, so it can
-- neither DROP, ALTER nor TRUNCATE anything, and it cannot create objects in news.
GRANT USAGE ON SCHEMA news TO newsmon_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA news TO newsmon_writer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA news TO newsmon_writer;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA news TO newsmon_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA news GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO newsmon_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA news GRANT USAGE, SELECT ON SEQUENCES TO newsmon_writer;
-- The migrations ledger is the owner's business: the writer may read it, never change it.
REVOKE INSERT, UPDATE, DELETE ON news.schema_migrations FROM newsmon_writer;

-- Analyst: no access to internals and secret-bearing data.
--   news.schema_migrations  internal bookkeeping
--   news.raw_pages          archived response headers and raw page bytes (Set-Cookie is
--                           dropped before storage, other auth headers may not be)
--   news.fetch_attempts     internal fetch diagnostics
--   news.alerts             operational alert payloads: exception text, log URLs, notifier
--                           names and delivery errors
--   news.feeds.url / config_url   subscription URLs can carry API keys or tokens
--                           (paid wire feeds); every other feeds column stays readable
REVOKE ALL ON news.schema_migrations FROM newsmon_analyst;
REVOKE ALL ON news.raw_pages FROM newsmon_analyst;
REVOKE ALL ON news.fetch_attempts FROM newsmon_analyst;
REVOKE ALL ON news.alerts FROM newsmon_analyst;
REVOKE ALL ON news.feeds FROM newsmon_analyst;
GRANT SELECT (feed_id, name, lang, enabled, poll_interval_s, base_interval_s, next_poll_at, last_polled_at,
              last_success_at, last_status, last_error, consecutive_failures, disabled_reason,
              respect_robots, created_at, updated_at)
    ON news.feeds TO newsmon_analyst;
-- Sequences: nothing to do for an analyst (nextval would be a write).
REVOKE ALL ON ALL SEQUENCES IN SCHEMA news FROM newsmon_analyst;
