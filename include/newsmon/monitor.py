"""The News Monitor page: warehouse health at a glance, served inside the Airflow UI by
the plugin in ``plugins/news_monitor.py`` (and testable without Airflow).

Everything shown that came from a feed (names, titles, errors) is HTML-escaped here,
in one place (``_e``); the chart is inline SVG drawn on the server, so the page needs
no JavaScript and no CDN.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

CHART_DAYS = 14
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _exists(conn: Connection, table: str) -> bool:
    return bool(conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar())


# ---------------------------------------------------------------- data


def collect(conn: Connection, *, now: datetime | None = None) -> dict[str, Any]:
    """Everything the page shows, as plain data (also served as JSON)."""
    now = now or datetime.now(UTC)
    feeds = [
        dict(r)
        for r in conn.execute(
            sa.text(
                """
                SELECT name, url, enabled, last_polled_at, last_success_at, last_status, last_error,
                       consecutive_failures, next_poll_at, poll_interval_s
                FROM news.feeds ORDER BY consecutive_failures DESC, name
                """
            )
        ).mappings()
    ]
    start = (now - timedelta(days=CHART_DAYS - 1)).date()
    per_day = [
        dict(r)
        for r in conn.execute(
            sa.text(
                """
                SELECT topic, (COALESCE(published_at, loaded_at) AT TIME ZONE 'UTC')::date AS day, count(*) AS n
                FROM news.articles
                WHERE COALESCE(published_at, loaded_at) >= :start AND COALESCE(published_at, loaded_at) < :end
                GROUP BY 1, 2 ORDER BY 1, 2
                """
            ),
            {"start": datetime.combine(start, datetime.min.time(), UTC), "end": now + timedelta(days=1)},
        ).mappings()
    ]
    clusters = [
        dict(r)
        for r in conn.execute(
            sa.text(
                """
                SELECT s.cluster_id, count(*) AS copies, count(DISTINCT s.source_domain) AS sources,
                       max(s.seen_at) AS last_seen,
                       (SELECT a.title FROM news.articles a WHERE a.article_id = s.cluster_id
                        LIMIT 1) AS title,
                       (SELECT array_agg(DISTINCT a.topic ORDER BY a.topic) FROM news.articles a
                        WHERE a.article_id = s.cluster_id) AS topics
                FROM news.article_sightings s
                WHERE s.seen_at > :since AND s.cluster_id IS NOT NULL
                GROUP BY s.cluster_id
                ORDER BY copies DESC, sources DESC, last_seen DESC
                LIMIT 10
                """
            ),
            {"since": now - timedelta(hours=24)},
        ).mappings()
    ]
    alerts: list[dict[str, Any]] | None = None
    if _exists(conn, "news.alerts"):
        alerts = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    """
                    SELECT kind, subject, severity, summary, first_seen, last_seen, occurrences
                    FROM news.alerts WHERE resolved_at IS NULL
                    ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'error' THEN 1 WHEN 'warning' THEN 2 ELSE 3 END,
                             last_seen DESC
                    LIMIT 50
                    """
                )
            ).mappings()
        ]
    dq_runs = [
        dict(r)
        for r in conn.execute(
            sa.text(
                "SELECT dq_run_id, suite, batch_id, run_at, success, rows_total, rows_failed FROM news.dq_runs "
                "ORDER BY run_at DESC LIMIT 10"
            )
        ).mappings()
    ]
    return {
        "generated_at": now,
        "feeds": feeds,
        "per_day": per_day,
        "chart_days": [start + timedelta(days=i) for i in range(CHART_DAYS)],
        "clusters": clusters,
        "alerts": alerts,
        "dq_runs": dq_runs,
    }


# ---------------------------------------------------------------- rendering


def _ts(dt: Any) -> str:
    return dt.strftime("%Y-%m-%d %H:%M") if isinstance(dt, datetime) else "–"


def chart_svg(per_day: Sequence[dict[str, Any]], days: Sequence[date], *, width: int = 900, height: int = 260) -> str:
    """A line per topic over ``days``: articles per day. Pure; topic names are escaped."""
    topics = sorted({r["topic"] for r in per_day})
    counts = {(r["topic"], r["day"]): int(r["n"]) for r in per_day}
    top = max([1, *counts.values()])
    left, right, upper, lower = 40, 150, 10, 30
    w, h = width - left - right, height - upper - lower
    step = w / max(1, len(days) - 1)

    def x(i: int) -> float:
        return left + i * step

    def y(v: int) -> float:
        return upper + h - (v / top) * h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="articles per topic per day, last {len(days)} days">',
        f'<line x1="{left}" y1="{upper + h}" x2="{left + w}" y2="{upper + h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{upper + h}" stroke="#999"/>',
        f'<text x="{left - 6}" y="{upper + 4}" text-anchor="end" font-size="11">{top}</text>',
        f'<text x="{left - 6}" y="{upper + h}" text-anchor="end" font-size="11">0</text>',
    ]
    for i, d in enumerate(days):
        if i % 2 == 0 or i == len(days) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{height - 10}" text-anchor="middle" font-size="11">{d:%m-%d}</text>')
    if not topics:
        parts.append(f'<text x="{left + w / 2}" y="{upper + h / 2}" text-anchor="middle" fill="#777">no articles yet</text>')
    for k, t in enumerate(topics):
        color = PALETTE[k % len(PALETTE)]
        pts = " ".join(f"{x(i):.1f},{y(counts.get((t, d), 0)):.1f}" for i, d in enumerate(days))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"><title>{_e(t)}</title></polyline>')
        ly = upper + 14 + k * 18
        parts.append(f'<rect x="{left + w + 14}" y="{ly - 9}" width="12" height="12" fill="{color}"/>')
        total = sum(counts.get((t, d), 0) for d in days)
        parts.append(f'<text x="{left + w + 32}" y="{ly + 1}" font-size="12">{_e(t)} ({total})</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans Arabic",sans-serif;margin:1.2rem;color:#1d2939;background:#fff}
h1{font-size:1.4rem;margin:0 0 .2rem} h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
table{border-collapse:collapse;width:100%;font-size:.85rem} th,td{border-bottom:1px solid #e4e7ec;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f4f7} .muted{color:#667085;font-size:.8rem} .ok{color:#067647} .bad{color:#b42318;font-weight:600}
.sev-critical,.sev-error{color:#b42318;font-weight:600} .sev-warning{color:#b54708} td.t{unicode-bidi:plaintext}
"""


def render_page(data: dict[str, Any]) -> str:
    """The whole page as HTML. Every value from the warehouse goes through ``_e``."""
    feed_rows = "".join(
        "<tr>"
        f"<td>{_e(f['name'])}{'' if f['enabled'] else ' <span class=muted>(disabled)</span>'}</td>"
        f"<td>{_ts(f['last_polled_at'])}</td>"
        f"<td class=\"{'bad' if f['consecutive_failures'] else 'ok'}\">{_e(f['last_status'] or 'never polled')}</td>"
        f"<td>{int(f['consecutive_failures'])}</td>"
        f"<td>{_ts(f['next_poll_at'])}</td>"
        f"<td class=\"t muted\">{_e((f['last_error'] or '')[:200])}</td>"
        "</tr>"
        for f in data["feeds"]
    ) or '<tr><td colspan="6" class="muted">no feeds registered</td></tr>'
    cluster_rows = "".join(
        "<tr>"
        f"<td class=\"t\">{_e(c['title'] or '(untitled)')}</td>"
        f"<td>{int(c['copies'])}</td><td>{int(c['sources'])}</td>"
        f"<td>{_e(', '.join(c['topics'] or []))}</td><td>{_ts(c['last_seen'])}</td>"
        "</tr>"
        for c in data["clusters"]
    ) or '<tr><td colspan="5" class="muted">no stories in the last 24 hours</td></tr>'
    if data["alerts"] is None:
        alert_rows = '<tr><td colspan="5" class="muted">the alerts ledger (news.alerts) is not installed</td></tr>'
    else:
        alert_rows = "".join(
            "<tr>"
            f"<td class=\"sev-{_e(a['severity'])}\">{_e(a['severity'])}</td><td>{_e(a['kind'])}</td>"
            f"<td class=\"t\">{_e(a['subject'])}</td><td class=\"t\">{_e(a['summary'])}</td>"
            f"<td>{_ts(a['last_seen'])} ×{int(a['occurrences'])}</td>"
            "</tr>"
            for a in data["alerts"]
        ) or '<tr><td colspan="5" class="ok">no open alerts</td></tr>'
    dq_rows = "".join(
        "<tr>"
        f"<td>{_ts(r['run_at'])}</td><td>{_e(r['suite'])}</td><td>{_e(r['batch_id'])}</td>"
        f"<td class=\"{'ok' if r['success'] else 'bad'}\">{'passed' if r['success'] else 'failed'}</td>"
        f"<td>{int(r['rows_total'])}</td><td>{int(r['rows_failed'])}</td>"
        "</tr>"
        for r in data["dq_runs"]
    ) or '<tr><td colspan="6" class="muted">no validation runs yet</td></tr>'
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"refresh\" content=\"60\">"
        f"<title>News Monitor</title><style>{_CSS}</style></head><body>"
        "<h1>News Monitor</h1>"
        f"<div class=\"muted\">warehouse snapshot at {_ts(data['generated_at'])} UTC · refreshes every minute</div>"
        "<h2>Feed health</h2><table><thead><tr><th>feed</th><th>last poll</th><th>status</th><th>failures</th>"
        f"<th>next poll</th><th>last error</th></tr></thead><tbody>{feed_rows}</tbody></table>"
        f"<h2>Articles per topic per day (last {len(data['chart_days'])} days)</h2>"
        f"{chart_svg(data['per_day'], data['chart_days'])}"
        "<h2>Largest story clusters (last 24 hours)</h2><table><thead><tr><th>story</th><th>copies</th>"
        f"<th>sources</th><th>topics</th><th>last seen</th></tr></thead><tbody>{cluster_rows}</tbody></table>"
        "<h2>Open alerts</h2><table><thead><tr><th>severity</th><th>kind</th><th>subject</th><th>summary</th>"
        f"<th>last seen</th></tr></thead><tbody>{alert_rows}</tbody></table>"
        "<h2>Recent data-quality runs</h2><table><thead><tr><th>when</th><th>suite</th><th>batch</th><th>result</th>"
        f"<th>rows</th><th>failed</th></tr></thead><tbody>{dq_rows}</tbody></table>"
        "</body></html>"
    )


# ---------------------------------------------------------------- web app


def create_app(warehouse: Callable[[], str], *, dependencies: Sequence[Any] = ()) -> Any:
    """The FastAPI app the Airflow plugin mounts. ``warehouse`` returns the SQLAlchemy URL
    (resolved per request: the connection may change); ``dependencies`` lets the plugin
    require an authenticated Airflow user."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse

    from newsmon import db

    app = FastAPI(title="newsmon News Monitor", dependencies=list(dependencies), docs_url=None, redoc_url=None)
    engines: dict[str, Engine] = {}

    def snapshot() -> dict[str, Any]:
        url = warehouse()
        if url not in engines:
            engines[url] = db.make_engine(url, statement_timeout_ms=15_000, pool_size=2, max_overflow=2)
        with engines[url].connect() as conn:
            return collect(conn)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(render_page(snapshot()), headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"})

    @app.get("/api/summary")
    def summary() -> JSONResponse:
        import json

        return JSONResponse(json.loads(json.dumps(snapshot(), default=str)))

    app.state.engines = engines  # disposed with the process
    return app
