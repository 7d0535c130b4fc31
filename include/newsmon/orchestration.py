"""What the Airflow tasks call: one function per task, small JSON-able dicts back.

The DAG files in ``dags/`` only orchestrate; every task body is one call into this
module. Nothing here imports Airflow: the DAG side resolves the ``newsmon_db``
connection and hands its URI in, and failure callbacks receive the task context as a
plain mapping. Every function opens its own engine and disposes of it, because a task
may run in any worker process.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsmon import db
from newsmon.config import Settings, load_settings
from newsmon.errors import ConfigError

log = logging.getLogger(__name__)

FEED_ENTRIES_ASSET = "newsmon://feed_entries"
ARTICLES_ASSET = "newsmon://articles"
HTTP_POOL = "newsmon_http"
CONN_ID = "newsmon_db"


# ---------------------------------------------------------------- warehouse


def warehouse_url(conn_uri: str | None = None, *, settings: Settings | None = None) -> str:
    """The warehouse URL: the Airflow connection's URI, else NEWSMON_DATABASE_URL, else
    the embedded PostgreSQL (started when needed). Always a SQLAlchemy 2 URL."""
    if conn_uri:
        return db.normalize_url(conn_uri)
    return db.database_url(settings or load_settings())


@contextmanager
def _warehouse(url: str) -> Iterator[tuple[Engine, Settings]]:
    settings = load_settings()
    engine = db.make_engine(url, statement_timeout_ms=settings.database.statement_timeout_ms, poolclass=sa.NullPool)
    try:
        yield engine, settings
    finally:
        engine.dispose()


def _summary(obj: Any, **extra: Any) -> dict[str, Any]:
    out = asdict(obj) if not isinstance(obj, dict) else dict(obj)
    if "errors" in out:  # XCom stays small: a count and the first few
        out["errors"] = list(out["errors"])[:10]
    out.update(extra)
    return out


# ---------------------------------------------------------------- poll DAG


def sync_config(url: str) -> dict[str, Any]:
    """Migrate, mirror topics.yml (partitions) and feeds.yml into the warehouse."""
    from newsmon.feeds import load_feed_specs
    from newsmon.pipeline import prepare

    with _warehouse(url) as (engine, settings):
        taxonomy = prepare(engine, settings)
        feeds = load_feed_specs(settings.pipeline.feeds_file)
    return {"topics": len(taxonomy.topics), "feeds": len(feeds)}


def _chunks(items: Sequence[Any], n: int) -> list[list[Any]]:
    size = math.ceil(len(items) / n) if items else 0
    return [list(items[i : i + size]) for i in range(0, len(items), size)] if size else []


def plan_poll_shards(url: str, *, max_shards: int = 4, feed: str | None = None) -> list[dict[str, Any]]:
    """Split the due feeds into at most ``max_shards`` shards of at most ``poll.shard_size``.

    ``feed`` (a manual run) plans one shard with that feed, due or not. Feeds beyond
    ``max_shards * shard_size`` wait for the next run; they are the least overdue.
    """
    if max_shards < 1:
        raise ValueError("max_shards must be at least 1")
    with _warehouse(url) as (engine, settings), engine.connect() as conn:
        if feed:
            row = conn.execute(sa.text("SELECT feed_id, name FROM news.feeds WHERE name = :n"), {"n": feed}).one_or_none()
            if row is None:
                raise ConfigError(f"no feed named {feed!r} in news.feeds (is it in feeds.yml?)")
            return [_shard(0, 1, [(row.feed_id, row.name)], only_due=False)]
        rows = conn.execute(
            sa.text(
                """
                SELECT feed_id, name FROM news.feeds
                WHERE enabled AND next_poll_at <= now()
                ORDER BY next_poll_at, feed_id
                LIMIT :cap
                """
            ),
            {"cap": max_shards * settings.poll.shard_size},
        ).all()
    parts = _chunks([(r.feed_id, r.name) for r in rows], max_shards)
    return [_shard(i, len(parts), p, only_due=True) for i, p in enumerate(parts)]


def _shard(i: int, total: int, feeds: list[tuple[int, str]], *, only_due: bool) -> dict[str, Any]:
    names = [n for _, n in feeds]
    shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    return {
        "shard": i,
        "feed_ids": [fid for fid, _ in feeds],
        "only_due": only_due,
        "label": f"shard {i + 1}/{total}: {len(feeds)} feed{'s' if len(feeds) != 1 else ''} ({shown})",
    }


def poll_shard(url: str, shard: Mapping[str, Any]) -> dict[str, Any]:
    """Poll exactly the feeds of one planned shard (skipping any another run holds)."""
    from newsmon.pipeline import poll_pass

    ids = [int(x) for x in shard.get("feed_ids") or []]
    if not ids:
        return _summary({"feeds_polled": 0, "feeds_failed": 0, "entries_seen": 0, "entries_new": 0, "errors": []})
    with _warehouse(url) as (engine, settings):
        summary = poll_pass(engine, settings, only_due=bool(shard.get("only_due", True)), feed_ids=ids, max_feeds=len(ids))
    keep = ("feeds_polled", "feeds_failed", "entries_seen", "entries_new", "errors")
    return {k: v for k, v in _summary(summary, shard=shard.get("shard")).items() if k in (*keep, "shard")}


def queued_entries(conn: sa.Connection, max_attempts: int) -> int:
    return int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM news.feed_entries WHERE status IN ('new', 'processing') AND attempts < :m"
            ),
            {"m": max_attempts},
        ).scalar_one()
    )


def poll_report(url: str, results: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Sum the shard results; ``emit`` says whether the feed-entries asset should fire
    (new entries, or entries still waiting to be processed)."""
    results = [r for r in (results or []) if r]
    total: dict[str, Any] = {"shards": len(results), "feeds_polled": 0, "feeds_failed": 0, "entries_seen": 0, "entries_new": 0}
    errors: list[str] = []
    for r in results:
        for k in ("feeds_polled", "feeds_failed", "entries_seen", "entries_new"):
            total[k] += int(r.get(k) or 0)
        errors.extend(r.get("errors") or [])
    with _warehouse(url) as (engine, settings), engine.connect() as conn:
        total["queued"] = queued_entries(conn, settings.pipeline.max_attempts)
    total["errors"] = errors[:10]
    total["emit"] = total["entries_new"] > 0 or total["queued"] > 0
    return total


# ---------------------------------------------------------------- feed watcher (event-driven polling)


async def watch_feeds(url: str) -> tuple[list[str], float]:
    """One look of the feed watcher that runs in the Airflow triggerer between polls.

    A conditional GET (ETag / Last-Modified, else the body hash) of the not-yet-due,
    healthy feeds with the shortest adapted interval (the busiest; at most
    ``poll.watch_max_feeds``). Feeds that list an entry the warehouse does not hold yet
    are made due now, so the poll DAG run this look triggers takes them; the rest
    (mostly a bodiless 304) are left alone and nothing is recorded for them. Returns the changed feed names and the seconds to wait
    before the next look (``poll.watch_interval_s``; 0 = watcher off, check back in 60 s).
    """
    import asyncio

    from newsmon.feeds import poll_feed
    from newsmon.fetch import HttpClient
    from newsmon.models import Feed

    settings = await asyncio.to_thread(load_settings)  # file I/O off the triggerer's event loop
    every = float(settings.poll.watch_interval_s)
    if not every:
        return [], 60.0

    def candidates() -> list[Feed]:
        with _warehouse(url) as (engine, _s), engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    """
                    SELECT feed_id, name, url, lang, etag, last_modified, body_hash, poll_interval_s, consecutive_failures
                    FROM news.feeds
                    WHERE enabled AND consecutive_failures = 0 AND last_success_at IS NOT NULL AND next_poll_at > now()
                    ORDER BY poll_interval_s, feed_id
                    LIMIT :n
                    """
                ),
                {"n": settings.poll.watch_max_feeds},
            ).mappings()
            return [Feed(**dict(r)) for r in rows]

    def make_due(listed: dict[int, list[str]]) -> list[int]:
        """Feeds listing an entry the warehouse does not hold yet become due now (a body that
        changed only in its lastBuildDate does not count)."""
        due = []
        with _warehouse(url) as (engine, _s), engine.begin() as conn:
            for feed_id, keys in listed.items():
                known = conn.execute(
                    sa.text("SELECT count(*) FROM news.feed_entries WHERE feed_id = :f AND entry_key = ANY(:k)"),
                    {"f": feed_id, "k": keys},
                ).scalar_one()
                if known < len(set(keys)):
                    due.append(feed_id)
            conn.execute(
                sa.text("UPDATE news.feeds SET next_poll_at = now() WHERE feed_id = ANY(:ids) AND next_poll_at > now()"),
                {"ids": due},
            )
        return due

    feeds = await asyncio.to_thread(candidates)
    if not feeds:
        return [], every
    async with HttpClient(settings.fetch) as client:
        outcomes = await asyncio.gather(
            *(poll_feed(client, f, max_entries=settings.poll.max_entries_per_feed) for f in feeds)
        )
    listed = {
        f.feed_id: [e.entry_key for e in parsed.entries]
        for f, (outcome, parsed) in zip(feeds, outcomes, strict=True)
        if outcome.status == "ok" and parsed is not None and parsed.entries
    }
    if not listed:
        return [], every
    due = set(await asyncio.to_thread(make_due, listed))
    changed = [f.name for f in feeds if f.feed_id in due]
    if changed:
        log.info("feed watcher: feeds with new entries made due: %s", ", ".join(changed))
    return changed, every


# ---------------------------------------------------------------- process DAG


def _day(value: str | date | None, name: str) -> date | None:
    if value in (None, ""):
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ConfigError(f"{name} must be a date YYYY-MM-DD, got {value!r}") from None


def requeue_range(url: str, date_from: str | None = None, date_to: str | None = None, *, feed: str | None = None) -> dict[str, Any]:
    """Manual reprocessing: put entries first seen in [date_from, date_to] that failed or
    were quarantined back in the queue (attempts reset). Loaded entries stay loaded, so a
    re-run adds no duplicate rows. No dates = nothing to do."""
    start, end = _day(date_from, "date_from"), _day(date_to, "date_to")
    if start is None and end is None:
        return {"requeued": 0}
    start = start or date(1970, 1, 1)
    end = end or datetime.now(UTC).date()
    if end < start:
        raise ConfigError(f"date_to {end} is before date_from {start}")
    with _warehouse(url) as (engine, _settings), engine.begin() as conn:
        n = conn.execute(
            sa.text(
                """
                UPDATE news.feed_entries e SET status = 'new', attempts = 0, claimed_until = NULL, last_error = NULL
                WHERE e.status IN ('failed', 'quarantined')
                  AND e.first_seen_at >= :start AND e.first_seen_at < :end
                  AND (CAST(:feed AS text) IS NULL OR e.feed_id = (SELECT feed_id FROM news.feeds WHERE name = :feed))
                """
            ),
            {
                "start": datetime.combine(start, time.min, UTC),
                "end": datetime.combine(end + timedelta(days=1), time.min, UTC),
                "feed": feed or None,
            },
        ).rowcount
    log.info("requeued entries=%d from=%s to=%s feed=%s", n, start, end, feed or "-")
    return {"requeued": int(n or 0), "date_from": start.isoformat(), "date_to": end.isoformat()}


def plan_batches(url: str, *, max_batches: int = 8, feed: str | None = None) -> list[dict[str, Any]]:
    """As many batches of ``pipeline.batch_size`` as the queue holds, at most ``max_batches``.

    Each batch claims its entries when it runs (SKIP LOCKED), so mapped batches never
    overlap and a retried batch simply claims again.
    """
    if max_batches < 1:
        raise ValueError("max_batches must be at least 1")
    with _warehouse(url) as (engine, settings), engine.connect() as conn:
        feed_ids: list[int] = []
        if feed:
            fid = conn.execute(sa.text("SELECT feed_id FROM news.feeds WHERE name = :n"), {"n": feed}).scalar()
            if fid is None:
                raise ConfigError(f"no feed named {feed!r} in news.feeds")
            feed_ids = [int(fid)]
        queued = int(
            conn.execute(
                sa.text(
                    """
                    SELECT count(*) FROM news.feed_entries
                    WHERE status IN ('new', 'processing') AND (claimed_until IS NULL OR claimed_until < now())
                      AND attempts < :m
                      AND (cardinality(CAST(:feeds AS bigint[])) = 0 OR feed_id = ANY(CAST(:feeds AS bigint[])))
                    """
                ),
                {"m": settings.pipeline.max_attempts, "feeds": feed_ids},
            ).scalar_one()
        )
        size = settings.pipeline.batch_size
    n = min(max_batches, math.ceil(queued / size))
    return [
        {"batch": i, "feed_ids": feed_ids, "label": f"batch {i + 1}/{n} (≤{size} of {queued} queued)"}
        for i in range(n)
    ]


def process_batch(url: str, batch: Mapping[str, Any]) -> dict[str, Any]:
    """Claim one batch and run fetch -> extract -> dedup -> classify -> validate -> load."""
    from newsmon.pipeline import process_pass
    from newsmon.topics import load_taxonomy

    with _warehouse(url) as (engine, settings):
        taxonomy = load_taxonomy(settings.pipeline.topics_file)
        summary = process_pass(engine, settings, taxonomy, max_batches=1, feed_ids=batch.get("feed_ids") or None)
    keep = ("entries_processed", "articles_loaded", "duplicates", "quarantined", "failed", "feed_fallbacks", "per_topic")
    return {k: v for k, v in _summary(summary).items() if k in keep} | {"batch": batch.get("batch")}


def process_report(results: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    total: dict[str, Any] = {"batches": 0, "entries_processed": 0, "articles_loaded": 0, "duplicates": 0,
                             "quarantined": 0, "failed": 0, "per_topic": {}}  # fmt: skip
    for r in results or []:
        if not r:
            continue
        total["batches"] += 1
        for k in ("entries_processed", "articles_loaded", "duplicates", "quarantined", "failed"):
            total[k] += int(r.get(k) or 0)
        for t, v in (r.get("per_topic") or {}).items():
            total["per_topic"][t] = total["per_topic"].get(t, 0) + int(v)
    return total


# ---------------------------------------------------------------- data quality DAG


def _alerts() -> Any | None:
    """``newsmon.alerts`` when it is installed in this tree (it owns notifiers and checks)."""
    try:
        return importlib.import_module("newsmon.alerts")
    except ImportError:
        return None


def run_checks(url: str, *, window_hours: int | None = None) -> dict[str, Any]:
    """Hourly data-quality checks (feed health, volume anomalies, validation over the
    window): ``newsmon.alerts.run_checks`` raises, sends and resolves the alerts."""
    from newsmon.alerts import load_alerts_config
    from newsmon.alerts import run_checks as alert_checks

    with _warehouse(url) as (engine, settings):
        config = load_alerts_config(settings.quality.alerts_file)
        window = timedelta(hours=window_hours) if window_hours else None
        result = alert_checks(engine, settings, window=window, config=config)
    return json.loads(json.dumps(result, default=str))


# ---------------------------------------------------------------- maintenance DAG


def maintenance(url: str, *, raw_retention_days: int = 30) -> dict[str, Any]:
    """Daily upkeep: migrations, topic sync (new partitions), retention of raw pages,
    re-signing near-duplicate signatures of an older band scheme and pruning band rows of
    articles deleted by hand, ANALYZE of the warehouse tables, refresh of the analyst
    materialized views."""
    from newsmon.dedup import prune_orphan_bands, reindex_signatures
    from newsmon.topics import load_taxonomy, sync_topics

    with _warehouse(url) as (engine, settings):
        db.upgrade(engine)
        with engine.begin() as conn:
            created = sync_topics(conn, load_taxonomy(settings.pipeline.topics_file))
            deleted = _prune_raw_pages(conn, raw_retention_days)
            pruned = prune_orphan_bands(conn)
        resigned = reindex_signatures(engine)
        refreshed = []
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for (view,) in conn.execute(
                sa.text("SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews WHERE schemaname = 'news' ORDER BY 1")
            ):
                conn.exec_driver_sql(f"REFRESH MATERIALIZED VIEW {view}")
                refreshed.append(view)
            tables = [r[0] for r in conn.execute(sa.text(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'news' ORDER BY 1"
            ))]  # fmt: skip
            conn.exec_driver_sql("ANALYZE news.articles")  # the partitioned parent is not in pg_tables' stats
            for t in tables:
                conn.exec_driver_sql(f"ANALYZE {t}")
    return {
        "partitions_created": created, "raw_pages_deleted": deleted, "signatures_resigned": resigned,
        "orphan_bands_pruned": pruned, "views_refreshed": refreshed, "tables_analyzed": len(tables) + 1,
    }  # fmt: skip


def _prune_raw_pages(conn: sa.Connection, days: int) -> int:
    """Delete archived raw pages older than ``days`` (table from migration 0003, if present)."""
    exists = conn.execute(sa.text("SELECT to_regclass('news.raw_pages') IS NOT NULL")).scalar()
    if not exists:
        return 0
    cols = {r[0] for r in conn.execute(sa.text(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'news' AND table_name = 'raw_pages'"
    ))}  # fmt: skip
    col = next((c for c in ("fetched_at", "created_at", "stored_at") if c in cols), None)
    if col is None:
        log.warning("news.raw_pages has no timestamp column this code knows; retention skipped")
        return 0
    res = conn.execute(sa.text(f"DELETE FROM news.raw_pages WHERE {col} < now() - make_interval(days => :d)"), {"d": days})
    return int(res.rowcount or 0)


# ---------------------------------------------------------------- failure alerts


def task_failure_alert(
    dag_id: str,
    task_id: str,
    run_id: str,
    try_number: int | None,
    exception: BaseException | str | None,
    *,
    url: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Tell people a task failed: always one structured ERROR log line
    (``newsmon.task_failure {...}``), and through ``newsmon.alerts.notify_task_failure``
    (news.alerts ledger + notifiers) when that module is present. Never raises."""
    error = f"{type(exception).__name__}: {exception}" if isinstance(exception, BaseException) else exception
    event: dict[str, Any] = {
        "event": "task_failure",
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "try_number": try_number,
        "exception": db_safe(str(error))[:2000] if error else None,
        "at": datetime.now(UTC).isoformat(),
        **{k: v for k, v in extra.items() if v is not None},
    }
    log.error("newsmon.task_failure %s", json.dumps(event, ensure_ascii=False, default=str))
    event["alert_id"] = None
    alerts = _alerts()
    notify = getattr(alerts, "notify_task_failure", None) if alerts else None
    if notify is None:
        return event
    engine = None
    try:
        engine = db.make_engine(url, poolclass=sa.NullPool) if url else None
        outcome = notify(event, engine=engine)
        event["alert_id"] = getattr(outcome, "alert_id", None)
    except Exception:  # a broken notifier must not hide the original failure
        log.exception("newsmon.alerts.notify_task_failure failed")
    finally:
        if engine is not None:
            engine.dispose()
    return event


def on_task_failure(context: Mapping[str, Any], *, url: str | None = None) -> dict[str, Any]:
    """Airflow ``on_failure_callback`` body: reads the task context (a mapping) and alerts."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    return task_failure_alert(
        dag_id=getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?"),
        task_id=getattr(ti, "task_id", "?"),
        run_id=getattr(ti, "run_id", None) or getattr(dag_run, "run_id", "?"),
        try_number=getattr(ti, "try_number", None),
        exception=context.get("exception"),
        url=url,
        map_index=getattr(ti, "map_index", None),
        log_url=getattr(ti, "log_url", None),
    )


def db_safe(text: str) -> str:
    """Hide connection passwords that exception messages sometimes carry."""
    from newsmon.config import mask_url

    return mask_url(text)


# ---------------------------------------------------------------- make airflow


def standalone_env(
    project_root: Path,
    *,
    warehouse: str,
    sample_base_url: str | None,
    port: int = 8080,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment ``newsmon airflow-standalone`` (``make airflow``) runs Airflow with:
    state in ``<project>/.airflow``, our dags/ and plugins/, no examples, DAGs unpaused,
    the UI on localhost only, the warehouse as connection ``newsmon_db``, and fetching
    from the sample server on 127.0.0.1 allowed."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AIRFLOW_HOME": str(project_root / ".airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(project_root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW_CONN_NEWSMON_DB": db.libpq_url(warehouse),
            "NEWSMON_DATABASE_URL": warehouse,
            "NEWSMON_FETCH__ALLOW_PRIVATE_NETWORKS": "true",
            "NEWSMON_FETCH__PER_HOST_DELAY_S": "0",
        }
    )
    if sample_base_url:
        env["NEWSMON_SAMPLE_BASE_URL"] = sample_base_url
    return env
