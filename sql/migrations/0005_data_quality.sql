-- Data quality and alerting (issue 6): alerts that reach people, replay bookkeeping
-- for the quarantine, and a kind column for DQ runs (row suite vs batch suite).
-- Forward-only: add 0008_... (or later) instead of editing this file once applied.

-- One row per alert occurrence span. An alert is "open" until resolved_at is set; at
-- most one open alert exists per (kind, subject), so raising it again updates that row
-- (last_seen, occurrences) instead of creating noise. sent_to lists notifier *names*
-- (never URLs or addresses with credentials).
CREATE TABLE news.alerts (
    alert_id      bigserial PRIMARY KEY,
    kind          text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]*$'),
    subject       text NOT NULL,
    severity      text NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    summary       text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    occurrences   integer NOT NULL DEFAULT 1,
    last_sent_at  timestamptz,
    sent_to       text[] NOT NULL DEFAULT '{}',
    send_errors   text[] NOT NULL DEFAULT '{}',
    resolved_at   timestamptz,
    resolution    text
);
CREATE UNIQUE INDEX alerts_one_open_idx ON news.alerts (kind, subject) WHERE resolved_at IS NULL;
CREATE INDEX alerts_last_seen_idx ON news.alerts (last_seen DESC);

-- Quarantine replay bookkeeping: how often a row was re-validated and when.
ALTER TABLE news.rejected_articles
    ADD COLUMN replay_attempts  integer NOT NULL DEFAULT 0,
    ADD COLUMN last_replay_at   timestamptz,
    ADD COLUMN replay_article_id bigint;
CREATE INDEX rejected_articles_open_idx ON news.rejected_articles (rejected_at DESC) WHERE status = 'open';

-- Which suite family a run belongs to, for cheap filtering ('rows' = per-article suite,
-- 'batch' = per-batch statistics suite, 'replay' = quarantine re-validation).
ALTER TABLE news.dq_runs ADD COLUMN kind text NOT NULL DEFAULT 'rows'
    CHECK (kind IN ('rows', 'batch', 'replay', 'docs'));
CREATE INDEX dq_runs_kind_time_idx ON news.dq_runs (kind, run_at DESC);

-- Volume checks group entries per feed and day.
CREATE INDEX IF NOT EXISTS feed_entries_feed_seen_idx ON news.feed_entries (feed_id, first_seen_at DESC);
CREATE INDEX IF NOT EXISTS articles_loaded_idx ON news.articles (loaded_at DESC);
