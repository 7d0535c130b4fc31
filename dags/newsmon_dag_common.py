"""What the newsmon DAG files share: default arguments, assets, the warehouse lookup
and the failure callback. Not a DAG file (listed in .airflowignore); importing it is
cheap: newsmon itself is imported only when a task or callback runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, AssetWatcher
from newsmon_triggers import FeedChangeTrigger  # plugins/: the triggerer imports it by class path

OWNER = "newsmon"
CONN_ID = "newsmon_db"
HTTP_POOL = "newsmon_http"
START = datetime(2025, 1, 1, tzinfo=UTC)

FEED_ENTRIES = Asset("newsmon://feed_entries", extra={"table": "news.feed_entries"})
ARTICLES = Asset("newsmon://articles", extra={"table": "news.articles"})
# Event-driven polling (issue 7): the triggerer watches the busiest feeds between polls
# (conditional GETs, poll.watch_interval_s; 0 = off); a feed listing new entries fires
# this asset, which runs newsmon_poll_feeds at once instead of at its next tick.
FEED_CHANGES = Asset(
    "newsmon://feed_changes",
    watchers=[AssetWatcher(name="newsmon_feed_watcher", trigger=FeedChangeTrigger())],
)


def on_failure(context: Any) -> None:
    """on_failure_callback of every newsmon task: structured log line + alert notifiers."""
    from newsmon.orchestration import on_task_failure

    try:
        url = warehouse()
    except Exception:  # the warehouse itself may be what failed: still log the failure
        url = None
    on_task_failure(context, url=url)


DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    # a float multiplier: Airflow 3 treats True as 1 (no backoff)
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": on_failure,
}


def warehouse() -> str:
    """The warehouse URL: Airflow connection ``newsmon_db`` (e.g. AIRFLOW_CONN_NEWSMON_DB),
    else NEWSMON_DATABASE_URL, else the embedded PostgreSQL. Never passed through XCom."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException
    from newsmon.orchestration import warehouse_url

    try:
        uri = Connection.get(CONN_ID).get_uri()
    except AirflowNotFoundException:
        uri = None
    return warehouse_url(uri)
