"""A real, throw-away Airflow deployment made of separate processes: scheduler,
dag-processor, triggerer, API server and, for the CeleryExecutor, a Celery worker.

Used by the freshness benchmark and the distributed (Celery) test: the same DAGs and
the same ``newsmon`` code as in production, with the metadata database in a temporary
database on a PostgreSQL server (LocalExecutor with sqlite cannot run tasks in parallel).
Every component runs in its own process group, so ``stop()`` also ends the task
processes and Celery children it started. Nothing here imports Airflow: it runs the
``airflow`` command of this virtualenv.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from newsmon.config import PROJECT_ROOT

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
LOCAL_PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def temp_database(admin_url: str, prefix: str = "nm_airflow") -> Iterator[str]:
    """A new empty database on the server of ``admin_url``, dropped (FORCE) afterwards."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@dataclass
class AirflowCluster:
    """Airflow components as subprocesses sharing one AIRFLOW_HOME and metadata database."""

    home: Path
    metadata_url: str
    executor: str = "LocalExecutor"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    dags_folder: Path = PROJECT_ROOT / "dags"
    plugins_folder: Path = PROJECT_ROOT / "plugins"
    api_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.api_port = self.api_port or free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "component-logs").mkdir(exist_ok=True)
        bindir = str(Path(AIRFLOW).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # unpause() what the run needs
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            # every component signs/verifies task tokens with the same secret
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # log servers of the scheduler/worker and triggerer: not the default 8793/8794
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            **self.extra_env,
        }

    # ------------------------------------------------------------ commands

    def cli(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` command to completion."""
        proc = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def migrate(self, pools: Mapping[str, int] | None = None) -> None:
        self.cli("db", "migrate", timeout=600)
        for pool, slots in (pools or {}).items():
            self.cli("pools", "set", pool, str(slots), f"{pool} (newsmon)")

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``airflow <args>`` in its own process group, output to component-logs/<name>.log."""
        log = open(self.home / "component-logs" / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs[name] = log
        proc = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_core(self, *, triggerer: bool = True) -> None:
        """API server (the execution API the task processes talk to), scheduler, dag-processor[, triggerer]."""
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port))
        self.start("dag-processor", "dag-processor")
        self.start("scheduler", "scheduler")
        if triggerer:
            self.start("triggerer", "triggerer")
        self.wait_for(lambda: port_open("127.0.0.1", self.api_port), 180, "the API server to listen")

    def unpause(self, *dag_ids: str) -> None:
        for dag_id in dag_ids:
            self.cli("dags", "unpause", dag_id)

    # ------------------------------------------------------------ state

    def metadata(self, sql: str, **params: Any) -> list[Any]:
        eng = sa.create_engine(self.metadata_url, poolclass=sa.NullPool)
        try:
            with eng.connect() as c:
                return list(c.execute(sa.text(sql), params))
        finally:
            eng.dispose()

    def wait_for_dags(self, dag_ids: Sequence[str], timeout: float = 300) -> None:
        def parsed() -> bool:
            with contextlib.suppress(sa.exc.DBAPIError):
                rows = self.metadata("SELECT dag_id FROM serialized_dag")
                return set(dag_ids) <= {r[0] for r in rows}
            return False

        self.wait_for(parsed, timeout, f"the dag-processor to parse {', '.join(dag_ids)}")

    def dag_runs(self, dag_id: str) -> list[Any]:
        return self.metadata(
            "SELECT run_id, state, run_type, start_date, end_date FROM dag_run WHERE dag_id = :d ORDER BY id", d=dag_id
        )

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str, every: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.dead()
            if dead:
                raise RuntimeError(f"while waiting for {what}: {', '.join(dead)} exited\n{self.tails()}")
            if check():
                return
            time.sleep(every)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.tails()}")

    def dead(self) -> list[str]:
        return [f"{n} (exit {p.returncode})" for n, p in self.procs.items() if p.poll() is not None]

    def tails(self, lines: int = 40) -> str:
        """The last lines of every component log and of the newest task logs (for failure messages)."""
        out = []
        for path in sorted((self.home / "component-logs").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()
            out.append(f"----- {path.name} (last {lines} lines)\n" + "\n".join(text[-lines:]))
        task_logs = sorted((self.home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-4:] if (self.home / "logs").is_dir() else []
        for path in task_logs:
            text = path.read_text(errors="replace").splitlines()
            out.append(f"----- task log {path.relative_to(self.home)}\n" + "\n".join(text[-15:]))
        return "\n".join(out)

    # ------------------------------------------------------------ shutdown

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop every component's process group (TERM, then KILL after ``grace_s``)."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            stop_process_group(proc.pid, grace_s=grace_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for log in self._logs.values():
            log.close()
        self.procs.clear()
        self._logs.clear()


@contextlib.contextmanager
def airflow_cluster(
    metadata_admin_url: str = LOCAL_PG_ADMIN,
    *,
    executor: str = "LocalExecutor",
    extra_env: Mapping[str, str] | None = None,
    keep_home: bool = False,
) -> Iterator[AirflowCluster]:
    """A migrated Airflow (temp AIRFLOW_HOME, temp metadata database); components are
    started by the caller and all stopped on exit, even on failure."""
    home = Path(tempfile.mkdtemp(prefix="nm-airflow-cluster-"))
    try:
        with temp_database(metadata_admin_url) as meta:
            cluster = AirflowCluster(home=home, metadata_url=meta, executor=executor, extra_env=dict(extra_env or {}))
            try:
                yield cluster
            finally:
                cluster.stop()
    finally:
        if not keep_home:
            shutil.rmtree(home, ignore_errors=True)


def stop_process_group(pgid: int, grace_s: float = 60.0) -> None:
    """SIGTERM every process of the group, SIGKILL what is left after ``grace_s``."""
    import signal

    def alive() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-pgid, os.WNOHANG)  # reap our direct child
        time.sleep(0.5)
    if alive():
        os.killpg(pgid, signal.SIGKILL)
