"""Least privilege, secrets and hostile feed text (issue 8): the roles of migration 0007,
no secret in logs / alerts / exception messages, and feed text stored verbatim but
always escaped when shown."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from newsmon import db
from newsmon.alerts import notify_task_failure, raise_alert
from newsmon.config import load_settings
from newsmon.errors import DatabaseError
from newsmon.monitor import collect, render_page
from newsmon.notify import AlertMessage, email_message, slack_payload
from newsmon.pipeline import poll_pass, prepare, process_pass
from newsmon.topics import load_taxonomy
from sqlalchemy.engine import Engine, make_url

from tests.httpserver import Route
from tests.test_alerts import SMTP_PASSWORD, WEBHOOK_TOKEN, config, smtp_server, webhook  # noqa: F401 (fixtures)

DB_PASSWORD = "pg-Secr3t-pa55word"


def _denied(conn: sa.Connection, sql: str) -> bool:
    """True when the statement is refused for lack of privilege (rolled back to a savepoint)."""
    sp = conn.begin_nested()
    try:
        conn.exec_driver_sql(sql)
    except sa.exc.ProgrammingError as exc:
        sp.rollback()
        assert getattr(exc.orig, "pgcode", None) == "42501" or "must be owner" in str(exc.orig), exc
        return True
    sp.rollback()
    return False


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO news.feeds (name, url) VALUES ('f', 'http://x.example/feed?api_key=SECRET')"))
        aid = c.execute(sa.text("INSERT INTO news.article_registry (url_key, content_hash) VALUES ('k', 'h') RETURNING article_id")).scalar()
        c.execute(sa.text("""INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, content_hash, title)
                             VALUES (:a, 'unclassified', 'http://x.example/1', 'http://x.example/1', 'k', 'x.example', 'h', 't')"""),
                  {"a": aid})  # fmt: skip
        c.execute(sa.text("INSERT INTO news.alerts (kind, subject, severity, summary) VALUES ('k', 's', 'error', 'x')"))
    return engine


def test_analyst_reads_articles_and_views_but_cannot_write_or_read_secrets(seeded):
    with seeded.connect() as c:
        c.exec_driver_sql("SET ROLE newsmon_analyst")
        assert c.exec_driver_sql("SELECT count(*) FROM news.articles").scalar() == 1
        for view in ("news.articles_latest", "news.story_clusters", "news.topic_daily", "news.article_sightings"):
            c.exec_driver_sql(f"SELECT * FROM {view} LIMIT 1")
        assert c.exec_driver_sql("SELECT count(*) FROM news.search('t')").scalar() == 0
        assert c.exec_driver_sql("SELECT name, last_status FROM news.feeds").all() == [("f", None)]
        for sql in (
            "INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, content_hash) "
            "VALUES (99, 'unclassified', 'u', 'u', 'u2', 'd', 'h2')",
            "UPDATE news.articles SET title = 'x'",
            "DELETE FROM news.articles",
            "TRUNCATE news.article_sightings",
            "INSERT INTO news.feed_entries (feed_id, entry_key, entry_hash) VALUES (1, 'k', 'h')",
            "SELECT nextval('news.article_registry_article_id_seq')",
            "DROP TABLE news.articles",
            "CREATE TABLE news.evil (x int)",
            # secrets-bearing and internal
            "SELECT url FROM news.feeds", "SELECT * FROM news.feeds", "SELECT config_url FROM news.feeds",
            "SELECT * FROM news.alerts", "SELECT headers FROM news.raw_pages", "SELECT * FROM news.fetch_attempts",
            "SELECT * FROM news.schema_migrations",
        ):  # fmt: skip
            assert _denied(c, sql), sql
        c.exec_driver_sql("RESET ROLE")


def test_writer_writes_rows_but_cannot_change_the_schema(seeded):
    with seeded.connect() as c:
        c.exec_driver_sql("SET ROLE newsmon_writer")
        c.exec_driver_sql("UPDATE news.articles SET title = 'edited'")
        c.exec_driver_sql("INSERT INTO news.article_registry (url_key, content_hash) VALUES ('k2', 'h2')")  # uses the sequence
        c.exec_driver_sql("SELECT * FROM news.alerts")
        for sql in (
            "DROP TABLE news.articles", "ALTER TABLE news.articles ADD COLUMN x int", "TRUNCATE news.articles",
            "CREATE TABLE news.evil (x int)", "DELETE FROM news.schema_migrations",
            "INSERT INTO news.schema_migrations (version, name, checksum) VALUES ('9999', 'x', 'y')",
            "ALTER ROLE newsmon_writer SUPERUSER", "GRANT newsmon_writer TO newsmon_analyst",
        ):  # fmt: skip
            assert _denied(c, sql), sql
        c.exec_driver_sql("RESET ROLE")


@pytest.fixture
def writer_login(engine: Engine, db_url: str) -> Iterator[str]:
    """A LOGIN role that is a member of newsmon_writer only, with a password (cluster-wide: dropped after)."""
    name = f"nm_writer_{os.getpid()}"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
        c.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD '{DB_PASSWORD}' IN ROLE newsmon_writer")
    yield make_url(db_url).set(username=name, password=DB_PASSWORD).render_as_string(hide_password=False)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")


def _scan(text: str, *secrets: str) -> list[str]:
    return [s for s in secrets if s in text]


def test_pipeline_runs_as_writer_and_no_secret_reaches_logs_alerts_or_errors(
    engine, settings, writer_login, sample_server, config, webhook, smtp_server, caplog, capsys, monkeypatch  # noqa: F811
):
    """One pass as the writer login (password in its URL), an alert to webhook + SMTP
    (token in the URL, SMTP password), a failing connection: scan everything produced."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "newsmon", "great_expectations", "trafilatura"):  # other tests may have quietened them
        caplog.set_level(logging.DEBUG, logger=name)
    secrets = (DB_PASSWORD, WEBHOOK_TOKEN, SMTP_PASSWORD)
    taxonomy = prepare(engine, settings)  # the owner: migrations and partitions (DDL)
    monkeypatch.setenv("NEWSMON_DATABASE_URL", writer_login)
    monkeypatch.setenv("NEWSMON_LOG_LEVEL", "DEBUG")
    writer_settings = load_settings()
    assert DB_PASSWORD not in json.dumps(writer_settings.masked())
    writer = db.engine_from_settings(writer_settings)
    try:
        with writer.connect() as c:
            assert c.exec_driver_sql("SELECT current_user").scalar() == make_url(writer_login).username
        polled = poll_pass(writer, writer_settings, only_due=False)
        processed = process_pass(writer, writer_settings, taxonomy)
        assert polled.feeds_polled == 3 and polled.feeds_failed == 0 and processed.articles_loaded > 10
        out = raise_alert(writer, config, kind="feed_down", subject="shaam-news", severity="error",
                          summary=f"connect to {writer_login} failed", payload={"url": writer_login})  # fmt: skip
        assert out.recorded and sorted(out.sent_to) == ["log", "ops_email", "ops_webhook"], out
    finally:
        writer.dispose()
    # a warehouse that refuses the connection: the error names the cause, never the password
    bad_url = make_url(writer_login).set(host="127.0.0.1", port=1, query={}).render_as_string(hide_password=False)
    bad = db.make_engine(bad_url)
    with pytest.raises(DatabaseError) as e:
        process_pass(bad, writer_settings, taxonomy)
    bad.dispose()
    failure = notify_task_failure({"dag_id": "d", "task_id": "t", "exception": f"{e.value} (url {bad_url})"}, engine=engine, config=config)
    assert failure is not None and failure.sent_to
    with engine.connect() as c:
        stored = json.dumps([dict(r) for r in c.execute(sa.text("SELECT * FROM news.alerts")).mappings()], default=str)
        polls = json.dumps([dict(r) for r in c.execute(sa.text("SELECT * FROM news.feed_polls")).mappings()], default=str)
    mails = "\n".join(m.as_string() for _, m in smtp_server.messages)
    captured = capsys.readouterr()
    produced = {
        "logs": "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records),
        "stdout/stderr": captured.out + captured.err,
        "exception": str(e.value) + repr(e.value),
        "alerts table": stored, "feed polls": polls, "webhook posts": json.dumps(webhook.posts, ensure_ascii=False),
        "emails": mails,
    }  # fmt: skip
    assert any("httpx" in r.name for r in caplog.records)  # the webhook POST was logged (redacted)
    assert smtp_server.messages and webhook.posts
    leaks = {where: _scan(text, *secrets) for where, text in produced.items() if _scan(text, *secrets)}
    assert not leaks, leaks


# ---------------------------------------------------------------- hostile feed text

SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SQL = '"; DROP TABLE news.articles; --'
TITLE = f"Syria {SCRIPT} {SQL} 'quoted' \\ back\\slash"


def test_feed_text_is_stored_verbatim_and_escaped_when_shown(engine, settings, http_server):
    body = "".join(f"<p>Paragraph {i} about Damascus and Aleppo in Syria, where officials met on Monday.</p>" for i in range(6))
    page = f"<html><head><title>x</title></head><body><article><h1>{TITLE.replace('<', '&lt;')}</h1>{body}</article></body></html>"
    http_server.routes["/a"] = Route(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})
    rss = (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title><item><guid>g1</guid>'
        f"<title><![CDATA[{TITLE}]]></title><link>{http_server.url('/a')}</link>"
        f"<description><![CDATA[{SCRIPT} {SQL}]]></description></item></channel></rss>"
    )
    http_server.routes["/feed.xml"] = Route(200, rss.encode())
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO news.feeds (name, url) VALUES (:n, :u)"), {"n": "hostile", "u": http_server.url("/feed.xml")})
    taxonomy = load_taxonomy(settings.pipeline.topics_file)
    with engine.begin() as c:
        from newsmon.topics import sync_topics

        sync_topics(c, taxonomy)
    poll_pass(engine, settings)
    summary = process_pass(engine, settings, taxonomy)
    assert summary.articles_loaded == 1, summary
    with engine.connect() as c:
        titles = {r[0] for r in c.execute(sa.text("SELECT title FROM news.articles"))}
        entry = c.execute(sa.text("SELECT title, summary FROM news.feed_entries")).one()
        tables = c.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'news' AND tablename = 'articles'")).scalar()
        data = collect(c)
    assert titles == {TITLE} and entry.title == TITLE and SQL in entry.summary  # byte-identical data
    assert tables == 1  # and nothing was executed
    html = render_page(data)
    assert TITLE not in html and "<script>alert" not in html and "onerror=alert(1)>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html and "DROP TABLE news.articles; --" in html
    m = AlertMessage("feed_down", TITLE, "error", f"summary {SCRIPT}", {"title": TITLE})
    slack = json.dumps(slack_payload(m), ensure_ascii=False)
    assert "<script>" not in slack and "<img" not in slack and "&lt;script&gt;" in slack
    mail = email_message(m, "a@example.org", ["b@example.org"])
    assert "\n" not in mail["Subject"] and "<script>" in mail.get_content()  # plain text mail: shown as text, not markup
