"""The News Monitor page (newsmon.monitor) on a real database: content, escaping of feed
text, missing optional tables, and a real browser rendering it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from newsmon.monitor import chart_svg, create_app

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def populated(engine, db_url: str) -> str:
    """A small warehouse: two feeds (one failing, with a hostile error), a story cluster
    of three copies (one title hostile), articles over several days, an alert, a DQ run."""
    now = datetime.now(UTC)
    with engine.begin() as c:
        c.execute(sa.text("""INSERT INTO news.feeds (name, url, last_polled_at, last_status, consecutive_failures, last_error)
                             VALUES ('halab-today', 'http://127.0.0.1:9/h.xml', now(), 'ok', 0, NULL),
                                    ('bad-feed', 'http://127.0.0.1:9/b.xml', now(), 'http_5xx', 4, :err)"""),
                  {"err": f"HTTP 503 {HOSTILE}"})  # fmt: skip
        for i, (topics, title, days_ago) in enumerate([
            (["syria"], HOSTILE, 0), (["idlib", "syria"], "قصف على سوق أريحا", 1),
            (["russia"], "Bank of Russia holds key rate", 3), (["turkey"], "Erdogan & the lira", 5),
        ]):  # fmt: skip
            aid = c.execute(sa.text("INSERT INTO news.article_registry (url_key, content_hash) VALUES (:u, :h) RETURNING article_id"),
                            {"u": f"k{i}", "h": f"h{i}"}).scalar()  # fmt: skip
            c.execute(sa.text("UPDATE news.article_registry SET cluster_id = :c WHERE article_id = :a"), {"c": aid, "a": aid})
            for topic in topics:
                c.execute(
                    sa.text("""INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, title,
                                                          published_at, content_hash, cluster_id)
                               VALUES (:a, :t, :u, :u, :k, 'example.org', :title, :p, :h, :a)"""),
                    {"a": aid, "t": topic, "u": f"http://example.org/{i}", "k": f"k{i}", "title": title,
                     "p": now - timedelta(days=days_ago), "h": f"h{i}"},
                )  # fmt: skip
            if i in (0, 1):
                for j, dom in enumerate(["a.example", "b.example", "c.example"][: 3 - 2 * i]):
                    c.execute(sa.text("""INSERT INTO news.article_sightings (article_id, cluster_id, url, source_domain, match_kind)
                                         VALUES (:a, :a, :u, :d, :k)"""),
                              {"a": aid, "u": f"http://{dom}/{i}/{j}", "d": dom, "k": "first" if j == 0 else "near"})  # fmt: skip
        c.execute(sa.text("""INSERT INTO news.dq_runs (suite, batch_id, success, rows_total, rows_failed, statistics, result)
                             VALUES ('newsmon_articles', 'b1', false, 10, 3, '{}', '{}')"""))
        if c.execute(sa.text("SELECT to_regclass('news.alerts') IS NOT NULL")).scalar():
            c.execute(sa.text("""INSERT INTO news.alerts (kind, subject, severity, summary)
                                 VALUES ('feed_down', :s, 'error', 'feed failed 4 times')"""), {"s": f"bad-feed {HOSTILE}"})
    return db_url


@pytest.fixture
def client(populated: str):
    from fastapi.testclient import TestClient

    with TestClient(create_app(lambda: populated)) as c:
        yield c


def test_page_shows_every_section_and_escapes_feed_text(client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert HOSTILE not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for section in ("Feed health", "Articles per topic per day (last 14 days)", "Largest story clusters", "Open alerts",
                    "Recent data-quality runs"):  # fmt: skip
        assert section in page
    assert "halab-today" in page and "http_5xx" in page and "قصف على سوق أريحا" in page
    assert "Erdogan &amp; the lira" not in page  # not in a cluster of the last 24 h, and not in the chart either
    assert page.count("<polyline") == 4  # one line per topic with articles in the last 14 days
    assert "feed failed 4 times" in page and "bad-feed &lt;script&gt;" in page
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_clusters_rank_by_copies(client) -> None:
    data = client.get("/api/summary").json()
    assert data["clusters"][0]["copies"] == 3 and data["clusters"][0]["sources"] == 3
    assert data["clusters"][0]["title"] == HOSTILE  # stored as data, escaped only when rendered
    assert data["clusters"][1]["copies"] == 1 and data["clusters"][1]["topics"] == ["idlib", "syria"]
    assert len(data["clusters"]) == 2
    assert [f["name"] for f in data["feeds"]] == ["bad-feed", "halab-today"]  # failing feeds first
    assert data["dq_runs"][0]["rows_failed"] == 3


def test_page_without_the_alerts_table(engine, populated: str) -> None:
    from fastapi.testclient import TestClient

    with engine.begin() as c:
        c.execute(sa.text("DROP TABLE IF EXISTS news.alerts CASCADE"))
    with TestClient(create_app(lambda: populated)) as c:
        page = c.get("/").text
    assert "the alerts ledger (news.alerts) is not installed" in page


def test_chart_escapes_topic_names_and_handles_no_data() -> None:
    day = datetime(2026, 1, 1).date()
    svg = chart_svg([{"topic": "<b>x</b>", "day": day, "n": 3}], [day])
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt; (3)" in svg
    assert "no articles yet" in chart_svg([], [day])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(populated: str) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: populated), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    t.join(timeout=10)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (Debian package `chromium`)")
def test_headless_chromium_renders_the_page(served: str, tmp_path: Path) -> None:
    shot = tmp_path / "news-monitor.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,1600", served,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # tables, text and the chart, not a blank page
    keep = Path(os.environ.get("NEWS_MONITOR_SCREENSHOT_DIR", tmp_path))
    if keep != tmp_path:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)
