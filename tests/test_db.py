import shutil

import pytest
import sqlalchemy as sa
from newsmon import db
from newsmon.config import CONFIG_DIR
from newsmon.errors import MigrationError
from newsmon.topics import load_taxonomy, sync_topics


def test_upgrade_is_idempotent(engine):
    assert db.upgrade(engine) == []
    assert db.applied_migrations(engine)[0] == "0001_core_schema"


def test_edited_migration_is_refused(engine, tmp_path):
    migs = tmp_path / "m"
    shutil.copytree(db.MIGRATIONS_DIR, migs)
    first = sorted(migs.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        db.upgrade(engine, migs)


def test_failed_migration_rolls_back(engine, tmp_path):
    migs = tmp_path / "m"
    shutil.copytree(db.MIGRATIONS_DIR, migs)
    (migs / "9999_broken.sql").write_text("CREATE TABLE news.half_done (x int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match=r"9999_broken\.sql failed"):
        db.upgrade(engine, migs)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT to_regclass('news.half_done')")).scalar() is None


def test_normalize_url_accepts_airflow_style():
    assert db.normalize_url("postgres://u:p@h:5432/d") == "postgresql+psycopg2://u:p@h:5432/d"
    assert db.libpq_url("postgresql+psycopg2://u:p@h/d") == "postgresql://u:p@h/d"


def test_partitions_and_pruning(engine):
    tax = load_taxonomy(CONFIG_DIR / "topics.yml")
    with engine.begin() as c:
        created = sync_topics(c, tax)
    assert set(created) == {"articles_syria", "articles_idlib", "articles_russia", "articles_turkey"}
    with engine.begin() as c:
        assert sync_topics(c, tax) == []  # idempotent
        plan = "\n".join(r[0] for r in c.execute(sa.text("EXPLAIN SELECT * FROM news.articles WHERE topic = 'idlib'")))
    assert "articles_idlib" in plan
    for other in ("articles_syria", "articles_russia", "articles_turkey", "articles_unclassified"):
        assert other not in plan


def test_new_topic_moves_rows_out_of_default(engine, tmp_path):
    tax = load_taxonomy(CONFIG_DIR / "topics.yml")
    with engine.begin() as c:
        sync_topics(c, tax)
        c.execute(sa.text("INSERT INTO news.article_registry (url_key, content_hash) VALUES ('k', 'h')"))
        c.execute(
            sa.text(
                "INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, content_hash) "
                "SELECT article_id, 'lebanon', 'http://x/k', 'http://x/k', 'k', 'x', 'h' FROM news.article_registry"
            )
        )
    extra = tmp_path / "topics.yml"
    extra.write_text((CONFIG_DIR / "topics.yml").read_text() + "  - slug: lebanon\n    label: Lebanon\n    terms: {en: [Lebanon]}\n")
    with engine.begin() as c:
        assert sync_topics(c, load_taxonomy(extra)) == ["articles_lebanon"]
        assert c.execute(sa.text("SELECT count(*) FROM news.articles_lebanon")).scalar() == 1
        assert c.execute(sa.text("SELECT count(*) FROM news.articles_unclassified")).scalar() == 0
    # removing the topic from the file keeps its partition and rows
    with engine.begin() as c:
        sync_topics(c, tax)
        assert c.execute(sa.text("SELECT count(*) FROM news.articles WHERE topic = 'lebanon'")).scalar() == 1
        assert c.execute(sa.text("SELECT active FROM news.topics WHERE slug = 'lebanon'")).scalar() is False


def test_array_literal_round_trips_awkward_values_through_postgresql(engine):
    """The loader sends its key arrays as one literal string; every value must come back as
    it went in: quotes, backslashes, commas, braces, the word NULL, empty strings, NULL."""
    from datetime import UTC, datetime

    texts = ['a"b', "back\\slash", "x,y", "{brace}", "NULL", "", None, "إدلب هدنة", " spaced "]
    ints = [1, -9_223_372_036_854_775_808, 9_223_372_036_854_775_807, None]
    stamps = [datetime(2026, 11, 28, 6, 30, tzinfo=UTC), None]
    with engine.connect() as c:
        row = c.execute(
            sa.text("SELECT CAST(:t AS text[]), CAST(:i AS bigint[]), CAST(:s AS timestamptz[]), CAST(:e AS text[])"),
            {"t": db.array_literal(texts), "i": db.array_literal(ints), "s": db.array_literal(stamps), "e": db.array_literal([])},
        ).one()
    assert list(row) == [texts, ints, stamps, []]


def test_every_partition_has_one_index_per_leading_key(engine):
    """No index of a topic partition duplicates another (0009, 0016, 0017): inside a partition
    the topic is constant, so (topic, x) and (x) are the same B-tree maintained twice."""
    with engine.begin() as c:
        sync_topics(c, load_taxonomy(CONFIG_DIR / "topics.yml"))
        rows = c.execute(
            sa.text(
                """
                SELECT p.relname AS part, ci.relname AS index, i.indpred IS NOT NULL AS partial,
                       array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
                             JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = k.n
                             WHERE a.attname <> 'topic' ORDER BY k.o) AS keys
                FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhrelid
                JOIN pg_index i ON i.indrelid = p.oid JOIN pg_class ci ON ci.oid = i.indexrelid
                WHERE h.inhparent = 'news.articles'::regclass
                """
            )
        ).all()
    by_part: dict[str, list[tuple[str, bool]]] = {}
    for r in rows:
        by_part.setdefault(r.part, []).append((r.keys[0] if r.keys else "", r.partial))
    assert len(by_part) > 2
    for part, keys in by_part.items():
        full = [k for k, partial in keys if not partial]
        assert len(full) == len(set(full)), (part, keys)  # no two full indexes lead with the same key
        assert "article_id" in full, (part, keys)  # lookups by article_id have an index (the key)
