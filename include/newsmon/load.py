"""Load stage: write one validated batch in one transaction.

Articles, their topic rows, sightings of copies, quarantined rows and the status of
the feed entries they came from all commit together, so a retried batch either finds
its work done (and inserts nothing) or does all of it. Uniqueness is the database's
job: the registry's unique keys reject a second copy, and a lost race on a dedup key
(unique_violation) redoes the batch, which then finds the winner's row and records a
sighting. Everything keyed by a freshly allocated article id (registry, topic rows, band
hashes, first sightings) goes in with ``COPY``. Search vectors are not written here but by
the index stage (``newsmon.search``) right after the commit.

Loaders run in parallel (optimistic concurrency, see ``load_batch``): cluster decisions
that a concurrent batch could contradict are validated against the commit journal
(``news.load_journal``, migration 0015) under a short lock just before commit.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsmon.db import array_literal
from newsmon.dedup import (
    SCHEME,
    Duplicate,
    Signature,
    article_title_key,
    find_near_duplicates,
    is_copy,
    signature,
    stored_matches,
    stored_shingles,
    within_title_window,
)
from newsmon.models import Article, Rejected, TopicMatch
from newsmon.normalize import normalize_text

log = logging.getLogger(__name__)

CLUSTER_LOCK = 72_850_003  # advisory lock key serialising validation + commit of loads
JOURNAL_KEEP_S = 3600  # news.load_journal rows older than this are pruned
MAX_ATTEMPTS = 5  # optimistic attempt, then attempts under the lock (deadlock victims retry)
# deadlock_detected, serialization_failure, and unique_violation: the registry COPY lost a
# race on a dedup key to a concurrent batch (keys already stored were looked up first, and
# keys repeated inside the batch are resolved before the COPY), so the redo sees the winner
_RETRYABLE = {"40P01", "40001", "23505"}


@dataclass
class LoadResult:
    loaded: list[tuple[int, Article]] = field(default_factory=list)
    duplicates: int = 0
    quarantined: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    attempts: int = 1  # 1 = the optimistic attempt committed; more = redone under the lock


@dataclass(frozen=True)
class _Fresh:
    """A new canonical article of this batch: what a concurrent batch could contradict."""

    article_id: int
    signature: Signature
    title_key: str | None
    published_at: datetime | None


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
    d.pop("signature", None)
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
        # page metadata (issue 4, migration 0003)
        "sitename": a.sitename,
        "image_url": a.image,
        "categories": list(a.categories),
        "tags": list(a.tags),
        "encoding": a.encoding,
    }


# COPY text format (https://www.postgresql.org/docs/current/sql-copy.html): backslash, tab,
# newline and carriage return are escaped, NULL is \N. str.replace is C-speed; str.translate
# with a table is not.
def _copy_text(v: str) -> str:
    if "\\" in v:
        v = v.replace("\\", "\\\\")
    return v.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_field(v: Any) -> str:
    if v is None:
        return "\\N"
    if isinstance(v, str):
        return _copy_text(v)
    if isinstance(v, (list, tuple)):
        return _copy_text(array_literal(v))
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)


def copy_lines(conn: Connection, table: str, columns: Sequence[str], lines: Sequence[str]) -> None:
    """``COPY table (columns) FROM STDIN`` of lines formatted with ``_copy_field``, in the
    caller's transaction: the fastest way into PostgreSQL, used where a conflict is
    impossible (ids allocated in this transaction). Driver errors come out as SQLAlchemy's,
    like every other statement's (``db.warehouse_errors`` handles them)."""
    if not lines:
        return
    import psycopg2

    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    raw = conn.connection.driver_connection
    # encoded once, in the connection's encoding: a StringIO would copy the text into a
    # UCS-4 buffer and psycopg2 would encode each chunk it reads back
    data = io.BytesIO("".join(lines).encode(psycopg2.extensions.encodings[raw.encoding]))  # type: ignore[union-attr]
    cur = raw.cursor()  # type: ignore[union-attr]
    try:
        cur.copy_expert(statement, data, size=1 << 20)
    except psycopg2.Error as exc:
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg2.Error) from exc
    finally:
        cur.close()


_ARTICLE_COLUMNS = (
    "article_id", "topic", "url", "canonical_url", "url_key", "source_domain", "feed_id", "entry_id", "title",
    "summary", "body", "body_source", "lang", "authors", "published_at", "date_source", "fetched_at",
    "content_hash", "cluster_id", "matched_terms", "topic_score", "sitename", "image_url", "categories", "tags",
    "encoding",
)  # fmt: skip
_SIGHTING_COLUMNS = ("article_id", "cluster_id", "entry_id", "feed_id", "url", "source_domain", "match_kind", "similarity")
_REGISTRY_COLUMNS = ("article_id", "cluster_id", "url_key", "content_hash", "source_domain", "title_key", "published_at")


def _text_or_null(v: str | None) -> str:
    return "\\N" if v is None else _copy_text(v)


def _scalar_or_null(v: int | float | datetime | None) -> str:
    if v is None:
        return "\\N"
    return v.isoformat() if isinstance(v, datetime) else str(v)


def article_copy_lines(a: Article, article_id: int) -> list[str]:
    """COPY lines of an article's topic rows (cluster = the article itself), in the order of
    _ARTICLE_COLUMNS. Formatting is the Python half of the load's cost, so this spells the
    columns out instead of going through ``_row`` and ``_copy_field`` (tests check that the
    two give the same lines), and the fields the rows share, the body above all, are escaped
    and joined once per article, not once per topic."""
    t, n = _text_or_null, _scalar_or_null
    aid = str(article_id)
    middle = "\t".join((
        t(a.url), t(a.canonical_url), t(a.url_key), t(a.source_domain), n(a.feed_id), n(a.entry_id), t(a.title),
        t(a.summary), t(a.body), t(a.body_source), t(a.lang), _copy_field(list(a.authors)), n(a.published_at),
        t(a.date_source), n(a.fetched_at), t(a.content_hash), aid,
    ))  # fmt: skip
    tail = "\t".join((t(a.sitename), t(a.image), _copy_field(list(a.categories)), _copy_field(list(a.tags)), t(a.encoding)))
    return [
        f"{aid}\t{_copy_text(m.slug)}\t{middle}\t{_copy_field(list(m.terms))}\t{n(m.score)}\t{tail}\n"
        for m in a.topics or [TopicMatch("unclassified", None, ())]  # type: ignore[arg-type]
    ]


def load_batch(
    conn: Connection,
    passed: Sequence[Article],
    duplicates: Sequence[Duplicate],
    rejected: Sequence[Rejected],
    *,
    dq_run_id: int | None = None,
) -> LoadResult:
    """Write a batch with a fixed number of statements. The caller owns the transaction.

    Order of decisions for each passed article: an exact key already stored (url_key,
    content_hash, title window) -> sighting; a near duplicate of a stored article or of an
    earlier article of this batch -> sighting; else a new canonical article.

    Two workers loading overlapping batches at the same time must never create two
    clusters for one story, yet loads should use every core. So the batch is first
    written optimistically, without a lock, inside a savepoint; then, under the cluster
    lock (held until the caller commits), it is checked against the batches committed
    since it began (``news.load_journal``): if one of them created a copy of one of our
    new articles, the savepoint is rolled back and the batch redone under the lock, where
    it sees everything committed and nothing else can commit meanwhile. Exact keys need
    no such check: their unique indexes make a concurrent insert wait, then fail with
    unique_violation, and the batch is redone the same way (and finds the stored copy).
    A deadlock victim (two batches waiting on each other's keys) retries the same way. A
    batch that creates no article needs no validation and takes no lock. The redo relies on
    READ COMMITTED (the default): each statement sees what committed before it.
    """
    last_exc: Exception | None = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        optimistic = attempt == 1
        if optimistic:
            head = conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM news.load_journal")).scalar_one()
            started = time.monotonic()
        savepoint = conn.begin_nested()
        try:
            if not optimistic:
                _lock(conn)
            result, fresh = _write_batch(conn, passed, duplicates, rejected, dq_run_id)
            if optimistic:
                if not fresh:  # only sightings and quarantine: no cluster to validate
                    savepoint.commit()
                    return result
                _lock(conn)
                if time.monotonic() - started > JOURNAL_KEEP_S / 2 or _conflicts(conn, head, fresh):
                    savepoint.rollback()
                    log.info("load: a concurrent batch created a copy of an article of this one; redoing under the lock")
                    continue
            _journal(conn, fresh)
            savepoint.commit()
            result.attempts = attempt
            return result
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) not in _RETRYABLE or not savepoint.is_active:
                raise
            savepoint.rollback()  # releases our rows and, if taken in this attempt, the lock
            last_exc = exc
            log.warning("load: attempt %d lost a race (%s); retrying under the lock", attempt, exc.orig.pgcode)  # type: ignore[union-attr]
    assert last_exc is not None
    raise last_exc


def _lock(conn: Connection) -> None:
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLUSTER_LOCK})


def _conflicts(conn: Connection, head: int, fresh: Sequence[_Fresh]) -> bool:
    """Whether a batch committed after ``head`` created a copy of one of ``fresh``:
    a shared band hash verified by containment, or the same title key within the window.
    Called under the cluster lock, so no batch can commit while it looks."""
    if not fresh:
        return False
    others = conn.execute(
        sa.text(
            """
            SELECT r.article_id, r.title_key, r.published_at, s.bands
            FROM news.load_journal j
            CROSS JOIN LATERAL unnest(j.article_ids) AS o(article_id)
            JOIN news.article_registry r ON r.article_id = o.article_id
            LEFT JOIN news.lsh_signatures s ON s.article_id = o.article_id
            WHERE j.seq > :head
            """
        ),
        {"head": head},
    ).all()
    if not others:
        return False
    band_owner = {band: i for i, f in enumerate(fresh) for band in f.signature.bands}
    title_owner = {f.title_key: f.published_at for f in fresh if f.title_key}
    pairs: set[tuple[int, int]] = set()  # (index in fresh, other article_id)
    for o in others:
        if o.title_key in title_owner and within_title_window(title_owner[o.title_key], o.published_at):
            return True
        for band in o.bands or ():
            i = band_owner.get(band)
            if i is not None:
                pairs.add((i, o.article_id))
    if not pairs:
        return False
    stored = stored_shingles(conn, {aid for _, aid in pairs})
    return any(aid in stored and is_copy(fresh[i].signature, stored[aid][1])[0] for i, aid in pairs)


def _journal(conn: Connection, fresh: Sequence[_Fresh]) -> None:
    """Record the batch's new articles for loaders validating after it (under the lock, so
    seq order is commit order), and now and then drop entries no live load can need."""
    if not fresh:
        return
    seq = conn.execute(
        sa.text("INSERT INTO news.load_journal (article_ids) VALUES (CAST(:ids AS bigint[])) RETURNING seq"),
        {"ids": array_literal(f.article_id for f in fresh)},
    ).scalar_one()
    if seq % 100 == 0:
        conn.execute(
            sa.text("DELETE FROM news.load_journal WHERE committed_at < clock_timestamp() - make_interval(secs => :s)"),
            {"s": JOURNAL_KEEP_S},
        )


def _write_batch(
    conn: Connection,
    passed: Sequence[Article],
    duplicates: Sequence[Duplicate],
    rejected: Sequence[Rejected],
    dq_run_id: int | None,
) -> tuple[LoadResult, list[_Fresh]]:
    """Decide and write the whole batch (see ``load_batch``); no locking here."""
    result = LoadResult()
    fresh_out: list[_Fresh] = []
    sigs = [a.signature if isinstance(a.signature, Signature) else signature(a.norm_body or normalize_text(a.body)) for a in passed]
    title_keys = [article_title_key(a) for a in passed]
    stored = stored_matches(conn, passed, title_keys)
    open_idx = [i for i in range(len(passed)) if i not in stored]  # only these need the near-duplicate index
    near = {open_idx[j]: hit for j, hit in find_near_duplicates(conn, [sigs[i] for i in open_idx]).items()}
    sightings: list[tuple[Any, ...]] = []
    marks: list[tuple[Any, ...]] = []
    ids_by_index: dict[int, tuple[int, int]] = {}
    fresh: list[int] = []  # indexes of new canonical articles
    local: dict[int, Signature] = {}  # batch index -> signature of accepted new articles
    # band hash -> the first new article of this batch that has it; later new articles that
    # share an owned band (rare: they were not copies) are listed in more_owners. Kept apart
    # so that the common case, no shared band, is one C-level dict update per article.
    band_owner: dict[int, int] = {}
    more_owners: dict[int, list[int]] = {}

    def sighting(a: Article, aid: int, cid: int, kind: str, sim: float | None) -> None:
        sightings.append((aid, cid, a.entry_id, a.feed_id, a.url, a.source_domain, kind, sim))
        marks.append((a.entry_id, "duplicate", aid, None))
        result.duplicates += 1

    pending_local: dict[int, tuple[int, str, float | None]] = {}  # copies of new articles of this batch
    fresh_url: dict[str, int] = {}  # exact keys of new articles of this batch -> batch index
    fresh_hash: dict[str, int] = {}
    for i, a in enumerate(passed):
        hit = stored.get(i)
        if hit is not None:
            ids_by_index[i] = (hit[0], hit[1])
            sighting(a, hit[0], hit[1], hit[2], None)
            continue
        # exact keys repeated inside the batch (callers that skipped dedup_in_batch): the
        # registry COPY must not meet them, or every redo would fail the same way
        if a.url_key in fresh_url:
            pending_local[i] = (fresh_url[a.url_key], "url", None)
            continue
        if a.content_hash in fresh_hash:
            pending_local[i] = (fresh_hash[a.content_hash], "content_hash", None)
            continue
        if i in near:
            aid, cid, sim = near[i]
            ids_by_index[i] = (aid, cid)
            sighting(a, aid, cid, "near", round(sim, 4))
            continue
        best: tuple[int, float] | None = None
        bands = sigs[i].bands
        disjoint = band_owner.keys().isdisjoint(bands)
        shared = () if disjoint else {band_owner[b] for b in bands if b in band_owner}.union(
            *(more_owners[b] for b in bands if b in more_owners)
        )
        for j in shared:
            ok, sim = is_copy(sigs[i], local[j])
            if ok and (best is None or sim > best[1]):
                best = (j, sim)
        if best is not None:
            pending_local[i] = (best[0], "near", round(best[1], 4))
            continue
        fresh.append(i)
        fresh_url[a.url_key] = i
        fresh_hash[a.content_hash] = i
        local[i] = sigs[i]
        if disjoint:
            band_owner.update(dict.fromkeys(bands, i))
        else:
            for band in bands:
                if band in band_owner:
                    more_owners.setdefault(band, []).append(i)
                else:
                    band_owner[band] = i

    if fresh:
        # Ids come from the sequence first, so the registry row is born with its cluster
        # (cluster_id = article_id) and every row keyed by it can be written with COPY. The
        # registry's unique keys still guard against a concurrent batch: a lost race is a
        # unique_violation, and load_batch redoes the batch (see _RETRYABLE).
        new_ids = [
            r[0]
            for r in conn.execute(
                sa.text("SELECT nextval('news.article_registry_article_id_seq') FROM generate_series(1, :n)"), {"n": len(fresh)}
            )
        ]
        t, n = _text_or_null, _scalar_or_null
        registry_lines: list[str] = []
        band_lines: list[str] = []
        article_lines: list[str] = []
        first_lines: list[str] = []
        for i, new_id in zip(fresh, new_ids, strict=True):
            a = passed[i]
            aid = str(new_id)
            ids_by_index[i] = (new_id, new_id)
            fresh_out.append(_Fresh(new_id, sigs[i], title_keys[i], a.published_at))
            registry_lines.append(
                f"{aid}\t{aid}\t{t(a.url_key)}\t{t(a.content_hash)}\t{t(a.source_domain)}\t{t(title_keys[i])}\t{n(a.published_at)}\n"
            )
            if sigs[i].bands:
                band_lines.append(f"{aid}\t{sigs[i].band_array}\t{SCHEME}\n")
            article_lines += article_copy_lines(a, new_id)
            first_lines.append(f"{aid}\t{aid}\t{n(a.entry_id)}\t{n(a.feed_id)}\t{t(a.url)}\t{t(a.source_domain)}\tfirst\t1.0\n")
            marks.append((a.entry_id, "loaded", new_id, None))
            result.loaded.append((new_id, a))
            for slug in a.topic_slugs:
                result.per_topic[slug] = result.per_topic.get(slug, 0) + 1
        copy_lines(conn, "news.article_registry", _REGISTRY_COLUMNS, registry_lines)
        copy_lines(conn, "news.lsh_signatures", ("article_id", "bands", "scheme"), band_lines)
        copy_lines(conn, "news.articles", _ARTICLE_COLUMNS, article_lines)
        copy_lines(conn, "news.article_sightings", _SIGHTING_COLUMNS, first_lines)  # new ids: nothing to conflict with
    for i, (j, kind, sim) in pending_local.items():
        aid, cid = ids_by_index[j]
        ids_by_index[i] = (aid, cid)
        sighting(passed[i], aid, cid, kind, sim)

    for d in duplicates:
        if d.article_id is not None:
            aid, cid = d.article_id, d.cluster_id or d.article_id
        elif d.primary is not None and d.primary in ids_by_index:
            aid, cid = ids_by_index[d.primary]
        else:
            continue  # primary was quarantined: the caller quarantines the copy too
        sighting(d.article, aid, cid, d.kind, None)

    if rejected:  # one executemany for the batch's quarantined rows
        conn.execute(
            _INSERT_REJECTED,
            [
                {
                    "entry_id": r.article.entry_id,
                    "feed_id": r.article.feed_id,
                    "url": r.article.url,
                    "record": json.dumps(article_record(r.article), ensure_ascii=False),
                    "failed": list(r.failed),
                    "reason": r.reason,
                    "dq_run_id": dq_run_id,
                }
                for r in rejected
            ],
        )
    for r in rejected:
        marks.append((r.article.entry_id, "quarantined", None, r.reason[:500]))
    result.quarantined += len(rejected)

    if sightings:
        cols = list(zip(*sightings, strict=True))
        conn.execute(
            sa.text(
                f"""
                INSERT INTO news.article_sightings ({', '.join(_SIGHTING_COLUMNS)})
                SELECT * FROM unnest(CAST(:a AS bigint[]), CAST(:c AS bigint[]), CAST(:e AS bigint[]), CAST(:f AS bigint[]),
                                     CAST(:u AS text[]), CAST(:s AS text[]), CAST(:k AS text[]), CAST(:m AS real[]))
                ON CONFLICT (article_id, url) DO NOTHING
                """
            ),
            dict(zip("acefuskm", map(array_literal, cols), strict=True)),
        )
    marks = [m for m in marks if m[0] is not None]
    if marks:
        cols = list(zip(*marks, strict=True))
        conn.execute(
            sa.text(
                """
                UPDATE news.feed_entries e SET status = v.status, article_id = v.article_id, processed_at = now(),
                    claimed_until = NULL, last_error = v.error
                FROM unnest(CAST(:e AS bigint[]), CAST(:s AS text[]), CAST(:a AS bigint[]), CAST(:r AS text[]))
                     AS v(entry_id, status, article_id, error)
                WHERE e.entry_id = v.entry_id
                """
            ),
            dict(zip("esar", map(array_literal, cols), strict=True)),
        )
    return result, fresh_out
