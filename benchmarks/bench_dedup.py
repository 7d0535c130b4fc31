"""Cost of one near-duplicate lookup as the store grows (10k vs 1M stored articles).

The LSH band index of 1M articles (22M band hashes) is synthesised in SQL; lookups are
real `find_near_duplicates` calls with real signatures."""

from __future__ import annotations

import statistics
import time

from newsmon.dedup import BANDS_FULL, BANDS_LEAD, SCHEME, find_near_duplicates
from newsmon.load import load_batch

from benchmarks._articles import make_articles
from benchmarks._db import temp_warehouse

SIZES = (10_000, 1_000_000)
QUERIES = 200


def _grow_to(engine, n: int) -> None:
    """Fill registry and band index up to n articles with random band hashes."""
    with engine.begin() as c:
        have = c.exec_driver_sql("SELECT coalesce(max(article_id), 0) FROM news.article_registry").scalar()
        if have >= n:
            return
        c.exec_driver_sql(
            f"""INSERT INTO news.article_registry (article_id, url_key, content_hash, cluster_id)
                SELECT g, 'synthetic/' || g, 'synthetic-' || g, g FROM generate_series({have + 1}, {n}) g"""
        )
        c.exec_driver_sql("DROP INDEX IF EXISTS news.lsh_signatures_bands_idx")
        c.exec_driver_sql(
            f"""INSERT INTO news.lsh_signatures (article_id, bands, scheme)
                SELECT g, ARRAY(SELECT (random() * 9.2e18)::bigint + 0 * g FROM generate_series(1, {BANDS_FULL + BANDS_LEAD})),
                       {SCHEME}
                FROM generate_series({have + 1}, {n}) g"""
        )
        c.exec_driver_sql("CREATE INDEX lsh_signatures_bands_idx ON news.lsh_signatures USING gin (bands) WITH (fastupdate = off)")
        c.exec_driver_sql("SELECT setval('news.article_registry_article_id_seq', (SELECT max(article_id) FROM news.article_registry))")
    with engine.connect() as c:
        c.exec_driver_sql("ANALYZE news.lsh_signatures")
        c.commit()


def _measure(engine, queries) -> dict:
    times = []
    with engine.connect() as c:
        for a in queries:
            t0 = time.perf_counter()
            find_near_duplicates(c, [a.signature])
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(len(times) * 0.95) - 1]}


def run() -> dict:
    real = make_articles(500, seed=3)
    queries = make_articles(QUERIES, seed=11)  # unseen texts: full candidate lookup, no match
    rows = []
    with temp_warehouse("dedup") as engine:
        with engine.begin() as c:
            load_batch(c, real, [], [])  # some real articles so verification paths run
        results = {}
        for n in SIZES:
            _grow_to(engine, n)
            results[n] = _measure(engine, queries)
        with engine.connect() as c:
            size = c.exec_driver_sql("SELECT pg_size_pretty(pg_total_relation_size('news.lsh_signatures'))").scalar()
    small, big = results[SIZES[0]], results[SIZES[-1]]
    for n in SIZES:
        rows.append({"stored articles": f"{n:,}", "lookup p50 ms": results[n]["p50_ms"], "lookup p95 ms": results[n]["p95_ms"],
                     "ratio p50 vs 10k": results[n]["p50_ms"] / small["p50_ms"]})  # fmt: skip
    return {
        "title": "Near-duplicate lookup cost vs store size",
        "rows": rows,
        "notes": f"One lookup = GIN probe of the LSH band index ({BANDS_FULL} + {BANDS_LEAD} band hashes per article) + verification. "
        f"Band index at 1M articles: {size}. p50 ratio 1M/10k = {big['p50_ms'] / small['p50_ms']:.2f}.",
    }
