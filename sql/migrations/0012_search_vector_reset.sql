-- A row whose title, body or language changes in place loses its search vector (0010), so the
-- index stage recomputes it and news.search falls back to the text meanwhile: a stale vector
-- would find the article by words it no longer has. newsmon itself rewrites rows by DELETE +
-- INSERT (reprocess, reclassify), which already start without a vector; this covers manual
-- fixes and future code. Row triggers on a partitioned table apply to every partition.
CREATE FUNCTION news.reset_search_tsv() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.title IS DISTINCT FROM OLD.title OR NEW.body IS DISTINCT FROM OLD.body
       OR NEW.lang IS DISTINCT FROM OLD.lang THEN
        NEW.search_tsv := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER articles_reset_search_tsv
    BEFORE UPDATE OF title, body, lang ON news.articles
    FOR EACH ROW EXECUTE FUNCTION news.reset_search_tsv();

GRANT EXECUTE ON FUNCTION news.reset_search_tsv() TO newsmon_writer;
