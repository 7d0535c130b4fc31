"""Index stage: fill ``news.articles.search_tsv`` for the rows a load left without one.

Full-text indexing is a stage of its own (migration 0010) because computing
``to_tsvector('arabic', ...)`` inside the load transaction, once per topic row, dominated
load throughput. Here the vector is computed once per *article* (its 1-3 topic rows share
title and body) and copied to all its rows, in short transactions of their own, right after
each load (``index_after_load``) and by ``newsmon search index`` (catch-up).

Nothing is lost while a row waits: ``news.search`` matches unindexed rows by computing the
same ``news.article_tsvector`` on the fly. Rows are claimed with ``FOR UPDATE SKIP
LOCKED``, so concurrent workers (parallel batches) split the work and never wait on each
other.
"""

from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

DEFAULT_WORKERS = min(2, os.cpu_count() or 1)

# ids:   up to :limit pending rows of this worker's shard (article_id % :shards), locked, lowest article ids first (the queue is the
#        partial index articles_search_pending_idx); rows other workers hold are skipped
# rows:  every still-pending row of those articles that nobody else holds (an article's
#        rows stay together even when the LIMIT cut between them)
# vec:   one row per article (DISTINCT ON) with the topics of its locked rows and its
#        vector; MATERIALIZED so the vector is computed here, once per article, and not
#        inlined into the UPDATE (once per topic row)
# upd:   the locked rows, probed per article through the article_id index
_INDEX_PENDING = sa.text(
    """
    WITH ids AS (
        SELECT article_id FROM news.articles
        WHERE search_tsv IS NULL AND article_id % :shards = :shard
        ORDER BY article_id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), rows AS (
        SELECT a.article_id, a.topic, a.lang, a.title, a.body
        FROM news.articles a
        WHERE a.search_tsv IS NULL AND a.article_id IN (SELECT article_id FROM ids)
        FOR UPDATE OF a SKIP LOCKED
    ), vec AS MATERIALIZED (
        SELECT o.article_id, o.topics, news.article_tsvector(o.lang, o.title, o.body) AS tsv
        FROM (SELECT DISTINCT ON (article_id) article_id, lang, title, body,
                     array_agg(topic) OVER (PARTITION BY article_id) AS topics
              FROM rows ORDER BY article_id, topic) o
    ), upd AS (
        UPDATE news.articles a SET search_tsv = vec.tsv
        FROM vec
        WHERE a.article_id = vec.article_id AND a.topic = ANY (vec.topics) AND a.search_tsv IS NULL
        RETURNING a.article_id
    )
    SELECT count(DISTINCT article_id) FROM upd
    """
)


def index_pending(conn: Connection, *, limit: int = 2000, shard: int = 0, shards: int = 1) -> int:
    """Index up to ``limit`` articles that have rows without ``search_tsv`` (only those with
    ``article_id % shards == shard``); returns the number of articles indexed. The caller
    owns the transaction (locks last until commit)."""
    if limit <= 0:
        return 0
    return int(conn.execute(_INDEX_PENDING, {"limit": limit, "shard": shard, "shards": shards}).scalar_one())


def index_all(engine: Engine, *, chunk: int = 2000, workers: int = DEFAULT_WORKERS) -> int:
    """Index every pending article, ``chunk`` articles per transaction; returns the count.

    Short transactions keep row locks brief (a reprocess or reclassify of the same rows
    waits at most one chunk). Each worker stops when a round finds nothing it can take.
    The work is stemming inside PostgreSQL, so ``workers`` connections use that many
    server cores (the Python threads only wait). Worker k takes the articles whose id is k
    modulo ``workers``, so no article is split between them and the count is exact; SKIP
    LOCKED keeps other processes (another pass, a reprocess) from waiting on them.
    """

    def drain(shard: int) -> int:
        total = 0
        while True:
            with engine.begin() as conn:
                n = index_pending(conn, limit=chunk, shard=shard, shards=max(workers, 1))
            total += n
            if n == 0:
                return total

    if workers <= 1:
        return drain(0)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="newsmon-index") as pool:
        return sum(f.result() for f in [pool.submit(drain, k) for k in range(workers)])


def index_after_load(engine: Engine) -> int:
    """The index stage after a load (process batch, quarantine replay, reprocess), best
    effort: a failure is logged and never fails the load that already committed. The rows
    stay pending for the next pass or ``newsmon search index``; search still finds them."""
    try:
        n = index_all(engine)
    except Exception:
        log.exception("search index stage failed; the rows stay pending for the next pass")
        return 0
    if n:
        log.info("search index: %d article(s) indexed", n)
    return n
