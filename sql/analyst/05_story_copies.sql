-- Every outlet that ran one story (a cluster), with how each copy was matched.
-- psql "$(.venv/bin/newsmon db url)" -v cluster=1 -f sql/analyst/05_story_copies.sql
SELECT s.seen_at, s.source_domain, s.match_kind, s.similarity, s.url
FROM news.article_sightings s
WHERE s.cluster_id = :cluster
ORDER BY s.seen_at;
