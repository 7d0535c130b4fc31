"""Load stage: write one validated batch in one transaction.

Articles, their topic rows, sightings of copies, quarantined rows and the status of
the feed entries they came from all commit together, so a retried batch either finds
its work done (and inserts nothing) or does all of it. Uniqueness is the database's
job: ``ON CONFLICT`` everywhere, and a lost race on a dedup key becomes a sighting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsmon.dedup import Duplicate
from newsmon.models import Article, Rejected

log = logging.getLogger(__name__)


@dataclass
class LoadResult:
    loaded: list[tuple[int, Article]] = field(default_factory=list)
    duplicates: int = 0
    quarantined: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)


_INSERT_REGISTRY = sa.text(
    """
    INSERT INTO news.article_registry (url_key, content_hash, first_seen_at)
    VALUES (:url_key, :content_hash, now())
    ON CONFLICT DO NOTHING
    RETURNING article_id
    """
)
_FIND_REGISTRY = sa.text(
    "SELECT article_id, cluster_id FROM news.article_registry WHERE url_key = :url_key OR content_hash = :content_hash "
    "ORDER BY article_id LIMIT 1"
)
_INSERT_ARTICLE = sa.text(
    """
    INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, feed_id, entry_id,
        title, summary, body, body_source, lang, authors, published_at, date_source, fetched_at,
        content_hash, cluster_id, matched_terms, topic_score)
    VALUES (:article_id, :topic, :url, :canonical_url, :url_key, :source_domain, :feed_id, :entry_id,
        :title, :summary, :body, :body_source, :lang, :authors, :published_at, :date_source, :fetched_at,
        :content_hash, :cluster_id, :matched_terms, :topic_score)
    ON CONFLICT (topic, article_id) DO NOTHING
    """
)
_INSERT_SIGHTING = sa.text(
    """
    INSERT INTO news.article_sightings (article_id, cluster_id, entry_id, feed_id, url, source_domain, match_kind, similarity)
    VALUES (:article_id, :cluster_id, :entry_id, :feed_id, :url, :source_domain, :match_kind, :similarity)
    ON CONFLICT (article_id, url) DO NOTHING
    """
)
_MARK_ENTRY = sa.text(
    """
    UPDATE news.feed_entries SET status = :status, article_id = :article_id, processed_at = now(),
        claimed_until = NULL, last_error = :error
    WHERE entry_id = :entry_id
    """
)
_INSERT_REJECTED = sa.text(
    """
    INSERT INTO news.rejected_articles (entry_id, feed_id, url, record, failed_expectations, reason, dq_run_id)
    VALUES (:entry_id, :feed_id, :url, CAST(:record AS jsonb), :failed, :reason, :dq_run_id)
    ON CONFLICT (entry_id) DO UPDATE SET record = EXCLUDED.record, failed_expectations = EXCLUDED.failed_expectations,
        reason = EXCLUDED.reason, dq_run_id = EXCLUDED.dq_run_id, rejected_at = now(), status = 'open'
    """
)


def article_record(a: Article) -> dict[str, Any]:
    """The full record of an article as JSON-able data (for quarantine)."""
    d = asdict(a)
    for k, v in list(d.items()):
        if isinstance(v, datetime):
            d[k] = v.isoformat()
    return d


def _row(a: Article, article_id: int, cluster_id: int, topic: str, score: float | None, terms: Sequence[str]) -> dict[str, Any]:
    return {
        "article_id": article_id,
        "topic": topic,
        "url": a.url,
        "canonical_url": a.canonical_url,
        "url_key": a.url_key,
        "source_domain": a.source_domain,
        "feed_id": a.feed_id,
        "entry_id": a.entry_id,
        "title": a.title,
        "summary": a.summary,
        "body": a.body,
        "body_source": a.body_source,
        "lang": a.lang,
        "authors": list(a.authors),
        "published_at": a.published_at,
        "date_source": a.date_source,
        "fetched_at": a.fetched_at,
        "content_hash": a.content_hash,
        "cluster_id": cluster_id,
        "matched_terms": list(terms),
        "topic_score": score,
    }


def _sighting(a: Article, article_id: int, cluster_id: int | None, kind: str, similarity: float | None = None) -> dict[str, Any]:
    return {
        "article_id": article_id,
        "cluster_id": cluster_id,
        "entry_id": a.entry_id,
        "feed_id": a.feed_id,
        "url": a.url,
        "source_domain": a.source_domain,
        "match_kind": kind,
        "similarity": similarity,
    }


def load_batch(
    conn: Connection,
    passed: Sequence[Article],
    duplicates: Sequence[Duplicate],
    rejected: Sequence[Rejected],
    *,
    dq_run_id: int | None = None,
) -> LoadResult:
    """Write a batch. The caller owns the transaction (``engine.begin()``)."""
    result = LoadResult()
    article_rows: list[dict[str, Any]] = []
    sightings: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    ids_by_index: dict[int, tuple[int, int]] = {}

    for i, a in enumerate(passed):
        new_id = conn.execute(_INSERT_REGISTRY, {"url_key": a.url_key, "content_hash": a.content_hash}).scalar()
        if new_id is None:  # another worker stored it first: this copy is a sighting
            found = conn.execute(_FIND_REGISTRY, {"url_key": a.url_key, "content_hash": a.content_hash}).one()
            cid = found.cluster_id or found.article_id
            ids_by_index[i] = (found.article_id, cid)
            sightings.append(_sighting(a, found.article_id, cid, "url"))
            marks.append({"entry_id": a.entry_id, "status": "duplicate", "article_id": found.article_id, "error": None})
            result.duplicates += 1
            continue
        conn.execute(sa.text("UPDATE news.article_registry SET cluster_id = :id WHERE article_id = :id"), {"id": new_id})
        ids_by_index[i] = (new_id, new_id)
        for t in a.topics or []:
            article_rows.append(_row(a, new_id, new_id, t.slug, t.score, t.terms))
        if not a.topics:
            article_rows.append(_row(a, new_id, new_id, "unclassified", None, []))
        sightings.append(_sighting(a, new_id, new_id, "first", 1.0))
        marks.append({"entry_id": a.entry_id, "status": "loaded", "article_id": new_id, "error": None})
        result.loaded.append((new_id, a))
        for slug in a.topic_slugs:
            result.per_topic[slug] = result.per_topic.get(slug, 0) + 1

    for d in duplicates:
        if d.article_id is not None:
            aid, cid = d.article_id, d.cluster_id or d.article_id
        elif d.primary is not None and d.primary in ids_by_index:
            aid, cid = ids_by_index[d.primary]
        else:
            continue  # primary was quarantined: the caller quarantines the copy too
        sightings.append(_sighting(d.article, aid, cid, d.kind))
        marks.append({"entry_id": d.article.entry_id, "status": "duplicate", "article_id": aid, "error": None})
        result.duplicates += 1

    for r in rejected:
        conn.execute(
            _INSERT_REJECTED,
            {
                "entry_id": r.article.entry_id,
                "feed_id": r.article.feed_id,
                "url": r.article.url,
                "record": json.dumps(article_record(r.article), ensure_ascii=False),
                "failed": list(r.failed),
                "reason": r.reason,
                "dq_run_id": dq_run_id,
            },
        )
        marks.append({"entry_id": r.article.entry_id, "status": "quarantined", "article_id": None, "error": r.reason[:500]})
        result.quarantined += 1

    if article_rows:
        conn.execute(_INSERT_ARTICLE, article_rows)
    if sightings:
        conn.execute(_INSERT_SIGHTING, sightings)
    if marks:
        conn.execute(_MARK_ENTRY, marks)
    return result
