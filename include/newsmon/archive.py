"""Raw page archive and fetch history (news.raw_pages, news.fetch_attempts).

Every fetched article page is kept zlib-compressed with its headers and fetch time so
``newsmon reprocess`` can extract it again after an extractor change without touching
the network; every attempt to fetch it (retries included) is logged. Both are written
by the caller's transaction, together with the batch they belong to.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsmon.errors import FetchError
from newsmon.models import HttpResponse, QueuedEntry
from newsmon.normalize import url_key

# Headers worth keeping for re-extraction and forensics; cookies are the site's
# session state, not ours to archive.
_DROP_HEADERS = frozenset({"set-cookie", "cookie"})


@dataclass
class PageFetch:
    """One entry's fetch: the response (if any), the last error and every attempt."""

    resp: HttpResponse | None = None
    error: FetchError | None = None
    history: list[dict[str, object]] = field(default_factory=list)


def compress_body(body: bytes) -> bytes:
    return zlib.compress(body, 6)


def decompress_body(blob: bytes, compression: str) -> bytes:
    if compression == "none":
        return bytes(blob)
    if compression == "zlib":
        return zlib.decompress(bytes(blob))
    raise ValueError(f"unknown compression {compression!r}")


_UPSERT_PAGE = sa.text(
    """
    INSERT INTO news.raw_pages (entry_id, url, final_url, url_key, status, headers, body, compression,
        body_bytes, body_sha256, encoding, fetched_at, extracted_at)
    VALUES (:entry_id, :url, :final_url, :url_key, :status, CAST(:headers AS jsonb), :body, 'zlib',
        :body_bytes, :body_sha256, :encoding, :fetched_at, :extracted_at)
    ON CONFLICT (entry_id) DO UPDATE SET
        url = EXCLUDED.url, final_url = EXCLUDED.final_url, url_key = EXCLUDED.url_key, status = EXCLUDED.status,
        headers = EXCLUDED.headers, body = EXCLUDED.body, compression = EXCLUDED.compression,
        body_bytes = EXCLUDED.body_bytes, body_sha256 = EXCLUDED.body_sha256, encoding = EXCLUDED.encoding,
        fetched_at = EXCLUDED.fetched_at, extracted_at = EXCLUDED.extracted_at
    """
)
_INSERT_ATTEMPT = sa.text(
    """
    INSERT INTO news.fetch_attempts (entry_id, url, attempt_no, attempted_at, status, error_type, detail, duration_ms)
    VALUES (:entry_id, :url, :attempt_no, :attempted_at, :status, :error_type, :detail, :duration_ms)
    ON CONFLICT (entry_id, attempt_no, attempted_at) DO NOTHING
    """
)


def page_row(entry_id: int, resp: HttpResponse, *, encoding: str | None, fetched_at: datetime) -> dict[str, Any]:
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_HEADERS}
    final = resp.final_url or resp.url
    return {
        "entry_id": entry_id,
        "url": resp.url,
        "final_url": final,
        "url_key": url_key(final) if final.startswith(("http://", "https://")) else None,
        "status": resp.status,
        "headers": json.dumps(headers, ensure_ascii=False),
        "body": compress_body(resp.body),
        "body_bytes": len(resp.body),
        "body_sha256": hashlib.sha256(resp.body).hexdigest(),
        "encoding": encoding,
        "fetched_at": fetched_at,
        "extracted_at": fetched_at,
    }


def attempt_rows(entry_id: int, url: str, history: Sequence[Mapping[str, object]]) -> list[dict[str, Any]]:
    rows = []
    for i, h in enumerate(history, start=1):
        rows.append(
            {
                "entry_id": entry_id,
                "url": url,
                "attempt_no": i,
                "attempted_at": h["at"],
                "status": h.get("status"),
                "error_type": h.get("error"),
                "detail": (str(h["detail"])[:1000] if h.get("detail") else None),
                "duration_ms": h.get("ms"),
            }
        )
    return rows


def record_fetches(
    conn: Connection,
    entries: Sequence[QueuedEntry],
    fetches: Mapping[int, PageFetch],
    *,
    encodings: Mapping[int, str | None],
    fetched_at: datetime,
) -> tuple[int, int]:
    """Archive the pages and attempt history of one batch. Returns (pages, attempts) written."""
    pages: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    for e in entries:
        f = fetches.get(e.entry_id)
        if f is None:
            continue
        if e.link:
            attempts.extend(attempt_rows(e.entry_id, e.link, f.history))
        if f.resp is not None and f.resp.body:
            pages.append(page_row(e.entry_id, f.resp, encoding=encodings.get(e.entry_id), fetched_at=fetched_at))
    if pages:
        conn.execute(_UPSERT_PAGE, pages)
    if attempts:
        conn.execute(_INSERT_ATTEMPT, attempts)
    return len(pages), len(attempts)
