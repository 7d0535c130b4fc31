-- Full-text search inside one topic: reads that topic's partition and its GIN index only.
-- psql "$(.venv/bin/newsmon db url)" -v q='قافلة مساعدات' -v topic=idlib -f sql/analyst/06_search_in_topic.sql
SELECT article_id, published_at, source_domain, title, round(rank::numeric, 4) AS rank
FROM news.search_topic(:'q', :'topic', 20);
