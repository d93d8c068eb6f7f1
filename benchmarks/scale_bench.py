"""Benchmark 6: "what is running" at scale: ``--docs`` Proc documents across the statuses.

Inserts the documents of one ``Proc`` class (with the class's own indexes), then for each
query a dashboard, the sweeper or the CLI asks: ``explain()`` (the winning plan's stage
and index, keys and documents examined) and the latency, best and median of up to 5
runs (one for a query slower than 3 s). Queries:
``processing()`` (listed as documents, and counted), ``failed().count()``, a count per
status, and the sweeper's queries (RUNNING runs; waiting parents settled past the
threshold; PENDING past ``pending_timeout``; idle documents with queued calls).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from benchmarks.common import log, plan_of, write_json

MIX = (("SUCCESS", 80.0), ("FAILURE", 8.0), ("READY", 10.0), ("PENDING", 1.0),
       ("RUNNING", 0.5), ("WAITING_FOR_RESULT", 0.5))
CHUNK = 5_000


def seed(collection: Any, n: int) -> dict[str, int]:
    rnd = random.Random(7)
    statuses = [s for s, _ in MIX]
    weights = [w for _, w in MIX]
    now = datetime.now(timezone.utc)
    counts: dict[str, int] = {s: 0 for s in statuses}
    chunk = []
    for i in range(n):
        status = rnd.choices(statuses, weights)[0]
        counts[status] += 1
        chunk.append({
            "process_status": status, "current_process": "ingest",
            "current_process_step": None, "errors": [], "warnings": [],
            "status_changed_at": now - timedelta(seconds=rnd.randint(0, 3 * 86400)),
            "celery_task_id": f"{i:032x}", "worker_hostname": "w@h", "joining": False,
            # One in 200 has a call waiting (most of them busy): what the sweeper looks for.
            "call_queue": [{"id": f"q{i}", "process": "ingest"}] if i % 200 == 0 else [],
            "name": f"upload-{i}.csv",
        })
        if len(chunk) == CHUNK:
            collection.insert_many(chunk)
            chunk = []
    if chunk:
        collection.insert_many(chunk)
    return counts


def timing(fn: Callable[[], Any], repeat: int = 5, budget: float = 3.0) -> dict[str, float]:
    """Best and median of ``repeat`` runs, fewer once ``budget`` s are spent (explain()
    has already run the query once, so a slow query is timed once)."""
    times: list[float] = []
    while len(times) < repeat and (not times or sum(times) < budget * 1000):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return {"best_ms": min(times), "median_ms": statistics.median(times), "runs": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    from mongoengine import StringField

    import benchmarks.bench_app  # noqa: F401  (the connection given to install())
    from procstatus import Proc
    from procstatus.status import PROCESSING, values
    from procstatus.sweeper import WITH_QUEUED_CALLS

    class ScaleDoc(Proc):
        meta = {"collection": "bench_scale"}
        name = StringField()

    collection = ScaleDoc._get_collection()  # creates the class's indexes
    collection.delete_many({})
    began = time.perf_counter()
    counts = seed(collection, args.docs)
    log(f"scale: {args.docs} documents inserted in {time.perf_counter() - began:.1f} s: {counts}")
    db = collection.database
    now = datetime.now(timezone.utc)
    settled = now - timedelta(seconds=30)
    never_started = now - timedelta(hours=6)
    finds: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
        "sweeper: RUNNING runs": ({"process_status": "RUNNING"},
                                  {"current_process": 1, "celery_task_id": 1}),
        "sweeper: waiting parents, settled": (
            {"process_status": "WAITING_FOR_RESULT", "status_changed_at": {"$lt": settled}},
            {"_id": 1}),
        "sweeper: PENDING past pending_timeout": (
            {"process_status": "PENDING", "status_changed_at": {"$lt": never_started}},
            {"celery_task_id": 1, "current_process": 1}),
        "sweeper: documents with queued calls": (WITH_QUEUED_CALLS, {"process_status": 1}),
    }
    results: dict[str, Any] = {"docs": args.docs, "counts": counts, "queries": {}}

    def record(name: str, plan: dict[str, Any], fn: Callable[[], Any]) -> None:
        results["queries"][name] = {**plan, **timing(fn)}
        entry = results["queries"][name]
        log(f"scale: {name:<42} {entry['stages']:<14} {entry['index']!s:<40} "
            f"keys {entry['keys_examined']!s:>7} docs {entry['docs_examined']!s:>7} "
            f"best {entry['best_ms']:8.1f} ms")

    processing_filter = {"process_status": {"$in": values(PROCESSING)}}
    record("Proc.objects.processing() (documents)",
           plan_of(ScaleDoc.objects.processing().explain()),
           lambda: list(ScaleDoc.objects.processing()))
    record("Proc.objects.processing().count()",
           plan_of(db.command("explain", {"count": collection.name, "query": processing_filter},
                              verbosity="executionStats")),
           lambda: ScaleDoc.objects.processing().count())
    record("Proc.objects.failed().count()",
           plan_of(db.command("explain", {"count": collection.name,
                                          "query": {"process_status": "FAILURE"}},
                              verbosity="executionStats")),
           lambda: ScaleDoc.objects.failed().count())
    for status in ("READY", "PENDING", "RUNNING", "WAITING_FOR_RESULT", "SUCCESS", "FAILURE"):
        query = {"process_status": status}
        record(f"count {status}",
               plan_of(db.command("explain", {"count": collection.name, "query": query},
                                  verbosity="executionStats")),
               lambda q=query: collection.count_documents(q))  # type: ignore[misc]
    for name, (query, projection) in finds.items():
        record(name, plan_of(collection.find(query, projection).explain()),
               lambda q=query, p=projection: list(collection.find(q, p)))  # type: ignore[misc]
    collection.drop()
    write_json(args.json, results)


if __name__ == "__main__":
    main()
