"""Dedup stage: exact duplicates by lossy canonical-URL key and normalised-body hash.

Two layers: inside a batch (pure), and against the warehouse (one query for the whole
batch). The database has the last word: ``news.article_registry`` carries unique
constraints on both keys, and the loader turns a lost race into a sighting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsmon.models import Article


@dataclass(frozen=True)
class Duplicate:
    """``article`` is a copy of an earlier one: a batch row (``primary``) or a stored article."""

    article: Article
    kind: str  # 'url' or 'content_hash'
    primary: int | None = None  # index into the batch's unique list
    article_id: int | None = None  # stored article
    cluster_id: int | None = None


def dedup_in_batch(articles: Sequence[Article]) -> tuple[list[Article], list[Duplicate]]:
    """Keep the first article per url_key and per content_hash; the rest are duplicates."""
    unique: list[Article] = []
    dups: list[Duplicate] = []
    by_url: dict[str, int] = {}
    by_hash: dict[str, int] = {}
    for a in articles:
        if a.url_key in by_url:
            dups.append(Duplicate(a, "url", primary=by_url[a.url_key]))
            continue
        if a.content_hash in by_hash:
            dups.append(Duplicate(a, "content_hash", primary=by_hash[a.content_hash]))
            continue
        idx = len(unique)
        unique.append(a)
        by_url[a.url_key] = idx
        by_hash[a.content_hash] = idx
    return unique, dups


def split_known(conn: Connection, articles: Sequence[Article]) -> tuple[list[Article], list[Duplicate]]:
    """Separate articles already in the warehouse (by either key) from new ones."""
    if not articles:
        return [], []
    rows = conn.execute(
        sa.text(
            """
            SELECT article_id, cluster_id, url_key, content_hash FROM news.article_registry
            WHERE url_key = ANY(:urls) OR content_hash = ANY(:hashes)
            """
        ),
        {"urls": [a.url_key for a in articles], "hashes": [a.content_hash for a in articles]},
    ).all()
    by_url = {r.url_key: r for r in rows}
    by_hash = {r.content_hash: r for r in rows}
    new: list[Article] = []
    known: list[Duplicate] = []
    for a in articles:
        if (r := by_url.get(a.url_key)) is not None:
            known.append(Duplicate(a, "url", article_id=r.article_id, cluster_id=r.cluster_id))
        elif (r := by_hash.get(a.content_hash)) is not None:
            known.append(Duplicate(a, "content_hash", article_id=r.article_id, cluster_id=r.cluster_id))
        else:
            new.append(a)
    return new, known
