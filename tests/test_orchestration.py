"""The functions the Airflow tasks call (newsmon.orchestration), on a real database and
real HTTP servers on 127.0.0.1, without Airflow."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from newsmon import orchestration as orch
from newsmon.config import Settings
from newsmon.errors import ConfigError
from newsmon.feeds import sync_feeds
from newsmon.models import FeedSpec

from tests.httpserver import Route

RSS = """<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{name}</title>
<item><title>{name} one</title><link>{base}/{name}/1</link><guid>{name}-1</guid></item>
<item><title>{name} two</title><link>{base}/{name}/2</link><guid>{name}-2</guid></item>
</channel></rss>"""


def _feeds(engine, settings: Settings, base: str, names: list[str]) -> dict[str, int]:
    with engine.begin() as c:
        sync_feeds(c, [FeedSpec(name=n, url=f"{base}/{n}.xml") for n in names], settings.poll)
        c.execute(sa.text("UPDATE news.feeds SET next_poll_at = now() - interval '1 minute'"))
        return dict(c.execute(sa.text("SELECT name, feed_id FROM news.feeds")).all())


def test_warehouse_url_prefers_the_connection_and_normalises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSMON_DATABASE_URL", "postgresql://env:pw@db.example:5432/envdb")
    assert orch.warehouse_url("postgres://u:p@h:5432/d") == "postgresql+psycopg2://u:p@h:5432/d"
    assert orch.warehouse_url(None) == "postgresql+psycopg2://env:pw@db.example:5432/envdb"
    assert orch.warehouse_url("") == "postgresql+psycopg2://env:pw@db.example:5432/envdb"


def test_shards_split_due_feeds_and_label_them(engine, settings: Settings, db_url: str) -> None:
    ids = _feeds(engine, settings, "http://127.0.0.1:9", [f"feed-{i}" for i in range(7)])
    with engine.begin() as c:  # one feed is not due, one disabled
        c.execute(sa.text("UPDATE news.feeds SET next_poll_at = now() + interval '1 hour' WHERE name = 'feed-5'"))
        c.execute(sa.text("UPDATE news.feeds SET enabled = false WHERE name = 'feed-6'"))
    shards = orch.plan_poll_shards(db_url, max_shards=2)
    assert len(shards) == 2
    planned = [fid for s in shards for fid in s["feed_ids"]]
    assert sorted(planned) == sorted(ids[f"feed-{i}"] for i in range(5))
    assert len(set(planned)) == len(planned)
    assert shards[0]["label"].startswith("shard 1/2: 3 feeds (feed-")
    assert all(s["only_due"] for s in shards)

    one = orch.plan_poll_shards(db_url, feed="feed-5")
    assert one == [{"shard": 0, "feed_ids": [ids["feed-5"]], "only_due": False, "label": "shard 1/1: 1 feed (feed-5)"}]
    with pytest.raises(ConfigError, match="no feed named 'nope'"):
        orch.plan_poll_shards(db_url, feed="nope")
    with engine.begin() as c:
        c.execute(sa.text("UPDATE news.feeds SET next_poll_at = now() + interval '1 hour'"))
    assert orch.plan_poll_shards(db_url, max_shards=3) == []


def test_poll_shard_polls_exactly_its_feeds(engine, settings: Settings, db_url: str, http_server) -> None:
    base = http_server.url("").rstrip("/")
    names = ["a", "b", "c"]
    for n in names:
        http_server.routes[f"/{n}.xml"] = Route(200, RSS.format(name=n, base=base).encode(), {"Content-Type": "application/rss+xml"})
    ids = _feeds(engine, settings, base, names)
    shard = {"shard": 0, "feed_ids": [ids["a"], ids["c"]], "only_due": True, "label": "x"}
    result = orch.poll_shard(db_url, shard)
    assert result == {"shard": 0, "feeds_polled": 2, "feeds_failed": 0, "entries_seen": 4, "entries_new": 4, "errors": []}
    assert sorted(p for p, _ in http_server.hits if p.endswith(".xml")) == ["/a.xml", "/c.xml"]
    again = orch.poll_shard(db_url, shard)  # retried task: the feeds are no longer due
    assert again["feeds_polled"] == 0

    report = orch.poll_report(db_url, [result, again, None])
    assert report["entries_new"] == 4 and report["queued"] == 4 and report["emit"] is True
    assert report["shards"] == 2


def test_requeue_range_and_batches(engine, settings: Settings, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _feeds(engine, settings, "http://127.0.0.1:9", ["f"])
    day = datetime(2025, 3, 10, 12, tzinfo=UTC)
    with engine.begin() as c:
        for i, (status, seen) in enumerate(
            [("failed", day), ("quarantined", day), ("loaded", day), ("failed", day - timedelta(days=5)), ("new", day)]
        ):
            c.execute(
                sa.text(
                    """INSERT INTO news.feed_entries (feed_id, entry_key, link, title, published_at, entry_hash,
                                                      first_seen_at, last_seen_at, status, attempts)
                       VALUES (:f, :k, 'http://127.0.0.1:9/x', 't', :d, 'h', :d, :d, :s, 5)"""
                ),
                {"f": ids["f"], "k": f"k{i}", "d": seen, "s": status},
            )
    assert orch.requeue_range(db_url) == {"requeued": 0}
    out = orch.requeue_range(db_url, "2025-03-10", "2025-03-10")
    assert out == {"requeued": 2, "date_from": "2025-03-10", "date_to": "2025-03-10"}
    assert orch.requeue_range(db_url, "2025-03-10", "2025-03-10")["requeued"] == 0  # idempotent
    with pytest.raises(ConfigError, match="before"):
        orch.requeue_range(db_url, "2025-03-11", "2025-03-01")
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        orch.requeue_range(db_url, "10/03/2025")

    # 2 requeued (attempts 0); the 'new' one has used up its attempts
    monkeypatch.setenv("NEWSMON_PIPELINE__BATCH_SIZE", "1")
    batches = orch.plan_batches(db_url, max_batches=8)
    assert [b["batch"] for b in batches] == [0, 1]
    assert batches[0]["label"] == "batch 1/2 (≤1 of 2 queued)"
    assert len(orch.plan_batches(db_url, max_batches=1)) == 1
    assert orch.plan_batches(db_url, feed="f")[0]["feed_ids"] == [ids["f"]]


def test_process_report_sums_batches() -> None:
    total = orch.process_report([
        {"entries_processed": 3, "articles_loaded": 2, "duplicates": 1, "quarantined": 0, "failed": 0, "per_topic": {"syria": 2}},
        None,
        {"entries_processed": 1, "articles_loaded": 1, "duplicates": 0, "quarantined": 0, "failed": 0, "per_topic": {"syria": 1, "idlib": 1}},
    ])  # fmt: skip
    assert total["batches"] == 2 and total["articles_loaded"] == 3
    assert total["per_topic"] == {"syria": 3, "idlib": 1}


def test_maintenance_resigns_near_duplicate_keys_of_an_older_band_scheme(engine, db_url: str) -> None:
    from newsmon.dedup import SCHEME
    from newsmon.load import load_batch

    from tests.test_dedup import _story, make_article

    with engine.begin() as c:
        [(aid, _)] = load_batch(c, [make_article(_story(5), "http://a.example/5")], [], []).loaded
        c.execute(sa.text("UPDATE news.lsh_signatures SET bands = '{7}', scheme = 1 WHERE article_id = :a"), {"a": aid})
    assert orch.maintenance(db_url)["signatures_resigned"] == 1
    assert orch.maintenance(db_url)["signatures_resigned"] == 0
    with engine.connect() as c:
        scheme, n = c.execute(sa.text("SELECT scheme, cardinality(bands) FROM news.lsh_signatures WHERE article_id = :a"), {"a": aid}).one()
    assert (scheme, n) == (SCHEME, 22)


def test_maintenance_prunes_band_rows_of_an_article_deleted_by_hand(engine, db_url: str) -> None:
    """The band table has no foreign key (0018); bands left by a manual registry DELETE are
    ignored by the lookup and removed by maintenance, and nothing else is touched."""
    from newsmon.dedup import find_near_duplicates, signature
    from newsmon.load import load_batch
    from newsmon.normalize import normalize_text

    from tests.test_dedup import _story, make_article

    with engine.begin() as c:
        loaded = load_batch(c, [make_article(_story(n), f"http://a.example/{n}") for n in (6, 7)], [], []).loaded
    (gone, _), (kept, _) = loaded
    with engine.begin() as c:
        for table in ("news.article_sightings", "news.articles", "news.article_registry"):
            c.execute(sa.text(f"DELETE FROM {table} WHERE article_id = :a"), {"a": gone})
    with engine.connect() as c:  # the dangling row is inert: a copy of the deleted story finds nothing
        assert find_near_duplicates(c, [signature(normalize_text(_story(6)))]) == {}
    assert orch.maintenance(db_url)["orphan_bands_pruned"] == 1
    assert orch.maintenance(db_url)["orphan_bands_pruned"] == 0
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT array_agg(article_id) FROM news.lsh_signatures")).scalar() == [kept]


def test_maintenance_syncs_topics_analyzes_and_refreshes_views(engine, settings: Settings, db_url: str) -> None:
    ids = _feeds(engine, settings, "http://127.0.0.1:9", ["f"])
    with engine.begin() as c:
        c.execute(sa.text("CREATE MATERIALIZED VIEW news.mv_test AS SELECT count(*) AS n FROM news.feeds"))
        c.execute(sa.text("DELETE FROM news.topics"))
        for key, age in (("old", 40), ("recent", 5)):
            eid = c.execute(
                sa.text("""INSERT INTO news.feed_entries (feed_id, entry_key, link, title, published_at, entry_hash,
                                                          first_seen_at, last_seen_at)
                           VALUES (:f, :k, 'http://x/', 't', now(), 'h', now(), now()) RETURNING entry_id"""),
                {"f": ids["f"], "k": key},
            ).scalar()  # fmt: skip
            c.execute(
                sa.text("""INSERT INTO news.raw_pages (entry_id, url, final_url, status, body, body_bytes, body_sha256, fetched_at)
                           VALUES (:e, 'http://x/', 'http://x/', 200, 'x', 1, 'h', now() - make_interval(days => :d))"""),
                {"e": eid, "d": age},
            )  # fmt: skip
    out = orch.maintenance(db_url, raw_retention_days=30)
    assert out["raw_pages_deleted"] == 1
    assert orch.maintenance(db_url, raw_retention_days=30)["raw_pages_deleted"] == 0  # idempotent
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM news.raw_pages")).scalar() == 1
    assert "news.mv_test" in out["views_refreshed"]
    assert out["tables_analyzed"] > 5
    with engine.connect() as c:
        topics = {r[0] for r in c.execute(sa.text("SELECT slug FROM news.topics"))}
        analyzed = c.execute(sa.text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'feeds'")).scalar()
    assert {"syria", "idlib", "russia", "turkey"} <= topics
    assert analyzed is not None


def test_task_failure_alert_records_alert_and_masks_secrets(db_url: str, engine, caplog: pytest.LogCaptureFixture) -> None:
    exc = RuntimeError("could not connect to postgresql://svc:hunter2@db:5432/news")
    with caplog.at_level(logging.ERROR, logger="newsmon.orchestration"):
        event = orch.task_failure_alert("newsmon_poll_feeds", "poll_shard", "manual__x", 2, exc, url=db_url, map_index=1)
    assert "hunter2" not in caplog.text and "newsmon.task_failure" in caplog.text
    assert '"task_id": "poll_shard"' in caplog.text
    assert event["alert_id"] is not None
    with engine.connect() as c:
        row = c.execute(sa.text("SELECT subject, summary, payload FROM news.alerts WHERE alert_id = :i"), {"i": event["alert_id"]}).one()
    assert row.subject == "newsmon_poll_feeds.poll_shard"
    assert "hunter2" not in row.summary and "hunter2" not in str(row.payload)


def test_on_task_failure_reads_an_airflow_like_context(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    class TI:  # the attributes Airflow's RuntimeTaskInstance exposes
        dag_id, task_id, run_id, try_number, map_index, log_url = "d", "t", "r", 1, -1, None

    monkeypatch.setenv("NEWSMON_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")  # alert ledger down
    with caplog.at_level(logging.ERROR, logger="newsmon.orchestration"):
        event = orch.on_task_failure({"ti": TI(), "exception": ValueError("boom")})
    assert event["dag_id"] == "d" and event["exception"] == "ValueError: boom"
    assert event["alert_id"] is None  # could not record it, but the failure is still logged
    assert "ValueError: boom" in caplog.text


def test_standalone_env(tmp_path: Path) -> None:
    env = orch.standalone_env(
        tmp_path, warehouse="postgresql+psycopg2://u:p@h:1/d", sample_base_url="http://127.0.0.1:8765", port=8099, base={}
    )
    assert env["AIRFLOW__API__PORT"] == "8099" and env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8099/execution/"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert env["AIRFLOW_HOME"] == str(tmp_path / ".airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(tmp_path / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(tmp_path / "plugins")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW_CONN_NEWSMON_DB"] == "postgresql://u:p@h:1/d"
    assert env["NEWSMON_SAMPLE_BASE_URL"] == "http://127.0.0.1:8765"
    assert env["NEWSMON_FETCH__ALLOW_PRIVATE_NETWORKS"] == "true"
