"""
### newsmon: process articles

Runs whenever `newsmon_poll_feeds` emits `newsmon://feed_entries`. Plans as many batches
as the queue holds (dynamic task mapping; each batch claims its own entries with
`SKIP LOCKED`, so batches never overlap and a retry just claims again), then each batch
runs **fetch → extract → dedupe → classify → validate (Great Expectations) → load** in
one transaction under the `newsmon_http` pool. Emits `newsmon://articles` when articles
were loaded.

**Manual run:** `date_from`/`date_to` (YYYY-MM-DD) put the failed and quarantined entries
first seen in that range back in the queue first; `feed` limits the run to one feed.
Loaded entries stay loaded: reprocessing adds no duplicate rows.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from newsmon_dag_common import ARTICLES, DEFAULT_ARGS, FEED_ENTRIES, HTTP_POOL, START, warehouse


@dag(
    dag_id="newsmon_process_articles",
    schedule=[FEED_ENTRIES],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["newsmon", "ingest", "articles"],
    params={
        "feed": Param(None, type=["null", "string"], description="process only this feed's entries"),
        "date_from": Param(None, type=["null", "string"], format="date", description="reprocess from this day (YYYY-MM-DD)"),
        "date_to": Param(None, type=["null", "string"], format="date", description="reprocess up to this day, inclusive"),
        "max_batches": Param(8, type="integer", minimum=1, maximum=256, description="at most this many batches"),
    },
)
def newsmon_process_articles() -> None:
    @task
    def requeue(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from newsmon.orchestration import requeue_range

        p = params or {}
        return requeue_range(warehouse(), p.get("date_from"), p.get("date_to"), feed=p.get("feed") or None)

    @task
    def plan_batches(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from newsmon.orchestration import plan_batches

        p = params or {}
        return plan_batches(warehouse(), max_batches=int(p.get("max_batches") or 8), feed=p.get("feed") or None)

    @task(pool=HTTP_POOL, map_index_template="{{ task.op_kwargs['batch']['label'] }}")
    def process_batch(batch: dict[str, Any]) -> dict[str, Any]:
        from newsmon.orchestration import process_batch

        return process_batch(warehouse(), batch)

    @task(outlets=[ARTICLES], trigger_rule="none_failed")
    def report(results: Any = None) -> dict[str, Any]:
        """Sum the batches; skip (no asset event) when nothing was loaded."""
        from airflow.sdk.exceptions import AirflowSkipException
        from newsmon.orchestration import process_report

        total = process_report(list(results or []))
        if not total["articles_loaded"]:
            raise AirflowSkipException(f"no new articles: {total}")
        return total

    batches = plan_batches()
    requeue() >> batches
    report(process_batch.expand(batch=batches))


newsmon_process_articles()
