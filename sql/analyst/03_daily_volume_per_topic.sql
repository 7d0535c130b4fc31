-- Articles and distinct sources per topic per day for the last 14 days.
-- psql "$(.venv/bin/newsmon db url)" -f sql/analyst/03_daily_volume_per_topic.sql
SELECT day, topic, articles, sources
FROM news.topic_daily
WHERE day >= current_date - 14
ORDER BY day DESC, topic;
