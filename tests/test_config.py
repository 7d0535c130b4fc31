from pathlib import Path

import pytest
from newsmon.config import load_settings, mask_url
from newsmon.errors import ConfigError


def test_defaults_load_from_project_file():
    s = load_settings()
    assert s.fetch.max_redirects == 5
    assert s.poll.default_interval_s == 900
    assert s.database.url is None


def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = tmp_path / "n.yml"
    cfg.write_text("fetch:\n  allow_private_networks: false\n  concurrency: 4\n")
    monkeypatch.setenv("NEWSMON_FETCH__ALLOW_PRIVATE_NETWORKS", "true")
    s = load_settings(cfg)
    assert s.fetch.allow_private_networks is True
    assert s.fetch.concurrency == 4


def test_short_database_url_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEWSMON_DATABASE_URL", "postgresql://u:s3cret@db.example:5432/news")
    s = load_settings()
    assert s.database.url is not None
    shown = s.masked()
    assert "s3cret" not in str(shown)
    assert shown["database"]["url"] == "postgresql://u:***@db.example:5432/news"


def test_bad_file_reports_file_and_line(tmp_path: Path):
    cfg = tmp_path / "bad.yml"
    cfg.write_text("fetch:\n  concurrency: 4\n  max_redirects: lots\n")
    with pytest.raises(ConfigError, match=r"bad\.yml, line 3: fetch\.max_redirects"):
        load_settings(cfg)


def test_unknown_key_and_bad_yaml(tmp_path: Path):
    cfg = tmp_path / "u.yml"
    cfg.write_text("poll:\n  shard_sise: 3\n")
    with pytest.raises(ConfigError, match=r"line 2: poll\.shard_sise: unknown setting"):
        load_settings(cfg)
    cfg.write_text("poll: [unclosed\n")
    with pytest.raises(ConfigError, match=r"u\.yml, line \d+: not valid YAML"):
        load_settings(cfg)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEWSMON_POLL__SHARD_SIZE", "many")
    with pytest.raises(ConfigError, match="NEWSMON_POLL__SHARD_SIZE"):
        load_settings()


def test_missing_explicit_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yml")


def test_mask_url():
    assert mask_url("postgresql+psycopg2://a:b@h/d") == "postgresql+psycopg2://a:***@h/d"
    assert mask_url("postgresql://h/d") == "postgresql://h/d"
