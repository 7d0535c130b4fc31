-- Fetch/extract (issue 4): the raw page archive for reprocessing, the history of
-- every article fetch attempt, a per-feed robots.txt switch, and the page metadata
-- the extractor now keeps. Forward-only: add a new numbered file instead of editing.

-- Per feed: honour robots.txt for its article pages (the global switch is
-- fetch.respect_robots_txt; both must be true for robots.txt to be checked).
ALTER TABLE news.feeds ADD COLUMN respect_robots boolean NOT NULL DEFAULT true;

-- The last fetched page of each entry, compressed, with what is needed to extract it
-- again without fetching (`newsmon reprocess`). One row per entry: a re-fetch of the
-- same (edited) entry replaces its page, a re-run of a batch writes the same row again.
--
-- body is zlib-compressed in Python (compression = 'zlib'), not left to TOAST: pglz
-- only compresses values over ~2 kB, gives up on anything it cannot shrink by a quarter in
-- the first kilobyte, and compresses worse than zlib on HTML; compressing before the
-- INSERT also keeps the bytes off the wire. STORAGE EXTERNAL stops PostgreSQL from
-- trying to compress the already-compressed bytes a second time.
CREATE TABLE news.raw_pages (
    entry_id      bigint PRIMARY KEY REFERENCES news.feed_entries ON DELETE CASCADE,
    url           text NOT NULL,
    final_url     text NOT NULL,
    url_key       text,
    status        integer NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    body          bytea NOT NULL,
    compression   text NOT NULL DEFAULT 'zlib' CHECK (compression IN ('zlib', 'none')),
    body_bytes    integer NOT NULL CHECK (body_bytes >= 0),
    body_sha256   text NOT NULL,
    encoding      text,
    fetched_at    timestamptz NOT NULL,
    extracted_at  timestamptz
);
ALTER TABLE news.raw_pages ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE INDEX raw_pages_fetched_idx ON news.raw_pages (fetched_at);
CREATE INDEX raw_pages_url_key_idx ON news.raw_pages (url_key);

-- Every attempt to fetch an article page (retries included), successful or not.
-- A retried batch re-inserts the same attempts: (entry_id, attempt_no, attempted_at)
-- makes that a no-op.
CREATE TABLE news.fetch_attempts (
    attempt_id    bigserial PRIMARY KEY,
    entry_id      bigint REFERENCES news.feed_entries ON DELETE CASCADE,
    url           text NOT NULL,
    attempt_no    integer NOT NULL DEFAULT 1,
    attempted_at  timestamptz NOT NULL,
    status        integer,
    error_type    text,
    detail        text,
    duration_ms   integer,
    UNIQUE (entry_id, attempt_no, attempted_at)
);
CREATE INDEX fetch_attempts_time_idx ON news.fetch_attempts (attempted_at DESC);
CREATE INDEX fetch_attempts_error_idx ON news.fetch_attempts (error_type, attempted_at DESC) WHERE error_type IS NOT NULL;

-- Page metadata kept with each article (added to the partitioned parent: every
-- partition, existing or future, gets the columns).
ALTER TABLE news.articles
    ADD COLUMN sitename       text,
    ADD COLUMN image_url      text,
    ADD COLUMN categories     text[] NOT NULL DEFAULT '{}',
    ADD COLUMN tags           text[] NOT NULL DEFAULT '{}',
    ADD COLUMN encoding       text,
    ADD COLUMN reprocessed_at timestamptz;
