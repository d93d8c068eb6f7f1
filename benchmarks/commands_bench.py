"""Benchmark 2: MongoDB commands per lifecycle, caller and workers together.

Counted with pymongo command monitoring: in this process (the caller) while it calls, and
in the workers through ``benchmarks.bench_app``'s command log (``BENCH_COMMAND_LOG``),
which labels each command with the task that sent it. Only the benchmark's collections
count (heartbeats are the worker's, not the lifecycle's); index creation happens in the
warm-up. Also used by ``joins_bench`` for the per-child breakdown.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timezone
from pathlib import Path
from typing import Any

from pymongo import monitoring

from benchmarks.common import log, wait_until, write_json

BENCH_COLLECTIONS = frozenset(
    {"bench_noop", "bench_steps", "bench_parents", "bench_children", "bench_latency"}
)


class CallerLog(monitoring.CommandListener):
    """Commands this process sends on the benchmark's collections while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.commands: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.active:
            return
        collection = str(event.command.get(event.command_name))
        if collection in BENCH_COLLECTIONS:
            with self._lock:
                self.commands.append((event.command_name, collection))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


CALLER = CallerLog()
monitoring.register(CALLER)


class WorkerLog:
    """Reads the workers' command log from a mark on."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def quiet(self, for_seconds: float = 0.6) -> None:
        """Wait until no worker has logged a command for ``for_seconds``."""
        last, since = -1, time.monotonic()
        while time.monotonic() - since < for_seconds:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size != last:
                last, since = size, time.monotonic()
            time.sleep(0.1)

    def since_mark(self) -> list[tuple[str, str, str, int]]:
        """``(label, command, collection, duration µs)`` logged since :meth:`mark`."""
        if not self.path.exists():
            return []
        with open(self.path) as handle:
            handle.seek(self.offset)
            lines = handle.read().splitlines()
        entries = []
        for line in lines:
            parts = line.split()
            if len(parts) == 5:
                entries.append((parts[1], parts[2], parts[3], int(parts[4])))
        return entries


def measure(worker_log: WorkerLog, call: Callable[[], Any], done: Callable[[], bool],
            timeout: float = 600) -> dict[str, Any]:
    """Count the commands of one lifecycle: ``call()`` in this process, then the workers'."""
    worker_log.quiet(0.3)
    worker_log.mark()
    CALLER.commands.clear()
    CALLER.active = True
    began = time.monotonic()
    try:
        call()
    finally:
        CALLER.active = False
    wait_until(done, timeout=timeout, interval=0.05, what="the lifecycle to end")
    ended = time.monotonic()
    worker_log.quiet()
    worker = worker_log.since_mark()
    by_label: dict[str, Counter[str]] = defaultdict(Counter)
    durations: dict[str, list[int]] = defaultdict(list)
    for label, command, collection, micros in worker:
        by_label[label][f"{command} {collection}"] += 1
        durations[f"{label} {command} {collection}"].append(micros)
    return {
        "caller": len(CALLER.commands),
        "caller_commands": Counter(f"{c} {coll}" for c, coll in CALLER.commands),
        "worker": len(worker),
        "total": len(CALLER.commands) + len(worker),
        "by_label": {k: dict(v) for k, v in by_label.items()},
        "mean_micros": {k: sum(v) / len(v) for k, v in durations.items()},
        "wall_s": ended - began,
    }


def finished(doc: Any) -> Callable[[], bool]:
    collection = type(doc)._get_collection()

    def check() -> bool:
        state = collection.find_one({"_id": doc.pk}, {"process_status": 1})
        return state is not None and state["process_status"] in ("SUCCESS", "FAILURE")

    return check


def single(worker_log: WorkerLog, cls: type, method: str, *args: Any) -> dict[str, Any]:
    doc = cls.create()
    result = measure(worker_log, lambda: getattr(doc, method)(*args), finished(doc))
    doc.reload_status()
    result["status"] = str(doc.process_status)
    return result


def parent_with_children(worker_log: WorkerLog, count: int) -> dict[str, Any]:
    from benchmarks.bench_app import ParentDoc

    parent = ParentDoc.create(size=count)
    done = ParentDone(parent)
    result = measure(worker_log, lambda: parent.spawn(count), done,
                     timeout=max(300, count * 0.5))
    parent.reload_status()
    result["status"] = str(parent.process_status)
    labels = result["by_label"]
    spawn = labels.get("run:ParentDoc.spawn", {})
    child_runs = labels.get("run:ChildDoc.work", {})
    join = labels.get("join:ParentDoc", {})
    dispatches = spawn.get("findAndModify bench_children", 0)
    result.update(
        children=count,
        dispatch_per_child=dispatches / count,
        child_run_per_child=sum(child_runs.values()) / count,
        child_run_breakdown={k: v / count for k, v in child_runs.items()},
        per_child=(dispatches + sum(child_runs.values())) / count,
        parent_run=sum(spawn.values()) - dispatches,
        join=sum(join.values()),
        join_breakdown=join,
        child_command_micros={k.split(" ", 1)[1]: v for k, v in result["mean_micros"].items()
                              if k.startswith("run:ChildDoc.work ")},
        busy_child_query_at_wait=done.at_wait,
        busy_child_query=explain_busy_child_query(parent),
        **join_delay(parent),
    )
    return result


def join_delay(parent: Any) -> dict[str, float]:
    from benchmarks.bench_app import JOIN_KEY, ChildDoc, _redis

    collection = ChildDoc._get_collection()
    last = collection.find_one({"parent_id": parent.pk}, {"complete_time": 1},
                               sort=[("complete_time", -1)])
    first = collection.find_one({"parent_id": parent.pk}, {"start_time": 1},
                                sort=[("start_time", 1)])
    raw = _redis().get(JOIN_KEY.format(parent.pk))
    joined = float(raw) if raw else float("nan")
    # pymongo returns naive datetimes in UTC
    last_end = last["complete_time"].replace(tzinfo=timezone.utc).timestamp()
    first_start = first["start_time"].replace(tzinfo=timezone.utc).timestamp()
    return {"join_delay_s": joined - last_end, "children_span_s": last_end - first_start}


def explain_busy_child_query(parent: Any) -> dict[str, Any]:
    """The plan of ``join.any_child_processing``'s query (what a child's end asks), now."""
    from benchmarks.bench_app import ChildDoc
    from benchmarks.common import plan_of
    from procstatus.status import PROCESSING, values

    query = {"parent_id": parent.pk, "process_status": {"$in": values(PROCESSING)}}
    collection = ChildDoc._get_collection()
    began = time.perf_counter()
    collection.find_one(query, {"_id": 1})
    took = time.perf_counter() - began
    plan = plan_of(collection.find(query, {"_id": 1}).limit(1).explain())
    return {**plan, "processing": collection.count_documents(query), "query_ms": took * 1000}


class ParentDone:
    """Polls the parent until it ended; explains the busy-child query when it starts waiting."""

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.check = finished(parent)
        self.at_wait: dict[str, Any] | None = None

    def __call__(self) -> bool:
        if self.at_wait is None:
            state = type(self.parent)._get_collection().find_one(
                {"_id": self.parent.pk}, {"process_status": 1})
            if state and state["process_status"] == "WAITING_FOR_RESULT":
                self.at_wait = explain_busy_child_query(self.parent)
        return self.check()


def warm_up(worker_log: WorkerLog) -> None:
    """Each pool process's first use of a collection creates its indexes: not counted."""
    from benchmarks.bench_app import NoopDoc, ParentDoc, StepsDoc

    docs = []
    for _ in range(4):
        for cls, method, args in ((NoopDoc, "noop", ()), (StepsDoc, "steps", (1,)),
                                  (ParentDoc, "spawn", (2,))):
            doc = cls.create()
            getattr(doc, method)(*args)
            docs.append(doc)
    for doc in docs:
        wait_until(finished(doc), timeout=120, what="the warm-up")
    worker_log.quiet()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command-log", required=True)
    parser.add_argument("--children", default="10,100,1000")
    parser.add_argument("--json")
    args = parser.parse_args()
    from benchmarks.bench_app import NoopDoc, StepsDoc

    worker_log = WorkerLog(args.command_log)
    warm_up(worker_log)
    scenarios: dict[str, Any] = {}
    for name, cls, method, call_args in (
        ("plain process", NoopDoc, "noop", ()),
        ("10 steps", StepsDoc, "steps", (10,)),
        ("100 set_progress, back to back", StepsDoc, "progress", (100, 0.0)),
        ("100 set_progress, 10 ms apart (1 s)", StepsDoc, "progress", (100, 0.01)),
        ("failure", StepsDoc, "fail", ()),
    ):
        scenarios[name] = single(worker_log, cls, method, *call_args)
        log(f"commands: {name}: {scenarios[name]['total']} "
            f"(caller {scenarios[name]['caller']}, workers {scenarios[name]['worker']})")
    parents = []
    for count in (int(n) for n in args.children.split(",")):
        result = parent_with_children(worker_log, count)
        log(f"commands: parent with {count} children: {result['per_child']:.2f} per child, "
            f"join {result['join']}, parent run {result['parent_run']}, "
            f"{result['wall_s']:.1f} s, {result['status']}")
        parents.append(result)
    write_json(args.json, {"scenarios": scenarios, "parents": parents, "pid": os.getpid()})


if __name__ == "__main__":
    main()
