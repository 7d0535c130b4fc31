"""Re-extract archived pages with the current extractor (``newsmon reprocess``).

After an extractor change, the stored pages (news.raw_pages) are extracted again,
offline, and the loaded articles they produced are updated in place: body, title,
language, date, hash, metadata and topics. An article's identity (id, URL keys,
cluster, first load time) does not change. Each article is rewritten in its own
transaction (delete its topic rows, insert the new ones), and only when something
changed, so running it twice changes nothing the second time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsmon.archive import decompress_body
from newsmon.load import _row
from newsmon.models import Article, HttpResponse, QueuedEntry
from newsmon.pipeline import build_article
from newsmon.search import index_after_load
from newsmon.topics import Taxonomy

log = logging.getLogger(__name__)

_COMPARED = ("title", "summary", "body", "body_source", "lang", "authors", "published_at", "date_source", "content_hash",
             "sitename", "image_url", "categories", "tags", "encoding")  # fmt: skip

_SELECT = sa.text(
    """
    SELECT r.entry_id, r.url AS fetched_url, r.final_url, r.status, r.headers, r.body AS raw, r.compression,
           r.fetched_at, e.feed_id, e.link, e.title, e.summary, e.content, e.published_at, e.authors, e.tags,
           e.first_seen_at, e.article_id, f.lang AS feed_lang
    FROM news.raw_pages r
    JOIN news.feed_entries e ON e.entry_id = r.entry_id
    JOIN news.feeds f ON f.feed_id = e.feed_id
    WHERE e.status = 'loaded' AND e.article_id IS NOT NULL
      AND (CAST(:since AS timestamptz) IS NULL OR r.fetched_at >= CAST(:since AS timestamptz))
      AND r.entry_id > :after
    ORDER BY r.entry_id
    LIMIT :limit
    """
)


@dataclass
class ReprocessSummary:
    pages: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0  # the entry's article is no longer in the warehouse
    failed: int = 0
    topic_changes: int = 0
    errors: list[str] = field(default_factory=list)


def _entry_and_response(r: Any) -> tuple[QueuedEntry, HttpResponse]:
    entry = QueuedEntry(
        entry_id=r.entry_id,
        feed_id=r.feed_id,
        link=r.link,
        title=r.title,
        summary=r.summary,
        content=r.content,
        published_at=r.published_at,
        authors=tuple(r.authors or ()),
        tags=tuple(r.tags or ()),
        feed_lang=r.feed_lang,
        first_seen_at=r.first_seen_at,
    )
    headers = r.headers if isinstance(r.headers, dict) else json.loads(r.headers or "{}")
    resp = HttpResponse(
        url=r.fetched_url,
        final_url=r.final_url,
        status=r.status,
        headers=headers,
        body=decompress_body(r.raw, r.compression),
        elapsed_ms=0,
    )
    return entry, resp


def _changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return any(old.get(k) != new.get(k) for k in _COMPARED)


def reprocess(
    engine: Engine,
    taxonomy: Taxonomy,
    *,
    since: datetime | None = None,
    batch_size: int = 200,
    now: datetime | None = None,
) -> ReprocessSummary:
    """Re-extract every archived page fetched at or after ``since`` (all when None)."""
    summary = ReprocessSummary()
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(_SELECT, {"since": since, "after": after, "limit": batch_size}).all()
        if not rows:
            break
        after = rows[-1].entry_id
        updated_before = summary.updated
        for r in rows:
            summary.pages += 1
            try:
                entry, resp = _entry_and_response(r)
                # "now" is the fetch time: the date rules (never in the future) stay those of the first run
                a = build_article(entry, resp, None, now=r.fetched_at)
                a.topics = taxonomy.classify(a.norm_title, a.norm_body, normalized=True)
                outcome = _rewrite(engine, r.article_id, a, now=now)
            except Exception as exc:  # one bad archived page must not stop the others
                log.exception("reprocess failed entry=%s", r.entry_id)
                summary.failed += 1
                summary.errors.append(f"entry {r.entry_id}: {type(exc).__name__}: {exc}"[:300])
                continue
            if outcome == "missing":
                summary.skipped += 1
            elif outcome == "unchanged":
                summary.unchanged += 1
            else:
                summary.updated += 1
                if outcome == "topics":
                    summary.topic_changes += 1
        if summary.updated > updated_before:
            index_after_load(engine)  # rewritten rows have no search vector yet; best effort
    return summary


def _rewrite(engine: Engine, article_id: int, a: Article, *, now: datetime | None) -> str:
    """Replace one article's rows if the re-extraction differs. Returns missing/unchanged/updated/topics."""
    with engine.begin() as conn:
        old_rows = [
            dict(m)
            for m in conn.execute(
                sa.text("SELECT * FROM news.articles WHERE article_id = :id ORDER BY topic FOR UPDATE"), {"id": article_id}
            ).mappings()
        ]
        if not old_rows:
            return "missing"
        old = old_rows[0]
        # identity stays: the registry, sightings and dedup keys point at these
        a = replace(
            a,
            url=old["url"],
            canonical_url=old["canonical_url"],
            url_key=old["url_key"],
            source_domain=old["source_domain"],
            feed_id=old["feed_id"] if old["feed_id"] is not None else a.feed_id,
            fetched_at=old["fetched_at"] or a.fetched_at,
        )
        topics = a.topics or []
        new_rows = [_row(a, article_id, old["cluster_id"], t.slug, t.score, t.terms) for t in topics] or [
            _row(a, article_id, old["cluster_id"], "unclassified", None, [])
        ]
        old_topics = sorted((o["topic"], tuple(o["matched_terms"] or ())) for o in old_rows)
        new_topics = sorted((n["topic"], tuple(n["matched_terms"])) for n in new_rows)
        if old_topics == new_topics and not _changed(old, new_rows[0]):
            return "unchanged"
        conn.execute(sa.text("DELETE FROM news.articles WHERE article_id = :id"), {"id": article_id})
        cols = list(new_rows[0])  # the columns load.py writes, whatever they are
        conn.execute(
            sa.text(f"INSERT INTO news.articles ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"),
            new_rows,
        )
        conn.execute(
            sa.text(
                "UPDATE news.articles SET loaded_at = :loaded, reprocessed_at = COALESCE(:now, now()) "
                "WHERE article_id = :id"
            ),
            {"loaded": old["loaded_at"], "now": now, "id": article_id},
        )
        # the registry's exact-dedup hash follows the new body unless another article owns it
        conn.execute(
            sa.text(
                """
                UPDATE news.article_registry SET content_hash = :h
                WHERE article_id = :id AND content_hash <> :h
                  AND NOT EXISTS (SELECT 1 FROM news.article_registry o WHERE o.content_hash = :h AND o.article_id <> :id)
                """
            ),
            {"h": a.content_hash, "id": article_id},
        )
        conn.execute(
            sa.text("UPDATE news.raw_pages SET extracted_at = COALESCE(:now, now()) WHERE entry_id = :e"),
            {"now": now, "e": a.entry_id},
        )
        return "topics" if [t for t, _ in old_topics] != [t for t, _ in new_topics] else "updated"
