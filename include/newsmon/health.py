"""Health checks: turn warehouse state into alerts, and resolve them on recovery.

Each check computes *findings* (what is wrong now); ``reconcile`` raises an alert per
finding and resolves every open alert of the same kinds that is no longer found. So a
feed that polls again resolves its ``feed_down`` alert on the next check.

Baselines are learned from each subject's own history: the median of its daily counts
over ``history_days`` (24 h windows ending now; day 0 is the last 24 h), counting only
days since the subject existed.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsmon.alerts import (
    AlertOutcome,
    AlertsConfig,
    Thresholds,
    load_alerts_config,
    open_alerts,
    raise_alert,
    resolve_alert,
)
from newsmon.config import Settings, mask_url
from newsmon.models import Article, Rejected

log = logging.getLogger(__name__)

FEED_KINDS = ("feed_down", "feed_stale")
VOLUME_KINDS = ("volume_drop", "volume_spike")
VALIDATION_KINDS = ("validation_failure", "batch_expectation")
SEARCH_KINDS = ("search_index_lag",)


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str
    severity: str
    summary: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    raised: list[AlertOutcome] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Plain JSON-able data (for the CLI and Airflow XCom)."""
        return {
            "findings": [{"kind": f.kind, "subject": f.subject, "severity": f.severity, "summary": f.summary} for f in self.findings],
            "sent": [{"alert_id": o.alert_id, "subject": o.subject, "to": o.sent_to} for o in self.raised if o.sent_to],
            "suppressed": [o.subject for o in self.raised if o.suppressed],
            "errors": [e for o in self.raised for e in o.errors],
            "resolved": self.resolved,
        }


def reconcile(
    engine: Engine, config: AlertsConfig, kinds: Sequence[str], findings: Sequence[Finding], now: datetime
) -> CheckReport:
    report = CheckReport(findings=list(findings))
    for f in findings:
        report.raised.append(
            raise_alert(engine, config, kind=f.kind, subject=f.subject, severity=f.severity,  # type: ignore[arg-type]
                        summary=f.summary, payload=f.payload, now=now)
        )  # fmt: skip
    current = {(f.kind, f.subject) for f in findings}
    for kind, subject in open_alerts(engine, kinds):
        if (kind, subject) not in current and resolve_alert(
            engine, config, kind=kind, subject=subject, resolution="no longer detected by the check", now=now
        ):
            report.resolved.append(f"{kind}:{subject}")
    return report


def _check(
    engine: Engine, config: AlertsConfig, kinds: Sequence[str],
    findings: Callable[[Connection, Thresholds, datetime], list[Finding]], now: datetime | None,
) -> CheckReport:  # fmt: skip
    """One check: compute its findings now, then raise and resolve alerts of its kinds."""
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        found = findings(conn, config.thresholds, now)
    return reconcile(engine, config, kinds, found, now)


# ---------------------------------------------------------------- feeds


def feed_findings(conn: Connection, t: Thresholds, now: datetime) -> list[Finding]:
    """feed_down: N consecutive failed polls. feed_stale: polls fine but no new entry for
    stale_factor x its usual interval between polls that brought new entries."""
    since = now - timedelta(days=t.history_days)
    feeds = conn.execute(
        sa.text(
            """
            SELECT f.feed_id, f.name, f.consecutive_failures, f.last_error, f.last_status, f.last_success_at,
                   f.poll_interval_s, (SELECT max(e.first_seen_at) FROM news.feed_entries e WHERE e.feed_id = f.feed_id) AS last_entry_at
            FROM news.feeds f WHERE f.enabled ORDER BY f.name
            """
        )
    ).all()
    times: dict[int, list[datetime]] = {
        r.feed_id: list(r.times)
        for r in conn.execute(
            sa.text(
                """
                SELECT feed_id, array_agg(started_at ORDER BY started_at) AS times FROM news.feed_polls
                WHERE entries_new > 0 AND started_at > :since AND started_at <= :now GROUP BY feed_id
                """
            ),
            {"since": since, "now": now},
        )
    }
    out: list[Finding] = []
    for f in feeds:
        subject = f"feed:{f.name}"
        if f.consecutive_failures >= t.feed_down_failures:
            out.append(Finding("feed_down", subject, "error",
                f"feed {f.name} failed {f.consecutive_failures} consecutive polls: {mask_url(f.last_error or f.last_status or '?')}",
                {"feed": f.name, "consecutive_failures": f.consecutive_failures, "last_error": mask_url(f.last_error or ""),
                 "last_success_at": f.last_success_at}))  # fmt: skip
            continue
        usual = usual_interval_s(times.get(f.feed_id, []))
        if usual is None or f.last_entry_at is None:
            continue
        idle = (now - f.last_entry_at).total_seconds()
        limit = max(t.stale_factor * max(usual, f.poll_interval_s), t.stale_min_hours * 3600)
        if idle > limit:
            out.append(Finding("feed_stale", subject, "warning",
                f"feed {f.name} has had no new entry for {idle / 3600:.1f} h (usually every {usual / 3600:.1f} h)",
                {"feed": f.name, "last_entry_at": f.last_entry_at, "usual_interval_s": round(usual), "idle_s": round(idle)}))  # fmt: skip
    return out


def usual_interval_s(times: Sequence[datetime]) -> float | None:
    """Median gap between polls that brought new entries; None with fewer than 3 such polls."""
    if len(times) < 3:
        return None
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    return float(statistics.median(gaps))


def check_feeds(engine: Engine, config: AlertsConfig, *, now: datetime | None = None) -> CheckReport:
    return _check(engine, config, FEED_KINDS, feed_findings, now)


# ---------------------------------------------------------------- volumes


@dataclass(frozen=True)
class Baseline:
    key: str
    current: int  # last 24 h
    history: tuple[int, ...]  # day 1 .. n (only days the subject existed)

    @property
    def median(self) -> float | None:
        return float(statistics.median(self.history)) if self.history else None


_FEED_DAYS = """
    SELECT f.feed_id AS id, f.name AS key, f.created_at AS created, c.d, c.n, c.first_ts
    FROM news.feeds f LEFT JOIN (
        SELECT feed_id, floor(extract(epoch FROM (CAST(:now AS timestamptz) - first_seen_at)) / 86400)::int AS d,
               count(*) AS n, min(first_seen_at) AS first_ts
        FROM news.feed_entries
        WHERE first_seen_at > CAST(:now AS timestamptz) - make_interval(days => :days + 1) AND first_seen_at <= :now
        GROUP BY 1, 2) c ON c.feed_id = f.feed_id
    WHERE f.enabled AND (cardinality(CAST(:ids AS bigint[])) = 0 OR f.feed_id = ANY(CAST(:ids AS bigint[])))
"""
_TOPIC_DAYS = """
    SELECT 0 AS id, t.slug AS key, t.created_at AS created, c.d, c.n, c.first_ts
    FROM news.topics t LEFT JOIN (
        SELECT topic, floor(extract(epoch FROM (CAST(:now AS timestamptz) - loaded_at)) / 86400)::int AS d,
               count(*) AS n, min(loaded_at) AS first_ts
        FROM news.articles
        WHERE loaded_at > CAST(:now AS timestamptz) - make_interval(days => :days + 1) AND loaded_at <= :now
        GROUP BY 1, 2) c ON c.topic = t.slug
    WHERE t.active
"""


def baselines(conn: Connection, what: str, now: datetime, days: int, ids: Sequence[int] = ()) -> dict[Any, Baseline]:
    """Daily counts per feed (entries first seen) or per topic (articles loaded).
    Keyed by feed_id for feeds, by slug for topics."""
    sql = _FEED_DAYS if what == "feed" else _TOPIC_DAYS
    rows = conn.execute(sa.text(sql), {"now": now, "days": days, "ids": list(ids)}).all()
    per: dict[Any, dict[str, Any]] = {}
    for r in rows:
        k = r.id if what == "feed" else r.key
        p = per.setdefault(k, {"key": r.key, "start": r.created, "counts": {}})
        if r.d is not None:
            p["counts"][int(r.d)] = int(r.n)
            p["start"] = min(p["start"], r.first_ts)
    out = {}
    for k, p in per.items():
        age_days = int((now - p["start"]).total_seconds() // 86400)
        n = min(days, age_days)
        out[k] = Baseline(p["key"], p["counts"].get(0, 0), tuple(p["counts"].get(d, 0) for d in range(1, n + 1)))
    return out


def volume_findings(conn: Connection, t: Thresholds, now: datetime) -> list[Finding]:
    out: list[Finding] = []
    for what in ("feed", "topic"):
        for b in baselines(conn, what, now, t.history_days).values():
            med = b.median
            if med is None or len(b.history) < t.min_history_days:
                continue
            subject = f"{what}:{b.key}"
            data = {what: b.key, "last_24h": b.current, "median_daily": med, "history_days": len(b.history)}
            if b.current == 0 and med >= t.min_median and med > 0:
                out.append(Finding("volume_drop", subject, "warning",
                                   f"{what} {b.key}: nothing in the last 24 h (usually {med:g} a day)", data))  # fmt: skip
            elif b.current > t.volume_band_factor * max(med, t.min_median, 1):
                out.append(Finding("volume_spike", subject, "info",
                                   f"{what} {b.key}: {b.current} in the last 24 h, {b.current / max(med, 1):.1f}x its usual {med:g} a day", data))  # fmt: skip
    return out


def check_volumes(engine: Engine, config: AlertsConfig, *, now: datetime | None = None) -> CheckReport:
    return _check(engine, config, VOLUME_KINDS, volume_findings, now)


# ---------------------------------------------------------------- validation


def validation_findings(conn: Connection, t: Thresholds, now: datetime) -> list[Finding]:
    since = now - timedelta(hours=t.validation_window_hours)
    out: list[Finding] = []
    runs = conn.execute(
        sa.text("SELECT suite, rows_total, rows_failed, statistics FROM news.dq_runs WHERE kind = 'rows' AND run_at > :since AND run_at <= :now"),
        {"since": since, "now": now},
    ).all()
    total, failed = sum(r.rows_total for r in runs), sum(r.rows_failed for r in runs)
    if total and failed / total > t.validation_failure_ratio:
        by_rule: dict[str, int] = {}
        for r in runs:
            for k, v in ((r.statistics or {}).get("failed_by_rule") or {}).items():
                by_rule[k] = by_rule.get(k, 0) + int(v)
        ratio = failed / total
        out.append(Finding("validation_failure", runs[0].suite, "error" if ratio > 2 * t.validation_failure_ratio else "warning",
            f"{failed} of {total} rows ({ratio:.0%}) quarantined in the last {t.validation_window_hours:g} h",
            {"runs": len(runs), "rows": total, "rows_failed": failed, "ratio": round(ratio, 4), "failed_by_rule": by_rule}))  # fmt: skip
    failing: dict[str, set[str]] = {}
    for r in conn.execute(
        sa.text("SELECT statistics FROM news.dq_runs WHERE kind = 'batch' AND NOT success AND run_at > :since AND run_at <= :now"),
        {"since": since, "now": now},
    ):
        for rule, feeds in ((r.statistics or {}).get("failed_by_rule") or {}).items():
            failing.setdefault(rule, set()).update(feeds)
    for rule, feeds in sorted(failing.items()):
        out.append(Finding("batch_expectation", rule, "warning",
                           f"batch expectation {rule} failed for {len(feeds)} feed(s): {', '.join(sorted(feeds)[:10])}",
                           {"rule": rule, "feeds": sorted(feeds)}))  # fmt: skip
    return out


def check_validation(engine: Engine, config: AlertsConfig, *, now: datetime | None = None) -> CheckReport:
    return _check(engine, config, VALIDATION_KINDS, validation_findings, now)


# ---------------------------------------------------------------- search index stage


def search_findings(conn: Connection, t: Thresholds, now: datetime) -> list[Finding]:
    """Rows the index stage (newsmon.search) has not reached long after their load: it keeps
    failing or is not running. Search still finds them, but by computing every vector per
    query, which gets slow as the backlog grows."""
    row = conn.execute(
        sa.text(
            """
            SELECT count(DISTINCT article_id) AS articles, min(loaded_at) AS oldest
            FROM news.articles WHERE search_tsv IS NULL AND loaded_at < :cutoff
            """
        ),
        {"cutoff": now - timedelta(minutes=t.search_lag_minutes)},
    ).one()
    if not row.articles:
        return []
    return [Finding("search_index_lag", "news.articles", "warning",
                    f"{row.articles} article(s) loaded more than {t.search_lag_minutes:g} min ago have no search vector "
                    f"(oldest loaded {row.oldest:%Y-%m-%d %H:%M} UTC); run `newsmon search index` and check the process logs",
                    {"articles": row.articles, "oldest_loaded_at": row.oldest.isoformat()})]  # fmt: skip


def check_search(engine: Engine, config: AlertsConfig, *, now: datetime | None = None) -> CheckReport:
    return _check(engine, config, SEARCH_KINDS, search_findings, now)


def run_checks(
    engine: Engine, settings: Settings, *, config: AlertsConfig | None = None, now: datetime | None = None,
    window: timedelta | None = None,
) -> dict[str, CheckReport]:  # fmt: skip
    """Every check, for ``newsmon alerts check`` and the monitoring DAG. ``window``
    overrides the validation window of alerts.yml."""
    config = config or load_alerts_config(settings.quality.alerts_file)
    if window is not None:
        config.thresholds = config.thresholds.model_copy(update={"validation_window_hours": window.total_seconds() / 3600})
    now = now or datetime.now(UTC)
    return {
        "feeds": check_feeds(engine, config, now=now),
        "volumes": check_volumes(engine, config, now=now),
        "validation": check_validation(engine, config, now=now),
        "search": check_search(engine, config, now=now),
    }


# ---------------------------------------------------------------- batch expectations


def batch_feed_stats(articles: Sequence[Article], rejected: Sequence[Rejected]) -> dict[int, dict[str, Any]]:
    """Per feed of one batch: rows, share of bodies not from the page, share quarantined (pure)."""
    stats: dict[int, dict[str, Any]] = {}
    for a in articles:
        s = stats.setdefault(a.feed_id, {"rows": 0, "fallback": 0, "quarantined": 0})
        s["rows"] += 1
        s["fallback"] += a.body_source != "page"
    for r in rejected:
        s = stats.setdefault(r.article.feed_id, {"rows": 0, "fallback": 0, "quarantined": 0})
        s["quarantined"] += 1
    for s in stats.values():
        s["rows"] = max(s["rows"], s["quarantined"])
        s["fallback_share"] = s["fallback"] / s["rows"] if s["rows"] else 0.0
        s["quarantined_share"] = s["quarantined"] / s["rows"] if s["rows"] else 0.0
    return stats


def run_batch_expectations(
    engine: Engine,
    settings: Settings,
    batch_id: str,
    articles: Sequence[Article],
    rejected: Sequence[Rejected],
    *,
    config: AlertsConfig | None = None,
    now: datetime | None = None,
) -> int | None:
    """Validate the batch's per-feed statistics with GX and store the run (kind 'batch');
    returns its dq_run_id. ``check_validation`` turns failed runs into alerts."""
    from newsmon.quality import BATCH_SUITE_NAME, record_dq_run, validate_batch_stats

    stats = batch_feed_stats(articles, rejected)
    if not stats:
        return None
    t = (config or load_alerts_config(settings.quality.alerts_file)).thresholds
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        base = baselines(conn, "feed", now, t.history_days, ids=list(stats))
    rows = []
    for feed_id, s in sorted(stats.items()):
        b = base.get(feed_id)
        med = b.median if b is not None and len(b.history) >= t.min_history_days else None
        judged = med is not None and med >= t.min_median
        rows.append({
            "feed_id": feed_id, "feed": b.key if b else str(feed_id), "rows": s["rows"],
            "fallback_share": s["fallback_share"], "quarantined_share": s["quarantined_share"],
            "volume_24h": b.current if b else None, "median_daily": med,
            "volume_ratio": (b.current / med) if judged and b is not None and med else 1.0,
        })  # fmt: skip
    outcome = validate_batch_stats(
        rows, band_factor=t.volume_band_factor, fallback_max=t.fallback_share_max,
        quarantined_max=t.quarantined_share_max, batch_id=batch_id,
    )  # fmt: skip
    with engine.begin() as conn:
        return record_dq_run(conn, outcome, suite=BATCH_SUITE_NAME, kind="batch")
