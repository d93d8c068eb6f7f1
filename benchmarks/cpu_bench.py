"""Benchmark 1: CPU per no-op process, caller and worker tree together, vs plain Celery.

Run by ``benchmarks/run.py`` (which starts the servers and the worker); as a caller it
needs ``--worker-pid``. Each round sends ``--calls`` no-op calls per side in chunks of
``--chunk`` that alternate the sides (rotating which goes first), so that every side meets
the same load on a shared machine. CPU is read from /proc and summed over a side's chunks:
the caller's own utime+stime while it sends, and the worker's main process plus its
prefork pool from before a chunk's first send to when its last call is done.

Sides: ``plain`` is ``bench.plain_noop.delay()`` with the Redis result backend and
``task_track_started=True``; ``procstatus`` is ``NoopDoc.noop()`` on saved documents
(created before the clock starts); ``minimal`` is the floor of this stack, the same three
conditional writes by hand (raw pymongo in the caller, a bare Celery task that ignores its
result on the worker), no library; ``plain_paced`` is the plain call followed by a 5 ms
sleep (the caller's CPU does not count a sleep), which shows what waiting on a server
costs in CPU alone on this machine (caches gone cold). Also records the wall time and
the CPU of the MongoDB-protocol server and of Redis.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from benchmarks.common import log, process_cpu, self_cpu, tree_cpu, wait_until, write_json


def plain_batch(calls: int, ids_out: list[str], pause: float = 0.0) -> None:
    from benchmarks.bench_app import plain_noop

    for _ in range(calls):
        ids_out.append(plain_noop.delay().id)
        if pause:
            time.sleep(pause)  # asleep: no CPU, but the caches go cold meanwhile


PACE = 0.005
"""Seconds ``plain_paced`` sleeps after each call: about the caller's wait for its
schedule write on the MongoDB-protocol server (see ``latency_bench``)."""


def plain_done(ids: list[str]) -> bool:
    from benchmarks.bench_app import _redis

    client = _redis()
    for start in range(0, len(ids), 500):
        keys = [f"celery-task-meta-{i}" for i in ids[start:start + 500]]
        values = client.mget(keys)
        if not all(v is not None and b'"SUCCESS"' in v for v in values):
            return False
    return True


def procstatus_docs(calls: int) -> tuple[str, list[Any]]:
    from benchmarks.bench_app import NoopDoc

    tag = uuid.uuid4().hex
    NoopDoc.objects.insert([NoopDoc(tag=tag) for _ in range(calls)], load_bulk=False)
    return tag, list(NoopDoc.objects(tag=tag))


def minimal_batch(docs: list[Any]) -> None:
    """The same three writes by hand: a conditional write to PENDING, then the task."""
    from pymongo import ReturnDocument

    from benchmarks.bench_app import minimal_noop
    from procstatus.messages import new_task_id

    for doc in docs:
        collection = doc._get_collection()
        task_id = new_task_id()
        collection.find_one_and_update(
            {"_id": doc.pk, "process_status": {"$in": ["READY", "SUCCESS", "FAILURE"]}},
            {"$set": {"process_status": "PENDING", "celery_task_id": task_id}},
            projection={"process_status": 1}, return_document=ReturnDocument.BEFORE,
        )
        minimal_noop.apply_async(args=[str(doc.pk)], task_id=task_id)


def run_chunk(side: str, docs: list[Any], calls: int, worker_pid: int,
              server_pid: int | None, redis_pid: int | None) -> dict[str, Any]:
    """Send ``calls`` calls of one side and wait until they are done; CPU and wall."""
    if side not in ("plain", "plain_paced"):
        tag = docs[0].tag
        already = NoopDocCount.done(tag)
    time.sleep(0.15)  # let the worker settle after the previous chunk
    worker0 = tree_cpu(worker_pid)
    server0 = process_cpu(server_pid) if server_pid else 0.0
    redis0 = process_cpu(redis_pid) if redis_pid else 0.0
    caller0, wall0 = self_cpu(), time.monotonic()
    if side in ("plain", "plain_paced"):
        ids: list[str] = []
        plain_batch(calls, ids, PACE if side == "plain_paced" else 0.0)
    elif side == "minimal":
        minimal_batch(docs)
    else:
        for doc in docs:
            doc.noop()
    caller1, sent = self_cpu(), time.monotonic()
    if side in ("plain", "plain_paced"):
        wait_until(lambda: plain_done(ids), timeout=600, interval=0.05, what="plain calls")
    else:
        wait_until(lambda: NoopDocCount.done(tag) >= already + len(docs), timeout=600,
                   interval=0.05, what=f"{side} calls")
    wall1 = time.monotonic()
    worker1 = tree_cpu(worker_pid)
    server1 = process_cpu(server_pid) if server_pid else 0.0
    redis1 = process_cpu(redis_pid) if redis_pid else 0.0
    return {
        "side": side, "calls": calls,
        "caller_cpu_s": caller1 - caller0, "worker_cpu_s": worker1 - worker0,
        "server_cpu_s": server1 - server0, "redis_cpu_s": redis1 - redis0,
        "send_s": sent - wall0, "wall_s": wall1 - wall0,
    }


class NoopDocCount:
    @staticmethod
    def done(tag: str) -> int:
        from benchmarks.bench_app import NoopDoc

        return int(NoopDoc._get_collection().count_documents(
            {"tag": tag, "process_status": "SUCCESS"}))


def run_round(sides: list[str], calls: int, chunk: int, first: int, worker_pid: int,
              server_pid: int | None, redis_pid: int | None) -> list[dict[str, Any]]:
    """``calls`` calls per side, sent in chunks that alternate the sides, summed by side."""
    docs = {side: procstatus_docs(calls)[1] for side in sides if side in ("procstatus", "minimal")}
    totals: dict[str, dict[str, Any]] = {}
    for i, start in enumerate(range(0, calls, chunk)):
        n = min(chunk, calls - start)
        shift = (first + i) % len(sides)
        for side in sides[shift:] + sides[:shift]:
            part = run_chunk(side, docs.get(side, [])[start:start + n], n, worker_pid,
                             server_pid, redis_pid)
            total = totals.setdefault(side, {"side": side, "calls": 0})
            for key, value in part.items():
                if key not in ("side",):
                    total[key] = total.get(key, 0) + value
    return list(totals.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=100, help="calls per side per turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker-pid", type=int, required=True)
    parser.add_argument("--server-pid", type=int)
    parser.add_argument("--redis-pid", type=int)
    parser.add_argument("--sides", default="plain,procstatus,minimal,plain_paced")
    parser.add_argument("--json")
    args = parser.parse_args()
    sides = args.sides.split(",")
    # Warm up: connections, indexes, both pool processes.
    run_round(sides, 40, 20, 0, args.worker_pid, None, None)
    results = []
    for round_no in range(args.rounds):
        for result in run_round(sides, args.calls, args.chunk, round_no, args.worker_pid,
                                args.server_pid, args.redis_pid):
            result["round"] = round_no + 1
            per_call = (result["caller_cpu_s"] + result["worker_cpu_s"]) / result["calls"] * 1000
            log(f"cpu round {round_no + 1} {result['side']:<10} {per_call:5.2f} ms/call "
                f"(caller {result['caller_cpu_s']:.2f} s, worker {result['worker_cpu_s']:.2f} s, "
                f"wall {result['wall_s']:.2f} s, server {result['server_cpu_s']:.2f} s)")
            results.append(result)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
