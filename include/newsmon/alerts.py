"""Alerts that reach people: config (alerts.yml), the news.alerts ledger, notifiers.

An alert is identified by (kind, subject); at most one is *open* at a time (partial
unique index). Raising it again updates that row; it is re-sent only after the
cooldown. Resolving closes it and tells the notifiers that heard about it.

Secrets (webhook URL, SMTP credentials) come from the environment, are held as
``SecretStr`` and never reach logs, ``news.alerts`` rows or exception messages:
``sent_to`` records notifier *names*, send errors are redacted. Text that came from
feeds is data: it is escaped for Slack mrkdwn and stripped of control characters.
"""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sqlalchemy.engine import Engine

from newsmon.config import CONFIG_DIR, line_of, load_yaml_file, mask_url
from newsmon.errors import ConfigError, NewsmonError

log = logging.getLogger(__name__)
alert_log = logging.getLogger("newsmon.alerts.notify")

DEFAULT_ALERTS_FILE = CONFIG_DIR / "alerts.yml"
Severity = Literal["info", "warning", "error", "critical"]
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")


class NotifyError(NewsmonError):
    """A notifier could not deliver; the message names the notifier, never its secrets."""


# ---------------------------------------------------------------- config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Thresholds(_Strict):
    cooldown_minutes: float = Field(default=60, ge=0)
    feed_down_failures: int = Field(default=3, ge=1)
    stale_factor: float = Field(default=4, gt=0)
    stale_min_hours: float = Field(default=6, ge=0)
    history_days: int = Field(default=14, ge=1, le=90)
    min_history_days: int = Field(default=3, ge=1)
    min_median: float = Field(default=2, ge=0)
    volume_band_factor: float = Field(default=4.0, gt=1)
    validation_failure_ratio: float = Field(default=0.2, ge=0, le=1)
    validation_window_hours: float = Field(default=6, gt=0)
    fallback_share_max: float = Field(default=0.6, ge=0, le=1)
    quarantined_share_max: float = Field(default=0.3, ge=0, le=1)


class _NotifierBase(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    enabled: bool = True
    required: bool = False
    min_severity: Severity = "info"


class LogSpec(_NotifierBase):
    type: Literal["log"]


class WebhookSpec(_NotifierBase):
    type: Literal["webhook"]
    url: SecretStr
    timeout_s: float = Field(default=10, gt=0)


class SmtpSpec(_NotifierBase):
    type: Literal["smtp"]
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    use_ssl: bool = False
    username_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    password_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    sender: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    timeout_s: float = Field(default=15, gt=0)


_SPECS: dict[str, type[_NotifierBase]] = {"log": LogSpec, "webhook": WebhookSpec, "smtp": SmtpSpec}


@dataclass
class AlertsConfig:
    notifiers: list[Notifier] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)
    skipped: dict[str, str] = field(default_factory=dict)  # notifier name -> why it is off
    source: str = "(defaults)"


def _expand(value: Any, missing: list[str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            got = os.environ.get(m[1])
            if got is None or got == "":
                if m[2] is not None:
                    return m[2]
                missing.append(m[1])
                return ""
            return got

        return _ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, missing) for v in value]
    return value


def load_alerts_config(path: Path | str | None = None) -> AlertsConfig:
    """Read alerts.yml; errors name the file and line. A missing default file means
    "log notifier only, default thresholds"."""
    explicit = path is not None
    p = Path(path or DEFAULT_ALERTS_FILE)
    if not p.exists() and not explicit:
        return AlertsConfig(notifiers=[LogNotifier(LogSpec(name="log", type="log"))])
    data, lines = load_yaml_file(p)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}, line 1: the top level must be a mapping with 'notifiers' and 'thresholds'")
    unknown = set(data) - {"notifiers", "thresholds"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{p}, line {line_of(lines, (key,))}: unknown section {key!r}")
    try:
        thresholds = Thresholds(**(data.get("thresholds") or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, p, lines, ("thresholds",))) from None
    except TypeError:
        raise ConfigError(f"{p}, line {line_of(lines, ('thresholds',))}: 'thresholds' must be a mapping") from None
    cfg = AlertsConfig(thresholds=thresholds, source=str(p))
    items = data.get("notifiers") or []
    if not isinstance(items, list):
        raise ConfigError(f"{p}, line {line_of(lines, ('notifiers',))}: 'notifiers' must be a list")
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{p}, line {line_of(lines, ('notifiers', i))}"
        if not isinstance(item, dict) or item.get("type") not in _SPECS:
            raise ConfigError(f"{where}: each notifier needs a 'type' of {sorted(_SPECS)}")
        missing: list[str] = []
        expanded = {k: _expand(v, missing) for k, v in item.items()}
        for env_key in ("username_env", "password_env"):
            name = expanded.get(env_key)
            if isinstance(name, str) and _ENV_NAME.match(name) and not os.environ.get(name):
                missing.append(name)
        name = str(item.get("name", ""))
        if name in seen:
            raise ConfigError(f"{where}: duplicate notifier name {name!r}")
        seen.add(name)
        if missing:
            reason = "environment variable(s) not set: " + ", ".join(sorted(set(missing)))
            if item.get("required"):
                raise ConfigError(f"{where}: notifier {name!r}: {reason}")
            cfg.skipped[name] = reason
            continue
        try:
            spec = _SPECS[item["type"]](**expanded)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, p, lines, ("notifiers", i))) from None
        if not spec.enabled:
            cfg.skipped[spec.name] = "disabled"
            continue
        cfg.notifiers.append(make_notifier(spec))
    for name, reason in cfg.skipped.items():
        if reason != "disabled":
            log.warning("alert notifier %s is off: %s", name, reason)
    return cfg


def _describe(exc: ValidationError, p: Path, lines: dict[tuple[str | int, ...], int], prefix: tuple[str | int, ...]) -> str:
    problems = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]  # never echo input values
        problems.append(f"{p}, line {line_of(lines, loc)}: {'.'.join(str(x) for x in loc)}: {msg}")
    return "; ".join(problems)


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class AlertMessage:
    kind: str
    subject: str
    severity: str
    summary: str
    payload: Mapping[str, Any]
    status: Literal["firing", "resolved"] = "firing"
    alert_id: int | None = None
    occurrences: int = 1


def clean_text(text: Any, limit: int = 500) -> str:
    """One line of untrusted text: control characters removed, length capped."""
    s = _CONTROL.sub(" ", str(text)).replace("\n", " ").replace("\r", " ")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def slack_escape(text: Any, limit: int = 500) -> str:
    """Slack mrkdwn treats <...> as links/mentions: feed text must not create them."""
    return clean_text(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ICON = {"info": ":information_source:", "warning": ":warning:", "error": ":rotating_light:", "critical": ":fire:"}
_COLOR = {"info": "#439FE0", "warning": "#ECB22E", "error": "#E01E5A", "critical": "#8B0000"}


def headline(m: AlertMessage) -> str:
    state = "RESOLVED" if m.status == "resolved" else m.severity.upper()
    return f"[newsmon {state}] {m.kind}: {clean_text(m.subject, 200)}"


def slack_payload(m: AlertMessage) -> dict[str, Any]:
    """Slack-compatible incoming-webhook JSON; every dynamic string is escaped."""
    icon = ":white_check_mark:" if m.status == "resolved" else _ICON.get(m.severity, "")
    title = slack_escape(headline(m), 300)
    lines = [f"`{slack_escape(k, 60)}`: {slack_escape(_short(v), 300)}" for k, v in list(m.payload.items())[:12]]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{title}*\n{slack_escape(m.summary, 1500)}"}},
    ]
    if lines:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"alert #{m.alert_id} · seen {m.occurrences}x"}]})
    return {
        "text": f"{title}: {slack_escape(m.summary, 300)}",
        "blocks": blocks,
        "attachments": [{"color": "#2EB67D" if m.status == "resolved" else _COLOR.get(m.severity, "#cccccc"), "blocks": []}],
    }


def email_message(m: AlertMessage, sender: str, to: Sequence[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = clean_text(headline(m), 200)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    body = [headline(m), "", clean_text(m.summary, 2000), ""]
    body += [f"{clean_text(k, 60)}: {clean_text(_short(v), 500)}" for k, v in m.payload.items()]
    body += ["", f"alert #{m.alert_id}, seen {m.occurrences} time(s)"]
    msg.set_content("\n".join(body))
    return msg


def _short(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


# ---------------------------------------------------------------- notifiers


class _Redactor(logging.Filter):
    """Replaces registered secret strings in log records (httpx logs request URLs at INFO)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            clean = self.redact(msg)
            if clean != msg:
                record.msg, record.args = clean, None
        return True


REDACTOR = _Redactor()
for _name in ("httpx", "httpcore", "httpcore.http11", "httpcore.connection", __name__, alert_log.name):
    logging.getLogger(_name).addFilter(REDACTOR)


class Notifier:
    name: str
    min_severity: str = "info"

    def wants(self, m: AlertMessage) -> bool:
        return SEVERITY_RANK.get(m.severity, 0) >= SEVERITY_RANK[self.min_severity]

    def send(self, m: AlertMessage) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class LogNotifier(Notifier):
    def __init__(self, spec: LogSpec) -> None:
        self.name, self.min_severity = spec.name, spec.min_severity

    def send(self, m: AlertMessage) -> None:
        level = logging.INFO if m.status == "resolved" or m.severity == "info" else logging.WARNING
        if m.severity in ("error", "critical") and m.status == "firing":
            level = logging.ERROR
        alert_log.log(level, "%s: %s %s", headline(m), clean_text(m.summary, 1000), clean_text(_short(dict(m.payload)), 2000))


class WebhookNotifier(Notifier):
    def __init__(self, spec: WebhookSpec) -> None:
        self.name, self.min_severity = spec.name, spec.min_severity
        self._url = spec.url
        self._timeout = spec.timeout_s
        url = spec.url.get_secret_value()
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"notifier {spec.name!r}: url must be http(s)")
        REDACTOR.secrets.add(url)

    def send(self, m: AlertMessage) -> None:
        import httpx

        try:
            with httpx.Client(timeout=self._timeout, follow_redirects=False) as c:
                r = c.post(self._url.get_secret_value(), json=slack_payload(m))
        except httpx.HTTPError as exc:
            raise NotifyError(f"{self.name}: {type(exc).__name__}") from None  # httpx messages may carry the URL
        if not 200 <= r.status_code < 300:
            raise NotifyError(f"{self.name}: HTTP {r.status_code}")


class SmtpNotifier(Notifier):
    def __init__(self, spec: SmtpSpec) -> None:
        self.name, self.min_severity = spec.name, spec.min_severity
        self.spec = spec
        self._user = os.environ.get(spec.username_env) if spec.username_env else None
        self._password = SecretStr(os.environ.get(spec.password_env) or "") if spec.password_env else None
        if self._password is not None and self._password.get_secret_value():
            REDACTOR.secrets.add(self._password.get_secret_value())

    def send(self, m: AlertMessage) -> None:
        s = self.spec
        try:
            if s.use_ssl:
                client: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
            with client:
                if s.starttls and not s.use_ssl:
                    client.starttls(context=ssl.create_default_context())
                if self._user and self._password is not None:
                    client.login(self._user, self._password.get_secret_value())
                client.send_message(email_message(m, s.sender, s.to))
        except (smtplib.SMTPException, OSError) as exc:
            code = getattr(exc, "smtp_code", None)
            raise NotifyError(f"{self.name}: {type(exc).__name__}" + (f" {code}" if code else "")) from None


def make_notifier(spec: _NotifierBase) -> Notifier:
    if isinstance(spec, WebhookSpec):
        return WebhookNotifier(spec)
    if isinstance(spec, SmtpSpec):
        return SmtpNotifier(spec)
    assert isinstance(spec, LogSpec)
    return LogNotifier(spec)


def deliver(notifiers: Iterable[Notifier], m: AlertMessage, only: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Send to every notifier that wants the message; returns (sent names, redacted errors)."""
    sent, errors = [], []
    for n in notifiers:
        if (only is not None and n.name not in only) or (only is None and not n.wants(m)):
            continue
        try:
            n.send(m)
            sent.append(n.name)
        except Exception as exc:  # one broken notifier must not silence the others
            text = REDACTOR.redact(clean_text(f"{n.name}: {type(exc).__name__}: {exc}" if not isinstance(exc, NotifyError) else str(exc), 300))
            errors.append(text)
            log.warning("alert delivery failed: %s", text)
    return sent, errors


# ---------------------------------------------------------------- ledger


@dataclass
class AlertOutcome:
    alert_id: int
    kind: str
    subject: str
    new: bool
    sent_to: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    suppressed: bool = False  # within cooldown: recorded, not sent


_UPSERT = sa.text(
    """
    INSERT INTO news.alerts (kind, subject, severity, summary, payload, first_seen, last_seen)
    VALUES (:kind, :subject, :severity, :summary, CAST(:payload AS jsonb), :now, :now)
    ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO UPDATE SET
        last_seen = EXCLUDED.last_seen, occurrences = news.alerts.occurrences + 1,
        severity = EXCLUDED.severity, summary = EXCLUDED.summary, payload = EXCLUDED.payload
    RETURNING alert_id, (xmax = 0) AS inserted, occurrences
    """
)
_CLAIM_SEND = sa.text(
    """
    UPDATE news.alerts SET last_sent_at = :now
    WHERE alert_id = :id AND (last_sent_at IS NULL OR last_sent_at <= :now - make_interval(secs => :cooldown_s))
    RETURNING alert_id
    """
)


def raise_alert(
    engine: Engine,
    config: AlertsConfig,
    *,
    kind: str,
    subject: str,
    severity: Severity,
    summary: str,
    payload: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> AlertOutcome:
    """Open (or refresh) the alert and send it unless it was sent within the cooldown."""
    if not _KIND.match(kind):
        raise ValueError(f"alert kind must match {_KIND.pattern}")
    now = now or datetime.now(UTC)
    subject, summary = clean_text(subject, 300), clean_text(summary, 2000)
    data = json.loads(REDACTOR.redact(json.dumps(dict(payload or {}), ensure_ascii=False, default=str)))
    with engine.begin() as conn:
        row = conn.execute(
            _UPSERT,
            {"kind": kind, "subject": subject, "severity": severity, "summary": summary,
             "payload": json.dumps(data, ensure_ascii=False), "now": now},
        ).one()  # fmt: skip
        claimed = conn.execute(_CLAIM_SEND, {"id": row.alert_id, "now": now, "cooldown_s": config.thresholds.cooldown_minutes * 60}).scalar()
    out = AlertOutcome(row.alert_id, kind, subject, bool(row.inserted))
    if claimed is None:
        out.suppressed = True
        return out
    m = AlertMessage(kind, subject, severity, summary, data, "firing", row.alert_id, row.occurrences)
    out.sent_to, out.errors = deliver(config.notifiers, m)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                UPDATE news.alerts SET
                    sent_to = ARRAY(SELECT DISTINCT x FROM unnest(sent_to || CAST(:sent AS text[])) AS x ORDER BY x),
                    send_errors = CAST(:errors AS text[]),
                    last_sent_at = CASE WHEN :any_sent THEN last_sent_at ELSE NULL END
                WHERE alert_id = :id
                """
            ),
            {"id": row.alert_id, "sent": out.sent_to, "errors": out.errors, "any_sent": bool(out.sent_to) or not out.errors},
        )
    return out


def resolve_alert(
    engine: Engine, config: AlertsConfig, *, kind: str, subject: str, resolution: str = "recovered", now: datetime | None = None
) -> bool:
    """Close the open alert (if any); tell the notifiers that were told it fired."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        row = conn.execute(
            sa.text(
                """
                UPDATE news.alerts SET resolved_at = :now, resolution = :res
                WHERE kind = :kind AND subject = :subject AND resolved_at IS NULL
                RETURNING alert_id, severity, summary, payload, sent_to, occurrences
                """
            ),
            {"now": now, "res": clean_text(resolution, 300), "kind": kind, "subject": subject},
        ).first()
    if row is None:
        return False
    if row.sent_to:
        m = AlertMessage(kind, subject, row.severity, f"resolved: {resolution}", row.payload or {}, "resolved", row.alert_id, row.occurrences)
        deliver(config.notifiers, m, only=set(row.sent_to))
    return True


def open_alerts(engine: Engine, kinds: Sequence[str]) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT kind, subject FROM news.alerts WHERE resolved_at IS NULL AND kind = ANY(:k)"), {"k": list(kinds)}
        ).all()
    return [(r.kind, r.subject) for r in rows]


def list_alerts(engine: Engine, *, open_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT alert_id, kind, subject, severity, summary, payload, first_seen, last_seen, occurrences,
                       last_sent_at, sent_to, send_errors, resolved_at, resolution
                FROM news.alerts WHERE (NOT :open_only OR resolved_at IS NULL)
                ORDER BY resolved_at IS NULL DESC, last_seen DESC LIMIT :limit
                """
            ),
            {"open_only": open_only, "limit": limit},
        ).mappings()
        return [dict(r) for r in rows]


# ---------------------------------------------------------------- Airflow callback helper


def notify_task_failure(
    info: Mapping[str, Any], *, engine: Engine | None = None, config: AlertsConfig | None = None, settings: Any = None
) -> AlertOutcome | None:
    """Record and send a DAG task failure. ``info`` holds plain values (dag_id, task_id,
    run_id, exception, try_number, log_url): the DAG's on_failure_callback extracts
    them, so newsmon never imports Airflow. Never raises: a callback must not fail."""
    try:
        dag_id, task_id = str(info.get("dag_id") or "?"), str(info.get("task_id") or "?")
        if engine is None or config is None:
            from newsmon.config import load_settings
            from newsmon.db import engine_from_settings

            settings = settings or load_settings()
            engine = engine or engine_from_settings(settings)
            config = config or load_alerts_config(settings.quality.alerts_file)
        exc_text = REDACTOR.redact(mask_url(clean_text(info.get("exception") or "", 1500)))
        payload = {k: clean_text(info[k], 300) for k in ("run_id", "try_number", "log_url", "logical_date") if info.get(k) is not None}
        payload["exception"] = exc_text
        return raise_alert(
            engine, config, kind="task_failure", subject=f"{dag_id}.{task_id}", severity="error",
            summary=f"task {task_id} of DAG {dag_id} failed: {exc_text[:300]}", payload=payload,
        )  # fmt: skip
    except Exception:
        log.exception("could not record the task failure alert")
        return None
