"""One typed settings object, read from YAML and overridden by environment variables.

Precedence (highest first): ``NEWSMON_<SECTION>__<KEY>`` environment variables, the YAML
file (``include/config/newsmon.yml`` or ``--config FILE``), then the defaults below.
``NEWSMON_DATABASE_URL`` is accepted as the conventional short form of
``NEWSMON_DATABASE__URL``. Validation happens once, at start-up; a bad file is reported
with its path and line so the operator can fix it without reading a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from newsmon.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "include" / "config"
DEFAULT_CONFIG_FILE = CONFIG_DIR / "newsmon.yml"
ENV_PREFIX = "NEWSMON_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL of the warehouse; unset = embedded PostgreSQL"
    )
    embedded_dir: Path = Field(default=Path(".newsmon/pgdata"), description="data directory of the embedded server")
    embedded_database: str = "newsmon"
    statement_timeout_ms: int = Field(default=300_000, ge=0)


class FetchSettings(_Section):
    user_agent: str = "newsmon/0.1 (+https://github.com/newsmon/newsmon; news monitoring)"
    allow_private_networks: bool = False
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=20.0, gt=0)
    total_timeout_s: float = Field(default=60.0, gt=0)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_redirects: int = Field(default=5, ge=0, le=20)
    concurrency: int = Field(default=32, ge=1)
    per_host_concurrency: int = Field(default=2, ge=1, le=2)
    per_host_delay_s: float = Field(default=0.25, ge=0)
    respect_robots_txt: bool = True
    retries: int = Field(default=2, ge=0, le=10)


class PollSettings(_Section):
    default_interval_s: int = Field(default=15 * 60, ge=1)
    min_interval_s: int = Field(default=2 * 60, ge=1)
    max_interval_s: int = Field(default=24 * 3600, ge=1)
    max_backoff_s: int = Field(default=24 * 3600, ge=1)
    jitter_fraction: float = Field(default=0.1, ge=0, le=0.5)
    shard_size: int = Field(default=250, ge=1)
    max_entries_per_feed: int = Field(default=1000, ge=1, description="entries kept from one poll (a 100,000-item feed is cut)")
    # feed watcher (Airflow triggerer, issue 7): conditional GETs between polls, 0 = off
    watch_interval_s: int = Field(default=30, ge=0, description="seconds between the watcher's looks; 0 turns it off")
    watch_max_feeds: int = Field(default=50, ge=1, description="feeds watched: those with the shortest adapted interval")

    @model_validator(mode="after")
    def _bounds(self) -> PollSettings:
        if not self.min_interval_s <= self.default_interval_s <= self.max_interval_s:
            raise ValueError("poll intervals must satisfy min_interval_s <= default_interval_s <= max_interval_s")
        return self


class PipelineSettings(_Section):
    feeds_file: Path = CONFIG_DIR / "feeds.yml"
    topics_file: Path = CONFIG_DIR / "topics.yml"
    batch_size: int = Field(default=200, ge=1)
    languages: list[str] = Field(default_factory=lambda: ["ar", "en"])
    claim_lease_s: int = Field(default=900, ge=10)
    max_attempts: int = Field(default=5, ge=1)


class QualitySettings(_Section):
    title_max_chars: int = 500
    body_min_chars: int = 200
    mojibake_max_ratio: float = Field(default=0.01, ge=0, le=1)
    max_rejected_ratio: float = Field(default=0.2, ge=0, le=1)
    earliest_published: str = "2000-01-01T00:00:00+00:00"
    alerts_file: Path = Field(default=CONFIG_DIR / "alerts.yml", description="notifiers and alert thresholds")


class Settings(BaseSettings):
    """The effective configuration of one newsmon process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    poll: PollSettings = Field(default_factory=PollSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with every secret replaced, safe to print or log."""
        data = self.model_dump(mode="json")
        if self.database.url is not None:
            data["database"]["url"] = mask_url(self.database.url.get_secret_value())
        return _mask_secrets(self, data)


def _mask_secrets(model: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr) and value is not None and name in data and not (
            isinstance(data[name], str) and "***" in data[name]
        ):
            data[name] = "***"
        elif isinstance(value, BaseModel):
            data[name] = _mask_secrets(value, data[name])
    return data


_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@?#]*:)(?P<pw>[^@/?#]*)(?P<tail>@)", re.I)


def mask_url(url: str) -> str:
    """Hide the password of a URL (``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``)."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + ("***" if m["pw"] else "") + m["tail"], url)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key, for error messages."""


def _load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc

    def walk(node: yaml.Node | None, path: tuple[str | int, ...]) -> None:
        if node is None:
            return
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    walk(root, ())
    data = yaml.safe_load(text) if root is not None else None
    return data, lines


def load_yaml_file(path: Path) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Parse a YAML file, keeping key line numbers; raise ConfigError naming the file on failure."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc
    return _load_yaml_with_lines(text, str(path))


def line_of(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    """Line of the deepest known prefix of ``loc``."""
    for n in range(len(loc), -1, -1):
        if tuple(loc[:n]) in lines:
            return lines[tuple(loc[:n])]
    return None


def _env_source(loc: tuple[str | int, ...]) -> str | None:
    name = ENV_PREFIX + "__".join(str(p).upper() for p in loc)
    if name in os.environ:
        return name
    if tuple(loc[:2]) == ("database", "url") and "NEWSMON_DATABASE_URL" in os.environ:
        return "NEWSMON_DATABASE_URL"
    return None


def load_settings(path: Path | str | None = None) -> Settings:
    """Read, merge and validate the configuration.

    ``path`` defaults to ``$NEWSMON_CONFIG`` or ``include/config/newsmon.yml``; a missing
    default file is fine (defaults apply), a missing explicit file is an error.
    """
    explicit = path is not None or "NEWSMON_CONFIG" in os.environ
    cfg_path = Path(path or os.environ.get("NEWSMON_CONFIG") or DEFAULT_CONFIG_FILE)
    data: Any = {}
    lines: dict[tuple[str | int, ...], int] = {}
    if cfg_path.exists() or explicit:
        data, lines = load_yaml_file(cfg_path)
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{cfg_path}, line 1: the top level must be a mapping of sections")
    short_url = os.environ.get("NEWSMON_DATABASE_URL")
    if short_url and "NEWSMON_DATABASE__URL" not in os.environ:
        data = {**data, "database": {**(data.get("database") or {}), "url": short_url}}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, cfg_path, lines)) from None


def _describe(exc: ValidationError, cfg_path: Path, lines: dict[tuple[str | int, ...], int]) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        env = _env_source(loc)
        if env:
            where = f"environment variable {env}"
        else:
            line = line_of(lines, loc)
            where = f"{cfg_path}, line {line}" if line else str(cfg_path)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        problems.append(f"{where}: {dotted}: {msg}")
    return "; ".join(problems)
