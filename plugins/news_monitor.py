"""Airflow 3 plugin: the News Monitor page (newsmon.monitor) as a FastAPI app mounted on
the API server at /news-monitor, and an entry in the UI's navigation that shows it.

Only signed-in Airflow users may see it (Airflow's own authentication dependency). The
warehouse is the connection ``newsmon_db``, else NEWSMON_DATABASE_URL, else the embedded
server. The app is built on first access to ``fastapi_apps``, i.e. only in the API
server: task processes also load plugins and must not pay for FastAPI.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/news-monitor"


def _warehouse() -> str:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection
    from newsmon.orchestration import CONN_ID, warehouse_url

    try:
        uri = Connection.get_connection_from_secrets(CONN_ID).get_uri()
    except AirflowNotFoundException:
        uri = None
    return warehouse_url(uri)


def build_app(*, authenticated: bool = True) -> Any:
    from fastapi import Depends
    from newsmon.monitor import create_app

    deps = []
    if authenticated:
        from airflow.api_fastapi.core_api.security import requires_authenticated

        deps.append(Depends(requires_authenticated()))
    return create_app(_warehouse, dependencies=deps)


class _LazyApps:
    """``fastapi_apps`` computed on first read (the API server's), then kept."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, obj: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            self._apps = [{"app": build_app(), "url_prefix": URL_PREFIX, "name": "News Monitor"}]
        return self._apps


class NewsMonitorPlugin(AirflowPlugin):
    name = "news_monitor"
    fastapi_apps = _LazyApps()  # type: ignore[assignment]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "News Monitor", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "news-monitor"}
    ]
