"""Alerts reach people: a real webhook receiver and a real SMTP server on 127.0.0.1,
the news.alerts ledger on a real PostgreSQL, cooldown, resolution, no leaked secrets."""

from __future__ import annotations

import json
import logging
import socket
import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from newsmon.alerts import (
    AlertMessage,
    list_alerts,
    load_alerts_config,
    notify_task_failure,
    raise_alert,
    resolve_alert,
    slack_escape,
    slack_payload,
)
from newsmon.errors import ConfigError
from newsmon.health import check_feeds, check_validation, check_volumes

WEBHOOK_TOKEN = "T0SECRET/B0SECRET/xoxSecretWebhookToken"
SMTP_PASSWORD = "smtp-pa55-w0rd-secret"


# ---------------------------------------------------------------- receivers


class Webhook:
    """A POST receiver on 127.0.0.1 that records JSON bodies."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.paths: list[str] = []
        self.status = 200
        rec = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                rec.paths.append(self.path)
                rec.posts.append(json.loads(body))
                self.send_response(rec.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/services/{WEBHOOK_TOKEN}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook():
    w = Webhook()
    yield w
    w.close()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=default_policy)))
        return "250 OK"


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    box = _Mailbox()

    def authenticator(server, session, envelope, mechanism, auth_data):
        box.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == SMTP_PASSWORD.encode())

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(box, hostname="127.0.0.1", port=port, authenticator=authenticator, auth_require_tls=False)
    ctl.start()
    box.port = port  # type: ignore[attr-defined]
    yield box
    ctl.stop()


ALERTS_YML = """\
notifiers:
  - name: log
    type: log
  - name: ops_webhook
    type: webhook
    url: ${TEST_WEBHOOK_URL}
    timeout_s: 5
  - name: ops_email
    type: smtp
    host: 127.0.0.1
    port: ${TEST_SMTP_PORT}
    starttls: false
    username_env: TEST_SMTP_USER
    password_env: TEST_SMTP_PASSWORD
    from: newsmon@example.org
    to: [ops@example.org]
    min_severity: warning
thresholds:
  cooldown_minutes: 60
  feed_down_failures: 3
"""


@pytest.fixture
def config(tmp_path, monkeypatch, webhook, smtp_server):
    monkeypatch.setenv("TEST_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("TEST_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("TEST_SMTP_USER", "alerts")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", SMTP_PASSWORD)
    p = tmp_path / "alerts.yml"
    p.write_text(ALERTS_YML, encoding="utf-8")
    cfg = load_alerts_config(p)
    assert [n.name for n in cfg.notifiers] == ["log", "ops_webhook", "ops_email"]
    return cfg


def _alert_rows_text(engine) -> str:
    with engine.connect() as c:
        return json.dumps([dict(r) for r in c.execute(sa.text("SELECT * FROM news.alerts")).mappings()], default=str)


# ---------------------------------------------------------------- delivery


def test_alert_reaches_webhook_and_email_without_leaking_secrets(engine, config, webhook, smtp_server, caplog):
    caplog.set_level(logging.DEBUG)
    hostile = "Breaking <!channel> & <http://evil.example|click me> *bold*"
    out = raise_alert(
        engine, config, kind="feed_down", subject="feed:shaam-news", severity="error",
        summary=f"feed title was: {hostile}", payload={"last_error": hostile, "failures": 4},
    )  # fmt: skip
    assert out.new and not out.suppressed and out.errors == []
    assert sorted(out.sent_to) == ["log", "ops_email", "ops_webhook"]

    # webhook: one Slack-compatible payload, feed text escaped (no mention, no link injection)
    assert len(webhook.posts) == 1
    body = webhook.posts[0]
    assert set(body) >= {"text", "blocks"}
    raw = json.dumps(body)
    assert "<!channel>" not in raw and "<http://evil" not in raw
    assert "&lt;!channel&gt; &amp; &lt;http://evil.example|click me&gt;" in body["blocks"][0]["text"]["text"]
    assert "feed_down" in body["text"] and "shaam-news" in body["text"]

    # email: delivered to the configured recipient after AUTH with the password from the env
    assert smtp_server.logins == [(b"alerts", SMTP_PASSWORD.encode())]
    assert len(smtp_server.messages) == 1
    rcpt, msg = smtp_server.messages[0]
    assert rcpt == ["ops@example.org"]
    assert msg["Subject"].startswith("[newsmon ERROR] feed_down: feed:shaam-news")
    assert "failures: 4" in msg.get_content()

    # the ledger names notifiers, never URLs or passwords; nor do the logs
    row = list_alerts(engine)[0]
    assert row["sent_to"] == ["log", "ops_email", "ops_webhook"] and row["resolved_at"] is None
    for text in (_alert_rows_text(engine), caplog.text):
        assert WEBHOOK_TOKEN not in text and SMTP_PASSWORD not in text
    assert "feed_down" in caplog.text  # the log notifier did write the alert


def test_min_severity_filters_email(engine, config, webhook, smtp_server):
    out = raise_alert(engine, config, kind="volume_spike", subject="topic:syria", severity="info", summary="5x usual")
    assert sorted(out.sent_to) == ["log", "ops_webhook"]
    assert smtp_server.messages == [] and len(webhook.posts) == 1


def test_cooldown_suppresses_resend_until_it_passes(engine, config, webhook):
    t0 = datetime.now(UTC)
    first = raise_alert(engine, config, kind="feed_down", subject="feed:a", severity="error", summary="down", now=t0)
    second = raise_alert(engine, config, kind="feed_down", subject="feed:a", severity="error", summary="still down",
                         now=t0 + timedelta(minutes=10))  # fmt: skip
    assert first.alert_id == second.alert_id and not second.new
    assert second.suppressed and second.sent_to == []
    assert len(webhook.posts) == 1
    row = list_alerts(engine)[0]
    assert row["occurrences"] == 2 and row["summary"] == "still down"
    third = raise_alert(engine, config, kind="feed_down", subject="feed:a", severity="error", summary="down for long",
                        now=t0 + timedelta(minutes=61))  # fmt: skip
    assert not third.suppressed and "ops_webhook" in third.sent_to
    assert len(webhook.posts) == 2
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM news.alerts")).scalar() == 1  # one open alert per (kind, subject)


def test_failed_delivery_is_recorded_redacted_and_retried(engine, config, webhook, caplog):
    caplog.set_level(logging.DEBUG)
    webhook.status = 500
    t0 = datetime.now(UTC)
    out = raise_alert(engine, config, kind="feed_down", subject="feed:b", severity="warning", summary="x", now=t0)
    assert any("ops_webhook: HTTP 500" in e for e in out.errors)
    assert "ops_webhook" not in out.sent_to
    webhook.status = 200
    again = raise_alert(engine, config, kind="feed_down", subject="feed:b", severity="warning", summary="x",
                        now=t0 + timedelta(minutes=1))  # fmt: skip
    # within the cooldown only the notifier that failed is retried
    assert not again.suppressed and again.sent_to == ["ops_webhook"] and again.errors == []
    assert len(webhook.posts) == 2
    third = raise_alert(engine, config, kind="feed_down", subject="feed:b", severity="warning", summary="x",
                        now=t0 + timedelta(minutes=2))  # fmt: skip
    assert third.suppressed and len(webhook.posts) == 2
    row = list_alerts(engine)[0]
    assert row["sent_to"] == ["log", "ops_email", "ops_webhook"] and row["send_errors"] == []
    assert WEBHOOK_TOKEN not in _alert_rows_text(engine) and WEBHOOK_TOKEN not in caplog.text


def test_unreachable_webhook_only_breaks_itself(engine, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("DEAD_HOOK", f"http://127.0.0.1:{dead}/hooks/{WEBHOOK_TOKEN}")
    p = tmp_path / "a.yml"
    p.write_text("notifiers:\n  - {name: hook, type: webhook, url: '${DEAD_HOOK}'}\n  - {name: log, type: log}\n")
    cfg = load_alerts_config(p)
    out = raise_alert(engine, cfg, kind="feed_down", subject="feed:c", severity="error", summary="down")
    assert out.sent_to == ["log"] and out.errors == ["hook: ConnectError"]
    assert WEBHOOK_TOKEN not in caplog.text and WEBHOOK_TOKEN not in _alert_rows_text(engine)


def test_resolve_notifies_those_who_heard(engine, config, webhook, smtp_server):
    raise_alert(engine, config, kind="feed_down", subject="feed:d", severity="error", summary="down")
    assert resolve_alert(engine, config, kind="feed_down", subject="feed:d", resolution="polls succeed again")
    assert not resolve_alert(engine, config, kind="feed_down", subject="feed:d")  # nothing open any more
    assert len(webhook.posts) == 2 and "RESOLVED" in webhook.posts[1]["text"]
    assert len(smtp_server.messages) == 2 and "RESOLVED" in smtp_server.messages[1][1]["Subject"]
    row = list_alerts(engine)[0]
    assert row["resolved_at"] is not None and row["resolution"] == "polls succeed again"
    # a new failure after resolution opens a new alert
    again = raise_alert(engine, config, kind="feed_down", subject="feed:d", severity="error", summary="down again")
    assert again.new and len(list_alerts(engine)) == 2


# ---------------------------------------------------------------- config


def test_config_errors_name_file_and_line(tmp_path, monkeypatch):
    p = tmp_path / "alerts.yml"
    p.write_text("notifiers:\n  - name: log\n    type: log\nthresholds:\n  cooldown_minutes: -5\n")
    with pytest.raises(ConfigError, match=r"alerts.yml, line 5: thresholds.cooldown_minutes"):
        load_alerts_config(p)
    p.write_text("notifiers:\n  - name: log\n    type: log\n    colour: red\n")
    with pytest.raises(ConfigError, match=r"line 4: notifiers.0.colour: unknown setting"):
        load_alerts_config(p)
    p.write_text("notifiers:\n  - name: x\n    type: pager\n")
    with pytest.raises(ConfigError, match=r"line 2: each notifier needs a 'type'"):
        load_alerts_config(p)
    # unset secret: skipped with the reason, or an error when required
    monkeypatch.delenv("NOPE_URL", raising=False)
    p.write_text("notifiers:\n  - name: hook\n    type: webhook\n    url: ${NOPE_URL}\n")
    assert load_alerts_config(p).skipped == {"hook": "environment variable(s) not set: NOPE_URL"}
    p.write_text("notifiers:\n  - name: hook\n    type: webhook\n    required: true\n    url: ${NOPE_URL}\n")
    with pytest.raises(ConfigError, match=r"line 2: notifier 'hook': environment variable\(s\) not set: NOPE_URL"):
        load_alerts_config(p)
    # a bad secret value is reported without echoing it
    monkeypatch.setenv("NOPE_URL", f"ftp://{WEBHOOK_TOKEN}")
    p.write_text("notifiers:\n  - name: hook\n    type: webhook\n    url: ${NOPE_URL}\n")
    with pytest.raises(ConfigError) as ei:
        load_alerts_config(p)
    assert WEBHOOK_TOKEN not in str(ei.value) and "http(s)" in str(ei.value)


def test_shipped_alerts_yml_loads(monkeypatch):
    for k in ("NEWSMON_ALERT_WEBHOOK_URL", "NEWSMON_SMTP_HOST", "NEWSMON_SMTP_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    cfg = load_alerts_config(Path(__file__).resolve().parents[1] / "include/config/alerts.yml")
    assert [n.name for n in cfg.notifiers] == ["log"]
    assert set(cfg.skipped) == {"ops_webhook", "ops_email"}
    assert cfg.thresholds.history_days == 14


def test_slack_escaping_and_payload_shape():
    assert slack_escape("a<b>&c\nd") == "a&lt;b&gt;&amp;c d"
    m = AlertMessage("feed_down", "feed:<x>", "error", "s & t", {"k<": "v>"}, alert_id=7)
    p = slack_payload(m)
    assert "<x>" not in json.dumps(p) and p["text"].startswith("[newsmon ERROR] feed_down: feed:&lt;x&gt;")
    assert p["blocks"][1]["text"]["text"] == "`k&lt;`: v&gt;"


# ---------------------------------------------------------------- checks


def _feed(conn, name, **cols) -> int:
    fid = conn.execute(sa.text("INSERT INTO news.feeds (name, url) VALUES (:n, :u) RETURNING feed_id"),
                       {"n": name, "u": f"http://127.0.0.1:9/{name}.xml"}).scalar_one()  # fmt: skip
    for k, v in cols.items():
        conn.execute(sa.text(f"UPDATE news.feeds SET {k} = :v WHERE feed_id = :id"), {"v": v, "id": fid})
    return fid


def test_feed_down_then_recovery_resolves(engine, config, webhook):
    with engine.begin() as c:
        fid = _feed(c, "flaky", consecutive_failures=4, last_error="http_5xx: 503 from http://u:pw@127.0.0.1:9/x")
        _feed(c, "healthy")
    rep = check_feeds(engine, config)
    assert [(f.kind, f.subject) for f in rep.findings] == [("feed_down", "feed:flaky")]
    assert "pw@" not in rep.findings[0].summary  # credentials in URLs are masked
    assert len(webhook.posts) == 1
    rep2 = check_feeds(engine, config)  # still down: recorded, within cooldown
    assert rep2.raised[0].suppressed and len(webhook.posts) == 1
    with engine.begin() as c:
        c.execute(sa.text("UPDATE news.feeds SET consecutive_failures = 0, last_error = NULL WHERE feed_id = :id"), {"id": fid})
    rep3 = check_feeds(engine, config)
    assert rep3.findings == [] and rep3.resolved == ["feed_down:feed:flaky"]
    assert list_alerts(engine)[0]["resolved_at"] is not None
    assert "RESOLVED" in webhook.posts[-1]["text"]


def test_feed_stale_after_several_usual_intervals(engine, config):
    now = datetime.now(UTC)
    with engine.begin() as c:
        fid = _feed(c, "quiet", poll_interval_s=600)
        for h in range(30, 9, -1):  # a new entry every hour until 10 h ago
            t = now - timedelta(hours=h)
            c.execute(sa.text("INSERT INTO news.feed_polls (feed_id, started_at, entries_new) VALUES (:f, :t, 1)"), {"f": fid, "t": t})
            c.execute(sa.text("INSERT INTO news.feed_entries (feed_id, entry_key, entry_hash, first_seen_at) VALUES (:f, :k, 'h', :t)"),
                      {"f": fid, "k": f"e{h}", "t": t})  # fmt: skip
    assert check_feeds(engine, config, now=now - timedelta(hours=5)).findings == []  # 5 h idle < 6 h minimum
    rep = check_feeds(engine, config, now=now)
    assert [(f.kind, f.subject) for f in rep.findings] == [("feed_stale", "feed:quiet")]
    assert rep.findings[0].payload["usual_interval_s"] == 3600
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO news.feed_entries (feed_id, entry_key, entry_hash, first_seen_at) VALUES (:f, 'new', 'h', :t)"),
                  {"f": fid, "t": now})  # fmt: skip
    assert check_feeds(engine, config, now=now + timedelta(minutes=1)).resolved == ["feed_stale:feed:quiet"]


def test_volume_drop_per_feed_and_spike_per_topic(engine, config, webhook):
    now = datetime.now(UTC)
    with engine.begin() as c:
        fid = _feed(c, "daily", created_at=now - timedelta(days=30))
        for d in range(1, 15):
            for i in range(5):
                c.execute(sa.text("INSERT INTO news.feed_entries (feed_id, entry_key, entry_hash, first_seen_at) VALUES (:f, :k, 'h', :t)"),
                          {"f": fid, "k": f"{d}-{i}", "t": now - timedelta(days=d, hours=1)})  # fmt: skip
        c.execute(sa.text("INSERT INTO news.topics (slug, label, created_at) VALUES ('syria', 'Syria', :t)"), {"t": now - timedelta(days=30)})
        n = 0
        for d in range(0, 15):
            for _ in range(40 if d == 0 else 2):
                n += 1
                c.execute(sa.text(
                    "INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, content_hash, loaded_at) "
                    "VALUES (:id, 'syria', 'u', 'u', 'u', 'd', 'h', :t)"), {"id": n, "t": now - timedelta(days=d, hours=2)})  # fmt: skip
    rep = check_volumes(engine, config, now=now)
    found = {(f.kind, f.subject): f for f in rep.findings}
    assert set(found) == {("volume_drop", "feed:daily"), ("volume_spike", "topic:syria")}
    assert found[("volume_drop", "feed:daily")].payload["median_daily"] == 5
    assert found[("volume_spike", "topic:syria")].payload["last_24h"] == 40
    # entries arrive again: the drop resolves, the spike stays open
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO news.feed_entries (feed_id, entry_key, entry_hash, first_seen_at) VALUES (:f, 'now', 'h', :t)"),
                  {"f": fid, "t": now})  # fmt: skip
    rep2 = check_volumes(engine, config, now=now + timedelta(minutes=5))
    assert rep2.resolved == ["volume_drop:feed:daily"]
    assert [a["kind"] for a in list_alerts(engine, open_only=True)] == ["volume_spike"]


def test_new_feed_without_history_is_not_judged(engine, config):
    with engine.begin() as c:
        _feed(c, "brand-new")
    assert check_volumes(engine, config).findings == []


def test_validation_failure_ratio_and_batch_expectations(engine, config):
    with engine.begin() as c:
        for failed in (1, 9):
            c.execute(sa.text(
                "INSERT INTO news.dq_runs (suite, batch_id, success, rows_total, rows_failed, statistics, result, kind) "
                "VALUES ('newsmon_articles', 'b', false, 10, :f, CAST(:s AS jsonb), '{}', 'rows')"),
                {"f": failed, "s": json.dumps({"failed_by_rule": {"body_min_length": failed}})})  # fmt: skip
        c.execute(sa.text(
            "INSERT INTO news.dq_runs (suite, batch_id, success, rows_total, rows_failed, statistics, result, kind) "
            "VALUES ('newsmon_batch', 'b', false, 2, 1, CAST(:s AS jsonb), '{}', 'batch')"),
            {"s": json.dumps({"failed_by_rule": {"fallback_share": ["levant-wire"]}})})  # fmt: skip
    rep = check_validation(engine, config)
    found = {(f.kind, f.subject): f for f in rep.findings}
    assert set(found) == {("validation_failure", "newsmon_articles"), ("batch_expectation", "fallback_share")}
    v = found[("validation_failure", "newsmon_articles")]
    assert v.payload["ratio"] == 0.5 and v.payload["failed_by_rule"] == {"body_min_length": 10} and v.severity == "error"
    assert found[("batch_expectation", "fallback_share")].payload["feeds"] == ["levant-wire"]
    # six hours later the window is clean: both resolve
    later = check_validation(engine, config, now=datetime.now(UTC) + timedelta(hours=7))
    assert sorted(later.resolved) == ["batch_expectation:fallback_share", "validation_failure:newsmon_articles"]


def test_task_failure_alert_masks_credentials(engine, config, webhook):
    out = notify_task_failure(
        {"dag_id": "newsmon_process_articles", "task_id": "process", "run_id": "manual__1", "try_number": 2,
         "exception": "OperationalError: could not connect to postgresql://newsmon:hunter2@db:5432/newsmon"},
        engine=engine, config=config,
    )  # fmt: skip
    assert out is not None and "ops_webhook" in out.sent_to
    row = list_alerts(engine)[0]
    assert row["kind"] == "task_failure" and row["subject"] == "newsmon_process_articles.process"
    assert row["payload"]["run_id"] == "manual__1"
    assert "hunter2" not in _alert_rows_text(engine) and "hunter2" not in json.dumps(webhook.posts)


def test_cli_alerts_check_and_list(engine, settings, tmp_path, monkeypatch, webhook):
    from newsmon import cli
    from typer.testing import CliRunner

    monkeypatch.setenv("TEST_WEBHOOK_URL", webhook.url)
    p = tmp_path / "alerts.yml"
    p.write_text("notifiers:\n  - {name: hook, type: webhook, url: '${TEST_WEBHOOK_URL}'}\n"
                 "  - {name: mail, type: smtp, host: '${UNSET_SMTP_HOST}', from: a@b.c, to: [x@y.z]}\n")  # fmt: skip
    monkeypatch.setenv("NEWSMON_QUALITY__ALERTS_FILE", str(p))
    with engine.begin() as c:
        _feed(c, "broken", consecutive_failures=5, last_error="dns: no such host")
    cli.state._settings = None
    res = CliRunner().invoke(cli.app, ["alerts", "check", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["notifiers"] == ["hook"] and "UNSET_SMTP_HOST" in data["notifiers_off"]["mail"]
    assert [f["subject"] for f in data["checks"]["feeds"]["findings"]] == ["feed:broken"]
    assert data["checks"]["feeds"]["sent"][0]["to"] == ["hook"] and len(webhook.posts) == 1
    cli.state._settings = None
    res = CliRunner().invoke(cli.app, ["alerts", "list", "--json", "--open"], catch_exceptions=False)
    rows = json.loads(res.output)
    assert [(r["kind"], r["subject"], r["sent_to"]) for r in rows] == [("feed_down", "feed:broken", ["hook"])]
    assert WEBHOOK_TOKEN not in res.output
    cli.state._settings = None
    monkeypatch.setenv("COLUMNS", "250")
    table = CliRunner().invoke(cli.app, ["alerts", "list"], catch_exceptions=False)
    assert table.exit_code == 0 and "feed:broken" in table.output and WEBHOOK_TOKEN not in table.output


def test_search_index_lag_alerts_until_the_index_stage_catches_up(engine, config, webhook):
    from newsmon.health import check_search
    from newsmon.search import index_all

    now = datetime.now(UTC)
    with engine.begin() as c:
        # article 2 has two topic rows; article 1 was loaded 5 minutes ago (within the allowed lag)
        for n, topic, age in ((1, "a", 5), (2, "a", 90), (2, "b", 90), (3, "a", 240)):
            c.execute(sa.text(
                "INSERT INTO news.articles (article_id, topic, url, canonical_url, url_key, source_domain, content_hash, "
                "title, body, lang, loaded_at) VALUES (:id, :t, 'u', 'u', 'u', 'd', 'h', 'Talks', 'Delegations met.', 'en', :at)"),
                {"id": n, "t": topic, "at": now - timedelta(minutes=age)})  # fmt: skip
    rep = check_search(engine, config, now=now)
    (f,) = rep.findings
    assert (f.kind, f.subject, f.payload["articles"]) == ("search_index_lag", "news.articles", 2)  # not the 5-minute-old one
    assert rep.raised[0].sent_to and "search vector" in webhook.posts[-1]["text"]
    assert index_all(engine, workers=1) == 3
    later = check_search(engine, config, now=now + timedelta(minutes=1))
    assert not later.findings and later.resolved == ["search_index_lag:news.articles"]
