-- Store article bodies (and search vectors) out of line but uncompressed (STORAGE EXTERNAL).
--
-- pglz compression of the body (~2.5 kB per topic row, compressed to ~1.7 kB) was about 60 %
-- of the cost of writing a topic row: a plain COPY of 10,000 sample articles ran at ~11,000
-- articles/s with compression and ~28,000/s without (benchmarks/bench_load.py). Bodies take
-- ~1.5x the space instead; they are a small part of the warehouse next to its indexes, and
-- substring reads of uncompressed values are cheaper too. Applies to values written from now
-- on (existing rows keep their compressed bodies) and to every partition, present and future.
-- The search vector (0010, ~2 kB) is written by the index stage: same reasoning, ~6 % of
-- that stage.
ALTER TABLE news.articles ALTER COLUMN body SET STORAGE EXTERNAL,
                          ALTER COLUMN search_tsv SET STORAGE EXTERNAL;
