-- Full-text search in Arabic and English (Arabic rows use PostgreSQL's arabic
-- configuration, the rest english; websearch syntax: words, "phrases", OR, -word).
-- psql "$(.venv/bin/newsmon db url)" -v q='إدلب تركيا' -f sql/analyst/04_search.sql
SELECT article_id, topics, published_at, source_domain, title, round(rank::numeric, 4) AS rank
FROM news.search(:'q', 20);
