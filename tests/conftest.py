"""Shared fixtures: a real PostgreSQL (embedded by default, or NEWSMON_TEST_DATABASE_URL),
one fresh database per test cloned from a migrated template, and the sample corpus
served on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from newsmon import db
from newsmon.config import Settings, load_settings
from sqlalchemy.engine import Engine, make_url

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
_counter = itertools.count()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's NEWSMON_* settings."""
    for k in list(os.environ):
        if k.startswith("NEWSMON_") and k != "NEWSMON_TEST_DATABASE_URL":
            monkeypatch.delenv(k)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """Admin URL of the PostgreSQL server the tests use."""
    external = os.environ.get("NEWSMON_TEST_DATABASE_URL")
    if external:
        yield db.normalize_url(external)
        return
    base = Path(tempfile.mkdtemp(prefix="nm-pg-"))
    pgdata = base / "pgdata"
    info = db.start_embedded(pgdata, "postgres")
    try:
        yield db.normalize_url(info.url)
    finally:
        db.stop_embedded(pgdata)
        shutil.rmtree(base, ignore_errors=True)


def _admin(url: str) -> Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A database with all migrations applied, cloned by every test."""
    name = f"nm_tmpl_{os.getpid()}"
    admin = _admin(pg_server_url)
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    eng = db.make_engine(url, poolclass=sa.NullPool)
    db.upgrade(eng)
    eng.dispose()
    yield name
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database for one test (dropped afterwards)."""
    name = f"nm_t_{os.getpid()}_{next(_counter)}"
    admin = _admin(pg_server_url)
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = db.make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at the test database, allowed to fetch from 127.0.0.1."""
    monkeypatch.setenv("NEWSMON_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSMON_FETCH__ALLOW_PRIVATE_NETWORKS", "true")
    monkeypatch.setenv("NEWSMON_FETCH__PER_HOST_DELAY_S", "0")
    monkeypatch.setenv("NEWSMON_FETCH__RETRIES", "0")
    return load_settings()


@pytest.fixture
def sample_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from newsmon.sample import SampleServer

    with SampleServer(port=0) as server:
        monkeypatch.setenv("NEWSMON_SAMPLE_BASE_URL", server.base_url)
        yield server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that touch PostgreSQL carry the ``db`` marker (CI re-runs them on PostgreSQL 15)."""
    for item in items:
        if {"db_url", "engine", "settings", "template_db", "pg_server_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


@pytest.fixture
def http_server() -> Iterator[object]:
    from tests.httpserver import LocalServer

    with LocalServer() as s:
        yield s
