-- news.search_topic('هدنة', 'idlib'): full-text search inside one topic. The filter on the
-- partition key lets the planner read that topic's partition and its GIN index only (the
-- function is plain SQL, so it is inlined and the topic is a constant by then). Same
-- columns, matching and ranking as news.search (news.article_matches / article_rank, 0010).
CREATE FUNCTION news.search_topic(q text, topic_slug text, max_rows integer DEFAULT 50)
RETURNS TABLE (article_id bigint, title text, url text, source_domain text,
               lang text, published_at timestamptz, rank real)
LANGUAGE sql STABLE AS $$
    SELECT a.article_id, a.title, a.url, a.source_domain, a.lang, a.published_at,
           news.article_rank(a.search_tsv, a.lang, a.title, a.body, q) AS rank
    FROM news.articles a
    WHERE a.topic = topic_slug AND news.article_matches(a.search_tsv, a.lang, a.title, a.body, q)
    ORDER BY rank DESC, a.published_at DESC NULLS LAST
    LIMIT max_rows
$$;

GRANT EXECUTE ON FUNCTION news.search_topic(text, text, integer) TO newsmon_analyst, newsmon_writer;
