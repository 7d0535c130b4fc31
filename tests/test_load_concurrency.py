"""Loaders in parallel: optimistic writes, validation against the commit journal under the
cluster lock, redo under the lock on a conflict, retry of a deadlock victim. Each test
interleaves two real transactions on a real PostgreSQL deterministically: the first holds
the lock (its transaction open) until the second is seen waiting for it."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from newsmon.load import CLUSTER_LOCK, LoadResult, load_batch
from newsmon.models import Article
from newsmon.normalize import normalize_text

from tests.test_dedup import _story, make_article

pytestmark = pytest.mark.db


def _waiting_for_lock(engine: sa.Engine) -> bool:
    with engine.connect() as c:
        return bool(
            c.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND NOT granted"),
                {"k": CLUSTER_LOCK & 0xFFFFFFFF},
            ).scalar()
        )


def _waiting_for_a_row(engine: sa.Engine) -> bool:
    """Some backend waits for another transaction (e.g. on a unique key it inserted)."""
    with engine.connect() as c:
        return bool(
            c.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted")).scalar()
        )


def _interleave(
    engine: sa.Engine, first: list[Article], second: list[Article], waiting=_waiting_for_lock
) -> tuple[LoadResult, LoadResult]:
    """``first`` loads and keeps its transaction (and the cluster lock) open; ``second``
    starts meanwhile, so it cannot see ``first``; ``first`` commits once ``second`` waits
    (``waiting``: by default for the lock, i.e. after ``second`` has made and written its
    decisions)."""
    out: dict[str, LoadResult] = {}
    errors: list[BaseException] = []

    def run_second() -> None:
        try:
            with engine.begin() as c:
                out["second"] = load_batch(c, second, [], [])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with engine.begin() as c1:
        out["first"] = load_batch(c1, first, [], [])
        t = threading.Thread(target=run_second)
        t.start()
        deadline = time.monotonic() + 30
        while not waiting(engine):
            assert time.monotonic() < deadline, "the second loader never reached the lock"
            assert t.is_alive(), errors
            time.sleep(0.02)
    t.join(60)
    assert not errors, errors
    return out["first"], out["second"]


def _counts(engine: sa.Engine) -> tuple[int, int, int, int]:
    with engine.connect() as c:
        return c.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM news.story_clusters), (SELECT count(*) FROM news.article_registry), "
                "(SELECT count(*) FROM news.article_sightings), (SELECT count(DISTINCT article_id) FROM news.articles)"
            )
        ).one()  # type: ignore[return-value]


def test_copies_loaded_concurrently_end_in_one_cluster_and_the_later_batch_is_redone(engine):
    stories = [_story(n) for n in range(40, 46)]
    a = [make_article(s, f"http://a.example/{i}") for i, s in enumerate(stories)]
    # syndicated copies: another outlet, a local intro, cut to the first paragraphs
    b = [make_article("مقدمة من مراسلنا في المدينة.\n" + "\n".join(s.split("\n")[:6]), f"http://b.example/{i}")
         for i, s in enumerate(stories)]  # fmt: skip
    ra, rb = _interleave(engine, a, b)
    assert ra.attempts == 1 and len(ra.loaded) == len(stories)
    assert rb.attempts == 2  # its optimistic attempt made new articles of copies: conflict, redone
    assert rb.loaded == [] and rb.duplicates == len(stories)
    clusters, registry, sightings, articles = _counts(engine)
    assert (clusters, registry, articles) == (len(stories),) * 3
    assert sightings == 2 * len(stories)
    with engine.connect() as c:
        kinds = dict(c.execute(sa.text("SELECT match_kind, count(*) FROM news.article_sightings GROUP BY 1")).all())
    assert kinds == {"first": len(stories), "near": len(stories)}


def test_different_stories_loaded_concurrently_both_commit_optimistically(engine):
    a = [make_article(_story(n), f"http://a.example/{n}") for n in range(50, 55)]
    b = [make_article(_story(n), f"http://b.example/{n}") for n in range(60, 65)]
    ra, rb = _interleave(engine, a, b)
    assert (ra.attempts, rb.attempts) == (1, 1)  # the journal had rows to check, none conflicted
    assert len(ra.loaded) == len(rb.loaded) == 5
    assert _counts(engine) == (10, 10, 10, 10)
    with engine.connect() as c:
        journal = c.execute(sa.text("SELECT array_length(article_ids, 1) FROM news.load_journal ORDER BY seq")).scalars().all()
    assert journal == [5, 5]


def test_same_title_from_the_same_source_loaded_concurrently_is_one_article(engine):
    title = "قصف مدفعي يستهدف ريف إدلب الجنوبي صباح اليوم"

    def titled(n: int, url: str) -> Article:
        art = make_article(_story(n), url)
        art.title, art.norm_title = title, normalize_text(title)
        return art

    _, rb = _interleave(engine, [titled(70, "http://site.example/a")], [titled(71, "http://site.example/a-updated")])
    assert rb.attempts == 2 and rb.loaded == [] and rb.duplicates == 1
    with engine.connect() as c:
        kinds = sorted(c.execute(sa.text("SELECT match_kind FROM news.article_sightings")).scalars())
    assert kinds == ["first", "title"]


def test_the_same_body_loaded_concurrently_is_one_article_and_a_sighting(engine):
    """The registry's unique keys decide a race on an exact key: the second loader's COPY
    waits for the first's uncommitted row, fails with unique_violation once it commits, and
    the batch is redone, now seeing the stored article."""
    first, second = make_article(_story(72), "http://a.example/72"), make_article(_story(72), "http://b.example/72")
    ra, rb = _interleave(engine, [first], [second], waiting=_waiting_for_a_row)
    assert ra.attempts == 1 and len(ra.loaded) == 1
    assert rb.attempts == 2 and rb.loaded == [] and rb.duplicates == 1
    assert _counts(engine) == (1, 1, 2, 1)
    with engine.connect() as c:
        kinds = sorted(c.execute(sa.text("SELECT match_kind FROM news.article_sightings")).scalars())
    assert kinds == ["content_hash", "first"]


def test_exact_keys_repeated_inside_a_batch_become_sightings_of_the_first(engine):
    """A caller that skipped dedup_in_batch: the repeated keys never reach the registry COPY
    (which would fail the whole batch on every redo)."""
    a = make_article(_story(74), "http://site.example/a")
    same_url = make_article(_story(75), "http://site.example/a")
    same_body = make_article(_story(74), "http://other.example/b")
    with engine.begin() as c:
        res = load_batch(c, [a, same_url, same_body], [], [])
    assert res.attempts == 1 and [x.url for _, x in res.loaded] == [a.url] and res.duplicates == 2
    with engine.connect() as c:
        kinds = sorted(c.execute(sa.text("SELECT match_kind FROM news.article_sightings")).scalars())
    assert kinds == ["content_hash", "first"]  # a URL already recorded for the article is one sighting


def test_a_deadlock_victim_is_retried_under_the_lock(engine):
    """The database aborts one of two loaders waiting on each other (SQLSTATE 40P01); the
    loader rolls back to its savepoint and redoes the batch, losing nothing. The error is
    raised by PostgreSQL itself, from a trigger that fires once."""
    _raise_once(engine, "deadlock_detected")
    arts = [make_article(_story(n), f"http://a.example/{n}") for n in range(80, 83)]
    with engine.begin() as c:
        res = load_batch(c, arts, [], [])
    assert res.attempts == 2 and len(res.loaded) == 3
    assert _counts(engine) == (3, 3, 3, 3)


def test_other_database_errors_are_not_retried(engine):
    _raise_once(engine, "check_violation")
    with pytest.raises(sa.exc.DBAPIError, match="injected"), engine.begin() as c:
        load_batch(c, [make_article(_story(90), "http://a.example/90")], [], [])
    assert _counts(engine) == (0, 0, 0, 0)


def _raise_once(engine: sa.Engine, condition: str) -> None:
    """A trigger on news.article_sightings that raises ``condition`` the first time only:
    the count lives in a sequence, which a rollback does not undo."""
    with engine.begin() as c:
        c.exec_driver_sql("CREATE SEQUENCE public.fired_seq")
        c.exec_driver_sql(
            f"""
            CREATE FUNCTION public.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('public.fired_seq') = 1 THEN
                    RAISE EXCEPTION 'injected' USING ERRCODE = '{condition}';
                END IF;
                RETURN NULL;
            END $$
            """
        )
        c.exec_driver_sql(
            "CREATE TRIGGER fail_once BEFORE INSERT ON news.article_sightings FOR EACH STATEMENT EXECUTE FUNCTION public.fail_once()"
        )


def test_the_lock_is_held_to_commit_by_a_batch_with_new_articles_only(engine):
    """A batch that creates articles holds the cluster lock until its transaction commits (its
    journal row must be visible to the next validator); a batch of copies only needs none."""
    arts = [make_article(_story(n), f"http://a.example/{n}") for n in range(95, 97)]

    def held(c: sa.Connection) -> int:
        return c.execute(
            sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND pid = pg_backend_pid()"),
            {"k": CLUSTER_LOCK & 0xFFFFFFFF},
        ).scalar_one()

    with engine.begin() as c:
        assert len(load_batch(c, arts, [], []).loaded) == 2
        assert held(c) == 1
    with engine.begin() as c:
        res = load_batch(c, [make_article(_story(95), "http://b.example/95")], [], [])  # a copy
        assert res.duplicates == 1 and not res.loaded
        assert held(c) == 0
