"""Dedup stage: exact duplicates (canonical-URL key, normalised-body hash) and near
duplicates (MinHash LSH candidates verified by containment; see below).

Two layers: inside a batch (pure), and against the warehouse (one query for the whole
batch). The database has the last word: ``news.article_registry`` carries unique
constraints on both keys, and the loader turns a lost race into a sighting.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsmon.db import array_literal
from newsmon.models import Article
from newsmon.normalize import normalize_text


@dataclass(frozen=True)
class Duplicate:
    """``article`` is a copy of an earlier one: a batch row (``primary``) or a stored article."""

    article: Article
    kind: str  # 'url' or 'content_hash'
    primary: int | None = None  # index into the batch's unique list
    article_id: int | None = None  # stored article
    cluster_id: int | None = None


def dedup_in_batch(articles: Sequence[Article]) -> tuple[list[Article], list[Duplicate]]:
    """Keep the first article per url_key, content_hash and (source, title, 7 days)."""
    unique: list[Article] = []
    dups: list[Duplicate] = []
    by_url: dict[str, int] = {}
    by_hash: dict[str, int] = {}
    by_title: dict[str, int] = {}
    for a in articles:
        tkey = article_title_key(a)
        if a.url_key in by_url:
            dups.append(Duplicate(a, "url", primary=by_url[a.url_key]))
            continue
        if a.content_hash in by_hash:
            dups.append(Duplicate(a, "content_hash", primary=by_hash[a.content_hash]))
            continue
        if tkey and tkey in by_title:
            first = unique[by_title[tkey]]
            if within_title_window(first.published_at, a.published_at):
                dups.append(Duplicate(a, "title", primary=by_title[tkey]))
                continue
        idx = len(unique)
        unique.append(a)
        by_url[a.url_key] = idx
        by_hash[a.content_hash] = idx
        if tkey:
            by_title.setdefault(tkey, idx)
    return unique, dups


def within_title_window(a: datetime | None, b: datetime | None) -> bool:
    """Whether two publication times are close enough for a same-title duplicate."""
    if a is None or b is None:
        return False
    return abs((a - b).total_seconds()) <= TITLE_WINDOW_DAYS * 86400


TITLE_WINDOW_DAYS = 7
TITLE_MIN_WORDS = 4  # "Weather", "Live updates": too generic to identify a story


def title_key(source_domain: str, norm_title: str) -> str | None:
    """Key of (source, normalised title); None for titles too short to identify a story."""
    words = _WORD.findall(norm_title or "")
    if len(words) < TITLE_MIN_WORDS:
        return None
    return hashlib.sha256(f"{source_domain}|{' '.join(words)}".encode()).hexdigest()


def article_title_key(a: Article) -> str | None:
    return title_key(a.source_domain, a.norm_title or normalize_text(a.title))


# One index probe per key. `url_key = ANY(:u) OR content_hash = ANY(:h)` reads the same rows,
# but with a batch of keys PostgreSQL prices the OR of two 1,000-element ANY scans above a
# (parallel) sequential scan of the registry once it holds ~100k articles: 87 ms per batch at
# 300k and growing with the store, against ~3 ms for this (test_dedup checks the plan).
EXACT_KEYS_SQL = sa.text(
    """
    SELECT r.article_id, r.cluster_id, r.url_key, r.content_hash
    FROM unnest(CAST(:u AS text[])) AS q(k) JOIN news.article_registry r ON r.url_key = q.k
    UNION
    SELECT r.article_id, r.cluster_id, r.url_key, r.content_hash
    FROM unnest(CAST(:h AS text[])) AS q(k) JOIN news.article_registry r ON r.content_hash = q.k
    """
)


def stored_matches(
    conn: Connection, articles: Sequence[Article], title_keys: Sequence[str | None] | None = None
) -> dict[int, tuple[int, int, str]]:
    """Articles (by index) that share an exact key with a stored article: url_key,
    content_hash, or source + normalised title within TITLE_WINDOW_DAYS.
    index -> (article_id, cluster_id, kind); url beats content_hash beats title.
    ``title_keys``: the articles' ``article_title_key``s when the caller has them already."""
    if not articles:
        return {}
    if title_keys is None:
        title_keys = [article_title_key(a) for a in articles]
    rows = conn.execute(
        EXACT_KEYS_SQL, {"u": array_literal(a.url_key for a in articles), "h": array_literal(a.content_hash for a in articles)}
    ).all()
    by_url = {r.url_key: (r.article_id, r.cluster_id or r.article_id, "url") for r in rows}
    by_hash = {r.content_hash: (r.article_id, r.cluster_id or r.article_id, "content_hash") for r in rows}
    by_title: dict[int, tuple[int, int, str]] = {}
    titled = [(i, k, a.published_at) for i, (a, k) in enumerate(zip(articles, title_keys, strict=True)) if k and a.published_at]
    if titled:
        for r in conn.execute(
            sa.text(
                """
                SELECT DISTINCT ON (q.i) q.i, r.article_id, r.cluster_id
                FROM unnest(CAST(:idx AS int[]), CAST(:keys AS text[]), CAST(:ts AS timestamptz[])) AS q(i, k, ts)
                JOIN news.article_registry r
                  ON r.title_key = q.k AND r.published_at BETWEEN q.ts - make_interval(days => :w)
                                                               AND q.ts + make_interval(days => :w)
                ORDER BY q.i, r.article_id
                """
            ),
            {"idx": array_literal(i for i, _, _ in titled), "keys": array_literal(k for _, k, _ in titled),
             "ts": array_literal(t for _, _, t in titled),
             "w": TITLE_WINDOW_DAYS},
        ):  # fmt: skip
            by_title[r.i] = (r.article_id, r.cluster_id or r.article_id, "title")
    out: dict[int, tuple[int, int, str]] = {}
    for i, a in enumerate(articles):
        hit = by_url.get(a.url_key) or by_hash.get(a.content_hash) or by_title.get(i)
        if hit is not None:
            out[i] = hit
    return out


def split_known(conn: Connection, articles: Sequence[Article]) -> tuple[list[Article], list[Duplicate]]:
    """Separate articles already in the warehouse (any exact key) from new ones."""
    stored = stored_matches(conn, articles)
    new = [a for i, a in enumerate(articles) if i not in stored]
    known = [Duplicate(a, stored[i][2], article_id=stored[i][0], cluster_id=stored[i][1]) for i, a in enumerate(articles) if i in stored]
    return new, known


# ---------------------------------------------------------------- near duplicates
#
# Syndicated copies differ by template, headline, an added intro, a byline, light edits,
# and are often cut to their first paragraphs. A copy cut to half its length has a
# Jaccard similarity near 0.5 with the full story although all of it is contained in
# it, so candidates are found with MinHash LSH and then *verified by containment*:
#
#   keys        word 4-grams of the normalised body (KEY_WORDS)
#   signature   MinHash over the keys, 16 bands of 2 rows (32 permutations); a second
#               signature over the first LEAD_SHINGLES 4-grams (the lead survives
#               truncation), 6 bands of 2 rows: 22 band hashes per article
#   candidates  any article sharing at least one band hash (either signature); the band
#               hashes live in news.lsh_signatures (GIN-indexed array), so lookup cost
#               does not grow with the store
#   verify      containment |A ∩ B| / min(|A|, |B|) >= CONTAINMENT_MIN on exact word
#               3-gram sets, and both texts have at least MIN_SHINGLES 3-grams
#
# Banding 16x2 gives P(candidate) = 0.99 at J=0.5, 0.94 at J=0.4 and 0.77 at J=0.3. A copy
# cut to its first paragraphs keeps the lead, whose signature then matches (near) exactly,
# so the lead bands catch deep truncations. Separately written reports of one event share
# names, numbers and a short quote but few word 4-grams (containment typically < 0.1), so
# they rarely become candidates and verification keeps them apart.
#
# Every band hash is one key to insert and one to probe in the GIN index, and those two
# dominated load time, so the scheme is chosen for few keys (BENCHMARKS.md has the
# comparison). Two rows per band need far fewer bands than three for the same sensitivity
# (J^2 vs J^3 per band); on 3-grams they also make unrelated articles that share a few
# stock phrases candidates, on 4-grams much less so (candidates are verified anyway, so a
# false candidate costs a body read, never a wrong merge). Averaged over 10 permutation
# seeds on the labelled set (tests/dedup_eval), candidate recall is 0.99 (min 0.97) with
# 22 keys, against 0.98 (min 0.93) for scheme 1 (word 3-grams, 38 + 4 bands of 3 rows,
# 42 keys), and 55 of 56 copies cut to 20-30 % are found (scheme 1: 50).
#
# SCHEME numbers the band scheme; news.lsh_signatures.scheme records it per row, and
# ``newsmon dedup reindex`` re-signs stored articles of an older scheme (their keys can
# never match today's: the kind byte hashed into every band differs).

SCHEME = 2
SHINGLE_WORDS = 3  # verification shingles
KEY_WORDS = 4  # MinHash (band key) shingles
BAND_ROWS = 2
BANDS_FULL = 16
BANDS_LEAD = 6
LEAD_SHINGLES = 40
MIN_SHINGLES = 15
CONTAINMENT_MIN = 0.6
KIND_FULL, KIND_LEAD = 2, 3  # scheme 1 used 0 and 1
_WORD = re.compile(r"\w+")


def _grams(words: Sequence[str], n: int) -> list[str]:
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def shingles(norm_text: str) -> list[str]:
    """Word 3-grams of an already normalised text, in order."""
    return _grams(_WORD.findall(norm_text), SHINGLE_WORDS)


def _band_hashes(values: Sequence[int], kind: int) -> list[int]:
    """One 64-bit hash per band; kind and band number are hashed in, so equal values in
    different bands never collide and one flat array can hold every band."""
    out = []
    for b in range(len(values) // BAND_ROWS):
        chunk = bytes((kind, b)) + b"".join(int(v).to_bytes(4, "little") for v in values[b * BAND_ROWS : (b + 1) * BAND_ROWS])
        out.append(int.from_bytes(hashlib.blake2b(chunk, digest_size=8).digest(), "big", signed=True))
    return out


@dataclass(frozen=True)
class Signature:
    shingles: frozenset[str]
    bands: tuple[int, ...]  # band hashes of the whole-body and the lead signatures

    @property
    def indexable(self) -> bool:
        return len(self.shingles) >= MIN_SHINGLES

    @cached_property
    def band_array(self) -> str:
        """The band hashes as a PostgreSQL array literal (``{1,2,...}``): the loader sends
        them twice (the probe and the band index COPY), so they are formatted once."""
        return "{" + ",".join(map(str, self.bands)) + "}"


def signature(norm_text: str) -> Signature:
    from datasketch import MinHash

    words = _WORD.findall(norm_text)
    sh = frozenset(_grams(words, SHINGLE_WORDS))
    if len(sh) < MIN_SHINGLES:
        return Signature(sh, ())
    keys = [k.encode("utf-8") for k in _grams(words, KEY_WORDS)]
    full = MinHash(num_perm=BANDS_FULL * BAND_ROWS)
    full.update_batch(keys)
    lead = MinHash(num_perm=BANDS_LEAD * BAND_ROWS)
    lead.update_batch(keys[:LEAD_SHINGLES])
    bands = _band_hashes(full.hashvalues.tolist(), KIND_FULL) + _band_hashes(lead.hashvalues.tolist(), KIND_LEAD)
    return Signature(sh, tuple(bands))


def containment(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


def is_copy(a: Signature, b: Signature) -> tuple[bool, float]:
    c = containment(a.shingles, b.shingles)
    ok = min(len(a.shingles), len(b.shingles)) >= MIN_SHINGLES and c >= CONTAINMENT_MIN
    return ok, c


def stored_shingles(conn: Connection, article_ids: set[int]) -> dict[int, tuple[int, Signature]]:
    """article_id -> (cluster_id, Signature with the shingle set only) of stored articles:
    what verifying a candidate needs (containment), not a MinHash of it."""
    return {
        r.article_id: (r.cluster_id or r.article_id, Signature(frozenset(shingles(normalize_text(r.body or ""))), ()))
        for r in conn.execute(
            sa.text(
                """
                SELECT DISTINCT ON (article_id) article_id, cluster_id, body FROM news.articles
                WHERE article_id = ANY(CAST(:ids AS bigint[])) ORDER BY article_id
                """
            ),
            {"ids": array_literal(sorted(article_ids))},
        )
    }


def find_near_duplicates(conn: Connection, sigs: Sequence[Signature]) -> dict[int, tuple[int, int, float]]:
    """For each signature (by index), the best stored article it is a copy of:
    (article_id, cluster_id, containment). Two statements for the whole batch."""
    idx = [i for i, sig in enumerate(sigs) if sig.bands]
    if not idx:
        return {}
    # one GIN probe per document (its own band array), all documents in one statement
    rows = conn.execute(
        sa.text(
            """
            SELECT d.i AS idx, s.article_id
            FROM unnest(CAST(:q AS text[])) WITH ORDINALITY AS d(bands, i)
            JOIN LATERAL (SELECT article_id FROM news.lsh_signatures
                          WHERE bands && CAST(d.bands AS bigint[])) s ON true
            """
        ),
        {"q": array_literal(sigs[i].band_array for i in idx)},
    ).all()
    cand: dict[int, set[int]] = {}
    for r in rows:
        cand.setdefault(idx[r.idx - 1], set()).add(r.article_id)
    if not cand:
        return {}
    bodies = stored_shingles(conn, set().union(*cand.values()))
    best: dict[int, tuple[int, int, float]] = {}
    for i, ids in cand.items():
        for aid in sorted(ids):
            if aid not in bodies:
                continue
            cluster, other = bodies[aid]
            ok, sim = is_copy(sigs[i], other)
            prev = best.get(i)
            if ok and (prev is None or sim > prev[2]):
                best[i] = (aid, cluster, sim)
    return best


def reindex_signatures(engine: Engine, *, batch: int = 1000) -> int:
    """Re-sign stored canonical articles whose band hashes are of an older scheme, from
    their stored bodies; returns how many. Until then their keys cannot match today's,
    so run it after an upgrade that changes SCHEME (the maintenance DAG does). Idempotent,
    in short transactions that skip rows another reindex holds."""
    done = 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                sa.text(
                    """
                    SELECT s.article_id, a.body FROM news.lsh_signatures s
                    JOIN LATERAL (SELECT body FROM news.articles WHERE article_id = s.article_id LIMIT 1) a ON true
                    WHERE s.scheme < :scheme ORDER BY s.article_id LIMIT :n FOR UPDATE OF s SKIP LOCKED
                    """
                ),
                {"scheme": SCHEME, "n": batch},
            ).all()
            if not rows:
                return done
            conn.execute(
                sa.text(
                    """
                    UPDATE news.lsh_signatures s SET bands = CAST(v.bands AS bigint[]), scheme = :scheme
                    FROM unnest(CAST(:ids AS bigint[]), CAST(:bands AS text[])) AS v(article_id, bands)
                    WHERE s.article_id = v.article_id
                    """
                ),
                {
                    "scheme": SCHEME,
                    "ids": array_literal(r.article_id for r in rows),
                    "bands": array_literal(signature(normalize_text(r.body or "")).band_array for r in rows),
                },
            )
            done += len(rows)


def prune_orphan_bands(conn: Connection) -> int:
    """Delete band rows whose article left the registry; returns how many. The band table
    has no foreign key (migration 0018: it is an index, and the key's per-row check was a
    tenth of its load cost), so a registry row deleted by hand leaves its bands behind.
    They are inert (candidates are verified against stored bodies); this keeps the index
    clean. newsmon itself never deletes registry rows; the maintenance DAG runs it."""
    return conn.execute(
        sa.text(
            "DELETE FROM news.lsh_signatures s "
            "WHERE NOT EXISTS (SELECT 1 FROM news.article_registry r WHERE r.article_id = s.article_id)"
        )
    ).rowcount
