"""Quality stage: validate each batch with a Great Expectations 1.x suite before load.

The suite is defined here, in code, versioned with the project. Every row expectation
has one policy: a failing row is **quarantined** (``news.rejected_articles``) with the
names of the expectations it failed, and the rest of the batch loads. Every run is
stored in ``news.dq_runs`` with GX's own result JSON.

GX is imported lazily (it takes seconds) and its ephemeral context is built once per
process. That context is shared, and a dataframe asset holds the dataframe of the batch
being validated, so two threads validating at once (two passes in one process) could
each check the other's rows: one lock per process serialises the validations.

A second, small suite (``newsmon_batch``, ``validate_batch_stats``) checks per-feed
statistics of each batch (volume band, feed-fallback share, quarantined share); its
runs are stored with ``kind = 'batch'`` and turned into alerts by ``newsmon.health``.
``build_data_docs`` renders the row suite over recent rows as GX Data Docs.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsmon.config import QualitySettings
from newsmon.models import Article, Rejected

log = logging.getLogger(__name__)

SUITE_NAME = "newsmon_articles"
# Typical UTF-8-read-as-cp1252/latin-1 sequences (Ã©, Ø§, Ù…, â€™ ...) and U+FFFD.
_MOJIBAKE = re.compile("\ufffd|[ÃÂ][\u0080-\u00bf]|[ØÙ][\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u203a\u20ac\u2122]|â€")


def mojibake_ratio(text: str | None) -> float:
    """Share of characters that belong to replacement chars or double-decoding sequences."""
    if not text:
        return 0.0
    bad = sum(len(m.group(0)) for m in _MOJIBAKE.finditer(text))
    return bad / max(1, len(text))


def _rules(settings: QualitySettings, languages: Sequence[str], topics: Sequence[str], now: datetime) -> list[tuple[str, Any]]:
    import great_expectations as gx

    E = gx.expectations
    earliest = datetime.fromisoformat(settings.earliest_published).timestamp()
    latest = (now + timedelta(hours=1)).timestamp()
    return [
        ("url_present", E.ExpectColumnValuesToNotBeNull(column="url")),
        ("url_unique_in_batch", E.ExpectColumnValuesToBeUnique(column="url")),
        ("title_present", E.ExpectColumnValuesToNotBeNull(column="title")),
        ("title_length", E.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1, max_value=settings.title_max_chars)),
        (
            "body_min_length",
            E.ExpectColumnValuesToBeBetween(
                column="body_chars",
                min_value=settings.body_min_chars,
                row_condition='body_source!="feed"',
                condition_parser="pandas",
            ),
        ),
        ("lang_allowed", E.ExpectColumnValuesToBeInSet(column="lang", value_set=list(languages))),
        ("published_present", E.ExpectColumnValuesToNotBeNull(column="published_ts")),
        ("published_in_range", E.ExpectColumnValuesToBeBetween(column="published_ts", min_value=earliest, max_value=latest)),
        ("topics_in_taxonomy", E.ExpectColumnValuesToBeInSet(column="unknown_topics", value_set=[0])),
        ("text_not_mojibake", E.ExpectColumnValuesToBeBetween(column="mojibake_ratio", max_value=settings.mojibake_max_ratio)),
        ("content_hash_present", E.ExpectColumnValuesToNotBeNull(column="content_hash")),
    ]


def _quiet_gx_loggers() -> None:
    """GX sets some of its loggers to INFO at import ("Created temporary directory ...")."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("great_expectations") and isinstance(logger, logging.Logger) and 0 < logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


_GX_LOCK = threading.RLock()


@lru_cache(maxsize=1)
def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _quiet_gx_loggers()
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ds = ctx.data_sources.add_pandas("newsmon_batches")
    asset = ds.add_dataframe_asset("articles")
    asset.add_batch_definition_whole_dataframe("whole_batch")
    ds.add_dataframe_asset("batch_stats").add_batch_definition_whole_dataframe("whole_batch")
    return ctx


def build_frame(articles: Sequence[Article], topics: Sequence[str]) -> Any:
    import pandas as pd

    known = set(topics) | {"unclassified"}
    rows = []
    for i, a in enumerate(articles):
        rows.append(
            {
                "row_id": i,
                "url": a.url_key or None,
                "title": a.title or None,
                "body_chars": len(a.body or ""),
                "body_source": a.body_source,
                "lang": a.lang,
                "published_ts": a.published_at.timestamp() if a.published_at else None,
                "unknown_topics": sum(1 for s in a.topic_slugs if s not in known),
                "mojibake_ratio": max(mojibake_ratio(a.title), mojibake_ratio(a.body)),
                "content_hash": a.content_hash or None,
            }
        )
    return pd.DataFrame(rows, columns=[
        "row_id", "url", "title", "body_chars", "body_source", "lang", "published_ts",
        "unknown_topics", "mojibake_ratio", "content_hash",
    ])  # fmt: skip


@dataclass
class ValidationOutcome:
    passed: list[Article]
    rejected: list[Rejected]
    success: bool
    statistics: dict[str, Any]
    result: dict[str, Any]
    batch_id: str


def validate_articles(
    articles: Sequence[Article],
    *,
    settings: QualitySettings,
    languages: Sequence[str],
    topics: Sequence[str],
    batch_id: str | None = None,
    now: datetime | None = None,
) -> ValidationOutcome:
    """Run the suite on a batch; split it into rows that pass and rows to quarantine."""
    import great_expectations as gx

    now = now or datetime.now(UTC)
    batch_id = batch_id or uuid.uuid4().hex[:12]
    if not articles:
        return ValidationOutcome([], [], True, {"evaluated_expectations": 0, "rows": 0}, {}, batch_id)
    frame = build_frame(articles, topics)
    with _GX_LOCK:  # also keeps two first callers from both building the context
        ctx = _context()  # before the suite: GX needs an active context to build one
        suite = gx.ExpectationSuite(name=f"{SUITE_NAME}_{batch_id}")
        for name, exp in _rules(settings, languages, topics, now):
            exp.meta = {"newsmon_rule": name}
            suite.add_expectation(exp)
        batch = ctx.data_sources.get("newsmon_batches").get_asset("articles").get_batch_definition("whole_batch")
        res = batch.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row_id"]}
        )
    failures: dict[int, list[str]] = {}
    for r in res.results:
        name = (r.expectation_config.meta or {}).get("newsmon_rule", r.expectation_config.type)
        if r.success:
            continue
        if r.exception_info and r.exception_info.get("raised_exception"):
            # an expectation that cannot run is a suite bug: fail every row loudly, lose nothing
            log.error("expectation %s raised: %s", name, r.exception_info.get("exception_message"))
            for i in range(len(articles)):
                failures.setdefault(i, []).append(f"{name}:error")
            continue
        for idx in r.result.get("unexpected_index_list") or []:
            row = int(idx["row_id"]) if isinstance(idx, dict) else int(idx)
            failures.setdefault(row, []).append(name)
    passed, rejected = [], []
    for i, a in enumerate(articles):
        if i in failures:
            names = tuple(sorted(set(failures[i])))
            rejected.append(Rejected(a, names, "failed: " + ", ".join(names)))
        else:
            passed.append(a)
    stats = {
        "rows": len(articles),
        "rows_failed": len(rejected),
        "evaluated_expectations": res.statistics.get("evaluated_expectations"),
        "successful_expectations": res.statistics.get("successful_expectations"),
        "unsuccessful_expectations": res.statistics.get("unsuccessful_expectations"),
        "failed_by_rule": _count_rules(failures),
    }
    return ValidationOutcome(passed, rejected, bool(res.success), stats, _jsonable(res.to_json_dict()), batch_id)


def _count_rules(failures: dict[int, list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for names in failures.values():
        for n in set(names):
            counts[n] = counts.get(n, 0) + 1
    return counts


def _jsonable(obj: Any) -> Any:
    """GX result dicts can hold numpy scalars and NaN; make them strict JSON."""

    def default(o: Any) -> Any:
        if hasattr(o, "item"):
            return o.item()
        return str(o)

    text = json.dumps(obj, default=default, allow_nan=True)
    data = json.loads(text)

    def clean(v: Any) -> Any:
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(data)


def record_dq_run(conn: Connection, outcome: ValidationOutcome, *, suite: str = SUITE_NAME, kind: str = "rows") -> int:
    return int(
        conn.execute(
            sa.text(
                """
                INSERT INTO news.dq_runs (suite, batch_id, success, rows_total, rows_failed, statistics, result, kind)
                VALUES (:suite, :batch, :success, :total, :failed, CAST(:stats AS jsonb), CAST(:result AS jsonb), :kind)
                RETURNING dq_run_id
                """
            ),
            {
                "kind": kind,
                "suite": suite,
                "batch": outcome.batch_id,
                "success": outcome.success,
                "total": outcome.statistics.get("rows", 0),
                "failed": outcome.statistics.get("rows_failed", 0),
                "stats": json.dumps(outcome.statistics),
                "result": json.dumps(outcome.result),
            },
        ).scalar_one()
    )


# ---------------------------------------------------------------- batch suite (issue 6)

BATCH_SUITE_NAME = "newsmon_batch"
BATCH_COLUMNS = ["row_id", "feed_id", "feed", "rows", "fallback_share", "quarantined_share", "volume_24h", "median_daily", "volume_ratio"]


def validate_batch_stats(
    stats: Sequence[dict[str, Any]], *, band_factor: float, fallback_max: float, quarantined_max: float, batch_id: str
) -> ValidationOutcome:
    """Batch expectations on one row per feed of a batch: its 24 h volume within
    ``median / band_factor .. median x band_factor`` of its own history, the share of
    bodies that fell back to the feed text, and the share quarantined. ``statistics``
    names the feeds that failed each rule."""
    import great_expectations as gx
    import pandas as pd

    if not stats:
        return ValidationOutcome([], [], True, {"rows": 0, "evaluated_expectations": 0}, {}, batch_id)
    frame = pd.DataFrame([{**r, "row_id": i} for i, r in enumerate(stats)], columns=BATCH_COLUMNS)
    E = gx.expectations
    with _GX_LOCK:
        ctx = _context()  # before the suite: GX needs an active context to build one
        suite = gx.ExpectationSuite(name=f"{BATCH_SUITE_NAME}_{batch_id}")
        for name, exp in (
            ("feed_volume_in_band", E.ExpectColumnValuesToBeBetween(column="volume_ratio", min_value=1 / band_factor, max_value=band_factor)),
            ("fallback_share", E.ExpectColumnValuesToBeBetween(column="fallback_share", min_value=0, max_value=fallback_max)),
            ("quarantined_share", E.ExpectColumnValuesToBeBetween(column="quarantined_share", min_value=0, max_value=quarantined_max)),
        ):
            exp.meta = {"newsmon_rule": name}
            suite.add_expectation(exp)
        batch = ctx.data_sources.get("newsmon_batches").get_asset("batch_stats").get_batch_definition("whole_batch")
        res = batch.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row_id"]}
        )
    failed: dict[str, list[str]] = {}
    for r in res.results:
        if r.success:
            continue
        name = (r.expectation_config.meta or {}).get("newsmon_rule", r.expectation_config.type)
        idxs = [int(i["row_id"]) if isinstance(i, dict) else int(i) for i in (r.result.get("unexpected_index_list") or [])]
        failed[name] = sorted({str(stats[i]["feed"]) for i in idxs}) or ["(suite error)"]
    statistics = {
        "rows": len(stats),
        "rows_failed": len({f for feeds in failed.values() for f in feeds}),
        "evaluated_expectations": res.statistics.get("evaluated_expectations"),
        "unsuccessful_expectations": res.statistics.get("unsuccessful_expectations"),
        "failed_by_rule": failed,
        "feeds": list(stats),
    }
    return ValidationOutcome([], [], bool(res.success), _jsonable(statistics), _jsonable(res.to_json_dict()), batch_id)


# ---------------------------------------------------------------- Data Docs


def build_data_docs(articles: Sequence[Article], out_dir: Any, *, settings: QualitySettings, languages: Sequence[str],
                    topics: Sequence[str], now: datetime | None = None) -> Any:  # fmt: skip
    """Run the row suite on ``articles`` in a throw-away file-backed GX context and build
    its Data Docs into ``out_dir``; returns the path of index.html."""
    import tempfile
    from pathlib import Path

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="newsmon-gx-") as root:
        ctx = gx.get_context(mode="file", project_root_dir=root)
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.add_data_docs_site(
            site_name="newsmon",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out)},
            },
        )
        bd = ctx.data_sources.add_pandas("newsmon").add_dataframe_asset("recent_articles").add_batch_definition_whole_dataframe("all")
        suite = gx.ExpectationSuite(name=SUITE_NAME)
        for name, exp in _rules(settings, languages, topics, now):
            exp.meta = {"newsmon_rule": name}
            suite.add_expectation(exp)
        suite = ctx.suites.add(suite)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="recent_articles", data=bd, suite=suite))
        cp = ctx.checkpoints.add(
            gx.Checkpoint(name="newsmon_docs", validation_definitions=[vd],
                          actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["newsmon"])])
        )  # fmt: skip
        cp.run(batch_parameters={"dataframe": build_frame(articles, topics)})
        ctx.build_data_docs(site_names=["newsmon"])
    index = out / "index.html"
    if not index.is_file():
        raise RuntimeError(f"GX did not write {index}")
    return index
