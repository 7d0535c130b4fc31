"""Poll stage: the feed registry, parsing feeds, storing entries, and scheduling.

Parsing is pure (bytes + headers in, ``ParsedFeed`` out). "Which feeds are due" is
coded once (``claim_due_feeds``) and one function (``schedule_after``) turns a poll
outcome into the feed's next state.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsmon.config import PollSettings, Settings, line_of, load_yaml_file
from newsmon.errors import ConfigError, FetchError
from newsmon.fetch import HttpClient
from newsmon.models import Feed, FeedSpec, ParsedEntry, ParsedFeed, PollOutcome

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::-([^}]*))?\}")
FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/feed+json, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.5"


# ---------------------------------------------------------------- registry file


def _expand_env(value: str, where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        val = os.environ.get(m[1], m[2])
        if val is None:
            raise ConfigError(f"{where}: environment variable {m[1]} is not set")
        return val

    return _ENV_REF.sub(sub, value)


def load_feed_specs(path: Path) -> list[FeedSpec]:
    """Read feeds.yml. URLs may use ``${VAR}`` / ``${VAR:-default}`` (the demo serves
    its corpus on a port chosen at run time)."""
    data, lines = load_yaml_file(path)
    items = (data or {}).get("feeds") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f"{path}, line 1: expected a top-level 'feeds:' list")
    specs: list[FeedSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{path}, line {line_of(lines, ('feeds', i))}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: each feed is a mapping with at least name and url")
        unknown = set(item) - {"name", "url", "lang", "interval", "enabled", "respect_robots"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        name, url = item.get("name"), item.get("url")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: 'name' must be a short identifier (letters, digits, . _ -)")
        if name in seen:
            raise ConfigError(f"{where}: duplicate feed name {name!r}")
        seen.add(name)
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"{where}: feed {name!r} needs a 'url'")
        url = _expand_env(url.strip(), where)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: feed {name!r} url must be http(s), got {url!r}")
        interval = item.get("interval")
        if interval is not None and (not isinstance(interval, int) or interval <= 0):
            raise ConfigError(f"{where}: feed {name!r} 'interval' must be a positive number of seconds")
        robots = item.get("respect_robots", True)
        if not isinstance(robots, bool):
            raise ConfigError(f"{where}: feed {name!r} 'respect_robots' must be true or false")
        specs.append(
            FeedSpec(
                name=name, url=url, lang=item.get("lang"), interval_s=interval, enabled=bool(item.get("enabled", True)),
                respect_robots=robots,
            )
        )  # fmt: skip
    return specs


def sync_feeds(conn: Connection, specs: Sequence[FeedSpec], settings: PollSettings) -> int:
    """Upsert feeds by name (the stable identity in config); returns how many rows changed.

    Safe to run every pass: the adapted interval, a URL moved by a permanent redirect and
    an operator's ``feeds disable`` survive unless the configured interval / URL changed
    (``base_interval_s``, ``config_url``, ``disabled_reason``: migration 0002).
    """
    n = 0
    for s in specs:
        interval = clamp(s.interval_s or settings.default_interval_s, settings.min_interval_s, settings.max_interval_s)
        res = conn.execute(
            sa.text(
                """
                INSERT INTO news.feeds AS f
                    (name, url, config_url, lang, enabled, poll_interval_s, base_interval_s, respect_robots)
                VALUES (:name, :url, :url, :lang, :enabled, :interval, :interval, :robots)
                ON CONFLICT (name) DO UPDATE SET
                    url = CASE WHEN f.config_url IS DISTINCT FROM EXCLUDED.config_url THEN EXCLUDED.url ELSE f.url END,
                    config_url = EXCLUDED.config_url,
                    lang = EXCLUDED.lang,
                    enabled = CASE WHEN f.disabled_reason IS NOT NULL THEN f.enabled ELSE EXCLUDED.enabled END,
                    poll_interval_s = CASE WHEN f.base_interval_s IS DISTINCT FROM EXCLUDED.base_interval_s
                                           THEN EXCLUDED.poll_interval_s ELSE f.poll_interval_s END,
                    base_interval_s = EXCLUDED.base_interval_s,
                    respect_robots = EXCLUDED.respect_robots,
                    updated_at = now()
                WHERE (f.config_url, f.lang, f.base_interval_s, f.respect_robots)
                      IS DISTINCT FROM (EXCLUDED.config_url, EXCLUDED.lang, EXCLUDED.base_interval_s,
                                        EXCLUDED.respect_robots)
                   OR (f.disabled_reason IS NULL AND f.enabled IS DISTINCT FROM EXCLUDED.enabled)
                """
            ),
            {
                "name": s.name,
                "url": s.url,
                "lang": s.lang,
                "enabled": s.enabled,
                "interval": interval,
                "robots": s.respect_robots,
            },
        )
        n += res.rowcount or 0
    return n


# ---------------------------------------------------------------- registry commands


_SLUG_JUNK = re.compile(r"[^a-z0-9]+")


def slug_for_url(url: str) -> str:
    """A feed name from host + path: ``https://www.bbc.co.uk/arabic/index.xml`` -> ``bbc-co-uk-arabic-index-xml``."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().removeprefix("www.")
    slug = _SLUG_JUNK.sub("-", f"{host}{parts.path}".lower()).strip("-")
    return slug[:80].rstrip("-") or "feed"


def feed_spec_from_url(
    url: str, *, name: str | None = None, lang: str | None = None, interval_s: int | None = None
) -> FeedSpec:
    """Validate a feed given on the command line (same rules as feeds.yml)."""
    url = (url or "").strip()
    if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
        raise ConfigError(f"feed url must be an http(s) URL with a host, got {url!r}")
    name = name or slug_for_url(url)
    if not _NAME.match(name):
        raise ConfigError(f"feed name {name!r} must be a short identifier (letters, digits, . _ -)")
    if interval_s is not None and interval_s <= 0:
        raise ConfigError(f"feed {name!r}: interval must be a positive number of seconds")
    return FeedSpec(name=name, url=url, lang=lang, interval_s=interval_s)


def add_feed(conn: Connection, spec: FeedSpec, settings: PollSettings, *, unique_name: bool = False) -> tuple[int, bool]:
    """Add one feed; returns (feed_id, created).

    Adding a URL that is already registered returns that feed (idempotent). A name taken
    by another URL is an error, unless ``unique_name`` asks for ``-2``, ``-3``... (OPML).
    """
    existing = conn.execute(
        sa.text("SELECT feed_id FROM news.feeds WHERE url = :u OR config_url = :u ORDER BY feed_id LIMIT 1"),
        {"u": spec.url},
    ).scalar()
    if existing is not None:
        return int(existing), False
    interval = clamp(spec.interval_s or settings.default_interval_s, settings.min_interval_s, settings.max_interval_s)
    name = spec.name
    for n in range(2, 1000):
        feed_id = conn.execute(
            sa.text(
                """
                INSERT INTO news.feeds (name, url, config_url, lang, enabled, poll_interval_s, base_interval_s)
                VALUES (:name, :url, :url, :lang, :enabled, :interval, :interval)
                ON CONFLICT DO NOTHING
                RETURNING feed_id
                """
            ),
            {"name": name, "url": spec.url, "lang": spec.lang, "enabled": spec.enabled, "interval": interval},
        ).scalar()
        if feed_id is not None:
            return int(feed_id), True
        if not unique_name:
            raise ConfigError(f"a feed named {name!r} already exists with another URL; choose another with --name")
        name = f"{spec.name[:70]}-{n}"
    raise ConfigError(f"no free name for feed {spec.url!r}")


def parse_opml(data: bytes, source: str = "OPML") -> list[FeedSpec]:
    """Feeds of an OPML subscription list: every ``outline`` with an ``xmlUrl``, at any depth.

    Parsed with defusedxml: a file with entity declarations or external references is
    refused, not expanded.
    """
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        root = DET.fromstring(data)
    except DefusedXmlException as exc:
        raise ConfigError(f"{source}: refused ({type(exc).__name__}: entity declarations are not allowed)") from exc
    except Exception as exc:  # xml.etree.ElementTree.ParseError and friends
        raise ConfigError(f"{source}: not valid XML ({exc})") from exc
    if root.tag.lower() != "opml":
        raise ConfigError(f"{source}: root element is <{root.tag}>, expected <opml>")
    specs: list[FeedSpec] = []
    seen: set[str] = set()
    for o in root.iter("outline"):
        url = (o.get("xmlUrl") or o.get("xmlurl") or "").strip()
        if not url or url in seen:
            continue
        if not url.startswith(("http://", "https://")):
            log.warning("%s: skipping outline %r: not an http(s) URL", source, url)
            continue
        seen.add(url)
        lang = (o.get("language") or "").strip().lower()[:2] or None
        specs.append(FeedSpec(name=slug_for_url(url), url=url, lang=lang))
    return specs


def import_opml(conn: Connection, data: bytes, settings: PollSettings, source: str = "OPML") -> tuple[int, int]:
    """Add every feed of an OPML file; returns (added, already registered)."""
    added = known = 0
    for spec in parse_opml(data, source):
        _, created = add_feed(conn, spec, settings, unique_name=True)
        added += created
        known += not created
    return added, known


def set_feed_enabled(conn: Connection, name: str, enabled: bool, *, reason: str | None = None) -> None:
    """Switch a feed off (an operator decision that feeds.yml will not override) or on.

    Enabling makes a disabled feed due now; backoff state resets on its next success.
    """
    row = conn.execute(
        sa.text(
            """
            UPDATE news.feeds SET
                enabled = :enabled,
                disabled_reason = CASE WHEN :enabled THEN NULL ELSE :reason END,
                next_poll_at = CASE WHEN :enabled AND NOT enabled THEN now() ELSE next_poll_at END,
                updated_at = now()
            WHERE name = :name
            RETURNING feed_id
            """
        ),
        {"name": name, "enabled": enabled, "reason": reason or "disabled by operator"},
    ).scalar()
    if row is None:
        raise ConfigError(f"no feed named {name!r} (see `newsmon feeds list`)")


def feed_health(conn: Connection) -> list[dict[str, Any]]:
    """One row per feed: scheduling state and recent yield (`feeds list`)."""
    return [
        dict(r)
        for r in conn.execute(
            sa.text(
                """
                SELECT f.feed_id, f.name, f.url, f.lang, f.enabled, f.disabled_reason, f.last_polled_at,
                       f.last_success_at, f.last_status, f.last_error, f.consecutive_failures,
                       f.poll_interval_s, f.next_poll_at,
                       (SELECT count(*) FROM news.feed_entries e
                         WHERE e.feed_id = f.feed_id AND e.first_seen_at > now() - interval '24 hours') AS new_24h
                FROM news.feeds f ORDER BY f.name
                """
            )
        ).mappings()
    ]


def clamp(value: float, lo: float, hi: float) -> int:
    return int(max(lo, min(hi, value)))


# ---------------------------------------------------------------- parsing (pure)


def _struct_to_dt(st: Any) -> datetime | None:
    if not st:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(st), tz=UTC)
    except (OverflowError, ValueError, TypeError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL
    return s or None


def entry_hash(title: str | None, summary: str | None, content: str | None, link: str | None) -> str:
    """Fingerprint of an entry's editable fields: a change re-queues the entry."""
    h = hashlib.sha256()
    for part in (title, summary, content, link):
        h.update((part or "").encode("utf-8", "replace"))
        h.update(b"\x00")
    return h.hexdigest()


def entry_key(guid: str | None, link: str | None, title: str | None, date: datetime | None) -> str:
    """guid/id, else link, else a hash of title + date.

    A guid or link over 1000 bytes is replaced by its hash: the unique index on
    (feed_id, entry_key) refuses keys beyond ~2.7 kB, and 2000 Arabic chars are 4 kB.
    """
    for value in (guid, link):
        if value:
            if len(value.encode("utf-8", "replace")) <= 1000:
                return value
            return "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()
    raw = f"{title or ''}|{date.isoformat() if date else ''}"
    return "sha256:" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()


def _sy_period_s(feed: Any) -> int | None:
    period = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400, "monthly": 30 * 86400, "yearly": 365 * 86400}
    p = str(feed.get("sy_updateperiod", "") or "").strip().lower()
    if p not in period:
        return None
    try:
        freq = max(1, int(str(feed.get("sy_updatefrequency", "1")).strip()))
    except ValueError:
        freq = 1
    return period[p] // freq


# Hostile XML. feedparser already refuses external entities (expat with external
# general entities off), but it keeps every entity declared with a literal value and its
# loose parser expands them without limit (a 110 kB feed declaring one 50 kB entity used
# 20,000 times took 24 s and 3 GB), and its DOCTYPE regexes are quadratic on long runs of
# whitespace before the root element. So the prolog is screened on the UTF-8 text
# feedparser will see (whatever the original encoding): only tiny literal entities
# (``nbsp "&#160;"``) survive, runs of whitespace are collapsed, oversized prologs refused.
_ROOT_START = re.compile(rb"<\w")
_ENTITY_DECL = re.compile(rb"""<!ENTITY(?:[^>"']|"[^"]*"|'[^']*')*>?""")
_SAFE_ENTITY = re.compile(rb'<!ENTITY\s+\w+\s+"(?:&#x?[0-9A-Fa-f]{1,6};|[^&"%<>]{0,16})"\s*>$')
_LONG_WS = re.compile(rb"\s{16,}")
MAX_PROLOG_BYTES = 64 * 1024


def defuse_xml(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str], str | None]:
    """Return (body, headers, note) safe to hand to feedparser.

    Unchanged input comes back as is; a screened document comes back as UTF-8 with a
    matching content type and a note saying what was removed. Raises
    ``ValueError('parse_error: ...')`` for prologs that cannot be made safe.
    """
    from feedparser.encodings import convert_to_utf8

    # No byte-level shortcut: in UTF-16/32, EBCDIC or UTF-7 "<!ENTITY" is not those bytes.

    data = convert_to_utf8(dict(headers), body, {})
    m = _ROOT_START.search(data)
    head_end = m.start() if m else 0
    head = data[:head_end]
    if b"<!ENTITY" not in head and head.count(b"<!DOCTYPE") <= 1 and not _LONG_WS.search(head):
        return body, headers, None
    head = _LONG_WS.sub(b"\n", head)
    if len(head) > MAX_PROLOG_BYTES:
        raise ValueError(f"parse_error: {len(head)} bytes before the root element (limit {MAX_PROLOG_BYTES})")
    if head.count(b"<!DOCTYPE") > 1:
        raise ValueError("parse_error: more than one DOCTYPE declaration")
    removed = 0

    def screen(dm: re.Match[bytes]) -> bytes:
        nonlocal removed
        if _SAFE_ENTITY.match(dm[0]):
            return dm[0]
        removed += 1
        return b""

    head = _ENTITY_DECL.sub(screen, head)
    note = f"defused: removed {removed} entity declaration(s)" if removed else "defused: collapsed whitespace in the prolog"
    return head + data[head_end:], {**headers, "content-type": "application/xml; charset=utf-8"}, note


def parse_feed(
    body: bytes, headers: dict[str, str] | None = None, *, now: datetime | None = None, max_entries: int | None = None
) -> ParsedFeed:
    """Parse feed bytes with feedparser, honouring the HTTP headers (declared charset).

    At most ``max_entries`` entries are kept (the first ones: feeds list newest first);
    a truncation is noted in ``bozo_reason``. Raises ``ValueError('not_a_feed: ...')``
    for bodies that are not feeds and ``ValueError('parse_error: ...')`` for hostile ones.
    """
    import feedparser

    now = now or datetime.now(UTC)
    if not body or not body.strip():
        raise ValueError("not_a_feed: empty body")
    if body.lstrip()[:1] in (b"{", b"["):
        return _parse_json_feed(body, now, max_entries)
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    body, hdrs, defused = defuse_xml(body, hdrs)
    parsed = feedparser.parse(body, response_headers=hdrs, sanitize_html=False, resolve_relative_uris=False)
    version = parsed.get("version") or ""
    entries = parsed.get("entries") or []
    bozo = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if not entries and not version:
        reason = f" ({type(bozo).__name__}: {bozo})" if bozo else ""
        raise ValueError(f"not_a_feed: no RSS/Atom/RDF structure found{reason}")
    notes = [defused] if defused else []
    if bozo:
        notes.append(f"{type(bozo).__name__}: {bozo}")
    if max_entries is not None and len(entries) > max_entries:
        notes.append(f"truncated: kept the first {max_entries} of {len(entries)} entries")
        entries = entries[:max_entries]
    out: list[ParsedEntry] = []
    for e in entries:
        link = _text(e.get("link"))
        title = _text(e.get("title"))
        summary = _text(e.get("summary"))
        content = None
        if e.get("content"):
            content = _text(max((c.get("value") or "" for c in e["content"]), key=len))
        # feedparser fills summary from content:encoded when a feed has no description;
        # the full text is the content, so keep it there (body_source 'feed', not 'summary')
        published, source = _struct_to_dt(e.get("published_parsed")), "feed"
        if published is None:
            published, source = _struct_to_dt(e.get("updated_parsed")), "feed_updated"
        if published is None:
            source = "first_seen"
        elif published > now + timedelta(minutes=5):
            published, source = now, "clamped_future"
        authors = tuple(a.get("name") for a in (e.get("authors") or []) if a.get("name")) or (
            (str(e["author"]),) if e.get("author") else ()
        )
        tags = tuple(t.get("term") for t in (e.get("tags") or []) if t.get("term"))
        key = entry_key(_text(e.get("id")), link, title, published)
        out.append(
            ParsedEntry(
                entry_key=key,
                link=link,
                title=title,
                published_at=published,
                published_source=source,
                summary=summary,
                content=content,
                authors=authors,
                tags=tags,
                entry_hash=entry_hash(title, summary, content, link),
            )
        )
    feed = parsed.get("feed") or {}
    ttl = None
    if str(feed.get("ttl", "")).strip().isdigit():
        ttl = int(str(feed["ttl"]).strip()) * 60
    ttl = ttl or _sy_period_s(feed)
    return ParsedFeed(
        entries=tuple(out),
        title=_text(feed.get("title")),
        bozo_reason="; ".join(notes)[:500] or None,
        ttl_s=ttl,
    )


def _parse_json_feed(body: bytes, now: datetime, max_entries: int | None = None) -> ParsedFeed:
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not_a_feed: invalid JSON ({exc})") from exc
    if not isinstance(data, dict) or "jsonfeed.org" not in str(data.get("version", "")):
        raise ValueError("not_a_feed: JSON without a jsonfeed.org version")
    items = data.get("items") or []
    if not isinstance(items, list):
        raise ValueError("parse_error: JSON Feed 'items' is not a list")
    note = None
    if max_entries is not None and len(items) > max_entries:
        note = f"truncated: kept the first {max_entries} of {len(items)} entries"
        items = items[:max_entries]
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        link = _text(item.get("url") or item.get("external_url"))
        title = _text(item.get("title"))
        summary = _text(item.get("summary"))
        content = _text(item.get("content_html") or item.get("content_text"))
        published, source = _iso(item.get("date_published")), "feed"
        if published is None:
            published, source = _iso(item.get("date_modified")), "feed_updated"
        if published is None:
            source = "first_seen"
        elif published > now + timedelta(minutes=5):
            published, source = now, "clamped_future"
        authors = tuple(a.get("name") for a in (item.get("authors") or []) if isinstance(a, dict) and a.get("name"))
        out.append(
            ParsedEntry(
                entry_key=entry_key(_text(item.get("id")), link, title, published),
                link=link,
                title=title,
                published_at=published,
                published_source=source,
                summary=summary,
                content=content,
                authors=authors,
                tags=tuple(str(t) for t in item.get("tags") or []),
                entry_hash=entry_hash(title, summary, content, link),
            )
        )
    return ParsedFeed(entries=tuple(out), title=_text(data.get("title")), bozo_reason=note)


def _iso(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# ---------------------------------------------------------------- scheduling (pure)


def schedule_after(outcome: PollOutcome, feed: Feed, settings: PollSettings, *, rng: random.Random | None = None) -> tuple[int, datetime]:
    """Next (interval, next_poll_at) for a feed after a poll.

    Success: adapt the interval (all new -> shorter, nothing new -> longer), honour the
    feed's ttl/sy:updatePeriod within bounds. Failure: exponential backoff on the number
    of consecutive failures (faster for a hard 404/410), at least Retry-After, capped at
    ``max_backoff_s``: a feed is never given up on. Jitter (so feeds do not synchronise)
    never brings the next poll before Retry-After or the feed's ttl.
    """
    rng = rng or random.Random()
    lo, hi = settings.min_interval_s, settings.max_interval_s
    interval = feed.poll_interval_s
    floor = 0.0
    if outcome.status == "error":
        failures = feed.consecutive_failures + 1
        base = 4 if outcome.http_status in (404, 410) else 2
        delay = min(settings.max_backoff_s, interval * (base ** min(failures - 1, 16)))
        if outcome.retry_after_s:
            floor = min(outcome.retry_after_s, settings.max_backoff_s)
            delay = max(delay, floor)
    else:
        if outcome.status == "ok" and outcome.entries_seen:
            new_ratio = outcome.entries_new / outcome.entries_seen
            if new_ratio >= 0.999:
                interval = interval // 2
            elif new_ratio < 0.2:
                interval = int(interval * 1.25)
        elif outcome.status in ("not_modified", "unchanged"):
            interval = int(interval * 1.25)
        if outcome.ttl_s:
            interval = max(interval, outcome.ttl_s)
            floor = min(outcome.ttl_s, hi)
        interval = clamp(interval, lo, hi)
        delay = interval
    jitter = 1 + rng.uniform(-settings.jitter_fraction, settings.jitter_fraction)
    return interval, outcome.started_at + timedelta(seconds=max(1.0, floor, delay * jitter))


# ---------------------------------------------------------------- database I/O


def claim_due_feeds(
    conn: Connection,
    *,
    limit: int,
    only_due: bool = True,
    names: Iterable[str] | None = None,
    lease_s: int = 600,
    feed_ids: Iterable[int] | None = None,
) -> list[Feed]:
    """Take up to ``limit`` enabled feeds that are due, skipping rows another worker holds.

    Claiming pushes ``next_poll_at`` forward by a lease so a concurrent pass cannot take
    the same feed; the poll result then sets the real next time.
    """
    names = list(names or [])
    rows = conn.execute(
        sa.text(
            """
            WITH due AS (
                SELECT feed_id FROM news.feeds
                WHERE enabled
                  AND (NOT :only_due OR next_poll_at <= now())
                  AND (cardinality(CAST(:names AS text[])) = 0 OR name = ANY(CAST(:names AS text[])))
                  AND (cardinality(CAST(:feed_ids AS bigint[])) = 0 OR feed_id = ANY(CAST(:feed_ids AS bigint[])))
                ORDER BY next_poll_at
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            )
            UPDATE news.feeds f SET next_poll_at = now() + make_interval(secs => :lease)
            FROM due WHERE f.feed_id = due.feed_id
            RETURNING f.feed_id, f.name, f.url, f.lang, f.etag, f.last_modified, f.body_hash,
                      f.poll_interval_s, f.consecutive_failures
            """
        ),
        {"only_due": only_due, "names": names, "limit": limit, "lease": lease_s, "feed_ids": list(feed_ids or [])},
    ).mappings()
    return [Feed(**dict(r)) for r in rows]


def store_entries(conn: Connection, feed_id: int, entries: Sequence[ParsedEntry], now: datetime) -> int:
    """Insert new entries, refresh seen ones, re-queue edited ones. Returns the count of new entries."""
    if not entries:
        return 0
    # One entry key may appear twice in a broken feed: keep the first.
    unique: dict[str, ParsedEntry] = {}
    for e in entries:
        unique.setdefault(e.entry_key, e)
    rows = [
        {
            "feed_id": feed_id,
            "entry_key": e.entry_key,
            "link": e.link,
            "title": e.title,
            "published_at": (e.published_at or now).isoformat(),
            "published_source": e.published_source,
            "summary": e.summary,
            "content": e.content,
            "authors": list(e.authors),
            "tags": list(e.tags),
            "entry_hash": e.entry_hash,
        }
        for e in unique.values()
    ]
    # One statement for the whole feed (jsonb_to_recordset), so RETURNING tells new from seen.
    result = conn.execute(
        sa.text(
            """
            INSERT INTO news.feed_entries AS fe
                (feed_id, entry_key, link, title, published_at, published_source, summary, content,
                 authors, tags, entry_hash, first_seen_at, last_seen_at)
            SELECT x.feed_id, x.entry_key, x.link, x.title, x.published_at, x.published_source, x.summary,
                   x.content, x.authors, x.tags, x.entry_hash, :now, :now
            FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(
                feed_id bigint, entry_key text, link text, title text, published_at timestamptz,
                published_source text, summary text, content text, authors text[], tags text[], entry_hash text)
            ON CONFLICT (feed_id, entry_key) DO UPDATE SET
                last_seen_at = EXCLUDED.last_seen_at,
                link = EXCLUDED.link, title = EXCLUDED.title, summary = EXCLUDED.summary,
                content = EXCLUDED.content, authors = EXCLUDED.authors, tags = EXCLUDED.tags,
                entry_hash = EXCLUDED.entry_hash,
                status = CASE WHEN fe.entry_hash <> EXCLUDED.entry_hash AND fe.status <> 'processing'
                              THEN 'new' ELSE fe.status END,
                attempts = CASE WHEN fe.entry_hash <> EXCLUDED.entry_hash THEN 0 ELSE fe.attempts END,
                claimed_until = CASE WHEN fe.entry_hash <> EXCLUDED.entry_hash AND fe.status <> 'processing'
                                     THEN NULL ELSE fe.claimed_until END
            RETURNING (xmax = 0) AS inserted
            """
        ),
        {"rows": json.dumps(rows, ensure_ascii=False), "now": now},
    )
    return sum(1 for r in result if r.inserted)


def record_poll(conn: Connection, feed: Feed, outcome: PollOutcome, settings: PollSettings) -> None:
    """Store the poll history row and advance the feed's scheduling state, atomically."""
    interval, next_at = schedule_after(outcome, feed, settings)
    ok = outcome.status != "error"
    conn.execute(
        sa.text(
            """
            INSERT INTO news.feed_polls (feed_id, started_at, duration_ms, http_status, bytes, error_type,
                                         error_detail, entries_seen, entries_new, bozo_reason)
            VALUES (:feed_id, :started_at, :duration_ms, :http_status, :bytes, :error_type,
                    :error_detail, :entries_seen, :entries_new, :bozo_reason)
            """
        ),
        {
            "feed_id": feed.feed_id,
            "started_at": outcome.started_at,
            "duration_ms": outcome.duration_ms,
            "http_status": outcome.http_status,
            "bytes": outcome.bytes,
            "error_type": outcome.error_type,
            "error_detail": (outcome.error_detail or "")[:2000] or None,
            "entries_seen": outcome.entries_seen,
            "entries_new": outcome.entries_new,
            "bozo_reason": outcome.bozo_reason,
        },
    )
    conn.execute(
        sa.text(
            """
            UPDATE news.feeds SET
                last_polled_at = :started_at,
                last_success_at = CASE WHEN :ok THEN :started_at ELSE last_success_at END,
                last_status = :status,
                last_error = CASE WHEN :ok THEN NULL ELSE :error END,
                consecutive_failures = CASE WHEN :ok THEN 0 ELSE consecutive_failures + 1 END,
                poll_interval_s = :interval,
                next_poll_at = :next_at,
                etag = COALESCE(:etag, etag),
                last_modified = COALESCE(:last_modified, last_modified),
                body_hash = COALESCE(:body_hash, body_hash),
                -- a permanent redirect moves the feed, unless another feed already has that URL
                url = CASE WHEN CAST(:new_url AS text) IS NOT NULL AND NOT EXISTS (
                               SELECT 1 FROM news.feeds o WHERE o.url = :new_url AND o.feed_id <> :feed_id)
                           THEN :new_url ELSE url END,
                updated_at = now()
            WHERE feed_id = :feed_id
            """
        ),
        {
            "feed_id": feed.feed_id,
            "started_at": outcome.started_at,
            "ok": ok,
            "status": outcome.error_type if not ok else outcome.status,
            "error": f"{outcome.error_type}: {outcome.error_detail}"[:2000] if not ok else None,
            "interval": interval,
            "next_at": next_at,
            "etag": outcome.etag,
            "last_modified": outcome.last_modified,
            "body_hash": outcome.body_hash,
            "new_url": outcome.new_url,
        },
    )


async def poll_feed(
    client: HttpClient, feed: Feed, *, max_entries: int | None = None
) -> tuple[PollOutcome, ParsedFeed | None]:
    """Fetch and parse one feed. Never raises for feed problems: they become the outcome."""
    started = datetime.now(UTC)
    outcome = PollOutcome(feed_id=feed.feed_id, started_at=started, status="ok")
    headers = {}
    if feed.etag:
        headers["If-None-Match"] = feed.etag
    if feed.last_modified:
        headers["If-Modified-Since"] = feed.last_modified
    try:
        resp = await client.get(feed.url, headers=headers, accept=FEED_ACCEPT)
    except FetchError as exc:
        outcome.status, outcome.error_type, outcome.error_detail = "error", exc.kind, exc.detail
        outcome.http_status, outcome.transient, outcome.retry_after_s = exc.status, exc.transient, exc.retry_after_s
        outcome.duration_ms = _ms_since(started)
        return outcome, None
    outcome.http_status, outcome.bytes = resp.status, len(resp.body)
    outcome.duration_ms = resp.elapsed_ms
    outcome.etag = resp.headers.get("etag")
    outcome.last_modified = resp.headers.get("last-modified")
    if resp.permanent_redirect and resp.final_url != feed.url:
        outcome.new_url = resp.final_url
    if resp.not_modified:
        outcome.status = "not_modified"
        return outcome, None
    body_hash = hashlib.sha256(resp.body).hexdigest()
    outcome.body_hash = body_hash
    if feed.body_hash == body_hash:  # ETags lie: an identical body is not parsed again
        outcome.status = "unchanged"
        return outcome, None
    try:
        parsed = await asyncio.to_thread(parse_feed, resp.body, resp.headers, max_entries=max_entries)
    except ValueError as exc:
        kind, _, detail = str(exc).partition(": ")
        outcome.status = "error"
        outcome.error_type = kind if kind in ("not_a_feed", "parse_error") else "parse_error"
        outcome.error_detail = detail or str(exc)
        outcome.transient = False
        outcome.body_hash = None  # parse again next time
        return outcome, None
    except Exception as exc:  # feedparser on hostile input: never let one feed crash the pass
        outcome.status, outcome.error_type, outcome.error_detail = "error", "parse_error", f"{type(exc).__name__}: {exc}"
        outcome.body_hash = None
        return outcome, None
    outcome.bozo_reason = parsed.bozo_reason
    outcome.ttl_s = parsed.ttl_s
    outcome.entries_seen = len(parsed.entries)
    return outcome, parsed


def _ms_since(t: datetime) -> int:
    return int((datetime.now(UTC) - t).total_seconds() * 1000)


async def poll_and_record(client: HttpClient, engine: Engine, settings: Settings, feed: Feed) -> PollOutcome:
    """Poll one feed and commit its entries and state in one transaction.

    Whatever happens to the feed (even a bug or a row the database refuses) is recorded
    for that feed; it never raises, so the other feeds of a pass carry on.
    """
    try:
        outcome, parsed = await poll_feed(client, feed, max_entries=settings.poll.max_entries_per_feed)
    except Exception as exc:  # a bug, not a feed problem: record it against the feed
        log.exception("poll failed feed=%s", feed.name)
        outcome, parsed = _internal_error(feed, "internal_error", exc), None
    try:
        await asyncio.to_thread(_commit_poll, engine, feed, outcome, parsed, settings.poll)
    except Exception as exc:
        log.exception("storing the poll failed feed=%s", feed.name)
        outcome = _internal_error(feed, "store_error", exc, started=outcome.started_at)
        try:
            await asyncio.to_thread(_commit_poll, engine, feed, outcome, None, settings.poll)
        except Exception:  # database gone: the claim lease expires and the feed comes back
            log.exception("recording the failure failed feed=%s", feed.name)
    log.info(
        "feed polled feed=%s status=%s http=%s entries=%d new=%d error=%s",
        feed.name, outcome.status, outcome.http_status, outcome.entries_seen, outcome.entries_new,
        outcome.error_type or "-",
    )  # fmt: skip
    return outcome


async def poll_feeds(
    engine: Engine, settings: Settings, feeds: Sequence[Feed], *, client: HttpClient | None = None
) -> list[PollOutcome]:
    """Poll ``feeds`` concurrently; each feed's entries and state commit in their own transaction."""
    if client is not None:
        return list(await asyncio.gather(*(poll_and_record(client, engine, settings, f) for f in feeds)))
    async with HttpClient(settings.fetch) as c:
        return list(await asyncio.gather(*(poll_and_record(c, engine, settings, f) for f in feeds)))


async def poll_claimed(
    engine: Engine,
    settings: Settings,
    claim: Callable[[int], Sequence[Feed]],
    on_outcome: Callable[[PollOutcome], None],
) -> None:
    """Keep up to ``poll.shard_size`` feeds in flight, claiming more as they finish.

    ``claim(n)`` takes up to ``n`` more feeds (empty when none are left). Claiming again
    when half of the shard is done, instead of after the whole shard, means one slow or
    hanging feed does not hold up the next 250.
    """
    size = settings.poll.shard_size
    pending: set[asyncio.Task[PollOutcome]] = set()
    exhausted = False
    async with HttpClient(settings.fetch) as client:
        while True:
            if not exhausted and len(pending) <= size // 2:
                batch = await asyncio.to_thread(claim, size - len(pending))
                exhausted = not batch
                pending.update(asyncio.create_task(poll_and_record(client, engine, settings, f)) for f in batch)
            if not pending:
                return
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                on_outcome(task.result())


def _internal_error(feed: Feed, kind: str, exc: BaseException, *, started: datetime | None = None) -> PollOutcome:
    started = started or datetime.now(UTC)
    return PollOutcome(
        feed_id=feed.feed_id, started_at=started, status="error", error_type=kind,
        error_detail=f"{type(exc).__name__}: {exc}"[:2000], duration_ms=_ms_since(started),
    )  # fmt: skip


def _commit_poll(engine: Engine, feed: Feed, outcome: PollOutcome, parsed: ParsedFeed | None, settings: PollSettings) -> None:
    with engine.begin() as conn:
        if parsed is not None:
            outcome.entries_new = store_entries(conn, feed.feed_id, parsed.entries, outcome.started_at)
        record_poll(conn, feed, outcome, settings)
