"""Freshness (issue 7): seconds from an item appearing in a feed to its row in
``news.articles``, with the real Airflow scheduler running.

For each mode a fresh deployment: a temp embedded warehouse, a feed server on
127.0.0.9 whose feed gains a new item (with its own article page) every PERIOD_S
seconds, and Airflow as separate processes (API server, scheduler, dag-processor,
triggerer; LocalExecutor on a temporary metadata database on the PostgreSQL at
127.0.0.1:5432, or on the embedded server when that one is absent) running our dags/
with the feed as the only one in feeds.yml (interval 120 s = ``poll.min_interval_s``).

Modes:
- ``cron``: the feed watcher off; the poll DAG's two-minute schedule alone decides
  when the feed is looked at (the baseline).
- ``watch``: the feed watcher on (``poll.watch_interval_s``); the triggerer looks at
  the feed between polls and a change runs the poll DAG at once.

appeared_at is when the server starts listing an item; loaded_at is
``news.articles.loaded_at`` of its row. Environment: NEWSMON_BENCH_FRESHNESS_MODES
(default "cron,watch"), _ITEMS (12), _PERIOD_S (20), _WATCH_S (15).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import sqlalchemy as sa
from newsmon import db
from newsmon.airflow_cluster import LOCAL_PG_ADMIN, airflow_cluster, free_port, port_open
from newsmon.orchestration import HTTP_POOL

from benchmarks._db import temp_warehouse

POLL, PROCESS = "newsmon_poll_feeds", "newsmon_process_articles"
HOST = "127.0.0.9"
FEED_INTERVAL_S = 120

_TEXT = (
    "the council said on monday that convoys of aid reached camps near the border where families "
    "displaced by fighting wait for shelter water and medicine while officials in the region discussed "
    "reconstruction of roads schools and hospitals damaged during years of war local residents told "
    "reporters prices of bread and fuel rose again this week as the currency fell and farmers "
    "reported a poor harvest after a dry winter international agencies warned of shortages"
)
_WORDS = _TEXT.split(" ")


def _article(i: int, rng: random.Random) -> tuple[str, str]:
    """A distinct English article about Idlib (so Syria too): title and paragraphs."""
    title = f"Idlib: aid convoy {i} reaches camps as Syrian officials meet"
    paras = [
        f"Aid convoy number {i} reached camps in Idlib province in northwest Syria on its {i}th trip this season.",
        *(" ".join(rng.sample(_WORDS, 28)).capitalize() + "." for _ in range(5)),
        f"Officials in Damascus and Idlib said convoy {i} carried food, blankets and medicine.",
    ]
    return title, "\n".join(f"<p>{escape(p)}</p>" for p in paras)


class FeedServer:
    """An RSS feed that gains item ``i`` at ``t0 + i * period`` (item 0 is there from the
    start), each linking to its own article page; ETag/304 like a real server."""

    def __init__(self, n_items: int, period_s: float) -> None:
        self.n_items, self.period_s = n_items, period_s
        self.t0 = time.time() + 10**9  # the clock starts with start_clock()
        self.port = free_port(HOST)
        rng = random.Random(11)
        self.pages = {i: _article(i, rng) for i in range(n_items + 1)}
        self.feed_hits = 0
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/feed.xml":
                    srv.feed_hits += 1
                    n = srv.listed()
                    etag = f'"items-{n}"'
                    if self.headers.get("If-None-Match") == etag:
                        return self._send(304, b"", None, etag)
                    return self._send(200, srv.feed(n), "application/rss+xml; charset=utf-8", etag)
                if path.startswith("/news/") and path.endswith(".html"):
                    i = int(path[len("/news/") : -len(".html")])
                    if i < srv.listed():
                        title, body = srv.pages[i]
                        html = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title></head>"
                                f"<body><article><h1>{escape(title)}</h1>{body}</article></body></html>")  # fmt: skip
                        return self._send(200, html.encode(), "text/html; charset=utf-8", None)
                self._send(404, b"not found", "text/plain", None)

            def _send(self, status: int, body: bytes, ctype: str | None, etag: str | None) -> None:
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((HOST, self.port), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/feed.xml"

    def page_url(self, i: int) -> str:
        return f"http://{HOST}:{self.port}/news/{i}.html"

    def appeared_at(self, i: int) -> float:
        return 0.0 if i == 0 else self.t0 + i * self.period_s

    def listed(self) -> int:
        """How many items the feed lists now (item 0 always)."""
        return 1 + max(0, min(self.n_items, int((time.time() - self.t0) // self.period_s)))

    def start_clock(self) -> None:
        self.t0 = time.time()

    def feed(self, n: int) -> bytes:
        items = []
        for i in reversed(range(n)):
            when = datetime.fromtimestamp(self.appeared_at(i) or self.t0 - 3600, UTC)
            title, _ = self.pages[i]
            items.append(
                f"<item><title>{escape(title)}</title><link>{self.page_url(i)}</link>"
                f"<guid>{self.page_url(i)}</guid><pubDate>{format_datetime(when)}</pubDate>"
                f"<description>Convoy {i} in Idlib.</description></item>"
            )
        return (
            '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Bench wire</title>'
            f"<link>http://{HOST}:{self.port}/</link><description>freshness bench</description>"
            + "".join(items) + "</channel></rss>"
        ).encode()

    def __enter__(self) -> FeedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def _metadata_admin(embedded_url: str) -> Iterator[str]:
    """The PostgreSQL for Airflow's metadata: the machine's server when it answers, else
    the embedded warehouse server (a second database on it)."""
    if port_open("127.0.0.1", 5432):
        yield LOCAL_PG_ADMIN
    else:
        yield sa.engine.make_url(db.normalize_url(embedded_url)).set(database="postgres").render_as_string(hide_password=False)


def _loaded(engine: sa.Engine, urls: dict[str, int]) -> dict[int, float]:
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT url, min(loaded_at) FROM news.articles WHERE url = ANY(:u) GROUP BY url"),
                         {"u": list(urls)}).all()  # fmt: skip
    return {urls[r[0]]: r[1].timestamp() for r in rows}


def run_mode(mode: str, *, n_items: int, period_s: float, watch_s: int) -> dict[str, Any]:
    with (
        temp_warehouse(f"fresh-{mode}") as engine,
        FeedServer(n_items, period_s) as feed,
        tempfile.TemporaryDirectory(prefix="nm-fresh-") as work,
    ):
        url = engine.url.render_as_string(hide_password=False)
        feeds_file = Path(work) / "feeds.yml"
        feeds_file.write_text(f"feeds:\n  - name: bench-wire\n    url: {feed.url}\n    lang: en\n    interval: {FEED_INTERVAL_S}\n")
        newsmon_env = {
            "NEWSMON_DATABASE_URL": url,
            "NEWSMON_PIPELINE__FEEDS_FILE": str(feeds_file),
            "NEWSMON_FETCH__ALLOW_PRIVATE_NETWORKS": "true",
            "NEWSMON_FETCH__PER_HOST_DELAY_S": "0",
            "NEWSMON_POLL__WATCH_INTERVAL_S": str(watch_s if mode == "watch" else 0),
        }
        saved = {k: os.environ.get(k) for k in newsmon_env}
        os.environ.update(newsmon_env)
        try:
            with _metadata_admin(url) as admin, airflow_cluster(admin, extra_env={**newsmon_env, "AIRFLOW_CONN_NEWSMON_DB": db.libpq_url(url)}) as af:
                af.migrate(pools={HTTP_POOL: 4})
                af.start_core(triggerer=True)
                af.wait_for_dags([POLL, PROCESS])
                af.unpause(PROCESS, POLL)
                af.cli("dags", "trigger", POLL)  # first poll: the feed (item 0 only) is known, then the clock starts
                urls = {feed.page_url(i): i for i in range(n_items + 1)}
                af.wait_for(lambda: 0 in _loaded(engine, urls), 600, "item 0 to be loaded (warm-up)", every=3)
                feed.start_clock()
                started = time.time()
                deadline = feed.appeared_at(n_items) + 600
                loaded: dict[int, float] = {}
                while time.time() < deadline:
                    loaded = _loaded(engine, urls)
                    if all(i in loaded for i in range(1, n_items + 1)):
                        break
                    if af.dead():
                        raise RuntimeError(f"{', '.join(af.dead())} exited\n{af.tails()}")
                    time.sleep(2)
                poll_runs = af.dag_runs(POLL)
                process_runs = af.dag_runs(PROCESS)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    lat = sorted(loaded[i] - feed.appeared_at(i) for i in range(1, n_items + 1) if i in loaded)
    missing = [i for i in range(1, n_items + 1) if i not in loaded]
    runs_in_window = [r for r in poll_runs if r.start_date and r.start_date.timestamp() >= started]
    return {
        "mode": mode,
        "items": n_items,
        "loaded": len(lat),
        "missing": missing,
        "latencies_s": [round(x, 1) for x in lat],
        "p50_s": statistics.median(lat) if lat else None,
        "p95_s": _pct(lat, 0.95),
        "max_s": max(lat) if lat else None,
        "poll_runs": len(runs_in_window),
        "poll_run_types": sorted({str(r.run_type) for r in runs_in_window}),
        "process_runs": len([r for r in process_runs if r.start_date and r.start_date.timestamp() >= started]),
        "feed_requests": feed.feed_hits,
    }


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (with 12 items, p95 is the largest)."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, int(-(-q * len(values) // 1)) - 1))
    return sorted(values)[k]


def run() -> dict[str, Any]:
    modes = [m.strip() for m in os.environ.get("NEWSMON_BENCH_FRESHNESS_MODES", "cron,watch").split(",") if m.strip()]
    n_items = int(os.environ.get("NEWSMON_BENCH_FRESHNESS_ITEMS", "12"))
    period_s = float(os.environ.get("NEWSMON_BENCH_FRESHNESS_PERIOD_S", "20"))
    watch_s = int(os.environ.get("NEWSMON_BENCH_FRESHNESS_WATCH_S", "15"))
    results = {m: run_mode(m, n_items=n_items, period_s=period_s, watch_s=watch_s) for m in modes}
    rows = []
    for m, r in results.items():
        for metric in ("p50_s", "p95_s", "max_s"):
            v = r[metric]
            rows.append({
                "mode": m, "metric": metric.replace("_s", " latency (s)"), "value": round(v, 1) if v is not None else "-",
                "baseline": f"poll schedule {FEED_INTERVAL_S} s",
                "ratio": round(v / FEED_INTERVAL_S, 2) if v is not None else "-",
            })  # fmt: skip
        rows.append({"mode": m, "metric": "items loaded", "value": f"{r['loaded']}/{r['items']}", "baseline": "", "ratio": ""})
        rows.append({"mode": m, "metric": "poll DAG runs / process DAG runs", "value": f"{r['poll_runs']} / {r['process_runs']}",
                     "baseline": "", "ratio": ""})  # fmt: skip
    if "cron" in results and "watch" in results and results["cron"]["p95_s"] and results["watch"]["p95_s"]:
        rows.append({"mode": "watch vs cron", "metric": "p95 ratio", "value": "", "baseline": "",
                     "ratio": round(results["watch"]["p95_s"] / results["cron"]["p95_s"], 2)})  # fmt: skip
    notes = (
        f"{n_items} items, one every {period_s:g} s, feed interval {FEED_INTERVAL_S} s (poll.min_interval_s), "
        f"watcher look every {watch_s} s in watch mode; LocalExecutor, metadata on PostgreSQL. "
        + "; ".join(f"{m}: latencies {r['latencies_s']} missing {r['missing']} poll runs {r['poll_run_types']} "
                    f"feed requests {r['feed_requests']}" for m, r in results.items())
    )  # fmt: skip
    return {"title": "Freshness: feed item -> news.articles row (issue 7)", "rows": rows, "notes": notes, "results": results}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2, default=str))
