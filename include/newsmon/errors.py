"""The exceptions newsmon raises.

    NewsmonError
    ├── ConfigError            bad configuration file or environment (fix and restart)
    ├── DatabaseError          warehouse unreachable or migration problem
    │   └── MigrationError
    └── FetchError             one HTTP fetch failed; ``kind`` says how (see ``FetchErrorKind``)
        ├── TransientFetchError   worth retrying later: timeouts, 5xx, 429, connect, dns
        └── PermanentFetchError   retrying soon will not help: 404/410, not a feed, refused URL

Errors carry the URL (and feed id where known) they concern. Transient vs permanent
decides retry and backoff; nothing else about the class hierarchy should matter.
"""

from __future__ import annotations

from typing import Literal

FetchErrorKind = Literal[
    "dns",
    "connect",
    "timeout",
    "tls",
    "http_4xx",
    "http_429",
    "http_5xx",
    "too_large",
    "too_many_redirects",
    "refused_url",
    "robots",
    "not_a_feed",
    "parse_error",
    "protocol",
]

TRANSIENT_KINDS: frozenset[str] = frozenset({"dns", "connect", "timeout", "tls", "http_429", "http_5xx", "protocol"})


class NewsmonError(Exception):
    """Base of every error newsmon raises on purpose."""


class ConfigError(NewsmonError):
    """The configuration (file or environment) is invalid; the message says where."""


class DatabaseError(NewsmonError):
    """The warehouse cannot be reached or is in an unexpected state."""


class MigrationError(DatabaseError):
    """A migration failed or an applied migration was edited."""


class FetchError(NewsmonError):
    """An HTTP fetch failed in a way we classify."""

    transient: bool = False

    def __init__(
        self,
        kind: FetchErrorKind,
        detail: str,
        *,
        url: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        feed_id: int | None = None,
    ) -> None:
        super().__init__(f"{kind}: {detail} ({url})")
        self.kind = kind
        self.detail = detail
        self.url = url
        self.status = status
        self.retry_after_s = retry_after_s
        self.feed_id = feed_id


class TransientFetchError(FetchError):
    transient = True


class PermanentFetchError(FetchError):
    transient = False


def fetch_error(kind: FetchErrorKind, detail: str, **kw: object) -> FetchError:
    """Build the right subclass for ``kind``."""
    cls = TransientFetchError if kind in TRANSIENT_KINDS else PermanentFetchError
    return cls(kind, detail, **kw)  # type: ignore[arg-type]
