-- articles_topic_published_idx (topic, published_at) duplicated articles_published_idx:
-- inside a partition the topic is constant, so each partition's copy of it was the same
-- B-tree as its published_at index, maintained twice on every insert.
DROP INDEX IF EXISTS news.articles_topic_published_idx;
