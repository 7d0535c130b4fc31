-- Full-text search out of the load transaction: a stored search_tsv column filled by the
-- index stage (newsmon.search) right after each load, instead of expression indexes.
-- Forward-only: add a new numbered file instead of editing this one once applied.
--
-- Why: the GIN expression indexes of 0004 computed to_tsvector('arabic', title || body)
-- inside every INSERT of the load transaction, once per *topic row* (an article has 1-3),
-- ~0.23 ms per row, which dominated load throughput. Now the loader writes rows with
-- search_tsv NULL, and the index stage computes the vector once per *article* in its own
-- short transaction. news.search stays complete meanwhile: rows not yet indexed are
-- matched by computing the same vector on the fly (few rows: the stage runs after each load).

-- The one definition of an article's search vector, used by the index stage, this
-- migration's backfill and news.search's fallback: PostgreSQL's arabic configuration for
-- Arabic rows, english for the rest (lang NULL included), as in 0004. Simple SQL, so the
-- planner inlines it.
CREATE FUNCTION news.article_tsvector(lang text, title text, body text)
RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsvector(CASE WHEN lang = 'ar' THEN 'arabic'::regconfig ELSE 'english'::regconfig END,
                       coalesce(title, '') || ' ' || coalesce(body, ''))
$$;

-- NULL until the index stage (or the backfill below) has run for the row.
ALTER TABLE news.articles ADD COLUMN search_tsv tsvector;

-- The per-row expression indexes are what made inserts slow.
DROP INDEX news.articles_fts_ar_idx;
DROP INDEX news.articles_fts_en_idx;

-- Backfill before building the indexes (one index build instead of index maintenance per
-- row), computing each article's vector once and copying it to all its topic rows.
UPDATE news.articles a
SET search_tsv = v.tsv
FROM (
    SELECT o.article_id, news.article_tsvector(o.lang, o.title, o.body) AS tsv
    FROM (SELECT DISTINCT ON (article_id) article_id, lang, title, body
          FROM news.articles WHERE search_tsv IS NULL ORDER BY article_id, topic) o
) v
WHERE a.article_id = v.article_id AND a.search_tsv IS NULL;

-- On the partitioned table: every partition, present and future, gets its own GIN index
-- (full-text search indexed per partition).
CREATE INDEX articles_search_idx ON news.articles USING gin (search_tsv);

-- The index stage's queue: rows awaiting their vector. Small (empty between loads), so
-- finding work and the search fallback are index probes, never scans of the partitions.
CREATE INDEX articles_search_pending_idx ON news.articles (article_id) WHERE search_tsv IS NULL;

-- Whether an article row matches a websearch query, and how well: the one definition used
-- by news.search and news.search_topic (0013). Indexed rows match on search_tsv (GIN) with
-- the row's own configuration; rows the index stage has not reached yet match on the vector
-- computed on the fly, found through articles_search_pending_idx. Plain SQL expressions, so
-- the planner inlines them and still sees `search_tsv @@ <constant query>` for the GIN.
CREATE FUNCTION news.article_matches(tsv tsvector, lang text, title text, body text, q text)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (lang = 'ar' AND tsv @@ websearch_to_tsquery('arabic'::regconfig, q))
        OR (lang IS DISTINCT FROM 'ar' AND tsv @@ websearch_to_tsquery('english'::regconfig, q))
        OR (tsv IS NULL
            AND news.article_tsvector(lang, title, body)
                @@ CASE WHEN lang = 'ar' THEN websearch_to_tsquery('arabic'::regconfig, q)
                        ELSE websearch_to_tsquery('english'::regconfig, q) END)
$$;

CREATE FUNCTION news.article_rank(tsv tsvector, lang text, title text, body text, q text)
RETURNS real
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ts_rank(coalesce(tsv, news.article_tsvector(lang, title, body)),
                   CASE WHEN lang = 'ar' THEN websearch_to_tsquery('arabic'::regconfig, q)
                        ELSE websearch_to_tsquery('english'::regconfig, q) END)
$$;

-- Same signature and columns as 0004 (grants are kept by CREATE OR REPLACE). Query syntax
-- is websearch_to_tsquery's: words, "quoted phrases", OR, -exclusions.
CREATE OR REPLACE FUNCTION news.search(q text, max_rows integer DEFAULT 50)
RETURNS TABLE (article_id bigint, topics text[], title text, url text, source_domain text,
               lang text, published_at timestamptz, rank real)
LANGUAGE sql STABLE AS $$
    SELECT a.article_id, array_agg(a.topic ORDER BY a.topic), min(a.title), min(a.url), min(a.source_domain),
           min(a.lang), min(a.published_at),
           max(news.article_rank(a.search_tsv, a.lang, a.title, a.body, q)) AS rank
    FROM news.articles a
    WHERE news.article_matches(a.search_tsv, a.lang, a.title, a.body, q)
    GROUP BY a.article_id
    ORDER BY rank DESC, min(a.published_at) DESC NULLS LAST
    LIMIT max_rows
$$;

-- Functions are executable by PUBLIC by default, but say it: the analyst calls it through
-- news.search, the writer (the index stage) directly; 0007's grant to the writer covered
-- only the functions that existed then.
GRANT EXECUTE ON FUNCTION news.article_tsvector(text, text, text) TO newsmon_writer, newsmon_analyst;
GRANT EXECUTE ON FUNCTION news.article_matches(tsvector, text, text, text, text) TO newsmon_writer, newsmon_analyst;
GRANT EXECUTE ON FUNCTION news.article_rank(tsvector, text, text, text, text) TO newsmon_writer, newsmon_analyst;
GRANT EXECUTE ON FUNCTION news.search(text, integer) TO newsmon_analyst, newsmon_writer;
