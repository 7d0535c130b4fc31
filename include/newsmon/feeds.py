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
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
        unknown = set(item) - {"name", "url", "lang", "interval", "enabled"}
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
        specs.append(
            FeedSpec(name=name, url=url, lang=item.get("lang"), interval_s=interval, enabled=bool(item.get("enabled", True)))
        )
    return specs


def sync_feeds(conn: Connection, specs: Sequence[FeedSpec], settings: PollSettings) -> int:
    """Upsert feeds by name (the stable identity in config); returns how many rows changed."""
    n = 0
    for s in specs:
        interval = clamp(s.interval_s or settings.default_interval_s, settings.min_interval_s, settings.max_interval_s)
        res = conn.execute(
            sa.text(
                """
                INSERT INTO news.feeds (name, url, lang, enabled, poll_interval_s)
                VALUES (:name, :url, :lang, :enabled, :interval)
                ON CONFLICT (name) DO UPDATE SET
                    url = EXCLUDED.url, lang = EXCLUDED.lang, enabled = EXCLUDED.enabled,
                    poll_interval_s = EXCLUDED.poll_interval_s, updated_at = now()
                WHERE (news.feeds.url, news.feeds.lang, news.feeds.enabled, news.feeds.poll_interval_s)
                      IS DISTINCT FROM (EXCLUDED.url, EXCLUDED.lang, EXCLUDED.enabled, EXCLUDED.poll_interval_s)
                """
            ),
            {"name": s.name, "url": s.url, "lang": s.lang, "enabled": s.enabled, "interval": interval},
        )
        n += res.rowcount or 0
    return n


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
    s = str(value).strip()
    return s or None


def entry_hash(title: str | None, summary: str | None, content: str | None, link: str | None) -> str:
    """Fingerprint of an entry's editable fields: a change re-queues the entry."""
    h = hashlib.sha256()
    for part in (title, summary, content, link):
        h.update((part or "").encode("utf-8", "replace"))
        h.update(b"\x00")
    return h.hexdigest()


def entry_key(guid: str | None, link: str | None, title: str | None, date: datetime | None) -> str:
    """guid/id, else link, else a hash of title + date."""
    if guid:
        return guid[:2000]
    if link:
        return link[:2000]
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


def parse_feed(body: bytes, headers: dict[str, str] | None = None, *, now: datetime | None = None) -> ParsedFeed:
    """Parse feed bytes with feedparser, honouring the HTTP headers (declared charset).

    Raises ``ValueError('not_a_feed: ...')`` for bodies that are not feeds.
    """
    import feedparser

    now = now or datetime.now(UTC)
    if not body or not body.strip():
        raise ValueError("not_a_feed: empty body")
    if body.lstrip()[:1] in (b"{", b"["):
        return _parse_json_feed(body, now)
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    parsed = feedparser.parse(body, response_headers=hdrs, sanitize_html=False, resolve_relative_uris=False)
    version = parsed.get("version") or ""
    entries = parsed.get("entries") or []
    bozo = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if not entries and not version:
        reason = f" ({type(bozo).__name__}: {bozo})" if bozo else ""
        raise ValueError(f"not_a_feed: no RSS/Atom/RDF structure found{reason}")
    out: list[ParsedEntry] = []
    for e in entries:
        link = _text(e.get("link"))
        title = _text(e.get("title"))
        summary = _text(e.get("summary"))
        content = None
        if e.get("content"):
            content = _text(max((c.get("value") or "" for c in e["content"]), key=len))
        if content and summary and content == summary:
            content = None
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
        bozo_reason=f"{type(bozo).__name__}: {bozo}"[:500] if bozo else None,
        ttl_s=ttl,
    )


def _parse_json_feed(body: bytes, now: datetime) -> ParsedFeed:
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not_a_feed: invalid JSON ({exc})") from exc
    if not isinstance(data, dict) or "jsonfeed.org" not in str(data.get("version", "")):
        raise ValueError("not_a_feed: JSON without a jsonfeed.org version")
    out = []
    for item in data.get("items") or []:
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
    return ParsedFeed(entries=tuple(out), title=_text(data.get("title")))


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
    of consecutive failures, at least Retry-After, capped at ``max_backoff_s``.
    """
    rng = rng or random.Random()
    lo, hi = settings.min_interval_s, settings.max_interval_s
    interval = feed.poll_interval_s
    if outcome.status == "error":
        failures = feed.consecutive_failures + 1
        delay = min(settings.max_backoff_s, interval * (2 ** min(failures - 1, 16)))
        if outcome.retry_after_s:
            delay = max(delay, min(outcome.retry_after_s, settings.max_backoff_s))
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
        interval = clamp(interval, lo, hi)
        delay = interval
    jitter = 1 + rng.uniform(-settings.jitter_fraction, settings.jitter_fraction)
    return interval, outcome.started_at + timedelta(seconds=max(1.0, delay * jitter))


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
                url = COALESCE(:new_url, url),
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


async def poll_feed(client: HttpClient, feed: Feed) -> tuple[PollOutcome, ParsedFeed | None]:
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
        parsed = await asyncio.to_thread(parse_feed, resp.body, resp.headers)
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


async def poll_feeds(
    engine: Engine, settings: Settings, feeds: Sequence[Feed], *, client: HttpClient | None = None
) -> list[PollOutcome]:
    """Poll ``feeds`` concurrently; each feed's entries and state commit in their own transaction."""

    async def one(c: HttpClient, feed: Feed) -> PollOutcome:
        outcome, parsed = await poll_feed(c, feed)
        await asyncio.to_thread(_commit_poll, engine, feed, outcome, parsed, settings.poll)
        log.info(
            "feed polled feed=%s status=%s http=%s entries=%d new=%d error=%s",
            feed.name, outcome.status, outcome.http_status, outcome.entries_seen, outcome.entries_new,
            outcome.error_type or "-",
        )  # fmt: skip
        return outcome

    if client is not None:
        return list(await asyncio.gather(*(one(client, f) for f in feeds)))
    async with HttpClient(settings.fetch) as c:
        return list(await asyncio.gather(*(one(c, f) for f in feeds)))


def _commit_poll(engine: Engine, feed: Feed, outcome: PollOutcome, parsed: ParsedFeed | None, settings: PollSettings) -> None:
    with engine.begin() as conn:
        if parsed is not None:
            outcome.entries_new = store_entries(conn, feed.feed_id, parsed.entries, outcome.started_at)
        record_poll(conn, feed, outcome, settings)
