-- Latest articles on one topic (partition pruning: only news.articles_idlib is read).
-- psql "$(.venv/bin/newsmon db url)" -v topic=idlib -f sql/analyst/01_latest_on_topic.sql
SELECT published_at, source_domain, lang, title, url
FROM news.articles
WHERE topic = :'topic'
ORDER BY published_at DESC
LIMIT 50;
