"""A throw-away warehouse for benchmarks: an embedded PostgreSQL in a temp dir, migrated."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from newsmon import db
from sqlalchemy.engine import Engine


@contextmanager
def temp_warehouse(name: str = "bench") -> Iterator[Engine]:
    base = Path(tempfile.mkdtemp(prefix=f"nm-{name}-"))
    pgdata = base / "pgdata"
    info = db.start_embedded(pgdata, "newsmon")
    engine = db.make_engine(info.url, poolclass=sa.NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("ALTER SYSTEM SET maintenance_work_mem = '1GB'")
            c.exec_driver_sql("ALTER SYSTEM SET max_wal_size = '4GB'")
            c.exec_driver_sql("SELECT pg_reload_conf()")
        db.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        db.stop_embedded(pgdata)
        shutil.rmtree(base, ignore_errors=True)
