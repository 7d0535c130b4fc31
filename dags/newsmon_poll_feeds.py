"""
### newsmon: poll feeds

Every two minutes, and at once when the feed watcher in the triggerer sees a feed
list new entries (asset `newsmon://feed_changes`, event-driven scheduling): mirror
`feeds.yml`/`topics.yml` into the warehouse, split the feeds that are **due** into shards (dynamic task mapping, one mapped task per shard, labelled
with its feeds), poll each shard under the `newsmon_http` pool, and emit the asset
`newsmon://feed_entries` when entries wait to be processed (which triggers
`newsmon_process_articles`).

Scheduling of each feed (adaptive interval, backoff on failure, conditional GET) lives
in `newsmon.feeds`; this DAG only decides *when to look*.

**Manual run:** set `feed` to a feed name to poll just that feed now, due or not.

Warehouse: Airflow connection `newsmon_db`, else `NEWSMON_DATABASE_URL`, else the
embedded PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from newsmon_dag_common import DEFAULT_ARGS, FEED_CHANGES, FEED_ENTRIES, HTTP_POOL, START, warehouse


@dag(
    dag_id="newsmon_poll_feeds",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("*/2 * * * *", timezone="UTC"), assets=FEED_CHANGES),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=15),
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["newsmon", "ingest", "feeds"],
    params={
        "feed": Param(None, type=["null", "string"], description="poll only this feed (name in feeds.yml), due or not"),
        "max_shards": Param(4, type="integer", minimum=1, maximum=64, description="at most this many parallel shards"),
    },
)
def newsmon_poll_feeds() -> None:
    @task
    def sync_config() -> dict[str, Any]:
        from newsmon.orchestration import sync_config

        return sync_config(warehouse())

    @task
    def plan_shards(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from newsmon.orchestration import plan_poll_shards

        p = params or {}
        return plan_poll_shards(warehouse(), max_shards=int(p.get("max_shards") or 4), feed=p.get("feed") or None)

    @task(pool=HTTP_POOL, map_index_template="{{ task.op_kwargs['shard']['label'] }}")
    def poll_shard(shard: dict[str, Any]) -> dict[str, Any]:
        from newsmon.orchestration import poll_shard

        return poll_shard(warehouse(), shard)

    @task(outlets=[FEED_ENTRIES], trigger_rule="none_failed")
    def announce(results: Any = None) -> dict[str, Any]:
        """Sum the shards; skip (no asset event) when nothing waits to be processed."""
        from airflow.sdk.exceptions import AirflowSkipException
        from newsmon.orchestration import poll_report

        report = poll_report(warehouse(), list(results or []))
        if not report["emit"]:
            raise AirflowSkipException(f"nothing new and nothing queued: {report}")
        return report

    shards = plan_shards()
    sync_config() >> shards
    announce(poll_shard.expand(shard=shards))


newsmon_poll_feeds()
