"""Plain dataclasses passed between pipeline stages (poll -> fetch -> extract -> dedup ->
topics -> quality -> load). No behaviour beyond small derived properties."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class FeedSpec:
    """A feed as declared in feeds.yml (or added on the command line)."""

    name: str
    url: str
    lang: str | None = None
    interval_s: int | None = None
    enabled: bool = True
    respect_robots: bool = True  # honour robots.txt for this feed's article pages


@dataclass(frozen=True)
class Feed:
    """A feed row with its conditional-GET state, as the poller needs it."""

    feed_id: int
    name: str
    url: str
    lang: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    poll_interval_s: int = 900
    consecutive_failures: int = 0


@dataclass(frozen=True)
class HttpResponse:
    """A completed fetch: the body is complete and within the size limit."""

    url: str  # the URL that was asked for
    final_url: str  # after redirects
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_ms: int
    permanent_redirect: bool = False

    @property
    def not_modified(self) -> bool:
        return self.status == 304


@dataclass(frozen=True)
class ParsedEntry:
    entry_key: str
    link: str | None
    title: str | None
    published_at: datetime | None
    published_source: str  # 'feed', 'feed_updated', 'first_seen', 'clamped_future'
    summary: str | None
    content: str | None
    authors: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    entry_hash: str = ""


@dataclass(frozen=True)
class ParsedFeed:
    entries: tuple[ParsedEntry, ...]
    title: str | None = None
    bozo_reason: str | None = None
    ttl_s: int | None = None


@dataclass
class PollOutcome:
    """What one poll of one feed did; one function turns it into scheduling state."""

    feed_id: int
    started_at: datetime
    status: str  # 'ok', 'not_modified', 'unchanged', 'error'
    duration_ms: int = 0
    http_status: int | None = None
    bytes: int = 0
    error_type: str | None = None
    error_detail: str | None = None
    transient: bool = True
    retry_after_s: float | None = None
    entries_seen: int = 0
    entries_new: int = 0
    bozo_reason: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    new_url: str | None = None
    ttl_s: int | None = None


@dataclass(frozen=True)
class QueuedEntry:
    """A feed entry claimed for processing."""

    entry_id: int
    feed_id: int
    link: str | None
    title: str | None
    summary: str | None
    content: str | None
    published_at: datetime | None
    authors: tuple[str, ...]
    tags: tuple[str, ...]
    feed_lang: str | None
    first_seen_at: datetime
    respect_robots: bool = True  # news.feeds.respect_robots (and fetch.respect_robots_txt)
    attempts: int = 1  # processing attempts including this one


@dataclass(frozen=True)
class TopicMatch:
    slug: str
    score: float
    terms: tuple[str, ...]


@dataclass
class Article:
    """One extracted article, ready for dedup, classification, validation and load."""

    entry_id: int
    feed_id: int
    url: str
    canonical_url: str
    url_key: str
    source_domain: str
    title: str | None
    summary: str | None
    body: str
    body_source: str  # 'page', 'feed', 'summary'
    lang: str | None
    authors: list[str]
    published_at: datetime | None
    date_source: str | None
    fetched_at: datetime | None
    content_hash: str
    norm_title: str = ""
    norm_body: str = ""
    fetch_error: str | None = None
    topics: list[TopicMatch] = field(default_factory=list)
    # near-duplicate signature (newsmon.dedup.Signature), computed by the dedup stage; not stored
    signature: object | None = field(default=None, repr=False, compare=False)
    # page metadata (issue 4); empty when the body came from the feed only
    sitename: str | None = None
    image: str | None = None
    categories: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    encoding: str | None = None

    @property
    def topic_slugs(self) -> list[str]:
        return [t.slug for t in self.topics] or ["unclassified"]


@dataclass(frozen=True)
class Rejected:
    """An article that failed row validation, with the expectations it failed."""

    article: Article
    failed: tuple[str, ...]
    reason: str


@dataclass
class PassSummary:
    """What one pass did, for people (CLI table) and scripts (--json)."""

    feeds_polled: int = 0
    feeds_failed: int = 0
    entries_seen: int = 0
    entries_new: int = 0
    entries_processed: int = 0
    articles_loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed: int = 0
    feed_fallbacks: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
