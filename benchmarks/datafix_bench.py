"""Benchmark of the task_status migration against its limit, one bare server-side update_many.

Run from the repository root::

    .venv/bin/python benchmarks/datafix_bench.py [--docs 100000] [--batch-size 100 ...]
    .venv/bin/python benchmarks/datafix_bench.py --table --sizes 25000,100000 [--json F]

``--table`` is what ``benchmarks/run.py`` runs: at each size, the limit and the migration
(whole-collection mode) on identical data, the migration in a fresh process whose peak RSS
(VmHWM) is read from /proc, and the server's CPU over each (``--server-pid``), which shows
whether the MongoDB-protocol server is the bound; at the first size, also what the three
row filters cost alone (three counts).

Starts its own SecantusDB (devtools.services) unless MONGODB_URI is set. It seeds identical
collections of legacy documents and times
:func:`procstatus.datafix.task_status_runner.migrate_collection` in whole-collection mode
(the default; with the time of each step) and in batched mode for each ``--batch-size``,
each with its dry run. The limit is one ``update_many`` over the same
data doing the same kind of write (set the new fields, unset the legacy ones) with no
filter, no classification, no batching and no reporting. It also measures the migration's
peak Python heap (tracemalloc) at two collection sizes, to show that memory does not grow
with the collection. Not a test: pytest never collects this file.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import pymongo  # noqa: E402
from pymongo.collection import Collection  # noqa: E402
from pymongo.database import Database  # noqa: E402

from devtools import services  # noqa: E402
from procstatus.datafix.task_status_mapping import MIGRATION_ROWS, row_filter  # noqa: E402
from procstatus.datafix.task_status_runner import (  # noqa: E402
    DEFAULT_MAX_REPORT_IDS,
    SUGGESTED_BATCH_SIZE,
    CollectionResult,
    migrate_collection,
)

# Realistic shares: mostly finished work, some queued, a few in flight and a few broken.
STATUS_MIX = (
    ["SUCCESS"] * 50
    + ["FAILURE"] * 15
    + ["CREATED"] * 15
    + ["PENDING"] * 15
    + ["RUNNING"] * 4
    + ["???"]
)
SEED_CHUNK = 5_000


def seed(coll: Collection, n: int) -> None:
    coll.drop()
    rnd = random.Random(42)  # identical data in every collection
    chunk: list[dict[str, Any]] = []
    for i in range(n):
        status = rnd.choice(STATUS_MIX)
        chunk.append(
            {
                "tasks_status" if i % 5 else "task_status": status,
                "current_task": f"step-{i % 7}",
                "process_status": "COMPLETED" if status in ("SUCCESS", "FAILURE") else None,
                "current_process": "ingest",
                "errors": ["parse error on line 3"] if status == "FAILURE" else [],
                "warnings": [],
                "tasks": ["download", "parse", "store"],
                "create_time": None,
                "worker_hostname": "worker-1@host",
                "celery_task_id": f"{i:032x}",
                "payload": {"n": i, "name": f"file-{i}.csv", "tags": ["a", "b"]},
            }
        )
        if len(chunk) == SEED_CHUNK:
            coll.insert_many(chunk)
            chunk = []
    if chunk:
        coll.insert_many(chunk)


BARE_PIPELINE = [
    {
        "$set": {
            "process_status": "SUCCESS",
            "current_process_step": {"$ifNull": ["$current_task", None]},
        }
    },
    {"$unset": ["tasks_status", "task_status", "current_task", "tasks"]},
]


BARE_CLASSIC_UPDATE = {
    "$set": {"process_status": "SUCCESS"},
    "$unset": {"tasks_status": "", "current_task": "", "tasks": ""},
}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def batched_floor(coll: Collection, batch_size: int) -> None:
    ids: list[Any] = []
    for doc in coll.find({}, {"_id": 1}, sort=[("_id", 1)], batch_size=batch_size):
        ids.append(doc["_id"])
        if len(ids) == batch_size:
            coll.update_many({"_id": {"$in": ids}}, BARE_PIPELINE)
            ids = []
    if ids:
        coll.update_many({"_id": {"$in": ids}}, BARE_PIPELINE)


class StepTimer:
    """A progress callback that records how long each whole-collection step took."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self._started = time.perf_counter()
        self._step = ""

    def __call__(self, result: CollectionResult) -> None:
        now = time.perf_counter()
        if result.step != self._step or result.steps_done == result.steps_total:
            if self._step:
                self.steps.append((self._step, now - self._started))
            self._step = "" if result.steps_done == result.steps_total else result.step
            self._started = now

    def lines(self, limit: float) -> str:
        return "\n".join(
            f"    {name:<40} {secs:7.2f} s  ({secs / limit:4.2f}x the limit)"
            for name, secs in self.steps
        )


def bench(db: Database, n: int, batch_sizes: list[int], fail_in_flight: bool) -> None:
    print(f"documents: {n}")
    seed(db.bare, n)
    bare_s, res = timed(lambda: db.bare.update_many({}, BARE_PIPELINE))
    print(
        f"limit: one bare update_many (pipeline)   {bare_s:7.2f} s  ({res.modified_count} written)"
    )
    seed(db.bare, n)
    classic_s, _ = timed(lambda: db.bare.update_many({}, BARE_CLASSIC_UPDATE))
    print(f"       one bare update_many ($set/$unset) {classic_s:7.2f} s")
    # What the row filters alone cost: one count per row reads every document once and
    # evaluates that row's filter (an update_many also evaluates it again on each match).
    seed(db.bare, n)
    for row in MIGRATION_ROWS:
        count_s, count = timed(functools.partial(db.bare.count_documents, row_filter(row)))
        print(f"       count of row {row.name:<8} ({count:>6} docs)  {count_s:7.2f} s")
    count_s, _ = timed(functools.partial(db.bare.count_documents, {}))
    print(f"       count of every document            {count_s:7.2f} s")

    seed(db.migrate, n)
    timer = StepTimer()
    secs, result = timed(
        functools.partial(
            migrate_collection,
            db.migrate,
            dry_run=False,
            fail_in_flight=fail_in_flight,
            on_progress=timer,
        )
    )
    print(
        f"migration, whole collection:             {secs:7.2f} s  = {secs / bare_s:4.2f}x the "
        f"limit ({result.migrated_total} migrated, {result.in_flight} in flight, "
        f"{result.invalid} invalid)"
    )
    print(timer.lines(bare_s))
    seed(db.migrate, n)
    timer = StepTimer()
    dry_s, _ = timed(
        functools.partial(
            migrate_collection,
            db.migrate,
            dry_run=True,
            fail_in_flight=fail_in_flight,
            on_progress=timer,
        )
    )
    print(f"dry run,   whole collection:             {dry_s:7.2f} s  = {dry_s / bare_s:4.2f}x")
    print(timer.lines(bare_s))

    for batch_size in batch_sizes:
        # The cheapest batched write on this server: the same batches (next N ids in _id
        # order, named with $in), no classification, the bare pipeline. What the migration
        # adds on top of this is its own cost; the rest is the server's price for batching.
        seed(db.bare, n)
        floor_s, _ = timed(functools.partial(batched_floor, db.bare, batch_size))
        print(
            f"floor: batched bare update_many, batch {batch_size:>5}: {floor_s:7.2f} s  "
            f"= {floor_s / bare_s:4.2f}x the limit"
        )
        seed(db.migrate, n)
        migrate = functools.partial(
            migrate_collection, db.migrate, fail_in_flight=fail_in_flight, batch_size=batch_size
        )
        secs, result = timed(functools.partial(migrate, dry_run=False))
        print(
            f"migration, batch {batch_size:>5}:                  {secs:7.2f} s  "
            f"= {secs / bare_s:4.2f}x the limit, {secs / floor_s:4.2f}x the batched floor "
            f"({result.migrated_total} migrated, {result.in_flight} in flight, "
            f"{result.invalid} invalid)"
        )
        seed(db.migrate, n)
        dry_s, _ = timed(functools.partial(migrate, dry_run=True))
        print(
            f"dry run,   batch {batch_size:>5}:                  {dry_s:7.2f} s  "
            f"= {dry_s / bare_s:4.2f}x"
        )
    db.bare.drop()
    db.migrate.drop()


def peak_heap(db: Database, n: int, batch_size: int | None, max_report_ids: int) -> float:
    seed(db.memory, n)
    tracemalloc.start()
    migrate_collection(
        db.memory,
        dry_run=False,
        fail_in_flight=False,
        batch_size=batch_size,
        max_report_ids=max_report_ids,
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    db.memory.drop()
    return peak / 1e6


def single_pass(coll: Collection) -> dict[str, Any]:
    """A design tried for issue 9: one ``$switch`` pipeline update for the three rows.

    The filter is the three row filters under one ``$or`` (most frequent row first, so
    most documents are decided by one filter); the target comes from the effective legacy
    status, which the filter has already validated. The per-status counts come from
    index-backed counts of the new statuses before and after (the workers are stopped).
    The in-flight and invalid listing is the same streamed ``find`` as today's.
    """
    from procstatus.datafix.task_status_mapping import (
        CLASSIFY_PROJECTION,
        FAILURE_ROW,
        READY_ROW,
        REMOVED_FIELDS,
        SUCCESS_ROW,
        _default_message,
        legacy_filter,
    )
    from procstatus.status import ProcessStatus

    targets = [row.target for row in (READY_ROW, SUCCESS_ROW, FAILURE_ROW)]
    before = {t.value: coll.count_documents({"process_status": t.value}) for t in targets}
    legacy = {"$ifNull": ["$tasks_status", "$task_status"]}
    target = {"$switch": {"branches": [
        {"case": {"$eq": [legacy, "SUCCESS"]}, "then": ProcessStatus.SUCCESS.value},
        {"case": {"$eq": [legacy, "FAILURE"]}, "then": ProcessStatus.FAILURE.value},
    ], "default": ProcessStatus.READY.value}}
    message = {"$switch": {"branches": [
        {"case": {"$eq": ["$process_status", t.value]}, "then": _default_message(t)}
        for t in targets
    ]}}
    pipeline = [
        {"$set": {"process_status": target,
                  "current_process_step": {"$ifNull": ["$current_task", None]}}},
        {"$set": {"last_status_message": {"$cond": [
            {"$eq": [{"$ifNull": ["$last_status_message", ""]}, ""]}, message,
            "$last_status_message"]}}},
        {"$unset": list(REMOVED_FIELDS)},
    ]
    rows = (SUCCESS_ROW, READY_ROW, FAILURE_ROW)  # most frequent first in a real database
    written = coll.update_many({"$or": [row_filter(r) for r in rows]}, pipeline).modified_count
    after = {t.value: coll.count_documents({"process_status": t.value}) for t in targets}
    left = sum(1 for _ in coll.find(legacy_filter(), CLASSIFY_PROJECTION, batch_size=1000))
    return {"written": written, "left": left,
            "migrated": {k: after[k] - before[k] for k in after}}


def same_documents(a: Collection, b: Collection) -> bool:
    """Both collections hold the same documents, in insertion order, apart from ``_id``."""
    def strip(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k != "_id"}

    pairs = zip(a.find({}, sort=[("_id", 1)]), b.find({}, sort=[("_id", 1)]), strict=True)
    return all(strip(x) == strip(y) for x, y in pairs)


MIGRATE_IN_A_FRESH_PROCESS = """
import json, sys, time
import pymongo
from procstatus.datafix.task_status_runner import migrate_collection
coll = pymongo.MongoClient(sys.argv[1])[sys.argv[2]][sys.argv[3]]
began = time.perf_counter()
result = migrate_collection(coll, dry_run=False, fail_in_flight=False)
secs = time.perf_counter() - began
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"secs": secs, "peak_rss_kb": int(status["VmHWM"].split()[0]),
                  "migrated": result.migrated_total, "in_flight": result.in_flight,
                  "invalid": result.invalid}))
"""


def server_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(db: Database, uri: str, sizes: list[int], server_pid: int | None,
          try_single_pass: bool = False) -> list[dict]:
    """The limit and the migration at each size, as ``benchmarks/run.py`` reports them."""
    import json
    import subprocess

    rows = []
    for n in sizes:
        seed(db.bare, n)
        cpu0 = server_cpu(server_pid)
        bare_s, _ = timed(lambda: db.bare.update_many({}, BARE_PIPELINE))
        bare_server = server_cpu(server_pid) - cpu0
        db.bare.drop()
        seed(db.migrate, n)
        cpu0 = server_cpu(server_pid)
        out = subprocess.run(
            [sys.executable, "-c", MIGRATE_IN_A_FRESH_PROCESS, uri, db.name, "migrate"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout
        migrate_server = server_cpu(server_pid) - cpu0
        run = json.loads(out)
        # Where the time goes: what the three row filters cost when only evaluated
        # (at the first size only, to keep the run short).
        filters_s = filters_server = None
        if n == sizes[0]:
            seed(db.migrate, n)
            cpu0 = server_cpu(server_pid)
            filters_s = sum(
                timed(functools.partial(db.migrate.count_documents, row_filter(row)))[0]
                for row in MIGRATION_ROWS
            )
            filters_server = server_cpu(server_pid) - cpu0
        single = {}
        if try_single_pass:
            seed(db.bare, n)
            single_s, single = timed(functools.partial(single_pass, db.bare))
            seed(db.migrate, n)
            migrate_collection(db.migrate, dry_run=False, fail_in_flight=False)
            single.update(secs=single_s, ratio=single_s / bare_s,
                          same_documents=same_documents(db.bare, db.migrate))
            print(f"   single-pass design: {single_s:.2f} s ({single_s / bare_s:.2f}x), "
                  f"documents identical to the migration's: {single['same_documents']}, "
                  f"{single}", file=sys.stderr, flush=True)
            db.bare.drop()
        db.migrate.drop()
        rows.append({
            "docs": n, "bare_s": bare_s, "bare_server_cpu_s": bare_server,
            "migrate_s": run["secs"], "migrate_server_cpu_s": migrate_server,
            "ratio": run["secs"] / bare_s, "peak_rss_kb": run["peak_rss_kb"],
            "migrated": run["migrated"], "in_flight": run["in_flight"],
            "invalid": run["invalid"], "row_filters_only_s": filters_s,
            "row_filters_server_cpu_s": filters_server, "single_pass": single,
        })
        print(f"{n} docs: limit {bare_s:.2f} s, migration {run['secs']:.2f} s "
              f"({run['secs'] / bare_s:.2f}x), peak RSS {run['peak_rss_kb'] / 1024:.1f} MB, "
              f"row filters alone {filters_s} s", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--sizes", default="25000,100000")
    parser.add_argument("--server-pid", type=int)
    parser.add_argument("--single-pass", action="store_true",
                        help="with --table: also time the single-pass design")
    parser.add_argument("--json")
    parser.add_argument("--batch-size", type=int, action="append", dest="batch_sizes")
    parser.add_argument("--fail-in-flight", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args()
    batch_sizes = args.batch_sizes or [SUGGESTED_BATCH_SIZE]

    server = None
    uri = os.environ.get("MONGODB_URI") or os.environ.get("BENCH_MONGODB_URI")
    if not uri:
        server = services.start_secantus(Path(tempfile.mkdtemp(prefix="datafix-bench-")))
        uri = server.url
        print(f"server: SecantusDB (started for this run) at {uri}")
    else:
        print(f"server: {uri}")
    client: pymongo.MongoClient = pymongo.MongoClient(uri)
    db = client[f"datafix_bench_{os.getpid()}"]
    try:
        if args.table:
            import json

            rows = table(db, uri, [int(n) for n in args.sizes.split(",")], args.server_pid,
                         args.single_pass)
            text = json.dumps(rows, indent=2)
            if args.json:
                Path(args.json).write_text(text)
            else:
                print(text)
            return 0
        if not args.memory_only:
            bench(db, args.docs, batch_sizes, args.fail_in_flight)
        if not args.skip_memory:
            # The report's id lists (in-flight and invalid ids, capped by --max-report-ids)
            # are the only per-document data kept: measured with and without them.
            small = max(1_000, args.docs // 4)
            for mode, batch_size in (
                ("whole collection", None),
                (f"batch {batch_sizes[0]}", batch_sizes[0]),
            ):
                for cap, label in (
                    (0, "report ids off"),
                    (DEFAULT_MAX_REPORT_IDS, "report ids on"),
                ):
                    for n in (small, args.docs):
                        peak = peak_heap(db, n, batch_size, cap)
                        print(
                            f"peak Python heap, {mode:<16}, {label:<14}, {n:>7} docs: "
                            f"{peak:6.2f} MB"
                        )
    finally:
        client.drop_database(db.name)
        client.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
