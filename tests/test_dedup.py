"""Dedup: exact keys, near-duplicate detection quality on a labelled set, and the
PostgreSQL-backed cluster index under concurrency."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from newsmon.dedup import dedup_in_batch, is_copy, signature
from newsmon.load import load_batch
from newsmon.models import Article
from newsmon.normalize import content_hash, normalize_text, url_key

EVAL = Path(__file__).parent / "dedup_eval"


def make_article(text: str, url: str, *, entry_id: int | None = None, feed_id: int | None = None) -> Article:
    norm = normalize_text(text)
    return Article(
        entry_id=entry_id, feed_id=feed_id, url=url, canonical_url=url, url_key=url_key(url),  # type: ignore[arg-type]
        source_domain=url.split("/")[2], title=text.split("\n")[0][:80], summary=None, body=text,
        body_source="page", lang="ar", authors=[], published_at=datetime(2026, 11, 28, tzinfo=UTC),
        date_source="page_meta", fetched_at=None, content_hash=content_hash(norm), norm_title="", norm_body=norm,
    )  # fmt: skip


def load_eval() -> tuple[dict[str, str], set[frozenset[str]]]:
    """All documents of the labelled set, and the set of true duplicate pairs."""
    labels = yaml.safe_load((EVAL / "labels.yml").read_text(encoding="utf-8"))
    groups = labels.get("groups", labels)
    docs: dict[str, str] = {}
    dup_pairs: set[frozenset[str]] = set()
    for group, spec in groups.items():
        gdir = EVAL / "stories" / group
        for f in sorted(gdir.glob("*.txt")):
            docs[f"{group}/{f.name}"] = f.read_text(encoding="utf-8")
        family = [f"{group}/original.txt"] + [f"{group}/{c}" for c in spec.get("copies") or []]
        dup_pairs |= {frozenset(p) for p in itertools.combinations(family, 2)}
    return docs, dup_pairs


@pytest.mark.skipif(not (EVAL / "labels.yml").exists(), reason="labelled set not present")
def test_near_duplicate_precision_and_recall_on_labelled_set():
    docs, truth = load_eval()
    sigs = {k: signature(normalize_text(v)) for k, v in docs.items()}
    tp = fp = fn = 0
    mistakes = []
    for a, b in itertools.combinations(sorted(docs), 2):
        shared_band = bool(set(sigs[a].bands) & set(sigs[b].bands))  # the LSH candidate step
        predicted = shared_band and is_copy(sigs[a], sigs[b])[0]
        actual = frozenset((a, b)) in truth
        tp += predicted and actual
        fp += predicted and not actual
        fn += actual and not predicted
        if predicted != actual:
            mistakes.append((a, b, actual, round(is_copy(sigs[a], sigs[b])[1], 3)))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    assert len(truth) >= 30, "labelled set too small to measure"
    assert precision >= 0.99, (precision, mistakes)
    assert recall >= 0.95, (recall, mistakes)


def test_truncated_copy_is_found_although_jaccard_is_low():
    paragraphs = [f"الفقرة رقم {i} تتحدث عن تطورات الوضع الميداني في ريف المحافظة الشمالي وتفاصيل الاجتماع {i * 7}" for i in range(12)]
    full = "\n".join(paragraphs)
    half = "\n".join(paragraphs[:5])
    a, b = signature(normalize_text(full)), signature(normalize_text(half))
    jaccard = len(a.shingles & b.shingles) / len(a.shingles | b.shingles)
    assert jaccard < 0.5
    assert set(a.bands) & set(b.bands)
    assert is_copy(a, b)[0]


def test_short_texts_are_not_near_matched():
    a = signature(normalize_text("قصف على إدلب اليوم"))
    assert not a.bands and not a.indexable


def test_exact_dedup_in_batch_by_url_key_and_hash():
    x = make_article("نص " * 100, "http://a.example/1?utm_source=x")
    y = make_article("نص " * 100, "http://a.example/1")
    z = make_article("نص " * 100, "http://b.example/9")
    unique, dups = dedup_in_batch([x, y, z])
    assert unique == [x]
    assert [(d.kind, d.primary) for d in dups] == [("url", 0), ("content_hash", 0)]


_PROSE = (
    "أعلنت مصادر محلية اليوم أن الاجتماع بحث ملفات المعابر والطرق والمساعدات الإنسانية في الشمال السوري وسط "
    "تحذيرات منظمات دولية من تدهور الأوضاع المعيشية للنازحين داخل المخيمات مع اقتراب فصل الشتاء وارتفاع أسعار "
    "الوقود والخبز والدواء بينما تواصل اللجان الفنية عملها على إعادة تأهيل شبكات المياه والكهرباء والمدارس "
    "والمستشفيات المتضررة في القرى القريبة من خطوط التماس بحسب ما أفاد مسؤولون ومراسلون ميدانيون"
)
_VOCAB = _PROSE.split()


def _story(n: int) -> str:
    """A distinct article per n: same vocabulary, different word order (no shared passages)."""
    import random

    rng = random.Random(n)
    return "\n".join(" ".join(rng.sample(_VOCAB, 20)) + "." for _ in range(8))


def test_copies_become_sightings_of_one_cluster(engine):
    original = make_article(_story(1), "http://site-a.example/story")
    cut = make_article("\n".join(_story(1).split("\n")[:5]), "http://site-b.example/copy")
    intro = make_article("مقدمة محلية عن الخبر.\n" + _story(1), "http://site-c.example/copy2")
    other = make_article(_story(2), "http://site-a.example/other")
    with engine.begin() as c:
        r1 = load_batch(c, [original, other], [], [])
    with engine.begin() as c:
        r2 = load_batch(c, [cut, intro], [], [])
    assert len(r1.loaded) == 2 and not r2.loaded and r2.duplicates == 2
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT cluster_id, copies, sources FROM news.story_clusters ORDER BY copies DESC")).all()
        kinds = c.execute(sa.text("SELECT match_kind, count(*) FROM news.article_sightings GROUP BY 1")).all()
    assert rows[0].copies == 3 and rows[0].sources == 3
    assert rows[1].copies == 1
    assert dict(kinds) == {"first": 2, "near": 2}


def test_concurrent_loaders_never_split_a_story(engine):
    """Two workers load overlapping batches at the same time: one cluster per story."""
    stories = [_story(n) for n in range(10, 16)]
    batch_a = [make_article(s, f"http://a.example/{i}") for i, s in enumerate(stories)]
    batch_b = [make_article("مقدمة.\n" + s, f"http://b.example/{i}") for i, s in enumerate(stories)]
    barrier = threading.Barrier(2)
    errors = []

    def worker(batch):
        try:
            barrier.wait()
            with engine.begin() as c:
                load_batch(c, batch, [], [])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(b,)) for b in (batch_a, batch_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with engine.connect() as c:
        clusters = c.execute(sa.text("SELECT count(*) FROM news.story_clusters")).scalar()
        registry = c.execute(sa.text("SELECT count(*) FROM news.article_registry")).scalar()
        sightings = c.execute(sa.text("SELECT count(*) FROM news.article_sightings")).scalar()
    assert clusters == len(stories) == registry
    assert sightings == 2 * len(stories)


def _titled(title: str, body_n: int, url: str, days: int = 0) -> Article:
    from datetime import timedelta

    a = make_article(_story(body_n), url)
    a.title, a.norm_title = title, normalize_text(title)
    a.published_at = datetime(2026, 11, 20, tzinfo=UTC) + timedelta(days=days)
    return a


def test_same_title_same_source_within_7_days_is_a_duplicate(engine):
    title = "قصف مدفعي يستهدف ريف إدلب الجنوبي"
    first = _titled(title, 31, "http://site-a.example/a1")
    again = _titled(title, 32, "http://site-a.example/a1-updated", days=2)  # other URL, other body
    other_source = _titled(title, 33, "http://site-b.example/b1", days=1)
    much_later = _titled(title, 34, "http://site-a.example/a2", days=12)
    short = _titled("عاجل", 35, "http://site-a.example/a3")
    short_again = _titled("عاجل", 36, "http://site-a.example/a4")
    with engine.begin() as c:
        r1 = load_batch(c, [first, other_source], [], [])
    with engine.begin() as c:
        r2 = load_batch(c, [again, much_later, short, short_again], [], [])
    assert len(r1.loaded) == 2
    assert kinds_of(engine).get(again.url) == "title", kinds_of(engine)
    assert {a.url for _, a in r2.loaded} == {much_later.url, short.url, short_again.url}, kinds_of(engine)
    with engine.connect() as c:
        kinds = dict(c.execute(sa.text("SELECT url, match_kind FROM news.article_sightings")).all())
    assert kinds[again.url] == "title", kinds


def test_same_title_in_one_batch():
    a = _titled("Turkish and Russian troops patrol the M4 highway", 41, "http://x.example/1")
    b = _titled("Turkish and Russian troops patrol the M4 highway", 42, "http://x.example/2", days=1)
    unique, dups = dedup_in_batch([a, b])
    assert unique == [a] and dups[0].kind == "title"


def kinds_of(engine) -> dict[str, str]:
    with engine.connect() as c:
        return dict(c.execute(sa.text("SELECT url, match_kind FROM news.article_sightings")).all())


def test_signature_has_the_documented_number_of_band_keys():
    from newsmon.dedup import BANDS_FULL, BANDS_LEAD

    sig = signature(normalize_text(_story(3)))
    assert len(sig.bands) == BANDS_FULL + BANDS_LEAD == 22
    assert len(set(sig.bands)) == len(sig.bands)  # kind and band number are hashed in


@pytest.mark.db
def test_reindex_resigns_rows_of_an_older_scheme_so_their_copies_are_found_again(engine):
    """A row stored by band scheme 1 has keys today's signatures can never share; after
    `newsmon dedup reindex` the stored article is a near-duplicate candidate again."""
    from newsmon.dedup import SCHEME, find_near_duplicates, reindex_signatures

    original = make_article(_story(11), "http://a.example/orig")
    with engine.begin() as c:
        [(aid, _)] = load_batch(c, [original], [], []).loaded
        # what scheme 1 left behind: other keys, scheme 1
        c.execute(sa.text("UPDATE news.lsh_signatures SET bands = ARRAY[1, 2, 3]::bigint[], scheme = 1 WHERE article_id = :a"),
                  {"a": aid})  # fmt: skip
    copy = signature(normalize_text("\n".join(_story(11).split("\n")[:5])))
    with engine.connect() as c:
        assert find_near_duplicates(c, [copy]) == {}
    assert reindex_signatures(engine, batch=1) == 1
    assert reindex_signatures(engine) == 0  # idempotent
    with engine.connect() as c:
        scheme, bands = c.execute(sa.text("SELECT scheme, bands FROM news.lsh_signatures WHERE article_id = :a"), {"a": aid}).one()
        hit = find_near_duplicates(c, [copy])
    assert scheme == SCHEME and tuple(bands) == signature(original.norm_body).bands
    assert hit[0][0] == aid


def test_copy_cut_to_its_first_paragraphs_is_found_by_the_lead_signature():
    paragraphs = [f"الفقرة رقم {i} تتحدث عن تطورات الوضع الميداني في ريف المحافظة الشمالي وتفاصيل الاجتماع {i * 7}" for i in range(20)]
    full, cut = signature(normalize_text("\n".join(paragraphs))), signature(normalize_text("\n".join(paragraphs[:4])))
    from newsmon.dedup import BANDS_FULL

    assert set(full.bands[BANDS_FULL:]) & set(cut.bands[BANDS_FULL:])  # the lead bands match
    assert is_copy(full, cut)[0]


@pytest.mark.db
def test_exact_key_lookup_probes_the_indexes_on_a_large_registry(engine):
    """stored_matches' lookup stays index probes, not a scan of the registry, for a full
    batch of keys once the registry is large (the OR-of-ANY form it replaced went to a
    sequential scan at ~100k articles)."""
    from newsmon.dedup import EXACT_KEYS_SQL

    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO news.article_registry (article_id, url_key, content_hash, cluster_id) "
            "SELECT g, 'u/' || g, md5(g::text) || md5((g + 1)::text), g FROM generate_series(1, 200000) g"))  # fmt: skip
        c.exec_driver_sql("ANALYZE news.article_registry")
    keys = {"u": [f"u/{i}" for i in range(1, 2000, 2)], "h": [f"{i:064x}" for i in range(1000)]}
    with engine.connect() as c:
        plan = "\n".join(c.execute(sa.text(f"EXPLAIN {EXACT_KEYS_SQL.text}"), keys).scalars())
        found = c.execute(EXACT_KEYS_SQL, keys).all()
    assert "Seq Scan on article_registry" not in plan, plan
    assert "article_registry_url_key_key" in plan and "article_registry_content_hash_key" in plan, plan
    assert sorted(r.url_key for r in found) == sorted(keys["u"])
