"""The index stage (newsmon.search, migration 0010): search vectors computed once per
article after the load, search complete before and after, concurrent workers, roles."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa
from newsmon import cli
from newsmon.config import CONFIG_DIR, load_settings
from newsmon.pipeline import run_once
from newsmon.quarantine import replay
from newsmon.reprocess import reprocess
from newsmon.search import index_after_load, index_all, index_pending
from newsmon.topics import load_taxonomy, sync_topics
from sqlalchemy.engine import Connection, Engine
from typer.testing import CliRunner

from tests.test_quarantine import quarantined  # noqa: F401 (fixture)

AR_TITLE = "وصول قافلة مساعدات إلى إدلب"
AR_BODY = "وصلت قافلة المساعدات الإنسانية بإدلب صباح الثلاثاء، وقال مسؤولون في إدلب إن الشاحنات تحمل الطحين والدواء."
EN_TITLE = "Aid convoy reaches Idlib"
EN_BODY = "A United Nations convoy of forty trucks crossed into Idlib on Tuesday carrying flour and medicine."
OTHER = "Farmers near the river report an early wheat harvest and falling flour prices at the regional market."

_ROW = sa.text(
    """
    INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, content_hash, title, body, lang)
    VALUES (:a, :topic, :url, :url, :key, 'news.example', :key, :title, :body, :lang)
    """
)


def _add(conn: Connection, key: str, topics: list[str], *, lang: str | None, title: str, body: str) -> int:
    """One article as the loader leaves it: a registry row and one row per topic, no search vector."""
    aid = conn.execute(
        sa.text("INSERT INTO news.article_registry (url_key, content_hash) VALUES (:k, :k) RETURNING article_id"), {"k": key}
    ).scalar_one()
    for t in topics:
        conn.execute(_ROW, {"a": aid, "topic": t, "url": f"https://news.example/{key}", "key": key, "title": title,
                            "body": body, "lang": lang})  # fmt: skip
    return aid


@pytest.fixture
def corpus(engine: Engine) -> dict[str, int]:
    """Topic partitions and four articles (seven topic rows), none indexed yet."""
    with engine.begin() as c:
        sync_topics(c, load_taxonomy(CONFIG_DIR / "topics.yml"))
        ids = {
            "ar": _add(c, "ar", ["idlib", "syria"], lang="ar", title=AR_TITLE, body=AR_BODY),
            "en": _add(c, "en", ["idlib", "syria", "turkey"], lang="en", title=EN_TITLE, body=EN_BODY),
            "other": _add(c, "other", ["unclassified"], lang=None, title="Wheat harvest", body=OTHER),
            "x": _add(c, "x", ["russia"], lang="en", title="Talks in Moscow", body="Delegations met in Moscow."),
        }
    return ids


def _pending(conn: Connection) -> int:
    return conn.execute(sa.text("SELECT count(*) FROM news.articles WHERE search_tsv IS NULL")).scalar_one()


def _search(conn: Connection, q: str) -> list[tuple[int, float]]:
    return [(r.article_id, r.rank) for r in conn.execute(sa.text("SELECT article_id, rank FROM news.search(:q)"), {"q": q})]


def _indexed_ids(conn: Connection) -> set[int]:
    return set(conn.execute(sa.text("SELECT DISTINCT article_id FROM news.articles WHERE search_tsv IS NOT NULL")).scalars())


QUERIES = [("ادلب", "ar"), ("إدلب", "ar"), ("مساعدات", "ar"), ("convoys", "en"), ("trucks crossing", "en"), ("harvests", "other")]


def test_search_finds_unindexed_rows_then_index_fills_them_once_per_article(engine, corpus):
    with engine.connect() as c:
        assert _pending(c) == 7
        before = {q: _search(c, q) for q, _ in QUERIES}
    for q, key in QUERIES:  # complete before the index stage ran (vector computed on the fly)
        assert [aid for aid, _ in before[q]] == [corpus[key]], q

    with engine.begin() as c:
        assert index_pending(c) == 4  # articles, not topic rows
    with engine.begin() as c:
        assert index_pending(c) == 0  # idempotent
    with engine.connect() as c:
        assert _pending(c) == 0
        after = {q: _search(c, q) for q, _ in QUERIES}
        # every row holds exactly the vector of the shared definition
        assert c.execute(sa.text(
            "SELECT count(*) FROM news.articles WHERE search_tsv IS DISTINCT FROM news.article_tsvector(lang, title, body)"
        )).scalar_one() == 0  # fmt: skip
    assert after == before  # same hits, same ranks


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("ادلب", "ar"),  # no hamza in the query, إدلب / بإدلب in the text
        ("بإدلب", "ar"),  # proclitic bi- in the query
        ("وإدلب", "ar"),  # proclitic wa- in the query
        ("الطحين", "ar"),
        ("convoys", "en"),  # english stemming
        ("crossing", "en"),
        ('"aid convoy"', "en"),
        ('"قافلة مساعدات"', "ar"),  # phrase
    ],
)
def test_indexed_search_arabic_variants_and_english_stemming(engine, corpus, query, key):
    assert index_all(engine, chunk=1) == 4
    with engine.connect() as c:
        hits = [aid for aid, _ in _search(c, query)]
    assert corpus[key] in hits, (query, hits)


def test_article_in_several_topics_has_one_vector(engine, corpus):
    index_all(engine)
    with engine.connect() as c:
        rows = c.execute(
            sa.text("SELECT topic, search_tsv::text AS v FROM news.articles WHERE article_id = :a ORDER BY topic"), {"a": corpus["en"]}
        ).all()
        expected = c.execute(sa.text("SELECT news.article_tsvector('en', :t, :b)::text"), {"t": EN_TITLE, "b": EN_BODY}).scalar_one()
    assert [r.topic for r in rows] == ["idlib", "syria", "turkey"]
    assert {r.v for r in rows} == {expected}
    assert "'convoy'" in expected


def test_concurrent_workers_take_disjoint_articles_without_waiting(engine, corpus):
    with engine.connect() as a, engine.connect() as b, a.begin(), b.begin():
        b.exec_driver_sql("SET LOCAL lock_timeout = '2s'")  # waiting on a's rows would fail the test, not hang it
        # a takes the lowest article id; its two topic rows go together even though the LIMIT
        # counted rows
        assert index_pending(a, limit=1) == 1
        assert index_pending(b, limit=100) == 3  # the rest, skipping a's locked rows
        assert index_pending(b, limit=100) == 0
        took_a, took_b = _indexed_ids(a), _indexed_ids(b)
        assert took_a == {corpus["ar"]}
        assert took_a.isdisjoint(took_b) and took_a | took_b == set(corpus.values())
        assert a.execute(sa.text("SELECT count(*) FROM news.articles WHERE search_tsv IS NOT NULL")).scalar_one() == 2
    with engine.connect() as c:
        assert _pending(c) == 0
    assert index_all(engine) == 0


def test_roles_writer_indexes_and_analyst_searches(engine, corpus):
    with engine.begin() as c:
        c.exec_driver_sql("SET LOCAL ROLE newsmon_analyst")
        assert [aid for aid, _ in _search(c, "ادلب")] == [corpus["ar"]]  # the fallback runs as the analyst
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), c.begin_nested():
            index_pending(c)
    with engine.begin() as c:
        c.exec_driver_sql("SET LOCAL ROLE newsmon_writer")
        assert index_pending(c) == 4
    with engine.connect() as c:
        c.exec_driver_sql("SET ROLE newsmon_analyst")
        assert [aid for aid, _ in _search(c, "convoys")] == [corpus["en"]]
        c.exec_driver_sql("RESET ROLE")


def test_search_plan_probes_the_gin_and_pending_indexes(engine, corpus):
    with engine.connect() as c:
        c.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in c.exec_driver_sql("EXPLAIN SELECT * FROM news.search('ادلب')"))
    assert "Seq Scan" not in plan, plan
    assert "articles_idlib_search_tsv_idx" in plan, plan
    assert "BitmapOr" in plan, plan  # indexed rows through GIN, pending rows through the partial index


def test_pipeline_indexes_after_each_load_and_cli_catches_up(settings, engine, sample_server):
    run_once(engine, settings)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM news.articles")).scalar_one() > 0
        assert _pending(c) == 0  # the index stage ran right after the load
    cli.state._settings = None  # settings are cached per process; tests change the environment
    res = CliRunner().invoke(cli.app, ["search", "index", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"indexed": 0}


def test_a_failing_index_stage_never_fails_the_load(settings, engine, sample_server, caplog):
    # a real failure in the warehouse: every write of a search vector is refused
    with engine.begin() as c:
        c.exec_driver_sql(
            """
            CREATE FUNCTION news.refuse_tsv() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.search_tsv IS DISTINCT FROM OLD.search_tsv THEN
                    RAISE EXCEPTION 'search vectors are refused';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_tsv BEFORE UPDATE ON news.articles FOR EACH ROW EXECUTE FUNCTION news.refuse_tsv();
            """
        )
    with caplog.at_level(logging.ERROR, logger="newsmon.search"):
        summary = run_once(engine, settings)
    assert summary.articles_loaded > 0
    assert any("search index stage failed" in r.getMessage() for r in caplog.records)
    with engine.connect() as c:
        articles = c.execute(sa.text("SELECT count(DISTINCT article_id) FROM news.articles")).scalar_one()
        assert articles == summary.articles_loaded
        assert _pending(c) == c.execute(sa.text("SELECT count(*) FROM news.articles")).scalar_one()
        assert _search(c, "ادلب") and _search(c, "Idlib")  # search stays complete
        entries = dict(c.execute(sa.text("SELECT status, count(*) FROM news.feed_entries GROUP BY 1")).all())
    assert entries.get("loaded", 0) >= articles and "processing" not in entries
    assert index_after_load(engine) == 0  # still refused: logged, not raised
    with engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER refuse_tsv ON news.articles")
    cli.state._settings = None
    res = CliRunner().invoke(cli.app, ["search", "index", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"indexed": articles}  # the catch-up command
    with engine.connect() as c:
        assert _pending(c) == 0


def test_quarantine_replay_indexes_the_rows_it_loads(engine, settings, quarantined, monkeypatch):  # noqa: F811
    with engine.connect() as c:
        assert _pending(c) == 2  # load_batch alone leaves the vectors to the index stage
    monkeypatch.setenv("NEWSMON_QUALITY__BODY_MIN_CHARS", "40")
    settings = load_settings()  # re-read the environment
    res = replay(engine, settings)
    assert res.loaded == 1
    with engine.connect() as c:
        assert _pending(c) == 0
        assert len(_search(c, "gallery Aleppo")) == 1


def test_reprocess_indexes_the_rows_it_rewrites(settings, engine, sample_server):
    run_once(engine, settings)
    # what an older extractor left behind (its vector matched that text); reprocess rewrites the rows
    with engine.begin() as c:
        aid = c.execute(sa.text(
            "UPDATE news.articles SET title = 'old title', search_tsv = news.article_tsvector(lang, 'old title', body) "
            "WHERE url LIKE '%seven-civilians-killed-ariha-market-shelling%' RETURNING article_id"
        )).scalars().first()  # fmt: skip
    assert aid is not None
    summary = reprocess(engine, load_taxonomy(settings.pipeline.topics_file))
    assert summary.updated == 1 and summary.failed == 0
    with engine.connect() as c:
        assert _pending(c) == 0
        stale = c.execute(sa.text(
            "SELECT count(*) FROM news.articles WHERE search_tsv IS DISTINCT FROM news.article_tsvector(lang, title, body)"
        )).scalar_one()  # fmt: skip
        assert stale == 0
        assert aid not in [a for a, _ in _search(c, '"old title"')]


def test_parallel_workers_index_every_article_exactly_once(engine, corpus):
    with engine.begin() as c:
        extra = [_add(c, f"bulk{i}", ["syria", "idlib"] if i % 2 else ["russia"], lang="ar" if i % 3 else "en",
                      title=f"{AR_TITLE} {i}", body=f"{AR_BODY} {EN_BODY} {i}") for i in range(60)]  # fmt: skip
    # an article whose topic rows the two workers split is counted by both: at least all of them
    assert index_all(engine, chunk=5, workers=2) >= len(extra) + len(corpus)
    with engine.connect() as c:
        assert _pending(c) == 0
        assert _indexed_ids(c) == set(extra) | set(corpus.values())
    assert index_all(engine, workers=2) == 0


def test_editing_the_text_in_place_drops_the_stale_vector(engine, corpus):
    index_all(engine)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE news.articles SET title = 'Talks in Ankara', body = 'Delegations met in Ankara.' WHERE article_id = :a"), {"a": corpus["x"]})
        c.execute(sa.text("UPDATE news.articles SET topic_score = 9 WHERE article_id = :a"), {"a": corpus["en"]})
        assert _pending(c) == 1  # the edited row only: a score change keeps the vector
        assert corpus["x"] not in [aid for aid, _ in _search(c, "Moscow")]
        assert corpus["x"] in [aid for aid, _ in _search(c, "Ankara")]  # found through the fallback meanwhile
    assert index_all(engine) == 1
    with engine.connect() as c:
        assert _pending(c) == 0 and corpus["x"] in [aid for aid, _ in _search(c, "Ankara")]
