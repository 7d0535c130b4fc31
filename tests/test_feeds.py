import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from newsmon.config import PollSettings
from newsmon.errors import ConfigError
from newsmon.feeds import (
    feed_spec_from_url,
    load_feed_specs,
    parse_feed,
    parse_opml,
    schedule_after,
    slug_for_url,
)
from newsmon.models import Feed, PollOutcome

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

RSS_AR = """<?xml version="1.0" encoding="{enc}"?>
<rss version="2.0"><channel><title>أخبار الشام</title><ttl>30</ttl>
<item><title>قصف على إدلب</title><link>http://127.0.0.1/a.html</link><guid>ar-1</guid>
<pubDate>Fri, 27 Nov 2026 10:00:00 +0300</pubDate><description>وصف قصير</description></item>
<item><title>خبر بلا معرف</title><link>http://127.0.0.1/b.html</link></item>
</channel></rss>"""


def test_rss_utf8_arabic():
    f = parse_feed(RSS_AR.format(enc="utf-8").encode("utf-8"), {"content-type": "application/rss+xml; charset=utf-8"}, now=NOW)
    assert [e.title for e in f.entries] == ["قصف على إدلب", "خبر بلا معرف"]
    assert f.entries[0].entry_key == "ar-1"
    assert f.entries[1].entry_key == "http://127.0.0.1/b.html"  # no guid: the link
    assert f.entries[0].published_at == datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
    assert f.entries[1].published_source == "first_seen"
    assert f.ttl_s == 1800


@pytest.mark.parametrize("enc", ["windows-1256", "iso-8859-6"])
def test_rss_legacy_arabic_encodings(enc):
    body = RSS_AR.format(enc=enc).encode(enc)
    f = parse_feed(body, {"content-type": "application/rss+xml"}, now=NOW)
    assert f.entries[0].title == "قصف على إدلب"


def test_wrong_declared_charset_in_header_still_gives_arabic():
    body = RSS_AR.format(enc="windows-1256").encode("cp1256")
    f = parse_feed(body, {"content-type": "text/xml; charset=utf-8"}, now=NOW)
    assert f.entries[0].title == "قصف على إدلب"


def test_utf16_feed():
    body = RSS_AR.format(enc="utf-16").encode("utf-16")
    assert parse_feed(body, {}, now=NOW).entries[0].title == "قصف على إدلب"


def test_atom_and_future_dates_are_clamped():
    future = (NOW + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    atom = f"""<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>W</title>
    <entry><id>tag:w,1</id><title>Idlib talks</title><link href="http://127.0.0.1/x"/>
    <published>2026-11-28T08:00:00Z</published><summary>s</summary><content type="html">&lt;p&gt;full text&lt;/p&gt;</content>
    <author><name>Jane Roe</name></author></entry>
    <entry><id>tag:w,2</id><title>From the future</title><link href="http://127.0.0.1/y"/><updated>{future}</updated></entry>
    </feed>"""
    f = parse_feed(atom.encode(), {}, now=NOW)
    a, b = f.entries
    assert a.content == "<p>full text</p>" and a.authors == ("Jane Roe",)
    assert b.published_at == NOW and b.published_source == "clamped_future"


def test_json_feed():
    body = b'{"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": [{"id": "1", "url": "http://127.0.0.1/j", "title": "T", "content_text": "C", "date_published": "2026-11-28T10:00:00+02:00"}]}'
    [e] = parse_feed(body, {}, now=NOW).entries
    assert e.entry_key == "1" and e.published_at == datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("body", [b"", b"   ", b"<html><head><title>Home</title></head><body><p>Hi</p></body></html>"])
def test_not_a_feed(body):
    with pytest.raises(ValueError, match="not_a_feed"):
        parse_feed(body, {"content-type": "text/html"}, now=NOW)


def test_bozo_feed_keeps_its_entries():
    broken = RSS_AR.format(enc="utf-8").replace("</channel></rss>", "<item><title>x &bad; y</title></item>")
    f = parse_feed(broken.encode(), {}, now=NOW)
    assert len(f.entries) >= 2 and f.bozo_reason


def test_entry_without_guid_or_link_gets_a_stable_hash_key():
    rss = b"<rss version='2.0'><channel><item><title>T</title><pubDate>Fri, 27 Nov 2026 10:00:00 GMT</pubDate></item></channel></rss>"
    k1 = parse_feed(rss, {}, now=NOW).entries[0].entry_key
    k2 = parse_feed(rss, {}, now=NOW).entries[0].entry_key
    assert k1 == k2 and k1.startswith("sha256:")


def _feed(**kw):
    return Feed(feed_id=1, name="f", url="http://x", **kw)


def test_schedule_backoff_grows_and_is_capped():
    s = PollSettings(jitter_fraction=0)
    out = PollOutcome(feed_id=1, started_at=NOW, status="error", error_type="http_5xx")
    _, n1 = schedule_after(out, _feed(poll_interval_s=900, consecutive_failures=0), s)
    _, n3 = schedule_after(out, _feed(poll_interval_s=900, consecutive_failures=2), s)
    _, n30 = schedule_after(out, _feed(poll_interval_s=900, consecutive_failures=30), s)
    assert (n1 - NOW).total_seconds() == 900
    assert (n3 - NOW).total_seconds() == 3600
    assert (n30 - NOW).total_seconds() == s.max_backoff_s


def test_schedule_honours_retry_after_and_adapts():
    s = PollSettings(jitter_fraction=0)
    out = PollOutcome(feed_id=1, started_at=NOW, status="error", error_type="http_429", retry_after_s=7200)
    _, nxt = schedule_after(out, _feed(poll_interval_s=900), s)
    assert (nxt - NOW).total_seconds() == 7200
    all_new = PollOutcome(feed_id=1, started_at=NOW, status="ok", entries_seen=10, entries_new=10)
    assert schedule_after(all_new, _feed(poll_interval_s=900), s)[0] == 450
    none_new = PollOutcome(feed_id=1, started_at=NOW, status="ok", entries_seen=10, entries_new=0)
    assert schedule_after(none_new, _feed(poll_interval_s=900), s)[0] == 1125
    tiny = PollOutcome(feed_id=1, started_at=NOW, status="ok", entries_seen=10, entries_new=10)
    assert schedule_after(tiny, _feed(poll_interval_s=150), s)[0] == s.min_interval_s


# ---------------------------------------------------------------- hostile XML (issue 3)

_LOL = "".join(
    f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">\n' for i in range(1, 10)
)
BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY lol0 "lol">\n' + _LOL + "]>\n"
    '<rss version="2.0"><channel><title>&lol9;</title>'
    "<item><guid>bl-1</guid><title>a &lol9; b</title><description>&lol9;</description></item></channel></rss>"
).encode()


def _fields(f):
    return [v or "" for e in f.entries for v in (e.title, e.summary, e.content, e.link, e.entry_key)] + [f.title or ""]


@pytest.mark.timeout(20)
def test_billion_laughs_is_not_expanded():
    f = parse_feed(BILLION_LAUGHS, {}, now=NOW)
    assert f.entries and f.entries[0].entry_key == "bl-1"
    assert max(len(v) for v in _fields(f)) < 100  # 10^9 "lol"s if expanded
    assert "lollol" not in "".join(_fields(f))
    assert f.bozo_reason and "entity" in f.bozo_reason


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE rss [\n<!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>',
        "<!DOCTYPE rss [\n<!ENTITY xxe PUBLIC 'x' 'file:///etc/passwd'>\n]>",
        '<!DOCTYPE rss [\n<!ENTITY % p SYSTEM "file:///etc/passwd">\n%p;\n]>',
        '<!DOCTYPE rss SYSTEM "file:///etc/passwd">',
    ],
)
def test_external_entities_never_read_local_files(doctype):
    body = (
        f'<?xml version="1.0"?>\n{doctype}\n<rss version="2.0"><channel><title>t &xxe;</title>'
        "<item><guid>x1</guid><title>a &xxe; b</title><description>&xxe;</description></item></channel></rss>"
    ).encode()
    f = parse_feed(body, {}, now=NOW)
    text = "\n".join(_fields(f))
    assert "root:" not in text and "/bin/" not in text
    assert [e.entry_key for e in f.entries] == ["x1"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_quadratic_blowup_entity_is_removed(encoding):
    # one 50 kB entity used 20,000 times: 1 GB if expanded (feedparser's loose parser does)
    doc = (
        f'<?xml version="1.0" encoding="{encoding}"?>\n<!DOCTYPE rss [\n<!ENTITY a "{"A" * 50_000}">\n]>\n'
        '<rss version="2.0"><channel><title>t</title><item><guid>q1</guid><title>قصف</title>'
        f"<description>{'&a;' * 20_000}</description></item></channel></rss>"
    )
    f = parse_feed(doc.encode(encoding), {}, now=NOW)
    assert f.entries[0].title == "قصف"
    assert len(f.entries[0].summary or "") <= 60_000
    assert "AAAA" not in (f.entries[0].summary or "")


def test_tiny_literal_entities_still_work():
    doc = b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY nbsp "&#160;">\n]>\n<rss version="2.0"><channel><title>t</title><item><guid>n1</guid><title>a&nbsp;b</title></item></channel></rss>'
    assert parse_feed(doc, {}, now=NOW).entries[0].title == "a\xa0b"


@pytest.mark.timeout(20)
def test_whitespace_prolog_is_linear():
    # feedparser's DOCTYPE regexes are quadratic on long whitespace runs before the root
    body = b'<?xml version="1.0"?>\n' + b"\n" * 2_000_000 + b'<rss version="2.0"><channel><item><guid>w</guid><title>t</title></item></channel></rss>'
    assert [e.entry_key for e in parse_feed(body, {}, now=NOW).entries] == ["w"]
    junk = b'<?xml version="1.0"?>\n<!DOCTYPE rss [<!ENTITY a "b">' + b"\n x" * 100_000 + b']><rss version="2.0"/>'
    with pytest.raises(ValueError, match=r"parse_error: .* before the root element"):
        parse_feed(junk, {}, now=NOW)
    twice = b'<?xml version="1.0"?>\n<!DOCTYPE rss>\n<!DOCTYPE rss>\n<rss version="2.0"/>'
    with pytest.raises(ValueError, match="parse_error: more than one DOCTYPE"):
        parse_feed(twice, {}, now=NOW)


@pytest.mark.timeout(60)
def test_huge_feed_is_truncated_and_noted():
    items = "".join(f"<item><guid>g{i}</guid><title>t{i}</title></item>" for i in range(20_000))
    body = f'<rss version="2.0"><channel><title>big</title>{items}</channel></rss>'.encode()
    f = parse_feed(body, {}, now=NOW, max_entries=1000)
    assert len(f.entries) == 1000 and f.entries[0].entry_key == "g0"
    assert "truncated" in (f.bozo_reason or "") and "20000" in f.bozo_reason
    j = json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": [{"id": str(i)} for i in range(50)]})
    fj = parse_feed(j.encode(), {}, now=NOW, max_entries=10)
    assert len(fj.entries) == 10 and "truncated" in fj.bozo_reason


def test_overlong_keys_are_hashed_and_nul_is_dropped():
    guid = "خبر" * 1000  # 6 kB: beyond the btree limit of the unique index
    rss = f"<rss version='2.0'><channel><item><guid>{guid}</guid><title>a\u0000b</title></item></channel></rss>"
    body = rss.replace("\u0000", "&#0;").encode()
    [e] = parse_feed(body, {}, now=NOW).entries
    assert e.entry_key.startswith("sha256:") and len(e.entry_key) == 71
    jf = b'{"version": "https://jsonfeed.org/version/1.1", "items": [{"id": "n", "title": "x\\u0000y"}]}'
    assert parse_feed(jf, {}, now=NOW).entries[0].title == "xy"


def test_schedule_hard_404_backs_off_faster_and_jitter_respects_floors():
    s = PollSettings(jitter_fraction=0)
    e404 = PollOutcome(feed_id=1, started_at=NOW, status="error", error_type="http_4xx", http_status=404)
    e503 = PollOutcome(feed_id=1, started_at=NOW, status="error", error_type="http_5xx", http_status=503)
    f = _feed(poll_interval_s=900, consecutive_failures=2)
    assert (schedule_after(e404, f, s)[1] - NOW).total_seconds() == 900 * 16
    assert (schedule_after(e503, f, s)[1] - NOW).total_seconds() == 900 * 4
    j = PollSettings(jitter_fraction=0.5)
    ra = PollOutcome(feed_id=1, started_at=NOW, status="error", error_type="http_429", retry_after_s=7200)
    ttl = PollOutcome(feed_id=1, started_at=NOW, status="ok", entries_seen=1, entries_new=1, ttl_s=3600)
    for seed in range(50):
        rng = random.Random(seed)
        assert (schedule_after(ra, _feed(poll_interval_s=900), j, rng=rng)[1] - NOW).total_seconds() >= 7200
        assert (schedule_after(ttl, _feed(poll_interval_s=900), j, rng=rng)[1] - NOW).total_seconds() >= 3600
    nexts = {schedule_after(ttl, _feed(poll_interval_s=7200), j, rng=random.Random(i))[1] for i in range(10)}
    assert len(nexts) > 1  # jitter: feeds do not synchronise


def test_sy_update_period():
    rss = b"""<rss version="2.0" xmlns:sy="http://purl.org/rss/1.0/modules/syndication/"><channel><title>t</title>
    <sy:updatePeriod>hourly</sy:updatePeriod><sy:updateFrequency>2</sy:updateFrequency>
    <item><guid>1</guid><title>x</title></item></channel></rss>"""
    assert parse_feed(rss, {}, now=NOW).ttl_s == 1800


# ---------------------------------------------------------------- registry helpers (pure)


def test_slug_and_spec_from_url():
    assert slug_for_url("https://www.bbc.co.uk/arabic/index.xml") == "bbc-co-uk-arabic-index-xml"
    assert slug_for_url("https://feeds.example.org/") == "feeds-example-org"
    spec = feed_spec_from_url("https://x.org/rss", lang="ar", interval_s=600)
    assert (spec.name, spec.lang, spec.interval_s) == ("x-org-rss", "ar", 600)
    for bad in ("ftp://x.org/f", "not a url", "http:///nohost"):
        with pytest.raises(ConfigError):
            feed_spec_from_url(bad)
    with pytest.raises(ConfigError):
        feed_spec_from_url("https://x.org/rss", name="bad name!")


OPML = b"""<?xml version="1.0" encoding="utf-8"?>
<opml version="2.0"><head><title>subs</title></head><body>
  <outline text="Arabic">
    <outline text="BBC" type="rss" xmlUrl="https://feeds.bbci.co.uk/arabic/rss.xml" language="ar"/>
    <outline text="dup" type="rss" xmlUrl="https://feeds.bbci.co.uk/arabic/rss.xml"/>
  </outline>
  <outline text="UN" type="rss" xmlUrl="https://news.un.org/feed/subscribe/en/news/all/rss.xml"/>
  <outline text="folder without feed"/>
  <outline text="bad" xmlUrl="javascript:alert(1)"/>
</body></opml>"""


def test_parse_opml():
    specs = parse_opml(OPML)
    assert [(s.url, s.lang) for s in specs] == [
        ("https://feeds.bbci.co.uk/arabic/rss.xml", "ar"),
        ("https://news.un.org/feed/subscribe/en/news/all/rss.xml", None),
    ]
    assert specs[0].name == "feeds-bbci-co-uk-arabic-rss-xml"


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY x SYSTEM "file:///etc/passwd">]><opml><body><outline xmlUrl="http://a/&x;"/></body></opml>',
        BILLION_LAUGHS.replace(b"rss", b"opml"),
        b"<opml><body><outline",
        b"<rss/>",
    ],
)
def test_parse_opml_refuses_hostile_or_broken(data):
    with pytest.raises(ConfigError):
        parse_opml(data, "subs.opml")


def test_example_feeds_file_is_valid():
    from newsmon.config import CONFIG_DIR

    specs = load_feed_specs(CONFIG_DIR / "feeds.example.yml")
    assert len(specs) >= 8
    assert {s.lang for s in specs} == {"ar", "en"}
    assert all(s.url.startswith("https://") for s in specs)
