-- Near-duplicate index, full-text search, analyst views and the read-only analyst role.

-- MinHash LSH band hashes of every canonical article (see newsmon.dedup), one row per
-- article. Each hash already encodes its signature kind and band number, so one GIN
-- index over the array answers "which articles share any band with these" with index
-- probes only: lookups stay flat as the store grows. fastupdate is off: a pending list
-- would be scanned linearly by every lookup.
CREATE TABLE news.lsh_signatures (
    article_id  bigint PRIMARY KEY REFERENCES news.article_registry ON DELETE CASCADE,
    bands       bigint[] NOT NULL
);
CREATE INDEX lsh_signatures_bands_idx ON news.lsh_signatures USING gin (bands) WITH (fastupdate = off);

-- Full-text search: PostgreSQL's arabic configuration for Arabic rows, english for the
-- rest, as partial expression indexes on the partitioned table (each partition, present
-- and future, gets its own GIN index).
CREATE INDEX articles_fts_ar_idx ON news.articles
    USING gin (to_tsvector('arabic'::regconfig, coalesce(title, '') || ' ' || coalesce(body, '')))
    WHERE lang = 'ar';
CREATE INDEX articles_fts_en_idx ON news.articles
    USING gin (to_tsvector('english'::regconfig, coalesce(title, '') || ' ' || coalesce(body, '')))
    WHERE lang IS DISTINCT FROM 'ar';
CREATE INDEX articles_topic_published_idx ON news.articles (topic, published_at DESC);

-- news.search('إدلب هدنة'): one row per matching article (all its topics), best first.
-- Query syntax is websearch_to_tsquery's: words, "quoted phrases", OR, -exclusions.
CREATE FUNCTION news.search(q text, max_rows integer DEFAULT 50)
RETURNS TABLE (article_id bigint, topics text[], title text, url text, source_domain text,
               lang text, published_at timestamptz, rank real)
LANGUAGE sql STABLE AS $$
    SELECT a.article_id, array_agg(a.topic ORDER BY a.topic), min(a.title), min(a.url), min(a.source_domain),
           min(a.lang), min(a.published_at),
           max(CASE WHEN a.lang = 'ar'
                    THEN ts_rank(to_tsvector('arabic'::regconfig, coalesce(a.title, '') || ' ' || coalesce(a.body, '')),
                                 websearch_to_tsquery('arabic'::regconfig, q))
                    ELSE ts_rank(to_tsvector('english'::regconfig, coalesce(a.title, '') || ' ' || coalesce(a.body, '')),
                                 websearch_to_tsquery('english'::regconfig, q)) END) AS rank
    FROM news.articles a
    WHERE (a.lang = 'ar'
           AND to_tsvector('arabic'::regconfig, coalesce(a.title, '') || ' ' || coalesce(a.body, ''))
               @@ websearch_to_tsquery('arabic'::regconfig, q))
       OR (a.lang IS DISTINCT FROM 'ar'
           AND to_tsvector('english'::regconfig, coalesce(a.title, '') || ' ' || coalesce(a.body, ''))
               @@ websearch_to_tsquery('english'::regconfig, q))
    GROUP BY a.article_id
    ORDER BY rank DESC, min(a.published_at) DESC NULLS LAST
    LIMIT max_rows
$$;

-- One row per story: the canonical (first-seen) article and how many outlets ran it.
CREATE VIEW news.story_clusters AS
SELECT s.cluster_id,
       min(s.seen_at)                    AS first_seen,
       (SELECT a.title FROM news.articles a WHERE a.article_id = s.cluster_id LIMIT 1) AS title,
       count(DISTINCT s.source_domain)   AS sources,
       count(*)                          AS copies,
       array_agg(DISTINCT s.source_domain ORDER BY s.source_domain) AS source_domains
FROM news.article_sightings s
GROUP BY s.cluster_id;

-- Articles and distinct sources per topic and UTC day.
CREATE VIEW news.topic_daily AS
SELECT a.topic,
       (a.published_at AT TIME ZONE 'UTC')::date AS day,
       count(*)                                  AS articles,
       count(DISTINCT a.source_domain)           AS sources
FROM news.articles a
GROUP BY 1, 2;

-- One row per article with all its topics.
CREATE VIEW news.articles_latest AS
SELECT a.article_id,
       array_agg(a.topic ORDER BY a.topic) AS topics,
       min(a.title)         AS title,
       min(a.url)           AS url,
       min(a.canonical_url) AS canonical_url,
       min(a.source_domain) AS source_domain,
       min(a.lang)          AS lang,
       min(a.published_at)  AS published_at,
       min(a.cluster_id)    AS cluster_id,
       min(a.body_source)   AS body_source
FROM news.articles a
GROUP BY a.article_id;

-- Read-only role for analysts: SELECT on the news schema, nothing else. Roles are
-- cluster-wide, so create it only once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'newsmon_analyst') THEN
        CREATE ROLE newsmon_analyst NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA news TO newsmon_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA news TO newsmon_analyst;
GRANT EXECUTE ON FUNCTION news.search(text, integer) TO newsmon_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA news GRANT SELECT ON TABLES TO newsmon_analyst;
