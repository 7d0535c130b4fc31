"""Data-quality cost: the per-batch GX suites and the alert checks over a warehouse with
two weeks of history, against baselines measured in the same run."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from newsmon.alerts import AlertsConfig, LogNotifier, LogSpec
from newsmon.config import QualitySettings
from newsmon.health import check_feeds, check_validation, check_volumes
from newsmon.quality import validate_articles, validate_batch_stats

from benchmarks._articles import make_articles
from benchmarks._db import temp_warehouse

BATCH = 200
FEEDS = 300
DAYS = 14
PER_DAY = 20
REPEAT = 5


def _best(fn, n: int = REPEAT) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run() -> dict:
    articles = make_articles(BATCH, with_signature=False)
    q = QualitySettings()
    topics = ["syria", "idlib", "russia", "turkey"]
    validate_articles(articles[:5], settings=q, languages=["ar", "en"], topics=topics)  # GX import + context, once
    rows_s = _best(lambda: validate_articles(articles, settings=q, languages=["ar", "en"], topics=topics))
    stats = [
        {"feed_id": i, "feed": f"f{i}", "rows": 4, "fallback_share": 0.25, "quarantined_share": 0.0,
         "volume_24h": 20, "median_daily": 20.0, "volume_ratio": 1.0}
        for i in range(50)
    ]  # fmt: skip
    batch_s = _best(lambda: validate_batch_stats(stats, band_factor=4, fallback_max=0.6, quarantined_max=0.3, batch_id="b"))

    cfg = AlertsConfig(notifiers=[LogNotifier(LogSpec(name="log", type="log"))])
    with temp_warehouse("quality") as engine:
        with engine.begin() as c:
            c.exec_driver_sql(
                f"INSERT INTO news.feeds (name, url, created_at) SELECT 'feed' || g, 'http://127.0.0.1:9/' || g, now() - interval '30 days' "
                f"FROM generate_series(1, {FEEDS}) g"
            )
            c.exec_driver_sql(
                f"INSERT INTO news.feed_entries (feed_id, entry_key, entry_hash, first_seen_at) "
                f"SELECT f.feed_id, f.feed_id || '-' || d || '-' || k, 'h', now() - make_interval(days => d, mins => k * 60) "
                f"FROM news.feeds f, generate_series(0, {DAYS}) d, generate_series(1, {PER_DAY}) k"
            )
            c.exec_driver_sql(
                f"INSERT INTO news.feed_polls (feed_id, started_at, entries_new) "
                f"SELECT f.feed_id, now() - make_interval(days => d, mins => k * 60), 1 "
                f"FROM news.feeds f, generate_series(0, {DAYS}) d, generate_series(1, {PER_DAY}) k"
            )
            c.exec_driver_sql("ANALYZE news.feeds, news.feed_entries, news.feed_polls")
            entries = c.exec_driver_sql("SELECT count(*) FROM news.feed_entries").scalar()
        now = datetime.now(UTC)
        checks_s = _best(lambda: (check_feeds(engine, cfg, now=now), check_volumes(engine, cfg, now=now),
                                  check_validation(engine, cfg, now=now)), 3)  # fmt: skip

        def scan() -> None:
            with engine.connect() as c:
                c.exec_driver_sql("SELECT feed_id, count(*) FROM news.feed_entries GROUP BY feed_id").all()

        scan_s = _best(scan, 3)
    return {
        "title": "Data quality: per-batch GX suites and alert checks",
        "rows": [
            {"metric": "batch suite (50 feed rows, 3 expectations), s per batch", "value": batch_s,
             "baseline": rows_s, "ratio": batch_s / rows_s},
            {"metric": f"all alert checks over {FEEDS} feeds x {DAYS + 1} days ({entries:,} entries), s", "value": checks_s,
             "baseline": scan_s, "ratio": checks_s / scan_s},
        ],
        "notes": f"Baselines: the row suite (11 expectations) on a {BATCH}-article batch; one GROUP BY scan of "
        "news.feed_entries. Best of several runs each, same process, same server. The batch suite is what the "
        "pipeline adds to every batch on top of the row suite.",
    }  # fmt: skip
