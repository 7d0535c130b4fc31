"""The News Monitor plugin as Airflow loads it from plugins/."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

pytestmark = pytest.mark.airflow


def test_airflow_discovers_the_plugin_with_app_and_nav_entry() -> None:
    from airflow import plugins_manager

    apps, _middlewares = plugins_manager.get_fastapi_plugins()
    ours = [a for a in apps if a["url_prefix"] == "/news-monitor"]
    assert len(ours) == 1 and ours[0]["name"] == "News Monitor"
    views, _react = plugins_manager._get_ui_plugins()
    assert {"name": "News Monitor", "href": "/news-monitor/", "destination": "nav", "url_route": "news-monitor"} in views
    assert plugins_manager.get_import_errors() == {}


@pytest.mark.slow
def test_the_page_in_the_airflow_api_server_needs_a_login(airflow_db: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real API server app: anonymous -> 401, forged cookie -> refused, signed-in
    admin (simple auth manager) -> the page from the newsmon_db connection's database."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient
    from newsmon.db import libpq_url

    monkeypatch.setenv("AIRFLOW_CONN_NEWSMON_DB", libpq_url(db_url))
    monkeypatch.setenv("NEWSMON_DATABASE_URL", "postgresql://nobody:pw@127.0.0.1:9/nowhere")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(32))
    with TestClient(create_app()) as c:
        assert c.get("/news-monitor/").status_code == 401
        assert c.get("/news-monitor/", cookies={"_token": "forged"}).status_code in (401, 403)
        passwords = json.loads((airflow_db / "simple_auth_manager_passwords.json.generated").read_text())
        login = c.post("/auth/token", json={"username": "admin", "password": passwords["admin"]})
        assert login.status_code == 201, login.text
        r = c.get("/news-monitor/", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert r.status_code == 200, r.text[:500]
    assert "<h1>News Monitor</h1>" in r.text and "no feeds registered" in r.text
