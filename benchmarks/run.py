"""Run the registered benchmarks and print a markdown report.

Each benchmark is a module in this package with ``run() -> dict`` returning
``{"title": str, "rows": [{"metric": ..., "value": ..., "baseline": ..., "ratio": ...}], "notes": str}``.
Results are also written to ``bench-results/<name>.json``. Pass names to run a subset:
``python -m benchmarks.run load dedup``.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCHMARKS = ["bench_load", "bench_dedup", "bench_quality", "bench_poll", "bench_extract", "bench_freshness"]  # other streams append theirs here
OUT = Path("bench-results")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def report(name: str, result: dict) -> str:
    lines = [f"### {result.get('title', name)}", ""]
    rows = result.get("rows", [])
    if rows:
        cols = list(rows[0].keys())
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for r in rows:
            lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    if result.get("notes"):
        lines += ["", result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    wanted = argv if argv is not None else sys.argv[1:]
    names = [b for b in BENCHMARKS if not wanted or any(w in b for w in wanted)]
    OUT.mkdir(exist_ok=True)
    print(f"# newsmon benchmarks ({platform.python_version()}, {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')})\n")
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        result = mod.run()
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        print(report(name, result))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
