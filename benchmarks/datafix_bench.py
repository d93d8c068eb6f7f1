"""Benchmark of the task_status migration against its limit, one bare server-side update_many.

Run from the repository root::

    .venv/bin/python benchmarks/datafix_bench.py [--docs 100000] [--batch-size 100 ...]

Starts its own SecantusDB (devtools.services) unless MONGODB_URI is set. It seeds identical
collections of legacy documents and times :func:`datafix.task_status_runner.migrate_collection`
in whole-collection mode (the default; with the time of each step) and in batched mode for
each ``--batch-size``, each with its dry run. The limit is one ``update_many`` over the same
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

from datafix.task_status_mapping import MIGRATION_ROWS, row_filter  # noqa: E402
from datafix.task_status_runner import (  # noqa: E402
    DEFAULT_MAX_REPORT_IDS,
    SUGGESTED_BATCH_SIZE,
    CollectionResult,
    migrate_collection,
)
from devtools import services  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, action="append", dest="batch_sizes")
    parser.add_argument("--fail-in-flight", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args()
    batch_sizes = args.batch_sizes or [SUGGESTED_BATCH_SIZE]

    server = None
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        server = services.start_secantus(Path(tempfile.mkdtemp(prefix="datafix-bench-")))
        uri = server.url
        print(f"server: SecantusDB (started for this run) at {uri}")
    else:
        print("server: MONGODB_URI")
    client: pymongo.MongoClient = pymongo.MongoClient(uri)
    db = client[f"datafix_bench_{os.getpid()}"]
    try:
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
