-- Which band scheme (newsmon.dedup.SCHEME) produced each row of news.lsh_signatures.
--
-- Scheme 2 (word 4-grams, 16 + 6 bands of 2 rows: 22 band hashes per article) replaces
-- scheme 1 (word 3-grams, 38 + 4 bands of 3 rows: 42), halving the index keys that every
-- load inserts and every lookup probes. Keys of different schemes never match (the scheme's
-- kind byte is hashed into every band), so rows written before this migration keep
-- scheme 1 until `newsmon dedup reindex` (also run by the maintenance DAG) re-signs them
-- from the stored bodies. Adding a column with a constant default rewrites nothing.
ALTER TABLE news.lsh_signatures ADD COLUMN scheme smallint NOT NULL DEFAULT 1;
CREATE INDEX lsh_signatures_old_scheme_idx ON news.lsh_signatures (article_id) WHERE scheme < 2;
