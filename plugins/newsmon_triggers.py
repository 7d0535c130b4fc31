"""The feed watcher: an event trigger that runs in the Airflow triggerer (event-driven
scheduling, issue 7). It lives in plugins/ because the triggerer imports triggers by
class path and the plugins folder is on every Airflow component's ``sys.path``.

Between the regular polls it asks ``newsmon.orchestration.watch_feeds`` to look at the
busiest feeds with conditional GETs; when one lists an entry the warehouse does not
hold yet, that feed is made due and an event fires on the asset
``newsmon://feed_changes``, which runs ``newsmon_poll_feeds`` at once instead of at its
next two-minute tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)

CONN_ID = "newsmon_db"


def _warehouse() -> str:
    """Connection ``newsmon_db``, else NEWSMON_DATABASE_URL / the embedded PostgreSQL
    (the same lookup as the DAGs' ``warehouse()``). Called from the trigger's event
    loop: the triggerer serves the synchronous connection lookup there."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException
    from newsmon.orchestration import warehouse_url

    try:
        uri = Connection.get(CONN_ID).get_uri()
    except AirflowNotFoundException:
        uri = None
    return warehouse_url(uri)


class FeedChangeTrigger(BaseEventTrigger):
    """Fires ``{"feeds": [...], "at": ...}`` whenever watched feeds list new entries.
    Runs forever; a failing look (warehouse down, ...) is logged and retried later."""

    def __init__(self, retry_s: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retry_s = float(retry_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {"retry_s": self.retry_s}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from newsmon.orchestration import watch_feeds

        url: str | None = None
        while True:
            try:
                url = url or _warehouse()
                changed, wait_s = await watch_feeds(url)
            except Exception:
                log.exception("feed watcher: this look failed; next in %.0fs", self.retry_s)
                url, changed, wait_s = None, [], self.retry_s
            if changed:
                yield TriggerEvent({"feeds": changed, "at": datetime.now(UTC).isoformat()})
            await asyncio.sleep(wait_s)
