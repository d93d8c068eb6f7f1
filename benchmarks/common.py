"""Helpers shared by the benchmark parts: CPU from /proc, waiting, JSON results."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # fields after "(comm)", from field 3 on


def process_cpu(pid: int, *, with_reaped_children: bool = False) -> float:
    """utime + stime of ``pid`` in seconds (plus its reaped children's, if asked)."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICKS


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text().split()
            found.extend(int(p) for p in text)
    except FileNotFoundError:
        pass
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of a worker: its main process (and reaped children) plus its pool."""
    return process_cpu(pid, with_reaped_children=True) + sum(
        process_cpu(child) for child in children_of(pid)
    )


def self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1,
               what: str = "condition") -> float:
    """Poll ``predicate``; returns the wall time it took. Raises TimeoutError."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1] if 1 <= q <= 99 \
        else ordered[-1]


def plan_of(explained: dict[str, Any]) -> dict[str, Any]:
    if "queryPlanner" not in explained and "stages" in explained:
        explained = explained["stages"][0]["$cursor"]
    winning = explained.get("queryPlanner", {}).get("winningPlan", {})
    stages = []
    node = winning
    index = None
    while node:
        stages.append(node.get("stage"))
        index = node.get("indexName", index)
        node = node.get("inputStage")
    stats = explained.get("executionStats", {})
    return {"stages": ">".join(s for s in stages if s), "index": index,
            "keys_examined": stats.get("totalKeysExamined"),
            "docs_examined": stats.get("totalDocsExamined"),
            "returned": stats.get("nReturned")}


def write_json(path: str | None, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str)
    if path:
        Path(path).write_text(text)
    else:
        print(text)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
