"""Load throughput into the topic-partitioned warehouse vs a plain COPY of the same rows
into an unpartitioned, index-free table, measured in the same run on the same server; then
the search-index stage that follows every load (migration 0010)."""

from __future__ import annotations

import gc
import io
import time

from newsmon.config import CONFIG_DIR
from newsmon.load import _ARTICLE_COLUMNS, _row, load_batch
from newsmon.topics import load_taxonomy, sync_topics

from benchmarks._articles import make_articles
from benchmarks._db import temp_warehouse

N = 20_000
BATCH = 1_000


def _copy_baseline(engine, articles, table: str = "bench_plain") -> tuple[float, int]:
    rows = []
    for i, a in enumerate(articles, start=1):
        for t in a.topics:
            r = _row(a, i, i, t.slug, t.score, t.terms)
            rows.append([r[c] for c in _ARTICLE_COLUMNS])

    def lit(v):
        if v is None:
            return r"\N"
        if isinstance(v, list):
            return "{" + ",".join('"' + str(x).replace('"', '\\"') + '"' for x in v) + "}"
        return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")

    buf = io.StringIO("".join("\t".join(lit(v) for v in r) + "\n" for r in rows))
    if table == "bench_plain":
        with engine.begin() as c:
            c.exec_driver_sql("CREATE TABLE bench_plain (LIKE news.articles INCLUDING DEFAULTS)")
    elif table == "bench_plain_storage":  # the same, with the warehouse's column storage (0011)
        with engine.begin() as c:
            c.exec_driver_sql("CREATE TABLE bench_plain_storage (LIKE news.articles INCLUDING DEFAULTS INCLUDING STORAGE)")
    elif table == "bench_indexed":  # the warehouse's columns and indexes, without partitions
        with engine.begin() as c:
            c.exec_driver_sql("CREATE TABLE bench_indexed (LIKE news.articles INCLUDING DEFAULTS INCLUDING INDEXES INCLUDING STORAGE)")
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        t0 = time.perf_counter()
        cur.copy_expert(f"COPY {table} ({', '.join(_ARTICLE_COLUMNS)}) FROM STDIN", buf)
        raw.commit()
        return time.perf_counter() - t0, len(rows)
    finally:
        raw.close()


def run() -> dict:
    from newsmon.search import DEFAULT_WORKERS, index_all

    articles = make_articles(N)
    # The 20,000 articles (with their shingle sets: ~5M objects) live for the whole run, which
    # a pipeline process never does (it holds one batch). Without this, every full garbage
    # collection walks them and the bench measures the collector (~30 % of the load time).
    gc.collect()
    gc.freeze()
    with temp_warehouse("load") as engine:
        with engine.begin() as c:
            sync_topics(c, load_taxonomy(CONFIG_DIR / "topics.yml"))
        copy_s, copy_rows = _copy_baseline(engine, articles)
        storage_s, _ = _copy_baseline(engine, articles, table="bench_plain_storage")
        # the same COPY into an unpartitioned table with the warehouse's indexes, and into the
        # partitioned news.articles: what indexes and partitioning cost before any dedup work
        indexed_s, _ = _copy_baseline(engine, articles, table="bench_indexed")
        part_s, _ = _copy_baseline(engine, articles, table="news.articles")
        with engine.begin() as c:
            c.exec_driver_sql("TRUNCATE news.articles")
        t0 = time.perf_counter()
        for i in range(0, N, BATCH):
            with engine.begin() as c:
                load_batch(c, articles[i : i + BATCH], [], [])
        ours_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        indexed = index_all(engine)
        index_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        for i in range(0, N, BATCH):  # replay: idempotent, inserts nothing
            with engine.begin() as c:
                res = load_batch(c, articles[i : i + BATCH], [], [])
                assert not res.loaded
        replay_s = time.perf_counter() - t2
        with engine.connect() as c:
            stored = c.exec_driver_sql("SELECT count(*) FROM news.articles").scalar()
            pending = c.exec_driver_sql("SELECT count(*) FROM news.articles WHERE search_tsv IS NULL").scalar()
    gc.unfreeze()
    assert stored == copy_rows and indexed >= N and pending == 0
    baseline = N / copy_s

    def row(metric: str, seconds: float) -> dict:
        return {"metric": metric, "value": N / seconds, "baseline": baseline, "ratio": (N / seconds) / baseline}

    return {
        "title": f"Load: {N:,} articles ({copy_rows:,} topic rows) in batches of {BATCH:,}",
        "rows": [
            row("articles/s, newsmon load_batch (partitioned, dedup, clusters, sightings)", ours_s),
            row(f"articles/s, search-index stage after the load (arabic/english tsvector, GIN; {DEFAULT_WORKERS} workers)",
                index_s),
            row("articles/s, load + search index (searchable end to end)", ours_s + index_s),
            row("articles/s, COPY into an unpartitioned, index-free table with the warehouse's column storage "
                "(bodies uncompressed)", storage_s),
            row("articles/s, COPY into an unpartitioned table with the warehouse's indexes and storage (no dedup)",
                indexed_s),
            row("articles/s, COPY into partitioned news.articles with its indexes (no dedup)", part_s),
            row("articles/s, replaying the same batches (all duplicates)", replay_s),
        ],
        "notes": "Baseline: COPY of the same topic rows into an unpartitioned table with no indexes, same server, same run. "
        "newsmon's load also writes the article registry (unique dedup keys), the LSH band index (42 band hashes per "
        "article, GIN), sightings, and maintains the partitions' B-tree indexes; signatures are computed by the dedup "
        "stage before load. The search-index stage computes one tsvector per article in its own transactions.",
    }  # fmt: skip
