"""Alerts that reach people: config (alerts.yml) and the news.alerts ledger.

An alert is identified by (kind, subject); at most one is *open* at a time (partial
unique index). Raising it again updates that row; it is re-sent only after the
cooldown. Resolving closes it and tells the notifiers that heard about it.

Secrets (webhook URL, SMTP credentials) come from the environment, are held as
``SecretStr`` and never reach logs, ``news.alerts`` rows or exception messages:
``sent_to`` records notifier *names*, send errors are redacted. Text that came from
feeds is data: it is escaped for Slack mrkdwn and stripped of control characters.
The notifiers themselves live in ``newsmon.notify``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import Field, ValidationError
from sqlalchemy.engine import Engine

from newsmon.config import CONFIG_DIR, line_of, load_yaml_file, mask_url
from newsmon.errors import ConfigError
from newsmon.notify import (  # re-exported: callers import alert helpers from here
    _SPECS,
    REDACTOR,
    AlertMessage,
    LogNotifier,
    LogSpec,
    Notifier,
    NotifyError,
    Severity,
    SmtpSpec,
    WebhookSpec,
    _Strict,
    clean_text,
    deliver,
    make_notifier,
    slack_escape,
    slack_payload,
)

__all__ = [
    "REDACTOR", "AlertMessage", "AlertOutcome", "AlertsConfig", "LogNotifier", "LogSpec", "Notifier", "NotifyError",
    "SmtpSpec", "Thresholds", "WebhookSpec", "clean_text", "list_alerts", "load_alerts_config", "notify_task_failure",
    "raise_alert", "resolve_alert", "run_checks", "slack_escape", "slack_payload",
]  # fmt: skip

log = logging.getLogger(__name__)

DEFAULT_ALERTS_FILE = CONFIG_DIR / "alerts.yml"
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


# ---------------------------------------------------------------- config


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
    search_lag_minutes: float = Field(default=30, gt=0)




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
            log.info("alert notifier %s is off: %s", name, reason)
    return cfg


def _describe(exc: ValidationError, p: Path, lines: dict[tuple[str | int, ...], int], prefix: tuple[str | int, ...]) -> str:
    problems = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]  # never echo input values
        problems.append(f"{p}, line {line_of(lines, loc)}: {'.'.join(str(x) for x in loc)}: {msg}")
    return "; ".join(problems)


# ---------------------------------------------------------------- ledger


@dataclass
class AlertOutcome:
    alert_id: int | None  # None: the ledger could not be written (sent anyway, see raise_alert)
    kind: str
    subject: str
    new: bool
    sent_to: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    suppressed: bool = False  # within cooldown: recorded, not sent
    recorded: bool = True  # False when news.alerts could not be written


_UPSERT = sa.text(
    """
    INSERT INTO news.alerts (kind, subject, severity, summary, payload, first_seen, last_seen)
    VALUES (:kind, :subject, :severity, :summary, CAST(:payload AS jsonb), :now, :now)
    ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO UPDATE SET
        last_seen = EXCLUDED.last_seen, occurrences = news.alerts.occurrences + 1,
        severity = EXCLUDED.severity, summary = EXCLUDED.summary, payload = EXCLUDED.payload
    RETURNING alert_id, (xmax = 0) AS inserted, occurrences, send_errors
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
    # issue 8: a connection URL in any alert text loses its password (mask_url), not only in task failures
    subject, summary = mask_url(clean_text(subject, 300)), REDACTOR.redact(mask_url(clean_text(summary, 2000)))
    data = json.loads(REDACTOR.redact(mask_url(json.dumps(dict(payload or {}), ensure_ascii=False, default=str))))
    try:
        with engine.begin() as conn:
            row = conn.execute(
                _UPSERT,
                {"kind": kind, "subject": subject, "severity": severity, "summary": summary,
                 "payload": json.dumps(data, ensure_ascii=False), "now": now},
            ).one()  # fmt: skip
            claimed = conn.execute(_CLAIM_SEND, {"id": row.alert_id, "now": now, "cooldown_s": config.thresholds.cooldown_minutes * 60}).scalar()
    except sa.exc.SQLAlchemyError as exc:
        # -- reliability (issue 8): the warehouse itself may be what failed (read-only,
        # full, down). The alert must still reach people: send it unrecorded (no cooldown).
        log.error("alert ledger unavailable (%s); sending %s:%s unrecorded", type(exc).__name__, kind, clean_text(subject, 100))
        out = AlertOutcome(None, kind, subject, True, recorded=False)
        m = AlertMessage(kind, subject, severity, summary, data, "firing", None, 1)
        out.sent_to, out.errors = deliver(config.notifiers, m)
        return out
    out = AlertOutcome(row.alert_id, kind, subject, bool(row.inserted))
    m = AlertMessage(kind, subject, severity, summary, data, "firing", row.alert_id, row.occurrences)
    if claimed is None:
        failed_before = {e.split(":", 1)[0] for e in row.send_errors or []}
        if not failed_before:
            out.suppressed = True
            return out
        # within the cooldown, but some notifiers never got it: retry just those
        out.sent_to, out.errors = deliver(config.notifiers, m, only=failed_before)
    else:
        out.sent_to, out.errors = deliver(config.notifiers, m)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                UPDATE news.alerts SET
                    sent_to = ARRAY(SELECT DISTINCT x FROM unnest(sent_to || CAST(:sent AS text[])) AS x ORDER BY x),
                    send_errors = CAST(:errors AS text[]),
                    last_sent_at = CASE WHEN :any_sent OR NOT :claimed THEN last_sent_at ELSE NULL END
                WHERE alert_id = :id
                """
            ),
            {"id": row.alert_id, "sent": out.sent_to, "errors": out.errors, "any_sent": bool(out.sent_to) or not out.errors,
             "claimed": claimed is not None},
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


# ---------------------------------------------------------------- entry points for DAGs and the CLI


def run_checks(engine: Engine, settings: Any, *, window: Any = None, config: AlertsConfig | None = None) -> dict[str, Any]:
    """Run every health check (newsmon.health), send and resolve alerts; JSON-able summary."""
    from newsmon.health import run_checks as _run

    reports = _run(engine, settings, config=config, window=window)
    return {name: r.summary() for name, r in reports.items()}


# ---------------------------------------------------------------- Airflow callback helper


def notify_task_failure(
    info: Mapping[str, Any], *, engine: Engine | None = None, config: AlertsConfig | None = None, settings: Any = None
) -> AlertOutcome | None:
    """Record and send a DAG task failure. ``info`` holds plain values (dag_id, task_id,
    run_id, exception, try_number, log_url): the DAG's on_failure_callback extracts
    them, so newsmon never imports Airflow. Never raises: a callback must not fail."""
    own_engine = None
    try:
        dag_id, task_id = str(info.get("dag_id") or "?"), str(info.get("task_id") or "?")
        if engine is None or config is None:
            from newsmon.config import load_settings
            from newsmon.db import engine_from_settings

            settings = settings or load_settings()
            if engine is None:
                engine = own_engine = engine_from_settings(settings)
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
    finally:
        if own_engine is not None:
            own_engine.dispose()
