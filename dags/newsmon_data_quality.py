"""
### newsmon: data quality

Hourly checks over the last window: feed health (feeds failing repeatedly, silent
feeds), article volume against the previous week, and the Great Expectations checks
that `newsmon.alerts` runs when present. Findings become alerts through the configured
notifiers. Per-batch validation itself happens while loading (see
`newsmon_process_articles`); this DAG watches the trend.

**Manual run:** `window_hours` widens the window.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from newsmon_dag_common import ARTICLES, DEFAULT_ARGS, START, warehouse


@dag(
    dag_id="newsmon_data_quality",
    schedule="@hourly",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["newsmon", "quality"],
    params={"window_hours": Param(1, type="integer", minimum=1, maximum=24 * 14, description="hours to look back")},
)
def newsmon_data_quality() -> None:
    @task(inlets=[ARTICLES])
    def checks(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from newsmon.orchestration import run_checks

        return run_checks(warehouse(), window_hours=int((params or {}).get("window_hours") or 1))

    checks()


newsmon_data_quality()
