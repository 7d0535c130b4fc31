"""Real Airflow runs (`dag.test()`) of the DAGs against the sample corpus served on
127.0.0.1 and a fresh warehouse database reached through AIRFLOW_CONN_NEWSMON_DB."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from newsmon.config import Settings
from newsmon.db import libpq_url, make_engine

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DEAD_DB = "postgresql://nobody:pw@127.0.0.1:9/nowhere"


@pytest.fixture
def warehouse_conn(db_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test database as the Airflow connection; NEWSMON_DATABASE_URL points at a dead
    server, so a passing run proves the connection is what the tasks use."""
    monkeypatch.setenv("AIRFLOW_CONN_NEWSMON_DB", libpq_url(db_url))
    monkeypatch.setenv("NEWSMON_DATABASE_URL", DEAD_DB)
    return db_url


def _states(dr: Any) -> dict[str, str]:
    return {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in dr.get_task_instances()}


def test_poll_then_process_loads_articles(airflow_db: Any, dagbag: Any, warehouse_conn: str, sample_server: Any) -> None:
    poll = dagbag.dags["newsmon_poll_feeds"]
    dr = poll.test()
    assert dr.state == "success", _states(dr)
    states = _states(dr)
    assert states["announce[-1]"] == "success"  # entries wait: the asset fires
    assert any(k.startswith("poll_shard[") and v == "success" for k, v in states.items())
    assert any(p.startswith("/feeds/") for p in sample_server.requests)

    eng = make_engine(warehouse_conn, poolclass=sa.NullPool)
    with eng.connect() as c:
        polled = c.execute(sa.text("SELECT count(*) FROM news.feeds WHERE last_polled_at IS NOT NULL")).scalar()
        queued = c.execute(sa.text("SELECT count(*) FROM news.feed_entries WHERE status = 'new'")).scalar()
    assert polled == 3 and queued > 0

    process = dagbag.dags["newsmon_process_articles"]
    dr = process.test()
    assert dr.state == "success", _states(dr)
    assert _states(dr)["report[-1]"] == "success"
    with eng.connect() as c:
        articles = c.execute(sa.text("SELECT count(DISTINCT article_id) FROM news.articles")).scalar()
        topics = {r[0] for r in c.execute(sa.text("SELECT DISTINCT topic FROM news.articles"))}
        left = c.execute(sa.text("SELECT count(*) FROM news.feed_entries WHERE status IN ('new', 'processing')")).scalar()
    eng.dispose()
    assert articles > 0
    assert {"syria", "russia"} <= topics
    assert left == 0

    # a second poll right away: nothing is due, nothing queued -> no asset event
    dr = poll.test()
    assert dr.state == "success", _states(dr)
    assert _states(dr)["announce[-1]"] == "skipped"


def test_failure_fires_the_callback_and_records_an_alert(
    airflow_db: Any, dagbag: Any, warehouse_conn: str, sample_server: Any
) -> None:
    """A manual run naming an unknown feed fails with a clear error; the task's
    on_failure_callback records a task_failure alert in the warehouse."""
    poll = dagbag.dags["newsmon_poll_feeds"]
    saved = {t.task_id: t.retries for t in poll.tasks}
    for t in poll.tasks:
        t.retries = 0  # no waiting for retries in a test
    try:
        dr = poll.test(run_conf={"feed": "no-such-feed"})
    finally:
        for t in poll.tasks:
            t.retries = saved[t.task_id]
    assert dr.state == "failed"
    assert _states(dr)["plan_shards[-1]"] == "failed"
    eng = make_engine(warehouse_conn, poolclass=sa.NullPool)
    with eng.connect() as c:
        rows = c.execute(
            sa.text("SELECT subject, severity, summary, payload FROM news.alerts WHERE kind = 'task_failure'")
        ).mappings().all()
    eng.dispose()
    assert [r["subject"] for r in rows] == ["newsmon_poll_feeds.plan_shards"]
    assert "no-such-feed" in rows[0]["summary"]
    assert rows[0]["payload"]["run_id"] == dr.run_id


def test_quality_and_maintenance_dags_run(airflow_db: Any, dagbag: Any, warehouse_conn: str) -> None:
    dr = dagbag.dags["newsmon_data_quality"].test(run_conf={"window_hours": 6})
    assert dr.state == "success", _states(dr)
    dr = dagbag.dags["newsmon_maintenance"].test()
    assert dr.state == "success", _states(dr)
    eng = make_engine(warehouse_conn, poolclass=sa.NullPool)
    with eng.connect() as c:
        analyzed = c.execute(sa.text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'feeds'")).scalar()
        topics = c.execute(sa.text("SELECT count(*) FROM news.topics")).scalar()
    eng.dispose()
    assert analyzed is not None and topics >= 4
