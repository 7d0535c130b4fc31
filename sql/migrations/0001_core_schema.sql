-- newsmon core schema: feeds, entries, the article registry (dedup keys), the
-- topic-partitioned articles table, sightings of copies, quarantine and DQ runs.
-- Forward-only: never edit this file once applied; add 0002_... instead.

CREATE SCHEMA IF NOT EXISTS news;

-- One row per feed. Scheduling state lives here (rss-fetcher style) so "which feeds
-- are due" is one indexed query.
CREATE TABLE news.feeds (
    feed_id              bigserial PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    url                  text NOT NULL UNIQUE,
    lang                 text,
    enabled              boolean NOT NULL DEFAULT true,
    poll_interval_s      integer NOT NULL DEFAULT 900 CHECK (poll_interval_s > 0),
    next_poll_at         timestamptz NOT NULL DEFAULT now(),
    last_polled_at       timestamptz,
    last_success_at      timestamptz,
    last_status          text,
    last_error           text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    etag                 text,
    last_modified        text,
    body_hash            text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feeds_due_idx ON news.feeds (next_poll_at) WHERE enabled;

-- One row per poll attempt: the operator's history of a feed.
CREATE TABLE news.feed_polls (
    poll_id       bigserial PRIMARY KEY,
    feed_id       bigint NOT NULL REFERENCES news.feeds ON DELETE CASCADE,
    started_at    timestamptz NOT NULL,
    duration_ms   integer,
    http_status   integer,
    bytes         bigint,
    error_type    text,
    error_detail  text,
    entries_seen  integer NOT NULL DEFAULT 0,
    entries_new   integer NOT NULL DEFAULT 0,
    bozo_reason   text
);
CREATE INDEX feed_polls_feed_time_idx ON news.feed_polls (feed_id, started_at DESC);

-- Every entry ever seen, once per feed. status drives the processing queue.
CREATE TABLE news.feed_entries (
    entry_id       bigserial PRIMARY KEY,
    feed_id        bigint NOT NULL REFERENCES news.feeds ON DELETE CASCADE,
    entry_key      text NOT NULL,
    link           text,
    title          text,
    published_at   timestamptz,
    published_source text,
    summary        text,
    content        text,
    authors        text[],
    tags           text[],
    entry_hash     text NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    status         text NOT NULL DEFAULT 'new'
                   CHECK (status IN ('new', 'processing', 'loaded', 'duplicate', 'quarantined', 'failed')),
    attempts       integer NOT NULL DEFAULT 0,
    claimed_until  timestamptz,
    last_error     text,
    processed_at   timestamptz,
    article_id     bigint,
    UNIQUE (feed_id, entry_key)
);
CREATE INDEX feed_entries_queue_idx ON news.feed_entries (first_seen_at) WHERE status IN ('new', 'processing');

-- Taxonomy mirror of include/config/topics.yml (synced by `newsmon topics sync`).
CREATE TABLE news.topics (
    slug        text PRIMARY KEY CHECK (slug ~ '^[a-z][a-z0-9_]*$'),
    label       text NOT NULL,
    parent      text,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per distinct article. Uniqueness of the dedup keys is enforced here, by the
-- database, not by Python memory; article_id is shared by all topic rows of an article.
CREATE TABLE news.article_registry (
    article_id     bigserial PRIMARY KEY,
    url_key        text NOT NULL UNIQUE,
    content_hash   text NOT NULL UNIQUE,
    cluster_id     bigint,
    first_seen_at  timestamptz NOT NULL DEFAULT now()
);

-- The warehouse: one row per (topic, article), partitioned by topic. Partitions are
-- created by `newsmon topics sync`; articles matching no topic land in the DEFAULT
-- partition with topic = 'unclassified'.
CREATE TABLE news.articles (
    article_id     bigint NOT NULL,
    topic          text NOT NULL,
    url            text NOT NULL,
    canonical_url  text NOT NULL,
    url_key        text NOT NULL,
    source_domain  text NOT NULL,
    feed_id        bigint,
    entry_id       bigint,
    title          text,
    summary        text,
    body           text,
    body_source    text NOT NULL DEFAULT 'page',
    lang           text,
    authors        text[] NOT NULL DEFAULT '{}',
    published_at   timestamptz,
    date_source    text,
    fetched_at     timestamptz,
    loaded_at      timestamptz NOT NULL DEFAULT now(),
    content_hash   text NOT NULL,
    cluster_id     bigint,
    matched_terms  text[] NOT NULL DEFAULT '{}',
    topic_score    real,
    PRIMARY KEY (topic, article_id)
) PARTITION BY LIST (topic);

CREATE TABLE news.articles_unclassified PARTITION OF news.articles DEFAULT;

CREATE INDEX articles_published_idx ON news.articles (published_at DESC);
CREATE INDEX articles_article_id_idx ON news.articles (article_id);
CREATE INDEX articles_cluster_idx ON news.articles (cluster_id);

-- Every sighting of an article: the first copy and each duplicate (exact or near).
CREATE TABLE news.article_sightings (
    sighting_id    bigserial PRIMARY KEY,
    article_id     bigint NOT NULL REFERENCES news.article_registry,
    cluster_id     bigint,
    entry_id       bigint REFERENCES news.feed_entries ON DELETE SET NULL,
    feed_id        bigint REFERENCES news.feeds ON DELETE SET NULL,
    url            text NOT NULL,
    source_domain  text NOT NULL,
    seen_at        timestamptz NOT NULL DEFAULT now(),
    match_kind     text NOT NULL CHECK (match_kind IN ('first', 'url', 'content_hash', 'near')),
    similarity     real,
    UNIQUE (article_id, url)
);
CREATE INDEX article_sightings_cluster_idx ON news.article_sightings (cluster_id);

-- Quarantine: rows that failed validation, with the full record and why.
CREATE TABLE news.rejected_articles (
    reject_id            bigserial PRIMARY KEY,
    entry_id             bigint REFERENCES news.feed_entries ON DELETE SET NULL,
    feed_id              bigint,
    url                  text,
    record               jsonb NOT NULL,
    failed_expectations  text[] NOT NULL,
    reason               text NOT NULL,
    dq_run_id            bigint,
    rejected_at          timestamptz NOT NULL DEFAULT now(),
    status               text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'dismissed')),
    replayed_at          timestamptz,
    UNIQUE (entry_id)
);

-- Every validation run (Great Expectations result included).
CREATE TABLE news.dq_runs (
    dq_run_id    bigserial PRIMARY KEY,
    suite        text NOT NULL,
    batch_id     text NOT NULL,
    run_at       timestamptz NOT NULL DEFAULT now(),
    success      boolean NOT NULL,
    rows_total   integer NOT NULL,
    rows_failed  integer NOT NULL,
    statistics   jsonb NOT NULL,
    result       jsonb NOT NULL
);
CREATE INDEX dq_runs_time_idx ON news.dq_runs (run_at DESC);
