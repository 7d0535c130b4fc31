"""Injected faults against real processes (issue 8): PostgreSQL crashed and restarted in
the middle of a load, a worker SIGKILLed in the middle of a batch, two passes at once,
a read-only and a full warehouse. Each faulted run is compared with an uninterrupted run
of the same corpus: nothing lost, nothing loaded twice."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from newsmon import db
from newsmon.config import PROJECT_ROOT, Settings, load_settings
from newsmon.errors import DatabaseError
from newsmon.feeds import load_feed_specs
from newsmon.pipeline import poll_pass, prepare, process_pass, run_once
from sqlalchemy.engine import Engine, make_url

from tests.httpserver import Route

LEASE_S = 10  # the smallest claim lease settings allow
_dbs = itertools.count()


def make_settings(monkeypatch: pytest.MonkeyPatch, url: str, **env: str) -> Settings:
    """Settings for one warehouse: small batches (so a pass has several), a short lease,
    one feed polled at a time (so two runs queue entries in the same order)."""
    values = {
        "DATABASE_URL": url, "FETCH__ALLOW_PRIVATE_NETWORKS": "true", "FETCH__PER_HOST_DELAY_S": "0",
        "FETCH__RETRIES": "0", "PIPELINE__BATCH_SIZE": "5", "PIPELINE__CLAIM_LEASE_S": str(LEASE_S),
        "POLL__SHARD_SIZE": "1", **env,
    }  # fmt: skip
    for k, v in values.items():
        monkeypatch.setenv(f"NEWSMON_{k}", v)
    return load_settings()


@pytest.fixture
def other_db(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A second fresh database on the test server (for the uninterrupted baseline run)."""
    name = f"nm_f_{os.getpid()}_{next(_dbs)}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def snapshot(engine: Engine) -> dict[str, Any]:
    """What a pass leaves behind, in terms that do not depend on generated ids."""
    q = {
        "entries": "SELECT count(*) FROM news.feed_entries",
        "registry": "SELECT count(*) FROM news.article_registry",
        "article_rows": "SELECT count(*) FROM news.articles",
        "rejected": "SELECT count(*) FROM news.rejected_articles",
        # an entry loaded twice would have two sightings or two registry rows
        "entries_seen_twice": "SELECT count(*) FROM (SELECT entry_id FROM news.article_sightings GROUP BY 1 HAVING count(*) > 1) x",
        "url_keys_twice": "SELECT count(*) FROM (SELECT url_key FROM news.articles GROUP BY 1 HAVING count(DISTINCT article_id) > 1) x",
        "dangling": "SELECT count(*) FROM news.feed_entries e WHERE e.status IN ('loaded', 'duplicate') "
        "AND NOT EXISTS (SELECT 1 FROM news.article_registry r WHERE r.article_id = e.article_id)",
    }
    with engine.connect() as c:
        out: dict[str, Any] = {k: c.execute(sa.text(v)).scalar() for k, v in q.items()}
        out["status"] = dict(c.execute(sa.text("SELECT status, count(*) FROM news.feed_entries GROUP BY 1")).all())
        out["topics"] = dict(c.execute(sa.text("SELECT topic, count(*) FROM news.articles GROUP BY 1")).all())
        out["sighting_urls"] = sorted(r[0] for r in c.execute(sa.text("SELECT url FROM news.article_sightings")))
        # each story (registry row) with the URLs of all its copies; which copy became the
        # canonical row depends on processing order, the grouping does not
        out["stories"] = sorted(
            tuple(r[0])
            for r in c.execute(sa.text("SELECT array_agg(url ORDER BY url) FROM news.article_sightings GROUP BY article_id"))
        )
    return out


def assert_same_outcome(got: dict[str, Any], baseline: dict[str, Any]) -> None:
    assert got["entries_seen_twice"] == got["url_keys_twice"] == got["dangling"] == 0, got
    assert set(got["status"]) <= {"loaded", "duplicate", "quarantined"}, got["status"]  # nothing left behind
    assert got == baseline


def order_feeds(engine: Engine) -> None:
    """Poll feeds in file order (feed_id): equal next_poll_at values would tie, and the
    order decides which copy of a syndicated story is loaded first."""
    with engine.begin() as c:
        c.execute(sa.text("UPDATE news.feeds SET next_poll_at = now() - interval '1 hour' + feed_id * interval '1 second'"))


def setup_warehouse(engine: Engine, settings: Settings, feeds_file: Path | None = None) -> Any:
    taxonomy = prepare(engine, settings, feeds_file=feeds_file)
    order_feeds(engine)
    return taxonomy


def baseline_run(monkeypatch: pytest.MonkeyPatch, url: str, feeds_file: Path | None = None) -> dict[str, Any]:
    settings = make_settings(monkeypatch, url)
    eng = db.make_engine(url)
    try:
        setup_warehouse(eng, settings, feeds_file)
        run_once(eng, settings, feeds_file=feeds_file)
        snap = snapshot(eng)
    finally:
        eng.dispose()
    assert snap["registry"] > 10 and snap["status"].get("loaded"), snap
    return snap


def wait_for_leases(engine: Engine) -> float:
    """Sleep until every claim lease has run out (what an Airflow retry_delay gives us)."""
    with engine.connect() as c:
        left = c.execute(
            sa.text("SELECT EXTRACT(EPOCH FROM max(claimed_until) - now()) FROM news.feed_entries WHERE status = 'processing'")
        ).scalar()
    wait = max(0.0, float(left or 0)) + 0.3
    time.sleep(wait)
    return wait


# ---------------------------------------------------------------- PostgreSQL crash mid-load


def _pg_ctl(pgdata: Path, *args: str) -> None:
    cmd = [str(db._bin_dir() / "pg_ctl"), "-D", str(pgdata), *args]
    if os.geteuid() == 0:  # the embedded server runs as this OS user when we are root
        cmd = ["runuser", "-u", "embedded_postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def own_server() -> Iterator[tuple[Path, str]]:
    """A private embedded PostgreSQL (the session's server must not be disturbed)."""
    if os.environ.get("NEWSMON_TEST_DATABASE_URL"):
        pytest.skip("needs a local embedded server to crash")
    base = Path(tempfile.mkdtemp(prefix="nm-pgr-"))
    pgdata = base / "pgdata"
    info = db.start_embedded(pgdata, "nm_restart")
    try:
        yield pgdata, db.normalize_url(info.url)
    finally:
        try:
            db.stop_embedded(pgdata)
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_postgres_crash_mid_load_retry_loses_and_duplicates_nothing(other_db, own_server, sample_server, monkeypatch):
    baseline = baseline_run(monkeypatch, other_db)
    pgdata, url = own_server
    settings = make_settings(monkeypatch, url)
    eng = db.make_engine(url)
    taxonomy = setup_warehouse(eng, settings)
    poll_pass(eng, settings, only_due=False)

    loads = itertools.count(1)
    in_load, crashed = threading.Event(), threading.Event()

    def hook(conn, cursor, statement, params, context, executemany):
        # the second batch's load transaction, after the first batch has committed
        if "nextval('news.article_registry_article_id_seq')" in statement and next(loads) == 2:
            in_load.set()
            crashed.wait(60)

    sa.event.listen(eng, "before_cursor_execute", hook)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            process_pass(eng, settings, taxonomy)
        except BaseException as exc:  # the task fails; surfaced below
            errors.append(exc)

    try:
        t = threading.Thread(target=worker)
        t.start()
        assert in_load.wait(60), "the pass never reached a second load"
        _pg_ctl(pgdata, "-m", "immediate", "stop")  # a crash: backends killed, no checkpoint
        crashed.set()
        t.join(60)
        sa.event.remove(eng, "before_cursor_execute", hook)
        assert len(errors) == 1 and isinstance(errors[0], DatabaseError), errors
        assert "unreachable or restarted" in str(errors[0]) or "shut down" in str(errors[0]), str(errors[0])

        t0 = time.monotonic()
        db._ep().get_server(pgdata, cleanup_mode=None).ensure_postgres_running()  # crash recovery from the WAL
        restart_s = time.monotonic() - t0
        mid = snapshot(eng)
        assert 0 < mid["registry"] < baseline["registry"]  # batch 1 committed, batch 2 rolled back
        assert mid["status"].get("processing", 0) >= 1  # the crashed batch still holds its lease

        early = process_pass(eng, settings, taxonomy)  # a retry while the lease holds skips those rows
        waited = wait_for_leases(eng)
        retry = process_pass(eng, settings, taxonomy)  # the Airflow retry: the same task, again
        assert retry.entries_processed >= mid["status"]["processing"]
        assert_same_outcome(snapshot(eng), baseline)
        print(f"\nrestart {restart_s:.2f}s, early retry processed {early.entries_processed}, lease wait {waited:.1f}s")
    finally:
        crashed.set()
        eng.dispose()


# ---------------------------------------------------------------- worker killed mid-batch


ARTICLE = (
    "<html lang='en'><head><title>Held page</title></head><body><article><h1>Aid convoy reaches Idlib</h1>"
    + "".join(f"<p>Paragraph {i}: an aid convoy crossed into Idlib in northern Syria on Tuesday, officials said.</p>" for i in range(8))
    + "</article></body></html>"
).encode()


def _feeds_file(tmp_path: Path, http_server: Any) -> tuple[Path, threading.Event]:
    release = threading.Event()

    def held(_req: object) -> Route:
        release.wait(120)
        return Route(200, ARTICLE, {"Content-Type": "text/html; charset=utf-8"})

    link = http_server.url("/held")
    http_server.routes["/held.xml"] = Route(
        200,
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>held</title><item><guid>held-1</guid>'
        f"<title>Aid convoy reaches Idlib</title><link>{link}</link></item></channel></rss>".encode(),
    )
    http_server.routes["/held"] = Route(handler=held)
    lines = ["feeds:"]
    for spec in load_feed_specs(PROJECT_ROOT / "include/config/feeds.yml"):
        lines += [f"  - name: {spec.name}", f"    url: {spec.url}", f"    lang: {spec.lang}"]
    lines += ["  - name: held", f"    url: {http_server.url('/held.xml')}", "    lang: en"]  # polled last: its page is in the last batch
    path = tmp_path / "feeds.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, release


def _count(url: str, sql: str) -> int:
    eng = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with eng.connect() as c:
            return int(c.execute(sa.text(sql)).scalar() or 0)
    finally:
        eng.dispose()


@pytest.mark.slow
def test_worker_killed_mid_batch_rerun_is_idempotent(db_url, other_db, sample_server, http_server, tmp_path, monkeypatch):
    feeds, release = _feeds_file(tmp_path, http_server)
    release.set()
    baseline = baseline_run(monkeypatch, other_db, feeds_file=feeds)
    release.clear()

    settings = make_settings(monkeypatch, db_url)  # the subprocess inherits these NEWSMON_* variables
    eng0 = db.make_engine(db_url, poolclass=sa.NullPool)
    setup_warehouse(eng0, settings, feeds)  # the held feed is polled last: its page is in the last batch
    eng0.dispose()
    cmd = [sys.executable, "-m", "newsmon.cli", "run", "--once", "--json", "--feeds", str(feeds)]
    seen = len(http_server.hits)  # the baseline fetched the held page too
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not any(h[0] == "/held" for h in http_server.hits[seen:]):  # the last batch is fetching
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the worker never reached the held page"
            time.sleep(0.05)
        committed = _count(db_url, "SELECT count(*) FROM news.article_registry")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        release.set()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < committed < baseline["registry"]  # killed with earlier batches loaded, one in flight
    eng = db.make_engine(db_url)
    try:
        killed = snapshot(eng)
        assert killed["status"].get("processing", 0) >= 1
        release.set()
        wait_for_leases(eng)
        again = subprocess.run(cmd, capture_output=True, timeout=180)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        assert_same_outcome(snapshot(eng), baseline)
    finally:
        eng.dispose()


# ---------------------------------------------------------------- two passes at once


def test_two_concurrent_passes_store_and_load_each_item_once(engine, db_url, other_db, sample_server, monkeypatch):
    baseline = baseline_run(monkeypatch, other_db)
    settings = make_settings(monkeypatch, db_url, PIPELINE__BATCH_SIZE="3")
    setup_warehouse(engine, settings)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(run_once(engine, settings))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    got = snapshot(engine)
    assert sum(r.entries_new for r in results) == baseline["entries"]  # each entry stored once
    assert sum(r.entries_processed for r in results) == baseline["entries"]  # and processed once
    assert all(r.entries_processed for r in results), "both passes took work"
    # which copy of a syndicated story loads first depends on how the two passes interleave:
    # the set of sightings and the number of distinct stories do not
    assert got["entries_seen_twice"] == got["url_keys_twice"] == got["dangling"] == 0
    assert (got["entries"], got["registry"], got["rejected"], got["sighting_urls"], got["status"]) == (
        baseline["entries"], baseline["registry"], baseline["rejected"], baseline["sighting_urls"], baseline["status"])  # fmt: skip


# ---------------------------------------------------------------- read-only / full warehouse


@pytest.fixture
def alert_sink(tmp_path, monkeypatch):
    from tests.test_alerts import Webhook

    hook = Webhook()
    monkeypatch.setenv("NEWSMON_TEST_WEBHOOK", hook.url)
    cfg = tmp_path / "alerts.yml"
    cfg.write_text(
        "notifiers:\n  - {name: log, type: log}\n  - {name: ops_webhook, type: webhook, url: '${NEWSMON_TEST_WEBHOOK}'}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("NEWSMON_QUALITY__ALERTS_FILE", str(cfg))
    yield hook
    hook.close()


def _admin(db_url: str) -> Engine:
    return sa.create_engine(make_url(db_url).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def _queue(engine: Engine) -> dict[str, Any]:
    with engine.connect() as c:
        return dict(c.execute(sa.text("SELECT status || ':' || attempts, count(*) FROM news.feed_entries GROUP BY 1")).all())


@pytest.fixture
def small_tablespace(pg_server_url):
    """A 3 MB tmpfs as a tablespace: a disk that really fills up (root + a local server only)."""
    if os.environ.get("NEWSMON_TEST_DATABASE_URL") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and the local embedded server to mount a small disk")
    where = Path(tempfile.mkdtemp(prefix="nm-full-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True).returncode:
        shutil.rmtree(where, ignore_errors=True)
        pytest.skip("cannot mount a tmpfs here")
    shutil.chown(where, "embedded_postgres")
    name = f"nm_full_{os.getpid()}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE TABLESPACE {name} LOCATION '{where}'")
    try:
        yield name
    finally:
        try:
            with admin.connect() as c:
                c.exec_driver_sql(f"DROP TABLESPACE IF EXISTS {name}")
        except sa.exc.DBAPIError:
            pass  # still in use: the test's own cleanup failed; the umount below still runs
        admin.dispose()
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def _fail_then_recover(engine, db_url, other_db, monkeypatch, alert_sink, caplog, *, break_it, fix_it, expect):
    from newsmon.orchestration import task_failure_alert

    baseline = baseline_run(monkeypatch, other_db)
    settings = make_settings(monkeypatch, db_url)
    taxonomy = setup_warehouse(engine, settings)
    poll_pass(engine, settings, only_due=False)
    queued = _queue(engine)
    assert set(queued) == {"new:0"}

    break_it()
    engine.dispose()  # new connections see the change
    with pytest.raises(DatabaseError) as e:
        process_pass(engine, settings, taxonomy)
    assert expect in str(e.value), str(e.value)
    assert "INSERT" not in str(e.value) and "SELECT" not in str(e.value)  # no SQL, no parameters
    # the DAG's on_failure_callback: the alert must reach people although the ledger cannot be written
    event = task_failure_alert("newsmon_process_articles", "process_batch", "manual__fault", 1, e.value, url=db_url)
    posts = [p["text"] for p in alert_sink.posts]
    assert len(posts) == 1 and expect in posts[0] and "process_batch" in posts[0], posts
    assert any(r.name == "newsmon.alerts.notify" and r.levelname == "ERROR" and expect in r.getMessage() for r in caplog.records)
    with pytest.raises(DatabaseError):  # a second pass while broken fails the same way
        process_pass(engine, settings, taxonomy)

    fix_it()
    engine.dispose()
    assert _queue(engine) == queued  # entries stayed queued, attempts not spent
    summary = process_pass(engine, settings, taxonomy)  # the next pass recovers the backlog
    assert summary.entries_processed == baseline["entries"]
    assert_same_outcome(snapshot(engine), baseline)
    return event


def test_read_only_warehouse_fails_loudly_alerts_and_next_pass_recovers(engine, db_url, other_db, sample_server, monkeypatch,
                                                                         alert_sink, caplog):  # fmt: skip
    name = make_url(db_url).database
    admin = _admin(db_url)

    def set_ro(on: bool) -> None:
        with admin.connect() as c:
            c.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}')

    try:
        event = _fail_then_recover(engine, db_url, other_db, monkeypatch, alert_sink, caplog,
                                   break_it=lambda: set_ro(True), fix_it=lambda: set_ro(False),
                                   expect="read-only")  # fmt: skip
        assert event["alert_id"] is None  # not recorded: the ledger is read-only too
    finally:
        set_ro(False)
        admin.dispose()


def test_full_disk_fails_loudly_alerts_and_next_pass_recovers(engine, db_url, other_db, sample_server, monkeypatch,
                                                              alert_sink, caplog, small_tablespace):  # fmt: skip
    with engine.begin() as c:  # the tables every load extends live on the small disk
        for t in ("article_registry", "article_sightings", "articles_unclassified", "lsh_signatures"):
            c.exec_driver_sql(f"ALTER TABLE news.{t} SET TABLESPACE {small_tablespace}")

    def fill() -> None:
        with engine.begin() as c:
            c.exec_driver_sql(f"CREATE TABLE public.filler (x text) TABLESPACE {small_tablespace}")
            c.exec_driver_sql("ALTER TABLE public.filler ALTER COLUMN x SET STORAGE PLAIN")
        with pytest.raises(sa.exc.OperationalError, match="No space left"), engine.begin() as c:
            c.exec_driver_sql("INSERT INTO public.filler SELECT repeat(md5(g::text), 60) FROM generate_series(1, 100000) g")

    def free() -> None:
        with engine.begin() as c:
            c.exec_driver_sql("DROP TABLE public.filler")

    try:
        event = _fail_then_recover(engine, db_url, other_db, monkeypatch, alert_sink, caplog,
                                   break_it=fill, fix_it=free, expect="disk is full")  # fmt: skip
        assert event["alert_id"] is not None  # the ledger lives on the big disk: recorded
    finally:
        with engine.begin() as c:
            c.exec_driver_sql("DROP TABLE IF EXISTS public.filler")
            for t in ("article_registry", "article_sightings", "articles_unclassified", "lsh_signatures"):
                c.exec_driver_sql(f"ALTER TABLE news.{t} SET TABLESPACE pg_default")
        engine.dispose()
        admin = sa.create_engine(make_url(db_url).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(db_url).database}" WITH (FORCE)')
            c.exec_driver_sql(f"DROP TABLESPACE IF EXISTS {small_tablespace}")
        admin.dispose()
