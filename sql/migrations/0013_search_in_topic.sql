-- news.search_topic('هدنة', 'idlib'): full-text search inside one topic. The filter on the
-- partition key lets the planner read that topic's partition and its GIN index only (the
-- function is plain SQL, so it is inlined and the topic is a constant by then). Same
-- columns and ranking as news.search (0010), same fallback for rows not indexed yet.
CREATE FUNCTION news.search_topic(q text, topic_slug text, max_rows integer DEFAULT 50)
RETURNS TABLE (article_id bigint, title text, url text, source_domain text,
               lang text, published_at timestamptz, rank real)
LANGUAGE sql STABLE AS $$
    SELECT a.article_id, a.title, a.url, a.source_domain, a.lang, a.published_at,
           ts_rank(coalesce(a.search_tsv, news.article_tsvector(a.lang, a.title, a.body)),
                   CASE WHEN a.lang = 'ar' THEN websearch_to_tsquery('arabic'::regconfig, q)
                        ELSE websearch_to_tsquery('english'::regconfig, q) END) AS rank
    FROM news.articles a
    WHERE a.topic = topic_slug
      AND ((a.lang = 'ar' AND a.search_tsv @@ websearch_to_tsquery('arabic'::regconfig, q))
           OR (a.lang IS DISTINCT FROM 'ar' AND a.search_tsv @@ websearch_to_tsquery('english'::regconfig, q))
           OR (a.search_tsv IS NULL
               AND news.article_tsvector(a.lang, a.title, a.body)
                   @@ CASE WHEN a.lang = 'ar' THEN websearch_to_tsquery('arabic'::regconfig, q)
                           ELSE websearch_to_tsquery('english'::regconfig, q) END))
    ORDER BY rank DESC, a.published_at DESC NULLS LAST
    LIMIT max_rows
$$;

GRANT EXECUTE ON FUNCTION news.search_topic(text, text, integer) TO newsmon_analyst, newsmon_writer;
