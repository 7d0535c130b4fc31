"""The load stage's write path: COPY formatting, ids, idempotent replays, partition storage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from newsmon.dedup import signature
from newsmon.load import load_batch
from newsmon.models import Article, TopicMatch
from newsmon.normalize import content_hash, normalize_text, url_key

_AWKWARD = 'سطر أول\tمع جدولة\\وشرطة مائلة\r\nوسطر "ثالث" \\N ليس فارغا'


def _article(n: int, *, body: str | None = None, title: str | None = None, topics=(("syria", 2.5, ("سوريا",)),)) -> Article:
    body = body or " ".join(f"كلمة{n}_{i} تقرير{i % 7} إدلب{n}" for i in range(60))
    norm = normalize_text(body)
    url = f"http://load-{n % 3}.example/news/{n}"
    a = Article(
        entry_id=None, feed_id=None, url=url, canonical_url=url, url_key=url_key(url),  # type: ignore[arg-type]
        source_domain=f"load-{n % 3}.example", title=title or f"عنوان الخبر رقم {n} عن ريف إدلب",
        summary=None, body=body, body_source="page", lang="ar", authors=['وكالة "الأنباء"', "a\\b"],
        published_at=datetime(2026, 11, 20, 8, 30, tzinfo=UTC), date_source="page_meta",
        fetched_at=datetime(2026, 11, 20, 9, 0, tzinfo=UTC), content_hash=content_hash(norm),
        norm_title="", norm_body=norm, topics=[TopicMatch(*t) for t in topics],
    )  # fmt: skip
    a.signature = signature(norm)
    return a


def test_copy_keeps_every_character_and_array_element(engine):
    a = _article(1, body=_AWKWARD + "\n" + _article(1).body, title="Title\twith\\tab, \"quotes\" and\nnewline")
    a.tags = ['tag,with,commas', 'quote"d', "{brace}", "back\\slash", ""]
    a.summary = None
    with engine.begin() as c:
        res = load_batch(c, [a], [], [])
    (aid, _), = res.loaded
    with engine.connect() as c:
        row = c.execute(sa.text("SELECT * FROM news.articles WHERE article_id = :i"), {"i": aid}).mappings().one()
    assert row["body"] == a.body and row["title"] == a.title
    assert row["authors"] == a.authors and row["tags"] == a.tags
    assert row["summary"] is None and row["matched_terms"] == ["سوريا"] and row["topic_score"] == 2.5
    assert row["published_at"] == a.published_at and row["cluster_id"] == aid


def test_every_topic_row_shares_the_article_id_and_the_registry_row_is_its_own_cluster(engine):
    a = _article(2, topics=(("syria", 3.0, ("سوريا",)), ("idlib", 4.0, ("إدلب", "ادلب"))))
    b = _article(3, topics=())
    with engine.begin() as c:
        res = load_batch(c, [a, b], [], [])
    ids = {art.url: aid for aid, art in res.loaded}
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT article_id, topic, matched_terms FROM news.articles ORDER BY topic")).all()
        reg = c.execute(sa.text("SELECT article_id, cluster_id FROM news.article_registry ORDER BY 1")).all()
        bands = dict(c.execute(sa.text("SELECT article_id, cardinality(bands) FROM news.lsh_signatures")).all())
    assert [(r.article_id, r.topic) for r in rows] == [(ids[a.url], "idlib"), (ids[a.url], "syria"), (ids[b.url], "unclassified")]
    assert rows[0].matched_terms == ["إدلب", "ادلب"]
    assert all(r.article_id == r.cluster_id for r in reg) and len(reg) == 2
    assert bands == {ids[a.url]: len(a.signature.bands), ids[b.url]: len(b.signature.bands)}


def test_replaying_a_batch_inserts_nothing_and_counts_sightings_once(engine):
    batch = [_article(n) for n in range(10, 16)]
    with engine.begin() as c:
        first = load_batch(c, batch, [], [])
    with engine.begin() as c:
        again = load_batch(c, batch, [], [])
    with engine.connect() as c:
        counts = c.execute(sa.text(
            "SELECT (SELECT count(*) FROM news.articles), (SELECT count(*) FROM news.article_registry), "
            "(SELECT count(*) FROM news.article_sightings), (SELECT count(*) FROM news.lsh_signatures)")).one()  # fmt: skip
    assert len(first.loaded) == 6 and not again.loaded and again.duplicates == 6
    assert tuple(counts) == (6, 6, 6, 6)


def test_a_failed_batch_leaves_nothing_behind(engine):
    good = _article(20)
    bad = _article(21)
    bad.lang = "ar\x00"  # PostgreSQL text cannot hold NUL (upstream stages strip it): the COPY fails
    with pytest.raises(sa.exc.DataError, match="0x00"), engine.begin() as c:
        load_batch(c, [good, bad], [], [])
    with engine.connect() as c:
        left = c.execute(sa.text(
            "SELECT (SELECT count(*) FROM news.articles) + (SELECT count(*) FROM news.article_registry) "
            "+ (SELECT count(*) FROM news.lsh_signatures) + (SELECT count(*) FROM news.article_sightings)")).scalar()  # fmt: skip
    assert left == 0
    with engine.begin() as c:  # and the same batch loads once the bad row is fixed
        bad.lang = "ar"
        assert len(load_batch(c, [good, bad], [], []).loaded) == 2


def test_partitions_store_bodies_uncompressed_out_of_line(engine):
    from newsmon.config import CONFIG_DIR
    from newsmon.topics import load_taxonomy, sync_topics

    with engine.begin() as c:
        sync_topics(c, load_taxonomy(CONFIG_DIR / "topics.yml"))
        storage = dict(c.execute(sa.text(
            "SELECT c.relname, string_agg(DISTINCT a.attstorage::text, '') FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname IN ('body', 'search_tsv') "
            "WHERE i.inhparent = 'news.articles'::regclass GROUP BY 1")).all())  # fmt: skip
        options = dict(c.execute(sa.text(
            "SELECT c.relname, c.reloptions FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'news.articles'::regclass")).all())  # fmt: skip
    assert "articles_syria" in storage and "articles_unclassified" in storage
    assert set(storage.values()) == {"e"}, storage
    # bodies stay in the row up to ~8 kB (0016), in partitions made by topics sync too
    assert all(o == ["toast_tuple_target=8160"] for o in options.values()), options


def test_a_typical_body_is_stored_in_the_row_not_in_toast(engine):
    body = "\n".join(f"فقرة {i} عن تطورات الوضع الميداني في ريف إدلب الجنوبي وتفاصيل الاجتماع الأخير" for i in range(40))
    assert 2500 < len(body.encode()) < 7000
    with engine.begin() as c:
        load_batch(c, [_article(1, body=body)], [], [])
        toast = c.execute(sa.text(
            "SELECT t.relname FROM pg_class p JOIN pg_class t ON t.oid = p.reltoastrelid "
            "WHERE p.oid = 'news.articles_unclassified'::regclass")).scalar()  # fmt: skip
        chunks = c.execute(sa.text(f"SELECT count(*) FROM pg_toast.{toast}")).scalar()
        stored = c.execute(sa.text("SELECT pg_column_size(body) FROM news.articles")).scalar()
    assert chunks == 0 and stored >= len(body.encode())  # inline and uncompressed


def test_article_copy_lines_match_the_generic_formatting_of_every_column():
    """article_copy_lines spells the columns out for speed; it must give exactly the lines
    the column list and the generic field formatter give, None and awkward values included."""
    from newsmon.load import _ARTICLE_COLUMNS, _copy_field, _row, article_copy_lines

    a = _article(7, body=_AWKWARD, title="Title\twith\\tab and\nnewline",
                 topics=(("syria", 2.5, ("سوريا", 'q"uote')), ("idlib", None, ())))  # fmt: skip
    a.tags, a.categories, a.authors = ["back\\slash", "{brace}", ""], [], ['وكالة "الأنباء"']
    a.sitename, a.image, a.encoding, a.summary, a.feed_id, a.entry_id = None, "http://x.example/i.jpg", "windows-1256", None, 3, None
    b = _article(8)
    b.topics, b.published_at, b.fetched_at, b.lang = [], None, None, None
    for art, aid in ((a, 41), (b, 42)):
        topics = art.topics or [type("T", (), {"slug": "unclassified", "score": None, "terms": ()})()]
        expected = ["\t".join(_copy_field(_row(art, aid, aid, t.slug, t.score, t.terms)[c]) for c in _ARTICLE_COLUMNS) + "\n"
                    for t in topics]  # fmt: skip
        assert article_copy_lines(art, aid) == expected


def test_an_in_batch_copy_is_found_through_a_band_an_unrelated_article_had_first(engine):
    """Band collisions inside a batch: B shares a band with A without being a copy of it, and
    C, a copy of B, shares only that band. C must still be matched to B, not missed because
    A was the band's first owner. Signatures are built by hand to force the collision."""
    from newsmon.dedup import Signature

    def grams(tag: str) -> frozenset[str]:
        return frozenset(f"{tag}{i} {tag}{i + 1} {tag}{i + 2}" for i in range(30))

    a, b, c = _article(40), _article(41), _article(42)
    a.signature = Signature(grams("alpha"), (101, 102, 103))
    b.signature = Signature(grams("beta"), (101, 202, 203))  # shares band 101 with A: not a copy
    c.signature = Signature(grams("beta"), (101, 302, 303))  # B's text; its only shared band is 101
    with engine.begin() as conn:
        res = load_batch(conn, [a, b, c], [], [])
    ids = {art.url: aid for aid, art in res.loaded}
    assert set(ids) == {a.url, b.url} and res.duplicates == 1
    with engine.connect() as conn:
        copy = conn.execute(
            sa.text("SELECT article_id, match_kind FROM news.article_sightings WHERE url = :u"), {"u": c.url}
        ).one()
    assert tuple(copy) == (ids[b.url], "near")
