"""The poll stage end to end: real HTTP servers on 127.0.0.1, a real PostgreSQL,
``pipeline.poll_pass`` as the Airflow task and the CLI call it."""

from __future__ import annotations

import gzip
import itertools
import json
import resource
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from newsmon.feeds import add_feed, import_opml, set_feed_enabled, sync_feeds
from newsmon.models import FeedSpec
from newsmon.pipeline import poll_pass

from tests.httpserver import LocalServer, Route
from tests.test_feeds import BILLION_LAUGHS


def rss(items, *, title="t", enc="utf-8", extra=""):
    body = "".join(f"<item><guid>{g}</guid><title>{t}</title><link>http://127.0.0.1/{g}</link></item>" for g, t in items)
    return f'<?xml version="1.0" encoding="{enc}"?><rss version="2.0"><channel><title>{title}</title>{extra}{body}</channel></rss>'.encode(enc)


def with_fetch(settings, **kw):
    return settings.model_copy(update={"fetch": settings.fetch.model_copy(update=kw)})


def with_poll(settings, **kw):
    return settings.model_copy(update={"poll": settings.poll.model_copy(update=kw)})


def add(engine, settings, name, url):
    with engine.begin() as c:
        return add_feed(c, FeedSpec(name=name, url=url), settings.poll)[0]


def feed(engine, feed_id):
    with engine.connect() as c:
        return c.execute(sa.text("SELECT * FROM news.feeds WHERE feed_id = :i"), {"i": feed_id}).mappings().one()


def polls(engine, feed_id):
    with engine.connect() as c:
        q = "SELECT * FROM news.feed_polls WHERE feed_id = :i ORDER BY poll_id"
        return [dict(r) for r in c.execute(sa.text(q), {"i": feed_id}).mappings()]


def entries(engine, feed_id):
    with engine.connect() as c:
        q = "SELECT * FROM news.feed_entries WHERE feed_id = :i ORDER BY entry_key"
        return [dict(r) for r in c.execute(sa.text(q), {"i": feed_id}).mappings()]


def make_due(engine):
    with engine.begin() as c:
        c.execute(sa.text("UPDATE news.feeds SET next_poll_at = now() - interval '1 second'"))


def delay_after(engine, feed_id):
    f, p = feed(engine, feed_id), polls(engine, feed_id)[-1]
    return (f["next_poll_at"] - p["started_at"]).total_seconds()


# ---------------------------------------------------------------- conditional GET, unchanged bodies


def test_304_conditional_get(engine, settings, http_server):
    http_server.routes["/etag.xml"] = Route(200, rss([("a", "A"), ("b", "B")]), etag='"v1"')
    http_server.routes["/lm.xml"] = Route(200, rss([("c", "C")]), last_modified="Sat, 28 Nov 2026 10:00:00 GMT")
    f1 = add(engine, settings, "etag", http_server.url("/etag.xml"))
    f2 = add(engine, settings, "lm", http_server.url("/lm.xml"))
    s1 = poll_pass(engine, settings)
    assert (s1.feeds_polled, s1.entries_new) == (2, 3)
    assert feed(engine, f1)["etag"] == '"v1"'
    make_due(engine)
    s2 = poll_pass(engine, settings)
    assert s2.feeds_polled == 2 and s2.entries_new == 0
    sent = {path: h for path, h in http_server.hits[-2:]}
    assert sent["/etag.xml"]["if-none-match"] == '"v1"'
    assert sent["/lm.xml"]["if-modified-since"] == "Sat, 28 Nov 2026 10:00:00 GMT"
    for fid in (f1, f2):
        last = polls(engine, fid)[-1]
        assert (last["http_status"], last["error_type"], last["entries_seen"]) == (304, None, 0)
        assert feed(engine, fid)["last_status"] == "not_modified"
    assert len(entries(engine, f1)) == 2


def test_unchanged_body_is_not_parsed_again(engine, settings, http_server):
    http_server.routes["/same.xml"] = Route(200, rss([("a", "A")]))  # no validators: ETags lie or are missing
    fid = add(engine, settings, "same", http_server.url("/same.xml"))
    poll_pass(engine, settings)
    seen_before = entries(engine, fid)[0]["last_seen_at"]
    interval_before = feed(engine, fid)["poll_interval_s"]  # halved: everything was new
    assert interval_before < settings.poll.default_interval_s
    make_due(engine)
    poll_pass(engine, settings)
    first, second = polls(engine, fid)
    assert first["entries_seen"] == 1 and second["entries_seen"] == 0 and second["http_status"] == 200
    assert feed(engine, fid)["last_status"] == "unchanged"
    assert entries(engine, fid)[0]["last_seen_at"] == seen_before  # store_entries never ran
    # nothing new -> the interval grows
    assert feed(engine, fid)["poll_interval_s"] > interval_before


# ---------------------------------------------------------------- failures and backoff


@pytest.mark.parametrize("retry_after", ["7200", "http-date"])
def test_429_honours_retry_after(engine, settings, http_server, retry_after):
    from email.utils import format_datetime

    from newsmon.fetch import parse_retry_after

    if retry_after == "http-date":
        from datetime import UTC, datetime

        retry_after = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    http_server.routes["/busy.xml"] = Route(429, b"slow down", {"Retry-After": retry_after})
    fid = add(engine, settings, "busy", http_server.url("/busy.xml"))
    poll_pass(engine, settings)
    [p] = polls(engine, fid)
    assert (p["error_type"], p["http_status"]) == ("http_429", 429)
    assert delay_after(engine, fid) >= parse_retry_after(retry_after) - 2  # 2 s: HTTP-date resolution
    assert delay_after(engine, fid) >= 7190


def test_5xx_backoff_grows_then_resets_on_success(engine, settings, http_server):
    calls = itertools.count()

    def flaky(_req):
        return Route(503, b"down") if next(calls) < 3 else Route(200, rss([("a", "A"), ("b", "B")]))

    http_server.routes["/flaky.xml"] = Route(handler=flaky)
    fid = add(engine, settings, "flaky", http_server.url("/flaky.xml"))
    delays = []
    for expected_failures in (1, 2, 3):
        poll_pass(engine, settings)
        assert feed(engine, fid)["consecutive_failures"] == expected_failures
        assert polls(engine, fid)[-1]["error_type"] == "http_5xx"
        delays.append(delay_after(engine, fid))
        make_due(engine)
    assert delays[0] < delays[1] < delays[2]  # x2 per failure beats +-10 % jitter
    assert feed(engine, fid)["enabled"]  # never given up on
    poll_pass(engine, settings)
    f = feed(engine, fid)
    assert (f["consecutive_failures"], f["last_status"], f["last_error"]) == (0, "ok", None)
    assert delay_after(engine, fid) < delays[0]  # back to (a shortened: all new) normal interval


def test_404_and_410_are_recorded_and_the_feed_stays(engine, settings, http_server):
    http_server.routes["/gone.xml"] = Route(410, b"gone")
    f404 = add(engine, settings, "missing", http_server.url("/nowhere.xml"))
    f410 = add(engine, settings, "gone", http_server.url("/gone.xml"))
    for _ in range(3):
        poll_pass(engine, settings)
        make_due(engine)
    for fid, status in ((f404, 404), (f410, 410)):
        ps = polls(engine, fid)
        assert [(p["error_type"], p["http_status"]) for p in ps] == [("http_4xx", status)] * 3
        f = feed(engine, fid)
        assert f["enabled"] and f["consecutive_failures"] == 3 and f["last_status"] == "http_4xx"


def test_permanent_redirect_moves_the_feed(engine, settings, http_server):
    http_server.routes["/old.xml"] = Route(301, b"", {"Location": "/new.xml"})
    http_server.routes["/tmp.xml"] = Route(302, b"", {"Location": "/new2.xml"})
    http_server.routes["/new.xml"] = Route(200, rss([("a", "A")]))
    http_server.routes["/new2.xml"] = Route(200, rss([("b", "B")]))
    http_server.routes["/loop.xml"] = Route(302, b"", {"Location": "/loop.xml"})
    moved = add(engine, settings, "moved", http_server.url("/old.xml"))
    temp = add(engine, settings, "temp", http_server.url("/tmp.xml"))
    loop = add(engine, settings, "loop", http_server.url("/loop.xml"))
    poll_pass(engine, settings)
    assert feed(engine, moved)["url"] == http_server.url("/new.xml")
    assert feed(engine, temp)["url"] == http_server.url("/tmp.xml")  # 302: stays
    assert polls(engine, loop)[-1]["error_type"] == "too_many_redirects"
    # re-syncing the unchanged configuration keeps the moved URL
    with engine.begin() as c:
        sync_feeds(c, [FeedSpec(name="moved", url=http_server.url("/old.xml"))], settings.poll)
    assert feed(engine, moved)["url"] == http_server.url("/new.xml")
    # a redirect onto a URL another feed already has: recorded, URL kept, pass unharmed
    http_server.routes["/alias.xml"] = Route(301, b"", {"Location": "/new2.xml"})
    dupe = add(engine, settings, "dupe", http_server.url("/alias.xml"))
    add(engine, settings, "owner", http_server.url("/new2.xml"))
    make_due(engine)
    s = poll_pass(engine, settings)
    assert feed(engine, dupe)["url"] == http_server.url("/alias.xml")
    assert polls(engine, dupe)[-1]["error_type"] is None and s.feeds_polled == 5


def test_timeouts_and_slow_drip_are_bounded(engine, settings, http_server):
    fast = with_fetch(settings, read_timeout_s=0.3, total_timeout_s=1.5)
    http_server.routes["/drip.xml"] = Route(200, rss([("a", "A")] * 5), drip_s=0.05)  # a byte every 50 ms
    http_server.routes["/hang.xml"] = Route(200, rss([("a", "A")]), delay_s=3)
    http_server.routes["/ok.xml"] = Route(200, rss([("a", "A")]))
    drip = add(engine, fast, "drip", http_server.url("/drip.xml"))
    hang = add(engine, fast, "hang", http_server.url("/hang.xml"))
    ok = add(engine, fast, "ok", http_server.url("/ok.xml"))
    s = poll_pass(engine, fast)
    assert s.feeds_polled == 3 and s.feeds_failed == 2
    for fid in (drip, hang):
        [p] = polls(engine, fid)
        assert p["error_type"] == "timeout" and p["duration_ms"] < 2500
    assert polls(engine, ok)[-1]["error_type"] is None


def test_oversize_bodies_are_cut_off(engine, settings, http_server):
    small = with_fetch(settings, max_body_bytes=100_000)
    chunk = b"<item><title>x</title></item>" * 1000

    def endless():
        while True:
            yield chunk

    declared = Route(200, headers={"Content-Length": str(1 << 30)}, stream=endless)  # "1 GB" announced
    http_server.routes["/declared.xml"] = declared
    http_server.routes["/endless.xml"] = Route(200, stream=endless)  # no length, never ends
    http_server.routes["/bomb.xml"] = Route(200, gzip.compress(b" " * 50_000_000), {"Content-Encoding": "gzip"})
    ids = [add(engine, small, n, http_server.url(f"/{n}.xml")) for n in ("declared", "endless", "bomb")]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    poll_pass(engine, small)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    for fid in ids:
        [p] = polls(engine, fid)
        assert p["error_type"] == "too_large", p
    assert grown_mb < 100  # memory stays flat: the body is never held beyond the cap


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"<!DOCTYPE html><html><head><title>Home</title></head><body><p>Welcome</p></body></html>", "text/html"),
        (b"", "application/rss+xml"),
        (b'{"not": "a feed"}', "application/json"),
    ],
)
def test_not_a_feed(engine, settings, http_server, body, ctype):
    http_server.routes["/page"] = Route(200, body, {"Content-Type": ctype})
    fid = add(engine, settings, "page", http_server.url("/page"))
    poll_pass(engine, settings)
    [p] = polls(engine, fid)
    assert p["error_type"] == "not_a_feed" and p["http_status"] == 200
    assert feed(engine, fid)["body_hash"] is None  # parsed again next time, not skipped as "unchanged"


# ---------------------------------------------------------------- entries


def test_edited_entry_is_requeued_not_duplicated(engine, settings, http_server):
    version = {"n": 1}

    def feed_v(_req):
        title = "Original title" if version["n"] == 1 else "Corrected title"
        return Route(200, rss([("a", title), ("b", "Unchanged")]))

    http_server.routes["/ed.xml"] = Route(handler=feed_v)
    fid = add(engine, settings, "ed", http_server.url("/ed.xml"))
    poll_pass(engine, settings)
    with engine.begin() as c:  # the processing stage has handled both
        c.execute(sa.text("UPDATE news.feed_entries SET status = 'loaded', attempts = 1"))
    version["n"] = 2
    make_due(engine)
    s = poll_pass(engine, settings)
    rows = entries(engine, fid)
    assert len(rows) == 2 and s.entries_new == 0
    a, b = rows
    assert (a["title"], a["status"], a["attempts"]) == ("Corrected title", "new", 0)
    assert (b["title"], b["status"]) == ("Unchanged", "loaded")
    assert a["last_seen_at"] > a["first_seen_at"]


FORMATS = {
    "rss091": b'<?xml version="1.0"?><rss version="0.91"><channel><title>t</title><link>http://x/</link><description>d</description><item><title>RSS 0.91 \xd8\xae\xd8\xa8\xd8\xb1</title><link>http://127.0.0.1/91</link></item></channel></rss>',
    "rss10": b'<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"><channel rdf:about="http://x/"><title>t</title></channel><item rdf:about="http://127.0.0.1/10"><title>RSS 1.0 \xd8\xae\xd8\xa8\xd8\xb1</title><link>http://127.0.0.1/10</link></item></rdf:RDF>',
    "atom03": b'<?xml version="1.0"?><feed version="0.3" xmlns="http://purl.org/atom/ns#"><title>t</title><entry><id>tag:a03</id><title>Atom 0.3 \xd8\xae\xd8\xa8\xd8\xb1</title><link rel="alternate" href="http://127.0.0.1/a03"/><issued>2026-11-28T10:00:00Z</issued></entry></feed>',
    "atom10": b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><entry><id>tag:a10</id><title>Atom 1.0 \xd8\xae\xd8\xa8\xd8\xb1</title><link href="http://127.0.0.1/a10"/><updated>2026-11-28T10:00:00Z</updated></entry></feed>',
    "json11": json.dumps({"version": "https://jsonfeed.org/version/1.1", "title": "t", "items": [{"id": "j1", "url": "http://127.0.0.1/j1", "title": "JSON 1.1 خبر"}]}, ensure_ascii=False).encode(),
}
ARABIC = "قصف على إدلب"
ENCODINGS = {  # path: (body, content-type)
    "utf8": (rss([("e1", ARABIC)]), "application/rss+xml; charset=utf-8"),
    "utf16": (rss([("e1", ARABIC)], enc="utf-16"), "application/rss+xml"),
    "cp1256": (rss([("e1", ARABIC)], enc="windows-1256"), "application/rss+xml; charset=windows-1256"),
    "iso88596": (rss([("e1", ARABIC)], enc="iso-8859-6"), "text/xml"),
    "lying-header": (rss([("e1", ARABIC)], enc="windows-1256"), "text/xml; charset=utf-8"),
    "no-declaration": (rss([("e1", ARABIC)]).replace(b' encoding="utf-8"', b""), "application/xml"),
}


def test_formats_and_encodings_over_http(engine, settings, http_server):
    ids = {}
    for name, body in FORMATS.items():
        http_server.routes[f"/{name}"] = Route(200, body)
        ids[name] = add(engine, settings, name, http_server.url(f"/{name}"))
    for name, (body, ctype) in ENCODINGS.items():
        http_server.routes[f"/{name}"] = Route(200, body, {"Content-Type": ctype})
        ids[name] = add(engine, settings, name, http_server.url(f"/{name}"))
    s = poll_pass(engine, settings)
    assert s.feeds_failed == 0, s.errors
    for name in FORMATS:
        [e] = entries(engine, ids[name])
        assert e["title"].endswith("خبر"), (name, e["title"])
    for name in ENCODINGS:
        [e] = entries(engine, ids[name])
        assert e["title"] == ARABIC, (name, e["title"])


# ---------------------------------------------------------------- passes


def test_concurrent_passes_poll_each_feed_exactly_once(engine, settings, http_server):
    small_shards = with_poll(settings, shard_size=3)
    ids = []
    for i in range(24):
        http_server.routes[f"/f{i}.xml"] = Route(200, rss([(f"g{i}", f"T{i}")]), delay_s=0.05)
        ids.append(add(engine, settings, f"f{i}", http_server.url(f"/f{i}.xml")))
    results, errors = [], []

    def worker():
        try:
            results.append(poll_pass(engine, small_shards))
        except Exception as exc:  # pragma: no cover - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(r.feeds_polled for r in results) == 24
    with engine.connect() as c:
        counts = dict(c.execute(sa.text("SELECT feed_id, count(*) FROM news.feed_polls GROUP BY 1")).all())
    assert counts == {fid: 1 for fid in ids}
    assert len([h for h in http_server.hits if h[0].startswith("/f")]) == 24


def test_hostile_feeds_do_not_affect_the_others(engine, settings, http_server):
    capped = with_poll(with_fetch(settings, max_body_bytes=2_000_000, read_timeout_s=0.5, total_timeout_s=2), max_entries_per_feed=500)
    many = rss([(f"m{i}", f"item {i}") for i in range(100_000)])[:1_900_000]  # cut mid-item: bozo too
    many = many[: many.rfind(b"</item>") + 7] + b"</channel></rss>"
    with LocalServer() as other:  # a second host, as in a real pass
        other.routes["/good2.xml"] = Route(200, rss([("g2", "good two")]))
        feeds = {
            "good1": (http_server, "/good1.xml", Route(200, rss([("g1", "good one")]))),
            "laughs": (http_server, "/laughs.xml", Route(200, BILLION_LAUGHS)),
            "xxe": (http_server, "/xxe.xml", Route(200, b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY x SYSTEM "file:///etc/passwd">\n]>\n<rss version="2.0"><channel><item><guid>x</guid><title>&x;</title></item></channel></rss>')),
            "many": (http_server, "/many.xml", Route(200, many)),
            "broken": (http_server, "/broken.xml", Route(500, b"oops")),
            "html": (http_server, "/html.xml", Route(200, b"<html><body>hi</body></html>", {"Content-Type": "text/html"})),
            "hang": (http_server, "/hang.xml", Route(200, b"", delay_s=3)),
            "good2": (other, "/good2.xml", None),
        }
        ids = {}
        for name, (srv, path, route) in feeds.items():
            if route is not None:
                srv.routes[path] = route
            ids[name] = add(engine, capped, name, srv.url(path))
        s = poll_pass(engine, capped)
    assert s.feeds_polled == len(feeds)
    status = {n: polls(engine, i)[-1] for n, i in ids.items()}
    assert {n: p["error_type"] for n, p in status.items()} == {
        "good1": None, "laughs": None, "xxe": None, "many": None,
        "broken": "http_5xx", "html": "not_a_feed", "hang": "timeout", "good2": None,
    }  # fmt: skip
    assert [e["title"] for e in entries(engine, ids["good1"])] == ["good one"]
    assert [e["title"] for e in entries(engine, ids["good2"])] == ["good two"]
    assert "root:" not in (entries(engine, ids["xxe"])[0]["title"] or "")
    assert status["many"]["entries_seen"] == 500 and "truncated" in status["many"]["bozo_reason"]
    assert len(entries(engine, ids["many"])) == 500
    assert "entity" in status["laughs"]["bozo_reason"]


# ---------------------------------------------------------------- registry in the database


def test_registry_add_disable_enable_and_sync(engine, settings):
    with engine.begin() as c:
        fid, created = add_feed(c, FeedSpec(name="a", url="https://a.example/rss"), settings.poll)
        again, created_again = add_feed(c, FeedSpec(name="other", url="https://a.example/rss"), settings.poll)
    assert created and not created_again and again == fid
    from newsmon.errors import ConfigError

    with pytest.raises(ConfigError, match="already exists"), engine.begin() as c:
        add_feed(c, FeedSpec(name="a", url="https://b.example/rss"), settings.poll)
    # the scheduler adapted the interval; an operator disabled the feed
    with engine.begin() as c:
        c.execute(sa.text("UPDATE news.feeds SET poll_interval_s = 3600 WHERE feed_id = :i"), {"i": fid})
        set_feed_enabled(c, "a", False, reason="publisher asked")
        sync_feeds(c, [FeedSpec(name="a", url="https://a.example/rss")], settings.poll)
    f = feed(engine, fid)
    assert (f["enabled"], f["disabled_reason"], f["poll_interval_s"]) == (False, "publisher asked", 3600)
    assert poll_pass(engine, settings, only_due=False).feeds_polled == 0  # disabled feeds are not polled
    with engine.begin() as c:
        set_feed_enabled(c, "a", True)
        sync_feeds(c, [FeedSpec(name="a", url="https://a.example/rss", interval_s=600)], settings.poll)
    f = feed(engine, fid)
    assert (f["enabled"], f["poll_interval_s"], f["base_interval_s"]) == (True, 600, 600)  # config changed: reset
    with pytest.raises(ConfigError, match="no feed named"), engine.begin() as c:
        set_feed_enabled(c, "nope", True)


def test_import_opml_is_idempotent(engine, settings):
    from tests.test_feeds import OPML

    with engine.begin() as c:
        assert import_opml(c, OPML, settings.poll) == (2, 0)
        assert import_opml(c, OPML, settings.poll) == (0, 2)
    with engine.connect() as c:
        names = c.execute(sa.text("SELECT name, lang FROM news.feeds ORDER BY name")).all()
    assert names == [("feeds-bbci-co-uk-arabic-rss-xml", "ar"), ("news-un-org-feed-subscribe-en-news-all-rss-xml", None)]


def test_cli_feeds_commands(engine, settings, tmp_path, http_server):
    from newsmon import cli
    from typer.testing import CliRunner

    from tests.test_feeds import OPML

    cli.state._settings = None
    runner = CliRunner()

    def invoke(*args):
        cli.state._settings = None
        r = runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})
        assert r.exit_code == 0, (args, r.output, r.exception)
        return r.output

    http_server.routes["/cli.xml"] = Route(200, rss([("c1", "one"), ("c2", "two")]))
    assert "added" in invoke("feeds", "add", http_server.url("/cli.xml"), "--lang", "ar", "--interval", "600")
    assert "already registered" in invoke("feeds", "add", http_server.url("/cli.xml"))
    opml = tmp_path / "subs.opml"
    opml.write_bytes(OPML)
    assert "2 feeds added" in invoke("feeds", "import-opml", str(opml))
    name = "127-0-0-1-cli-xml"
    invoke("feeds", "disable", "feeds-bbci-co-uk-arabic-rss-xml")
    invoke("feeds", "disable", "news-un-org-feed-subscribe-en-news-all-rss-xml")
    poll_pass(engine, settings)
    rows = {r["name"]: r for r in json.loads(invoke("feeds", "list", "--json"))}
    assert set(rows) == {name, "feeds-bbci-co-uk-arabic-rss-xml", "news-un-org-feed-subscribe-en-news-all-rss-xml"}
    r = rows[name]
    assert (r["last_status"], r["consecutive_failures"], r["new_24h"], r["enabled"]) == ("ok", 0, 2, True)
    assert r["next_poll_at"] and r["last_polled_at"]
    assert rows["feeds-bbci-co-uk-arabic-rss-xml"]["enabled"] is False
    invoke("feeds", "enable", "feeds-bbci-co-uk-arabic-rss-xml")
    table = invoke("feeds", "list")
    assert "next poll" in table and "new 24h" in table
    cli.state._settings = None
    bad = runner.invoke(cli.app, ["feeds", "disable", "no-such-feed"])
    assert bad.exit_code != 0
