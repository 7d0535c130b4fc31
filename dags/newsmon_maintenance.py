"""
### newsmon: maintenance

Daily upkeep of the warehouse: pending migrations, topic sync (a partition for every
new topic in `topics.yml`), retention of archived raw pages, near-duplicate band upkeep
(re-signing bands of an older scheme, pruning bands of articles deleted by hand),
`ANALYZE` of the `news` tables, and a refresh of the analyst materialized views.

**Manual run:** `raw_retention_days` sets how many days of raw pages to keep.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from newsmon_dag_common import DEFAULT_ARGS, START, warehouse


@dag(
    dag_id="newsmon_maintenance",
    schedule="@daily",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["newsmon", "maintenance"],
    params={"raw_retention_days": Param(30, type="integer", minimum=1, description="days of raw pages to keep")},
)
def newsmon_maintenance() -> None:
    @task
    def maintenance(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from newsmon.orchestration import maintenance

        return maintenance(warehouse(), raw_retention_days=int((params or {}).get("raw_retention_days") or 30))

    maintenance()


newsmon_maintenance()
