"""Issue 4 wiring: raw page archive, fetch attempt history, per-feed robots.txt and
`newsmon reprocess`, against a real PostgreSQL and real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from newsmon.config import PROJECT_ROOT
from newsmon.pipeline import run_once
from newsmon.reprocess import reprocess
from newsmon.topics import load_taxonomy
from typer.testing import CliRunner

from tests.httpserver import Route

SAMPLE = PROJECT_ROOT / "include" / "sample"


def _counts(engine):
    with engine.connect() as c:
        return c.execute(
            sa.text("SELECT (SELECT count(*) FROM news.raw_pages), (SELECT count(*) FROM news.fetch_attempts)")
        ).one()


@pytest.fixture
def loaded(settings, engine, sample_server):
    run_once(engine, settings)
    return sample_server


def test_pages_are_archived_compressed_with_headers_and_attempts(loaded, engine, settings):
    server = loaded
    with engine.connect() as c:
        pages = c.execute(sa.text("SELECT * FROM news.raw_pages ORDER BY entry_id")).mappings().all()
        attempts = c.execute(sa.text("SELECT * FROM news.fetch_attempts ORDER BY entry_id")).mappings().all()
        entries = c.execute(sa.text("SELECT count(*) FROM news.feed_entries")).scalar()
    assert len(pages) == 26  # 27 items, one of them a 404
    assert len(attempts) == entries == 27  # retries are 0 in tests: one attempt each
    four04 = [a for a in attempts if a["error_type"]]
    assert len(four04) == 1 and four04[0]["error_type"] == "http_4xx" and four04[0]["status"] == 404
    assert all(a["duration_ms"] is not None and a["attempted_at"] for a in attempts)
    by_name = {p["final_url"].rsplit("/", 2)[-2] + "/" + p["final_url"].rsplit("/", 1)[-1].split("?")[0]: p for p in pages}
    p = by_name["halab-today/aleppo-old-souqs-reopen-after-restoration.html"]
    original = (SAMPLE / "sites" / "halab-today" / "aleppo-old-souqs-reopen-after-restoration.html").read_bytes()
    original = server.render(original)  # what the server sent
    assert p["compression"] == "zlib" and zlib.decompress(p["body"]) == original
    assert len(p["body"]) < len(original) / 2  # actually compressed
    assert p["body_bytes"] == len(original) and p["encoding"] == "cp1256" and p["status"] == 200
    assert "content-type" in p["headers"]
    with engine.connect() as c:
        meta = c.execute(
            sa.text("SELECT sitename, encoding, image_url FROM news.articles WHERE url LIKE '%levant-wire%' LIMIT 1")
        ).one()
    assert meta.sitename == "The Orontes Dispatch" and meta.encoding == "utf-8"


def test_rerun_adds_no_archive_rows(loaded, engine, settings):
    before = _counts(engine)
    run_once(engine, settings)
    assert _counts(engine) == before


FEED = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel><title>{name}</title>
<link>{base}/</link><description>t</description>
<item><title>{title}</title><link>{base}{path}</link><guid>{base}{path}</guid>
<pubDate>Mon, 23 Nov 2026 10:00:00 GMT</pubDate><description>A teaser.</description>
<content:encoded><![CDATA[<p>{feed_text}</p>]]></content:encoded></item>
</channel></rss>"""
STORIES = {
    "polite": "The harbour authority said on Monday that the new container terminal would open in the spring, "
    "after two years of dredging work and a long dispute over the contract with the port workers' union.",
    "impolite": "Farmers in the northern valley began the olive harvest a week early this year, saying that the "
    "dry summer had ripened the fruit faster than usual and that prices at the press were expected to rise.",
    "flaky": "The city council approved a plan to replace the old tram line with electric buses, a decision that "
    "opponents say will cost more over twenty years and leave the eastern districts without a direct link.",
}
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta property="article:published_time" content="2026-11-23T10:00:00+00:00"></head>
<body><article><h1>{title}</h1><p>{p}</p><p>Officials gave no figure for the cost but promised details soon.</p>
<p>Residents interviewed on Monday were divided, and several asked for a public meeting first.</p></article></body></html>"""


def _feed(name, base, path, title):
    return FEED.format(name=name, base=base, path=path, title=title, feed_text="Short feed teaser about the port. " * 7)


def test_per_feed_robots_and_retry_history(settings, engine, http_server, tmp_path):
    s = http_server
    base = f"http://127.0.0.1:{s.port}"
    s.routes["/robots.txt"] = Route(200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"})
    for name, path in (("polite", "/private/a.html"), ("impolite", "/private/b.html"), ("flaky", "/flaky.html")):
        title = f"Port terminal story {name}"
        s.routes[f"/{name}.xml"] = Route(200, _feed(name, base, path, title).encode(), {"Content-Type": "application/rss+xml"})
        s.routes[path] = Route(200, PAGE.format(title=title, p=STORIES[name]).encode(), {"Content-Type": "text/html; charset=utf-8"})
    calls = {"n": 0}
    page = s.routes["/flaky.html"]

    def flaky(_req):
        calls["n"] += 1
        return Route(503, b"busy") if calls["n"] == 1 else page

    s.routes["/flaky.html"] = Route(handler=flaky)
    feeds = tmp_path / "feeds.yml"
    feeds.write_text(
        "feeds:\n"
        f"  - {{name: polite, url: '{base}/polite.xml', lang: en}}\n"
        f"  - {{name: impolite, url: '{base}/impolite.xml', lang: en, respect_robots: false}}\n"
        f"  - {{name: flaky, url: '{base}/flaky.xml', lang: en}}\n",
        encoding="utf-8",
    )
    settings = settings.model_copy(update={"fetch": settings.fetch.model_copy(update={"retries": 1})})
    run_once(engine, settings, feeds_file=feeds)
    with engine.connect() as c:
        rows = {
            r.name: r
            for r in c.execute(
                sa.text(
                    """SELECT f.name, f.respect_robots, a.body_source,
                              (SELECT count(*) FROM news.raw_pages r WHERE r.entry_id = e.entry_id) AS pages,
                              (SELECT array_agg(coalesce(t.error_type, 'ok') || ':' || coalesce(t.status::text, '-')
                                                ORDER BY t.attempt_no)
                               FROM news.fetch_attempts t WHERE t.entry_id = e.entry_id) AS attempts
                       FROM news.feeds f JOIN news.feed_entries e USING (feed_id)
                       LEFT JOIN LATERAL (SELECT body_source FROM news.articles x
                                          WHERE x.entry_id = e.entry_id LIMIT 1) a ON true"""
                )
            )
        }
    assert rows["polite"].respect_robots and not rows["impolite"].respect_robots
    assert rows["polite"].attempts == ["robots:-"] and rows["polite"].pages == 0
    assert rows["polite"].body_source == "feed"  # nothing dropped: the feed content stands in
    assert "/private/a.html" not in [h[0] for h in s.hits]
    assert rows["impolite"].attempts == ["ok:200"] and rows["impolite"].pages == 1
    assert rows["impolite"].body_source == "page"
    assert rows["flaky"].attempts == ["http_5xx:503", "ok:200"] and rows["flaky"].body_source == "page"


def _article(engine, like):
    with engine.connect() as c:
        return c.execute(
            sa.text(
                "SELECT article_id, array_agg(topic ORDER BY topic) AS topics, min(body) AS body, min(loaded_at) AS loaded_at, "
                "min(title) AS title, max(reprocessed_at) AS reprocessed_at FROM news.articles WHERE url LIKE :u GROUP BY 1"
            ),
            {"u": like},
        ).one()


def test_reprocess_restores_what_the_current_extractor_produces(loaded, engine, settings):
    taxonomy = load_taxonomy(settings.pipeline.topics_file)
    like = "%seven-civilians-killed-ariha-market-shelling%"
    good = _article(engine, like)
    assert good.topics == ["idlib", "russia", "syria"]
    # what an older, worse extractor left behind: a comment form in the body, a topic missed
    with engine.begin() as c:
        c.execute(
            sa.text("UPDATE news.articles SET body = body || E'\\nاترك رد\\nلن يتم نشر عنوان بريدك الإلكتروني.', "
                    "title = 'old title', lang = 'en' WHERE article_id = :id"),
            {"id": good.article_id},
        )  # fmt: skip
        c.execute(sa.text("DELETE FROM news.articles WHERE article_id = :id AND topic = 'russia'"), {"id": good.article_id})
    nothing = reprocess(engine, taxonomy, since=datetime(2100, 1, 1, tzinfo=UTC))
    assert nothing.pages == 0
    with engine.connect() as c:
        loaded_pages = c.execute(sa.text(
            "SELECT count(*) FROM news.raw_pages JOIN news.feed_entries USING (entry_id) WHERE feed_entries.status = 'loaded'")).scalar()
    assert loaded_pages == 23  # 26 pages - 1 quarantined - 2 syndicated copies (sightings, not articles)
    first = reprocess(engine, taxonomy)
    assert first.pages == loaded_pages and first.failed == 0
    assert first.updated == 1 and first.topic_changes == 1 and first.unchanged == first.pages - 1 - first.skipped
    fixed = _article(engine, like)
    assert fixed.article_id == good.article_id and fixed.topics == good.topics
    assert fixed.body == good.body and "اترك رد" not in fixed.body and fixed.title == good.title
    assert fixed.loaded_at == good.loaded_at and fixed.reprocessed_at is not None
    again = reprocess(engine, taxonomy)
    assert again.updated == 0 and again.unchanged == first.unchanged + 1


def test_reprocess_cli(loaded, engine, settings):
    from newsmon.cli import app, state

    state._settings = None
    with engine.begin() as c:
        c.execute(sa.text("UPDATE news.articles SET body = 'stale' WHERE url LIKE '%bank-of-russia-holds-key-rate%'"))
    runner = CliRunner()
    res = runner.invoke(app, ["reprocess", "--since", "2000-01-01", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["pages"] == 23 and data["updated"] == 1
    bad = runner.invoke(app, ["reprocess", "--since", "yesterday-ish"])
    assert bad.exit_code != 0
    state._settings = None


def test_respect_robots_in_feeds_file(tmp_path):
    from newsmon.errors import ConfigError
    from newsmon.feeds import load_feed_specs

    f = tmp_path / "feeds.yml"
    f.write_text("feeds:\n  - {name: a, url: 'http://x.example/a.xml'}\n  - {name: b, url: 'http://x.example/b.xml', respect_robots: false}\n")
    assert [s.respect_robots for s in load_feed_specs(f)] == [True, False]
    f.write_text("feeds:\n  - {name: a, url: 'http://x.example/a.xml', respect_robots: 'sometimes'}\n")
    with pytest.raises(ConfigError, match=r"line 2.*respect_robots"):
        load_feed_specs(f)
