-- Stories of the last N days ranked by how many distinct outlets ran them
-- (syndicated copies are found by near-duplicate detection and kept as sightings).
-- psql "$(.venv/bin/newsmon db url)" -v days=7 -f sql/analyst/02_top_stories_by_outlets.sql
SELECT c.cluster_id, c.sources, c.copies, c.first_seen, c.title, c.source_domains
FROM news.story_clusters c
WHERE c.first_seen > now() - make_interval(days => :days)
ORDER BY c.sources DESC, c.copies DESC, c.first_seen DESC
LIMIT 20;
