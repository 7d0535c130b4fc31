-- Fourth exact-duplicate key: the same normalised title from the same source within 7 days
-- (sites re-publish a story under a new URL with the body tweaked). A time window cannot be
-- a unique constraint, so the key is indexed and checked by the loader under its cluster
-- advisory lock, which serialises every writer of news.article_registry.
ALTER TABLE news.article_registry
    ADD COLUMN source_domain text,
    ADD COLUMN title_key     text,
    ADD COLUMN published_at  timestamptz;
CREATE INDEX article_registry_title_idx ON news.article_registry (title_key, published_at)
    WHERE title_key IS NOT NULL;

ALTER TABLE news.article_sightings DROP CONSTRAINT article_sightings_match_kind_check;
ALTER TABLE news.article_sightings ADD CONSTRAINT article_sightings_match_kind_check
    CHECK (match_kind IN ('first', 'url', 'content_hash', 'title', 'near'));
