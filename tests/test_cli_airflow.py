"""`newsmon airflow-standalone` helpers that can be tested without starting Airflow."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from newsmon.airflow_cluster import stop_process_group

# like `airflow standalone`: a parent whose child outlives it (this one even ignores SIGTERM)
_TREE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
time.sleep(600)
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_process_group_stops_children_that_ignore_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _TREE], start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until the grandchild exists
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if len(out) >= 2:
            break
        time.sleep(0.1)
    assert len(out) >= 2
    stop_process_group(proc.pid, grace_s=2)
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid)  # the grandchild ignoring SIGTERM was killed too
