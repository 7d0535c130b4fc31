-- The primary key of news.articles leads with article_id, and the separate article_id index
-- goes: one B-tree less to maintain for every topic row the loader writes.
--
-- Inside a partition the topic is constant (the reasoning of 0009), so each partition's copy
-- of the old key (topic, article_id) held the same entries in the same order as its copy of
-- articles_article_id_idx: every insert paid for the same B-tree twice. With the key as
-- (article_id, topic), each partition's key index serves lookups by article_id alone (the
-- near-duplicate verification, the search-index stage, reclassify, the monitor page) and by
-- (topic, article_id); ON CONFLICT (topic, article_id) infers the same unique index, since
-- inference matches the set of columns, not their order. Partitions created later by
-- `newsmon topics sync` inherit the new key.
--
-- On a large warehouse this rebuilds the key's index on every partition while holding an
-- exclusive lock on news.articles: run the upgrade when no load is running.
ALTER TABLE news.articles DROP CONSTRAINT articles_pkey;
ALTER TABLE news.articles ADD CONSTRAINT articles_pkey PRIMARY KEY (article_id, topic);
DROP INDEX news.articles_article_id_idx;
