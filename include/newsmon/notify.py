"""Notifiers: how an alert reaches people (log, Slack-compatible webhook, SMTP email).

Every string that came from a feed is data: control characters are removed, Slack mrkdwn
metacharacters (& < >) are escaped, email headers are single lines. Secrets (webhook URL,
SMTP password) live in ``SecretStr``; the process-wide ``REDACTOR`` log filter replaces
them in httpx's request log and in our own messages; delivery errors name the notifier
and the error class only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from newsmon.errors import ConfigError, NewsmonError

log = logging.getLogger("newsmon.alerts")
alert_log = logging.getLogger("newsmon.alerts.notify")

Severity = Literal["info", "warning", "error", "critical"]
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")


class NotifyError(NewsmonError):
    """A notifier could not deliver; the message names the notifier, never its secrets."""


# ---------------------------------------------------------------- notifier config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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
for _name in ("httpx", "httpcore", "httpcore.http11", "httpcore.connection", log.name, alert_log.name):
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
