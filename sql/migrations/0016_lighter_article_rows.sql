-- Cheaper topic-row writes (the load's largest part after the band index), measured with
-- benchmarks/bench_load.py: together about 40 % of COPY into news.articles.
--
-- 1. Bodies stay in the row (toast_tuple_target 8160, the maximum). Since 0011 they are not
--    compressed (STORAGE EXTERNAL), but a row over the default 2 kB target still moved the
--    body to the TOAST table: two more heap tuples and TOAST index entries per topic row
--    for a typical 2.5 kB article. Now only rows over ~8 kB are moved out (uncompressed).
--    Set on every partition; `topics sync` copies the DEFAULT partition's options to the
--    partitions it creates. Applies to rows written from now on.
DO $$
DECLARE p regclass;
BEGIN
    FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'news.articles'::regclass LOOP
        EXECUTE format('ALTER TABLE %s SET (toast_tuple_target = 8160)', p);
    END LOOP;
END
$$;

-- 2. The search GIN indexes only indexed rows. The loader writes search_tsv NULL, and a GIN
--    index stores an entry for every NULL row; the index stage fills the vector moments
--    later and that update indexes the row anyway. Searches (`search_tsv @@ query`) imply
--    search_tsv IS NOT NULL, so the planner still uses the partial index (test_search
--    checks the plans); pending rows are found through articles_search_pending_idx.
DROP INDEX news.articles_search_idx;
CREATE INDEX articles_search_idx ON news.articles USING gin (search_tsv) WHERE search_tsv IS NOT NULL;

-- 3. A topic row's cluster_id is always its own article_id: only the first-seen copy of a
--    story has rows in the partitions, and it is the cluster (copies are sightings). So the
--    B-tree on cluster_id duplicated articles_article_id_idx; look a cluster's article up
--    by article_id = cluster_id.
DROP INDEX news.articles_cluster_idx;
