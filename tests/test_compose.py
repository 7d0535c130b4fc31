"""The Docker deployment (docker-compose.yml, Dockerfile, .env.example), checked without a Docker engine.

The compose file is parsed with PyYAML (anchors and ``<<:`` merge keys resolve) and interpolated the way
Compose does with no .env (``${VAR:-default}`` -> default, ``$$`` -> ``$``), then its services, images,
environment and mounts are checked against what newsmon and its DAGs expect. ``docker compose config``
is run too when a Compose CLI is installed (it needs no engine).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from newsmon import db
from newsmon.config import PROJECT_ROOT, load_settings
from sqlalchemy.engine import URL, make_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
DAG_COMMON = ROOT / "dags" / "newsmon_dag_common.py"
AIRFLOW_HOME_IN_IMAGE = "/opt/airflow"

CORE_SERVICES = {"postgres", "warehouse", "redis"}
AIRFLOW_COMMANDS = {  # service -> command of a long-running Airflow component
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
    "flower": "celery flower",
}
AIRFLOW_SERVICES = {*AIRFLOW_COMMANDS, "airflow-init", "airflow-cli"}
MOUNTED = ("dags", "plugins", "include", "sql", "logs", "config")
SECRET_KEY = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY|TOKEN)$")


# ------------------------------------------------------------------ Compose-style interpolation

_DOLLAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)
_SUBSTITUTION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-[^}]*)?\}")


def references(text: str) -> Iterator[tuple[str, str | None, str | None]]:
    """(name, operator, argument) of every variable reference, skipping ``$$`` escapes."""
    for m in _DOLLAR.finditer(text):
        if m.group(0) == "$$":
            continue
        if m["plain"]:
            yield m["plain"], None, None
            continue
        b = _BRACED.fullmatch(m["braced"])
        if b is None:
            raise ValueError(f"invalid substitution ${{{m['braced']}}} in {text!r}")
        yield b["name"], b["op"], b["arg"]


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string value."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m["plain"]:
            return env.get(m["plain"], "")
        b = _BRACED.fullmatch(m["braced"])
        if b is None:
            raise ValueError(f"invalid substitution ${{{m['braced']}}}")
        name, op, arg = b["name"], b["op"], b["arg"]
        value = env.get(name)
        if op is None:
            return value or ""
        if op in (":-", "-"):
            use_default = not value if op == ":-" else value is None
            return arg if use_default else str(value)
        if op in (":?", "?"):
            if (not value) if op == ":?" else value is None:
                raise ValueError(f"required variable {name}: {arg}")
            return str(value)
        return arg if value else ""  # :+ / +

    return _DOLLAR.sub(sub, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def strings(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string value in a parsed YAML tree, with its path of keys/indexes."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from strings(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings(v, (*path, i))
    elif isinstance(node, str):
        yield path, node


_URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I)


def plaintext_secrets(doc: Any) -> list[str]:
    """Secrets written into the file instead of coming from a ``${VAR...}`` substitution."""
    found = []
    for path, value in strings(doc):
        # Substitutions may contain ':' and '-' ("${PW:-dev}"): hide them behind neutral tokens first.
        subs = _SUBSTITUTION.findall(value)
        masked = _SUBSTITUTION.sub(lambda m, subs=subs: f"SUBST{subs.index(m.group(0))}X", value)
        for m in _URL_USERINFO.finditer(masked):
            pw = m["pw"]
            if pw and not re.fullmatch(r"SUBST\d+X", pw):
                found.append(f"{'.'.join(map(str, path))}: password in URL {value!r}")
        key = str(path[-1]) if path else ""
        if SECRET_KEY.search(key) and value and not _SUBSTITUTION.fullmatch(value):
            found.append(f"{'.'.join(map(str, path))}: {value!r}")
    return found


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), "docker-compose.yml must be a mapping"
    return doc


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as Compose sees it with no .env and no variables set: every default applies."""
    return interpolate_tree(raw, {})


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (the official file's style)"
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_text(service: dict[str, Any]) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def dag_constant(name: str, default: str) -> str:
    """A constant of the DAGs' shared module, read without importing Airflow."""
    if not DAG_COMMON.exists():
        return default
    for node in ast.parse(DAG_COMMON.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return default


def pg_url(url: str) -> URL:
    return make_url(db.normalize_url(url))


# ------------------------------------------------------------------ the helpers themselves


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d}/${EMPTY:-d}/${UNSET:-d}", env) == "v/d/d"
    assert interpolate("${EMPTY-d}|${UNSET-d}", env) == "|d"
    assert interpolate("$$HOME $${HOSTNAME} $SET", env) == "$HOME ${HOSTNAME} v"
    with pytest.raises(ValueError, match="required"):
        interpolate("${UNSET:?give it}", env)
    assert list(references("a $${NOT} ${A:-x} $B")) == [("A", ":-", "x"), ("B", None, None)]


def test_secret_scan_flags_plaintext_and_accepts_substitutions() -> None:
    bad = {
        "environment": {
            "POSTGRES_PASSWORD": "hunter2",
            "URL": "postgresql://u:hunter2@h/db",
            "URL2": "postgres://${U:-me}:hunter2@h/${DB:-x}",
        }
    }
    good = {
        "environment": {
            "POSTGRES_PASSWORD": "${PW:-dev}",
            "URL": "postgresql://u:${PW:-dev}@h/db",
            "URL2": "postgres://${U:-me}:${PW:-dev}@h/${DB:-x}",
            "BROKER": "redis://:@redis:6379/0",
            "AIRFLOW__CORE__FERNET_KEY": "",
        }
    }
    assert len(plaintext_secrets(bad)) == 3
    assert plaintext_secrets(good) == []


# ------------------------------------------------------------------ services


def test_required_services_exist(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    missing = (CORE_SERVICES | AIRFLOW_SERVICES) - set(services)
    assert not missing, f"missing services: {sorted(missing)}"
    assert services["flower"].get("profiles") == ["flower"], "flower is optional, behind the 'flower' profile"
    for name in CORE_SERVICES | set(AIRFLOW_COMMANDS) - {"flower"} | {"airflow-init"}:
        assert not services[name].get("profiles"), f"{name} must start with a plain `docker compose up`"
    assert {"postgres-db-volume", "warehouse-db-volume"} <= set(compose.get("volumes") or {})


def test_airflow_services_share_the_common_image_and_celery(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    common = compose["x-airflow-common"]
    assert common["build"]["context"] == "."
    assert common["build"]["dockerfile"] == "Dockerfile"
    for name in sorted(AIRFLOW_SERVICES):
        svc = services[name]
        assert svc.get("image") == common["image"], name
        assert svc.get("build") == common["build"], name
        env = env_of(svc)
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        assert (
            env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL") == "http://airflow-apiserver:8080/execution/"
        ), name
        assert env.get("AIRFLOW_CONN_NEWSMON_DB"), name
    for name, cmd in AIRFLOW_COMMANDS.items():
        assert command_text(services[name]) == cmd, name
    # Redis is the broker, the metadata database the result backend.
    env = env_of(services["airflow-scheduler"])
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert make_url(env["AIRFLOW__CELERY__BROKER_URL"]).host == "redis"
    assert make_url(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+")).host == "postgres"


def test_api_server_publishes_8080_and_is_health_checked(services: dict[str, dict[str, Any]]) -> None:
    api = services["airflow-apiserver"]
    assert any(str(p).endswith(":8080") and str(p).split(":")[-2] == "8080" for p in api["ports"]), api[
        "ports"
    ]
    assert "/api/v2/monitor/health" in " ".join(api["healthcheck"]["test"])


def test_published_ports_listen_on_loopback_by_default(services: dict[str, dict[str, Any]]) -> None:
    """With the development defaults (weak passwords), nothing is reachable from other machines."""
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert {"airflow-apiserver", "warehouse", "flower"} <= set(published)
    for name, ports in published.items():
        for p in ports:
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} on every interface"


def test_load_examples_off(services: dict[str, dict[str, Any]]) -> None:
    for name in sorted(AIRFLOW_SERVICES):
        assert env_of(services[name]).get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false", name


def test_every_dependency_of_the_scheduler_is_health_checked(services: dict[str, dict[str, Any]]) -> None:
    deps = services["airflow-scheduler"]["depends_on"]
    assert {"postgres", "redis", "warehouse", "airflow-init"} <= set(deps)
    for dep, spec in deps.items():
        condition = spec["condition"]
        if condition == "service_completed_successfully":
            assert dep == "airflow-init", f"only the one-off init may be waited on to finish, not {dep}"
            continue
        assert condition == "service_healthy", f"scheduler waits on {dep} with {condition}"
        hc = services[dep].get("healthcheck") or {}
        assert hc.get("test") and hc["test"] != ["NONE"] and not hc.get("disable"), (
            f"{dep} has no health check"
        )
    # Every long-running service reports its health too.
    for name in sorted(CORE_SERVICES | set(AIRFLOW_COMMANDS)):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_worker_runs_celery_and_pings_itself(services: dict[str, dict[str, Any]]) -> None:
    worker = services["airflow-worker"]
    assert command_text(worker) == "celery worker"
    check = " ".join(worker["healthcheck"]["test"])
    assert "inspect ping" in check
    assert '"celery@${HOSTNAME}"' in check, "the container's shell must expand HOSTNAME ($$ in the file)"
    assert "container_name" not in worker, "a fixed container_name would prevent --scale airflow-worker=N"
    assert worker["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    # The merge keeps the common environment and adds the worker's own setting.
    env = env_of(worker)
    assert env["DUMB_INIT_SETSID"] == "0"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


# ------------------------------------------------------------------ the two databases


def test_warehouse_is_a_separate_service_and_database(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    env = env_of(services["airflow-scheduler"])
    meta = pg_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    wh = pg_url(env["AIRFLOW_CONN_NEWSMON_DB"])
    assert meta.host == "postgres"
    assert wh.host == "warehouse"
    assert (meta.host, meta.database) != (wh.host, wh.database)
    for url, name in ((meta, "postgres"), (wh, "warehouse")):
        svc_env = env_of(services[name])
        assert svc_env["POSTGRES_DB"] == url.database, name
        assert svc_env["POSTGRES_USER"] == url.username, name
        assert svc_env["POSTGRES_PASSWORD"] == url.password, name
        assert (url.port or 5432) == 5432, name
    volumes = {
        name: {str(v).split(":")[0] for v in services[name]["volumes"]} for name in ("postgres", "warehouse")
    }
    assert not volumes["postgres"] & volumes["warehouse"], "the two databases must not share a volume"
    image, _, tag = services["warehouse"]["image"].partition(":")
    assert image == "postgres"
    assert int(tag.split(".")[0].split("-")[0]) >= 15
    hc = " ".join(services["warehouse"]["healthcheck"]["test"])
    assert "pg_isready" in hc
    # Airflow's own result backend stays on the metadata database.
    backend = make_url(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
    assert (backend.host, backend.database) == (meta.host, meta.database)


def test_newsmon_conn_is_a_valid_sqlalchemy_url_for_the_warehouse(
    services: dict[str, dict[str, Any]],
) -> None:
    env = env_of(services["airflow-worker"])
    conn_id = dag_constant("CONN_ID", "newsmon_db")
    uri = env[f"AIRFLOW_CONN_{conn_id.upper()}"]
    url = make_url(db.normalize_url(uri))
    assert url.drivername == "postgresql+psycopg2"
    wh_env = env_of(services["warehouse"])
    assert (url.host, url.port, url.database, url.username, url.password) == (
        "warehouse",
        5432,
        wh_env["POSTGRES_DB"],
        wh_env["POSTGRES_USER"],
        wh_env["POSTGRES_PASSWORD"],
    )
    # newsmon's own setting names the same database, so tasks and the CLI agree.
    same = make_url(db.normalize_url(env["NEWSMON_DATABASE_URL"]))
    assert same.render_as_string(hide_password=False) == url.render_as_string(hide_password=False)


def test_airflow_parses_the_newsmon_connection(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """What a task sees: Airflow's Connection from the env URI, then get_uri() -> newsmon."""
    uri = env_of(services["airflow-worker"])["AIRFLOW_CONN_NEWSMON_DB"]
    script = (
        "import json, sys\n"
        "from airflow.sdk.definitions.connection import Connection\n"
        "c = Connection.from_uri(sys.argv[1], conn_id='newsmon_db')\n"
        "print(json.dumps({'type': c.conn_type, 'host': c.host, 'port': c.port, 'schema': c.schema,"
        " 'login': c.login, 'uri': c.get_uri()}))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "false"}
    out = subprocess.run(
        [sys.executable, "-c", script, uri], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    conn = json.loads(out.stdout.strip().splitlines()[-1])
    assert (conn["type"], conn["host"], conn["port"], conn["schema"]) == (
        "postgres",
        "warehouse",
        5432,
        "newsmon",
    )
    assert make_url(db.normalize_url(conn["uri"])).render_as_string(hide_password=False) == make_url(
        db.normalize_url(uri)
    ).render_as_string(hide_password=False)


def test_newsmon_settings_accept_the_compose_environment(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(services["airflow-worker"])
    newsmon_env = {k: v for k, v in env.items() if k.startswith("NEWSMON_")}
    assert {"NEWSMON_DATABASE_URL", "NEWSMON_CONFIG"} <= set(newsmon_env)
    for k, v in newsmon_env.items():
        if v.startswith(AIRFLOW_HOME_IN_IMAGE + "/"):  # a path in the image -> the same file here
            v = str(ROOT / v.removeprefix(AIRFLOW_HOME_IN_IMAGE + "/"))
            assert Path(v).exists(), f"{k} names {v}, which the mounts do not provide"
        monkeypatch.setenv(k, v)
    settings = load_settings()
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value() == env["NEWSMON_DATABASE_URL"]
    assert settings.log_level == env["NEWSMON_LOG_LEVEL"]


# ------------------------------------------------------------------ mounts and init


def test_project_folders_are_mounted_into_opt_airflow(services: dict[str, dict[str, Any]]) -> None:
    for name in sorted(AIRFLOW_SERVICES):
        mounts = {}
        for spec in services[name]["volumes"]:
            src, dst = str(spec).split(":")[:2]
            mounts[dst] = src
        for folder in MOUNTED:
            dst = f"{AIRFLOW_HOME_IN_IMAGE}/{folder}"
            assert dst in mounts, f"{name}: {folder}/ is not mounted at {dst}"
            assert Path(mounts[dst]).name == folder and mounts[dst].startswith("."), f"{name}: {mounts[dst]}"
    # newsmon locates migrations and config relative to its package: include/newsmon -> PROJECT_ROOT.
    # With include/ and sql/ mounted side by side under /opt/airflow, the same layout holds in the image.
    assert db.MIGRATIONS_DIR.relative_to(PROJECT_ROOT).parts[0] in MOUNTED
    assert Path(db.__file__).resolve().relative_to(PROJECT_ROOT).parts[0] in MOUNTED


def test_init_migrates_both_databases_and_creates_the_http_pool(services: dict[str, dict[str, Any]]) -> None:
    init = services["airflow-init"]
    script = command_text(init)
    env = env_of(init)
    pool = dag_constant("HTTP_POOL", "newsmon_http")
    assert pool == "newsmon_http"
    m = re.search(rf"airflow pools set {pool} (\S+)", script)
    assert m, f"airflow-init does not create the {pool} pool"
    slots = m.group(1).strip("\"'")
    slots = env.get(slots.strip("${}"), slots) if slots.startswith("${") else slots
    assert int(slots) > 0
    assert "newsmon db upgrade" in script
    assert env.get("_AIRFLOW_DB_MIGRATE") == "true"  # the image's entrypoint runs `airflow db migrate`
    assert "/entrypoint airflow" in script
    assert init.get("user") == "0:0"
    assert env.get("_AIRFLOW_WWW_USER_USERNAME") and env.get("_AIRFLOW_WWW_USER_PASSWORD")
    # The login it writes is the file the API server's SimpleAuthManager reads.
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith(
        f"{AIRFLOW_HOME_IN_IMAGE}/config/"
    )
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == env["_AIRFLOW_WWW_USER_USERNAME"] + ":admin"
    # Everything else waits for init to finish.
    for name in AIRFLOW_COMMANDS:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def _airflow_invocations(services: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Every `airflow ...` command line the file runs: service commands, health checks and init steps."""
    found = [["airflow", *cmd.split()] for cmd in AIRFLOW_COMMANDS.values()]
    texts = [command_text(services["airflow-init"])]
    texts += [
        " ".join(services[name]["healthcheck"]["test"])
        for name in sorted(AIRFLOW_SERVICES)
        if services[name].get("healthcheck")
    ]
    env = {**env_of(services["airflow-init"]), "HOSTNAME": "host"}
    for text in texts:
        for line in text.replace("||", "\n").replace(";", "\n").splitlines():
            m = re.search(r"(?:^|\s)(airflow\s.*)", interpolate(line, env))
            if m:
                found.append(shlex.split(m.group(1).split(">")[0]))
    return found


def test_airflow_command_lines_parse_with_the_installed_airflow(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Airflow 3.3.2's own CLI parser accepts every command line of the file (no typo passes)."""
    invocations = _airflow_invocations(services)
    joined = [" ".join(i) for i in invocations]
    assert any(j.startswith("airflow pools set newsmon_http 16 ") for j in joined), joined
    assert any(j.startswith("airflow jobs check --job-type DagProcessorJob") for j in joined), joined
    assert any(j.startswith("airflow jobs check --job-type TriggererJob") for j in joined), joined
    script = (
        "import json, sys\n"
        "from airflow.cli.cli_parser import get_parser\n"
        "bad = []\n"
        "for argv in json.loads(sys.argv[1]) + [['airflow', 'pools', 'sett', 'x']]:\n"
        "    try:\n"
        "        get_parser().parse_args(argv[1:])\n"
        "    except SystemExit:\n"
        "        bad.append(argv)\n"
        "print(json.dumps(bad))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(invocations)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    bad = json.loads(out.stdout.strip().splitlines()[-1])
    assert bad == [["airflow", "pools", "sett", "x"]], f"rejected by Airflow's CLI: {bad[:-1]}"


def test_health_check_celery_app_exists() -> None:
    check = " ".join(
        yaml.safe_load(COMPOSE_FILE.read_text())["services"]["airflow-worker"]["healthcheck"]["test"]
    )
    module = re.search(r"--app (\S+)\.app\b", check).group(1)
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level lookup imports nothing
    assert spec is not None and spec.submodule_search_locations, f"{top} is not installed"
    files = [Path(loc, *rest[:-1], rest[-1] + ".py") for loc in spec.submodule_search_locations]
    source = next((f for f in files if f.exists()), None)
    assert source is not None, f"{module} is not installed"
    assert re.search(r'name == "app"|^app\s*=', source.read_text(), re.M), f"{module} has no `app`"


def test_newsmon_commands_of_init_exist() -> None:
    from newsmon.cli import app
    from typer.testing import CliRunner

    script = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["airflow-init"]["command"][-1]
    calls = [shlex.split(m) for m in re.findall(r"^\s*(newsmon [^\n'\\]+)$", script, re.M)]
    assert ["newsmon", "db", "upgrade"] in calls
    for argv in calls:
        result = CliRunner().invoke(app, [*argv[1:], "--help"])
        assert result.exit_code == 0, f"{argv}: {result.output}"


def _init_python(services: dict[str, dict[str, Any]]) -> str:
    script = command_text(services["airflow-init"])
    m = re.search(r"python - <<'PY'\n(.*?)\nPY\n", script, re.S)
    assert m, "airflow-init writes the UI login with an inline Python snippet"
    return m.group(1)


def test_init_writes_the_ui_login_for_simple_auth_manager(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Run init's own snippet: it sets the configured password and keeps other users'."""
    code = _init_python(services)
    path = tmp_path / "passwords.json"
    path.write_text('{"analyst": "keep-me", "airflow": "old"}\n')
    env = {
        **os.environ,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(path),
        "_AIRFLOW_WWW_USER_USERNAME": "airflow",
        "_AIRFLOW_WWW_USER_PASSWORD": 'n3w "pw" \\ ok',
    }
    for _ in range(2):  # idempotent
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr
    assert json.loads(path.read_text()) == {"analyst": "keep-me", "airflow": 'n3w "pw" \\ ok'}
    path.unlink()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert json.loads(path.read_text()) == {"airflow": 'n3w "pw" \\ ok'}
    assert path.stat().st_mode & 0o077 == 0, "the password file must not be readable by others"


def test_init_script_is_valid_bash(services: dict[str, dict[str, Any]]) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = command_text(services["airflow-init"]).removeprefix("-c ")
    out = subprocess.run([bash, "-n", "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------ secrets and variables


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            out[key.strip()] = value.strip()
    return out


def test_no_plaintext_secrets_in_compose(raw: dict[str, Any]) -> None:
    assert plaintext_secrets(raw) == []
    header = COMPOSE_FILE.read_text(encoding="utf-8").split("\n---", 1)[0]
    secret_vars = {
        name
        for _, value in strings(raw)
        for name, _, _ in references(value)
        if SECRET_KEY.search(name) or re.search(r"PASSWORD|SECRET|FERNET", name)
    }
    assert {"AIRFLOW_DB_PASSWORD", "WAREHOUSE_DB_PASSWORD", "AIRFLOW_JWT_SECRET"} <= secret_vars
    for name in secret_vars:
        assert re.search(rf"^#\s+{re.escape(name)}\s", header, re.M), (
            f"{name} is not documented in the header"
        )


def test_every_variable_has_a_default_and_is_in_env_example(raw: dict[str, Any]) -> None:
    used: dict[str, set[str | None]] = {}
    for _, value in strings(raw):
        for name, op, _ in references(value):
            used.setdefault(name, set()).add(op)
    # Variables the containers' shells expand are written $${...} and so are not references.
    assert "HOSTNAME" not in used
    no_default = sorted(n for n, ops in used.items() if ops - {":-"})
    assert not no_default, f"use ${{VAR:-default}} for: {no_default}"
    example = _env_example()
    assert set(used) == set(example), (
        f"not in .env.example: {sorted(set(used) - set(example))}; "
        f"unused in docker-compose.yml: {sorted(set(example) - set(used))}"
    )
    for name, value in example.items():
        if re.search(r"PASSWORD|SECRET|FERNET", name):
            assert value == "", f".env.example must not ship a value for the secret {name}"


# ------------------------------------------------------------------ the image


def _dockerfile() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """ARG defaults and (INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    args: dict[str, str] = {}
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instructions.append((instr.upper(), rest.strip()))
        if instr.upper() == "ARG" and "=" in rest:
            k, _, v = rest.strip().partition("=")
            args[k] = v.strip("\"'")
    return args, instructions


def test_dockerfile_builds_the_compose_image_from_pinned_airflow(compose: dict[str, Any]) -> None:
    args, instructions = _dockerfile()
    base = next(rest for instr, rest in instructions if instr == "FROM")
    base = interpolate(base, args).split(" AS ")[0].strip()
    build_arg = compose["x-airflow-common"]["build"]["args"]["AIRFLOW_BASE_IMAGE"]
    assert base == build_arg, "compose must build FROM the same base image as the Dockerfile's default"
    repo, _, tag = base.partition(":")
    assert repo == "apache/airflow"
    m = re.fullmatch(r"(?:slim-)?(\d+\.\d+\.\d+)-python(\d+\.\d+)", tag)
    assert m, f"pin both Airflow and Python in the base tag, not {tag!r}"
    airflow_version, python_version = m.groups()
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["apache-airflow"].strip() == airflow_version == "3.3.2"
    requires = re.search(r'requires-python\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f">={python_version}" in requires, (
        f"base image Python {python_version} vs requires-python {requires}"
    )
    image = compose["x-airflow-common"]["image"]
    assert image.endswith(f":{airflow_version}-python{python_version}"), image


def test_dockerfile_installs_requirements_with_constraints_and_the_project() -> None:
    _, instructions = _dockerfile()
    copied: dict[str, str] = {}  # file name -> destination folder
    sources: list[str] = []
    for instr, rest in instructions:
        if instr == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            *srcs, dest = parts
            sources += srcs
            for s in srcs:
                copied[s.rstrip("/")] = dest
    runs = [rest for instr, rest in instructions if instr == "RUN"]
    pip = next((r for r in runs if "pip install" in r and "requirements.txt" in r), None)
    assert pip, "no RUN pip install of requirements.txt"
    tokens = pip.split()

    def after(*flags: str) -> str:
        for i, t in enumerate(tokens):
            if t in flags:
                return tokens[i + 1]
        raise AssertionError(f"{flags} missing in {pip!r}")

    req, con = after("-r", "--requirement"), after("-c", "--constraint")
    assert Path(req).name == "requirements.txt" and Path(con).name == "constraints.txt"
    assert req == copied["requirements.txt"].rstrip("/") + "/requirements.txt"
    assert con == copied["constraints.txt"].rstrip("/") + "/constraints.txt"
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in pip, "keep pip from replacing the image's Airflow"
    project = [r for r in runs if re.search(r"pip install .*--no-deps .*-e /opt/airflow\b", r)]
    assert project, "the newsmon project itself must be installed (editable at /opt/airflow)"
    assert copied.get("include") == "/opt/airflow/include/" and copied.get("sql") == "/opt/airflow/sql/"
    # Every COPY source exists in a checkout (git keeps no empty folders) and is not .dockerignored.
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".env", ".git"} <= ignored
    for s in sources:
        p = ROOT / s
        assert p.exists() and (p.is_file() or any(p.iterdir())), f"COPY source {s} is missing or empty"
        assert s.rstrip("/") not in ignored, f"COPY source {s} is excluded by .dockerignore"


# ------------------------------------------------------------------ docker compose itself, when installed


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            ok = (
                subprocess.run([*cmd, "version"], capture_output=True, timeout=30, check=False).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return cmd
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` / `docker-compose` CLI installed")
    out = subprocess.run(
        [
            *cli,
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(ENV_EXAMPLE),
            "--profile",
            "flower",
            "--profile",
            "debug",
            "config",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert set(cfg["services"]) >= (CORE_SERVICES | AIRFLOW_SERVICES)
    worker = cfg["services"]["airflow-worker"]
    assert worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert make_url(db.normalize_url(worker["environment"]["AIRFLOW_CONN_NEWSMON_DB"])).host == "warehouse"
    targets = {v["target"] if isinstance(v, dict) else str(v).split(":")[1] for v in worker["volumes"]}
    assert {f"{AIRFLOW_HOME_IN_IMAGE}/{f}" for f in MOUNTED} <= targets
