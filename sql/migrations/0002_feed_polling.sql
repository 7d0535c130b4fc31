-- Feed polling (issue 3): keep what the operator configured apart from what the
-- scheduler adapted, remember why a feed was switched off, and index poll history.
-- Forward-only: add a new numbered file instead of editing this one once applied.

-- poll_interval_s adapts to the feed (shorter when everything is new, longer when
-- nothing is); base_interval_s is the configured interval (feeds.yml / `feeds add`), so
-- a re-sync only resets the adapted interval when the configuration really changed.
ALTER TABLE news.feeds ADD COLUMN base_interval_s integer CHECK (base_interval_s > 0);
UPDATE news.feeds SET base_interval_s = poll_interval_s WHERE base_interval_s IS NULL;

-- The URL as configured. `url` is the URL polled, which a permanent redirect updates;
-- a re-sync must not undo that unless the configured URL itself changed.
ALTER TABLE news.feeds ADD COLUMN config_url text;
UPDATE news.feeds SET config_url = url WHERE config_url IS NULL;

-- Set by `newsmon feeds disable` (an operator decision that feeds.yml does not override);
-- NULL when the feed is enabled or disabled by `enabled: false` in feeds.yml.
ALTER TABLE news.feeds ADD COLUMN disabled_reason text;

-- Error statistics over recent polls ("which feeds failed how, lately").
CREATE INDEX feed_polls_errors_idx ON news.feed_polls (started_at DESC, error_type) WHERE error_type IS NOT NULL;

-- "New entries in the last 24 h" per feed (feeds list, health checks).
CREATE INDEX feed_entries_feed_first_seen_idx ON news.feed_entries (feed_id, first_seen_at DESC);
