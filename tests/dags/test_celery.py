"""The same DAGs and code, distributed: the real scheduler, dag-processor and API server
with the CeleryExecutor, a Celery worker, Redis as the broker and PostgreSQL as the
metadata database and result backend (both running locally on this machine). The poll
DAG is triggered on the sample feeds; the process DAG must follow through its asset and
load rows into the test warehouse."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import pytest
import sqlalchemy as sa
from newsmon.airflow_cluster import LOCAL_PG_ADMIN, airflow_cluster, port_open
from newsmon.config import Settings
from newsmon.db import libpq_url, make_engine
from newsmon.orchestration import HTTP_POOL

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900)]

REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)
BROKER_DB = 11  # a Redis database of its own; the queue name is unique per run as well
POLL, PROCESS = "newsmon_poll_feeds", "newsmon_process_articles"
DEADLINE_S = 6 * 60


def _services_or_skip() -> None:
    missing = [f"{name} on {host}:{port}" for name, (host, port) in (("Redis", REDIS), ("PostgreSQL", POSTGRES))
               if not port_open(host, port)]  # fmt: skip
    if missing:
        pytest.skip(f"the Celery test needs {' and '.join(missing)} (not answering)")


def _articles(url: str) -> dict[str, int]:
    eng = make_engine(url, poolclass=sa.NullPool)
    try:
        with eng.connect() as c:
            return {r[0]: int(r[1]) for r in c.execute(sa.text("SELECT topic, count(*) FROM news.articles GROUP BY topic"))}
    finally:
        eng.dispose()


def test_poll_and_process_on_celery(db_url: str, settings: Settings, sample_server: Any) -> None:
    _services_or_skip()
    queue = f"newsmon_test_{os.getpid()}_{secrets.token_hex(3)}"
    env = {
        "AIRFLOW_CONN_NEWSMON_DB": libpq_url(db_url),
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{BROKER_DB}",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
    }
    started = time.monotonic()
    try:
        loaded, tis, poll_runs, process_runs, tails = _run_cluster(db_url, queue, env)
    finally:
        _drop_queue(queue)
    elapsed = time.monotonic() - started
    print(f"celery test: rows landed after {elapsed:.0f}s (cluster start to assertion); articles per topic {loaded}")

    assert any(r.state == "success" for r in poll_runs), (poll_runs, tails)
    assert any(r.state == "success" and r.run_type == "asset_triggered" for r in process_runs), (process_runs, tails)
    ran = [t for t in tis if t.state == "success"]
    assert {t.task_id for t in ran if t.dag_id == PROCESS} >= {"plan_batches", "process_batch", "report"}, tis
    # every task went through our Celery queue, and was run by the worker
    assert ran and all(t.queue == queue for t in ran), tis
    assert all(t.hostname for t in ran), tis
    assert loaded["syria"] > 0 and loaded["idlib"] > 0 and loaded.get("russia", 0) > 0


def _drop_queue(queue: str) -> None:
    """Remove this run's queue and its bindings from the Redis broker database."""
    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=BROKER_DB, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _run_cluster(db_url: str, queue: str, env: dict[str, str]) -> tuple[Any, ...]:
    with airflow_cluster(LOCAL_PG_ADMIN, executor="CeleryExecutor", extra_env=env) as af:
        # the result backend lives in the metadata database itself (psycopg2: SQLAlchemy 2.1's
        # default PostgreSQL driver is psycopg 3, which is not installed)
        af.env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + af.metadata_url
        af.migrate(pools={HTTP_POOL: 4})
        af.start_core(triggerer=False)
        af.start("celery-worker", "celery", "worker", "--queues", queue, "--skip-serve-logs",
                 "--celery-hostname", f"{queue}@%h", "--without-gossip", "--without-mingle")  # fmt: skip
        af.wait_for_dags([POLL, PROCESS])
        af.unpause(PROCESS, POLL)
        af.cli("dags", "trigger", POLL)

        loaded: dict[str, int] = {}

        def rows_landed() -> bool:
            nonlocal loaded
            loaded = _articles(db_url)
            done = [r for r in af.dag_runs(PROCESS) if r.state in ("success", "failed")]
            return bool(done) and {"syria", "idlib"} <= set(loaded)

        try:
            af.wait_for(rows_landed, DEADLINE_S, "newsmon_process_articles to load syria and idlib rows", every=5)
        except (TimeoutError, RuntimeError) as exc:
            pytest.fail(f"{exc}\npoll runs: {af.dag_runs(POLL)}\nprocess runs: {af.dag_runs(PROCESS)}\narticles: {loaded}")

        tis = af.metadata(
            "SELECT dag_id, task_id, map_index, state, queue, hostname FROM task_instance WHERE dag_id IN (:p, :q)",
            p=POLL, q=PROCESS,
        )
        poll_runs, process_runs = af.dag_runs(POLL), af.dag_runs(PROCESS)
        tails = af.tails()
    return loaded, tis, poll_runs, process_runs, tails
