"""The feed watcher's look (``newsmon.orchestration.watch_feeds``, run by the Airflow
triggerer between polls), on a real database and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from newsmon import orchestration as orch
from newsmon.config import Settings
from newsmon.feeds import sync_feeds
from newsmon.models import FeedSpec

from tests.httpserver import Route


def _rss(base: str, items: list[int], build: str = "Mon, 01 Dec 2025 10:00:00 GMT") -> bytes:
    body = "".join(f"<item><title>Story {i}</title><link>{base}/n/{i}</link><guid>story-{i}</guid></item>" for i in items)
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>W</title>'
            f"<lastBuildDate>{build}</lastBuildDate>{body}</channel></rss>").encode()  # fmt: skip


def _due(engine) -> bool:
    with engine.connect() as c:
        return bool(c.execute(sa.text("SELECT next_poll_at <= now() FROM news.feeds WHERE name = 'w'")).scalar_one())


def test_watcher_makes_a_feed_due_only_when_it_lists_new_entries(
    engine, settings: Settings, db_url: str, http_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSMON_POLL__WATCH_INTERVAL_S", "7")
    base = http_server.url("")
    http_server.routes["/w.xml"] = Route(200, _rss(base, [1]), {"Content-Type": "application/rss+xml"}, etag='"v1"')
    with engine.begin() as c:
        sync_feeds(c, [FeedSpec(name="w", url=f"{base}/w.xml")], settings.poll)
        feed_id = c.execute(sa.text("SELECT feed_id FROM news.feeds WHERE name = 'w'")).scalar_one()

    # never polled successfully yet: not watched (it is due anyway)
    assert asyncio.run(orch.watch_feeds(db_url)) == ([], 7.0)
    assert not http_server.hits

    orch.poll_shard(db_url, {"feed_ids": [feed_id], "only_due": False})
    assert not _due(engine)
    polls = len(http_server.hits)

    # unchanged: a conditional GET answered 304, nothing changes
    assert asyncio.run(orch.watch_feeds(db_url)) == ([], 7.0)
    assert len(http_server.hits) == polls + 1
    assert http_server.hits[-1][1].get("if-none-match") == '"v1"'
    assert not _due(engine)

    # a new body that lists only known entries (lastBuildDate moved): not a change
    http_server.routes["/w.xml"] = Route(200, _rss(base, [1], build="Tue, 02 Dec 2025 10:00:00 GMT"),
                                         {"Content-Type": "application/rss+xml"}, etag='"v2"')  # fmt: skip
    assert asyncio.run(orch.watch_feeds(db_url)) == ([], 7.0)
    assert not _due(engine)

    # a new entry: the feed becomes due now, nothing else is written (no poll recorded)
    http_server.routes["/w.xml"] = Route(200, _rss(base, [2, 1]), {"Content-Type": "application/rss+xml"}, etag='"v3"')
    with engine.connect() as c:
        entries_before = c.execute(sa.text("SELECT count(*) FROM news.feed_entries")).scalar_one()
        polls_before = c.execute(sa.text("SELECT count(*) FROM news.feed_polls")).scalar_one()
    assert asyncio.run(orch.watch_feeds(db_url)) == (["w"], 7.0)
    assert _due(engine)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM news.feed_entries")).scalar_one() == entries_before
        assert c.execute(sa.text("SELECT count(*) FROM news.feed_polls")).scalar_one() == polls_before

    # the poll takes it; the watcher then sees nothing new
    assert orch.plan_poll_shards(db_url) and orch.poll_shard(db_url, {"feed_ids": [feed_id]})["entries_new"] == 1
    assert asyncio.run(orch.watch_feeds(db_url)) == ([], 7.0)


def test_watcher_off_and_failing_feeds_are_left_alone(
    engine, settings: Settings, db_url: str, http_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = http_server.url("")
    http_server.routes["/w.xml"] = Route(200, _rss(base, [1]), {"Content-Type": "application/rss+xml"})
    with engine.begin() as c:
        sync_feeds(c, [FeedSpec(name="w", url=f"{base}/w.xml")], settings.poll)
        feed_id = c.execute(sa.text("SELECT feed_id FROM news.feeds WHERE name = 'w'")).scalar_one()
    orch.poll_shard(db_url, {"feed_ids": [feed_id], "only_due": False})
    http_server.routes["/w.xml"] = Route(200, _rss(base, [2, 1]), {"Content-Type": "application/rss+xml"})
    hits = len(http_server.hits)

    monkeypatch.setenv("NEWSMON_POLL__WATCH_INTERVAL_S", "0")
    assert asyncio.run(orch.watch_feeds(db_url)) == ([], 60.0)  # off: no request at all
    assert len(http_server.hits) == hits

    monkeypatch.setenv("NEWSMON_POLL__WATCH_INTERVAL_S", "30")
    with engine.begin() as c:  # a feed in failure backoff waits for its regular (backed-off) poll
        c.execute(sa.text("UPDATE news.feeds SET consecutive_failures = 2"))
    assert asyncio.run(orch.watch_feeds(db_url)) == ([], 30.0)
    assert len(http_server.hits) == hits and not _due(engine)

    with engine.begin() as c:
        c.execute(sa.text("UPDATE news.feeds SET consecutive_failures = 0"))
    assert asyncio.run(orch.watch_feeds(db_url)) == (["w"], 30.0)  # no validators: the body hash tells
