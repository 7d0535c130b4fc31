"""The quarantine (``news.rejected_articles``): list it, and replay it after a fix.

Replay rebuilds each article from its stored record, re-classifies it with the current
taxonomy, re-validates it with the current suite and settings, and loads the rows that
pass with ``load_batch`` -- all in one transaction, with the claimed rows locked
(``FOR UPDATE SKIP LOCKED``) so two replays never load the same row. Rows that still
fail stay open with their new reasons.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsmon.config import Settings
from newsmon.dedup import Duplicate, dedup_in_batch, split_known
from newsmon.load import load_batch
from newsmon.models import Article, TopicMatch
from newsmon.quality import record_dq_run, validate_articles
from newsmon.search import index_after_load
from newsmon.topics import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

_ARTICLE_FIELDS = {f.name for f in fields(Article)}
_DATES = ("published_at", "fetched_at")


def article_from_record(record: dict[str, Any]) -> Article:
    """Inverse of ``load.article_record``: the stored JSON back into an Article."""
    data = {k: v for k, v in record.items() if k in _ARTICLE_FIELDS}
    for k in _DATES:
        if isinstance(data.get(k), str):
            data[k] = datetime.fromisoformat(data[k])
    data["topics"] = [
        TopicMatch(t["slug"], float(t.get("score") or 0), tuple(t.get("terms") or ())) for t in data.get("topics") or []
    ]
    data["authors"] = list(data.get("authors") or [])
    data.setdefault("body", "")
    return Article(**data)


def list_quarantined(
    conn: Connection, *, status: str | None = "open", ids: Sequence[int] | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            """
            SELECT r.reject_id, r.entry_id, r.feed_id, f.name AS feed, r.url, r.failed_expectations, r.reason,
                   r.status, r.rejected_at, r.replay_attempts, r.last_replay_at, r.replayed_at,
                   r.record->>'title' AS title, r.record->>'body_source' AS body_source,
                   length(r.record->>'body') AS body_chars, r.dq_run_id
            FROM news.rejected_articles r LEFT JOIN news.feeds f ON f.feed_id = r.feed_id
            WHERE (CAST(:status AS text) IS NULL OR r.status = :status)
              AND (cardinality(CAST(:ids AS bigint[])) = 0 OR r.reject_id = ANY(CAST(:ids AS bigint[])))
            ORDER BY r.rejected_at DESC, r.reject_id DESC
            LIMIT :limit
            """
        ),
        {"status": status, "ids": list(ids or []), "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


@dataclass
class ReplayResult:
    considered: int = 0
    loaded: int = 0
    duplicates: int = 0
    still_failing: int = 0
    dq_run_id: int | None = None
    loaded_ids: list[int] = field(default_factory=list)  # reject_ids that left the quarantine
    failing: dict[int, list[str]] = field(default_factory=dict)  # reject_id -> failed expectations


def replay(
    engine: Engine,
    settings: Settings,
    *,
    ids: Sequence[int] | None = None,
    limit: int = 500,
    taxonomy: Taxonomy | None = None,
    reclassify: bool = True,
    now: datetime | None = None,
) -> ReplayResult:
    """Re-validate open quarantined rows (all, or ``ids``) and load those that now pass."""
    taxonomy = taxonomy or load_taxonomy(settings.pipeline.topics_file)
    now = now or datetime.now(UTC)
    res = ReplayResult()
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT reject_id, entry_id, record FROM news.rejected_articles
                WHERE status = 'open' AND (cardinality(CAST(:ids AS bigint[])) = 0 OR reject_id = ANY(CAST(:ids AS bigint[])))
                ORDER BY reject_id LIMIT :limit
                FOR UPDATE SKIP LOCKED
                """
            ),
            {"ids": list(ids or []), "limit": limit},
        ).all()
        res.considered = len(rows)
        if not rows:
            return res
        articles: list[Article] = []
        reject_of: dict[int, int] = {}  # id(article) -> reject_id
        for r in rows:
            try:
                a = article_from_record(r.record)
            except (TypeError, ValueError, KeyError) as exc:  # a record we cannot rebuild stays put, with why
                _still_open(conn, r.reject_id, ["record_unreadable"], f"replay: record unreadable: {exc}", None, now)
                res.still_failing += 1
                res.failing[r.reject_id] = ["record_unreadable"]
                continue
            a.entry_id = r.entry_id  # the entry may have been deleted since (NULL)
            if reclassify and (a.norm_title or a.norm_body):
                a.topics = taxonomy.classify(a.norm_title, a.norm_body, normalized=True)
            elif reclassify:
                a.topics = taxonomy.classify(a.title, a.body)
            articles.append(a)
            reject_of[id(a)] = r.reject_id
        unique, in_batch = dedup_in_batch(articles)
        new, known = split_known(conn, unique)
        outcome = validate_articles(
            new, settings=settings.quality, languages=settings.pipeline.languages, topics=taxonomy.slugs,
            batch_id="replay-" + uuid.uuid4().hex[:8], now=now,
        )  # fmt: skip
        dq_id = record_dq_run(conn, outcome, kind="replay") if new else None
        res.dq_run_id = dq_id
        passed_index = {id(a): i for i, a in enumerate(outcome.passed)}
        duplicates: list[Duplicate] = list(known)
        failed_primary = {id(r.article): r for r in outcome.rejected}
        for d in in_batch:
            primary = unique[d.primary] if d.primary is not None else None
            if primary is not None and id(primary) in passed_index:
                duplicates.append(Duplicate(d.article, d.kind, primary=passed_index[id(primary)]))
            elif primary is not None and id(primary) in failed_primary:
                _still_open(conn, reject_of[id(d.article)], ["copy_of_rejected"], "copy of a quarantined article", dq_id, now)
                res.still_failing += 1
                res.failing[reject_of[id(d.article)]] = ["copy_of_rejected"]
            else:  # primary is already in the warehouse
                k = next((x for x in known if x.article is primary), None)
                if k is not None:
                    duplicates.append(Duplicate(d.article, d.kind, article_id=k.article_id, cluster_id=k.cluster_id))
        lr = load_batch(conn, outcome.passed, duplicates, [], dq_run_id=dq_id)
        article_ids = {id(a): aid for aid, a in lr.loaded}
        for a in [*outcome.passed, *(d.article for d in duplicates)]:
            rid = reject_of[id(a)]
            conn.execute(
                sa.text(
                    """
                    UPDATE news.rejected_articles SET status = 'replayed', replayed_at = :now, last_replay_at = :now,
                        replay_attempts = replay_attempts + 1, replay_article_id = :aid
                    WHERE reject_id = :id
                    """
                ),
                {"id": rid, "now": now, "aid": article_ids.get(id(a))},
            )
            res.loaded_ids.append(rid)
        for rej in outcome.rejected:
            rid = reject_of[id(rej.article)]
            _still_open(conn, rid, list(rej.failed), rej.reason, dq_id, now)
            res.still_failing += 1
            res.failing[rid] = list(rej.failed)
        res.loaded = len(lr.loaded)
        res.duplicates = lr.duplicates
    if res.loaded:
        index_after_load(engine)  # search vectors of the replayed rows, best effort
    log.info("quarantine replay considered=%d loaded=%d duplicates=%d still_failing=%d",
             res.considered, res.loaded, res.duplicates, res.still_failing)  # fmt: skip
    return res


def _still_open(conn: Connection, reject_id: int, failed: list[str], reason: str, dq_id: int | None, now: datetime) -> None:
    conn.execute(
        sa.text(
            """
            UPDATE news.rejected_articles SET failed_expectations = :failed, reason = :reason,
                dq_run_id = COALESCE(:dq, dq_run_id), last_replay_at = :now, replay_attempts = replay_attempts + 1
            WHERE reject_id = :id
            """
        ),
        {"id": reject_id, "failed": failed, "reason": reason, "dq": dq_id, "now": now},
    )


def recent_articles(conn: Connection, *, limit: int = 500) -> list[Article]:
    """The latest loaded articles plus the open quarantine, as Articles (for Data Docs)."""
    rows = conn.execute(
        sa.text(
            """
            SELECT article_id, max(url) AS url, max(canonical_url) AS canonical_url, max(url_key) AS url_key,
                   max(source_domain) AS source_domain, max(feed_id) AS feed_id, max(entry_id) AS entry_id,
                   max(title) AS title, max(summary) AS summary, max(body) AS body, max(body_source) AS body_source,
                   max(lang) AS lang, max(published_at) AS published_at, max(date_source) AS date_source,
                   max(fetched_at) AS fetched_at, max(content_hash) AS content_hash, max(loaded_at) AS loaded_at,
                   array_agg(topic ORDER BY topic) AS topics
            FROM news.articles GROUP BY article_id ORDER BY max(loaded_at) DESC LIMIT :limit
            """
        ),
        {"limit": limit},
    ).mappings()
    out = []
    for r in rows:
        out.append(
            Article(
                entry_id=r["entry_id"], feed_id=r["feed_id"], url=r["url"], canonical_url=r["canonical_url"],
                url_key=r["url_key"], source_domain=r["source_domain"], title=r["title"], summary=r["summary"],
                body=r["body"] or "", body_source=r["body_source"], lang=r["lang"], authors=[],
                published_at=r["published_at"], date_source=r["date_source"], fetched_at=r["fetched_at"],
                content_hash=r["content_hash"],
                topics=[TopicMatch(t, 0.0, ()) for t in r["topics"] if t != "unclassified"],
            )
        )  # fmt: skip
    for q in conn.execute(
        sa.text("SELECT record FROM news.rejected_articles WHERE status = 'open' ORDER BY rejected_at DESC LIMIT :l"), {"l": limit}
    ):
        try:
            out.append(article_from_record(q.record))
        except (TypeError, ValueError, KeyError):
            continue
    return out
