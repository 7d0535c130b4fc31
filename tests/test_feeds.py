from datetime import UTC, datetime, timedelta

import pytest
from newsmon.config import PollSettings
from newsmon.feeds import parse_feed, schedule_after
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
