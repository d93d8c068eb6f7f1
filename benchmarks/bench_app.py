"""The Celery app and documents the benchmarks run (``celery -A benchmarks.bench_app worker``).

One app serves both sides of every comparison: the plain Celery no-op (``bench.plain_noop``,
Redis result backend, ``task_track_started=True``: what users would use instead) and the
procstatus processes. ``procstatus.run`` ignores results, so Celery stores no STARTED or
SUCCESS for it (``track_started`` is off for tasks that ignore their result).

Environment (set by ``benchmarks/run.py``): ``BENCH_BROKER_URL``, ``BENCH_MONGODB_URI``,
``BENCH_DB``, ``BENCH_QUEUE``, and ``BENCH_COMMAND_LOG``: when set, this process logs every
MongoDB command (pymongo command monitoring) to that file, one line each:
``pid task-label command collection duration-µs``. Without it no listener is registered,
so the CPU benchmark's worker pays nothing for monitoring. Not a test module.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any

import redis
from celery import Celery, signals
from mongoengine import IntField, ObjectIdField, StringField
from pymongo import monitoring

import procstatus
from procstatus import Proc, ProcessStatus, process

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
RESULT_URL = os.environ.get("BENCH_RESULT_URL", BROKER_URL)
QUEUE = os.environ.get("BENCH_QUEUE", "procstatus-bench")
IGNORED = frozenset({"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo"})
BENCH_COLLECTIONS = frozenset(
    {"bench_noop", "bench_steps", "bench_parents", "bench_children", "bench_latency"}
)
LATENCY_KEY = "bench:latency"
JOIN_KEY = "bench:join:{}"


class TaskLabel:
    """What this pool process runs now (``run:Class.method``, ``join:Class``), for the logs."""

    label = "-"
    task_id: str | None = None


class CommandLog(monitoring.CommandListener):
    """Appends each started command on a benchmark collection to a file, with its duration."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._started: dict[int, tuple[str, str, str]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in IGNORED:
            return
        collection = str(event.command.get(event.command_name))
        if collection in BENCH_COLLECTIONS:
            self._started[event.request_id] = (TaskLabel.label, event.command_name, collection)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        entry = self._started.pop(event.request_id, None)
        if entry is None:
            return
        label, command, collection = entry
        if collection == "bench_latency":
            Latency.acknowledged(command, time.time())
        with self._lock, open(self.path, "a") as log:
            log.write(f"{os.getpid()} {label} {command} {collection} {event.duration_micros}\n")

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._started.pop(event.request_id, None)


if os.environ.get("BENCH_COMMAND_LOG"):
    monitoring.register(CommandLog(os.environ["BENCH_COMMAND_LOG"]))

app = Celery("procstatus_bench", broker=BROKER_URL, backend=RESULT_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
procstatus.install(
    app,
    mongodb_uri=os.environ.get("BENCH_MONGODB_URI"),
    mongodb_db=os.environ.get("BENCH_DB", "procstatus_bench"),
)


@app.task(name="bench.plain_noop")
def plain_noop() -> None:
    """The same no-op as ``NoopDoc.noop``, as a plain Celery task."""
    return None


@app.task(name="bench.minimal_noop", ignore_result=True, bind=True)
def minimal_noop(self: Any, pk: str) -> None:
    """The floor: the same three writes done by hand, with no library (see cpu_bench)."""
    from bson import ObjectId
    from pymongo import ReturnDocument

    collection = NoopDoc._get_collection()
    task_id = self.request.id
    claimed = collection.find_one_and_update(
        {"_id": ObjectId(pk), "process_status": "PENDING", "celery_task_id": task_id},
        {"$set": {"process_status": "RUNNING", "start_time": datetime.now(timezone.utc)}},
        return_document=ReturnDocument.AFTER,
    )
    if claimed is None:
        return
    collection.update_one(
        {"_id": claimed["_id"], "process_status": "RUNNING", "celery_task_id": task_id},
        {"$set": {"process_status": "SUCCESS", "complete_time": datetime.now(timezone.utc)}},
    )


# --- documents ---------------------------------------------------------------------


class NoopDoc(Proc):
    meta = {"collection": "bench_noop", "indexes": ["tag"]}
    tag = StringField()

    @process
    def noop(self) -> None:
        pass


class StepsDoc(Proc):
    meta = {"collection": "bench_steps"}

    @process
    def steps(self, count: int) -> None:
        for i in range(count):
            self.set_process_step(f"step {i + 1} of {count}")

    @process
    def progress(self, count: int, pause: float = 0.0) -> None:
        for i in range(count):
            if pause:
                time.sleep(pause)
            self.set_progress(i + 1, count)

    @process
    def fail(self) -> None:
        raise ValueError("failing on purpose")


class ParentDoc(Proc):
    meta = {"collection": "bench_parents"}
    size = IntField(default=0)

    @process
    def spawn(self, count: int) -> ProcessStatus:
        ChildDoc.objects.insert([ChildDoc(parent_id=self.pk, number=i) for i in range(count)],
                                load_bulk=False)
        for child in ChildDoc.objects(parent_id=self.pk).only("id"):
            child.work()
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return ChildDoc.objects(parent_id=self.pk)

    def join(self) -> None:
        # When the join began, for the joins-at-scale benchmark; nothing else.
        _redis().set(JOIN_KEY.format(self.pk), repr(time.time()), ex=3600)


class ChildDoc(Proc):
    # (parent, status): each child's end asks "is any other child still processing?".
    # SecantusDB 0.7.0b3 serves that query from no single-field index (it scans the
    # collection), so the compound index is what keeps the work per child constant.
    meta = {"collection": "bench_children", "indexes": [("parent_id", "process_status")]}
    parent_id = ObjectIdField(required=True)
    number = IntField()

    @process(is_child=True)
    def work(self) -> None:
        pass

    def parent(self) -> ParentDoc:
        return ParentDoc.objects.get(pk=self.parent_id)


class LatencyDoc(Proc):
    meta = {"collection": "bench_latency"}

    @process
    def noop(self) -> None:
        Latency.returned = time.time()


# --- latency records (worker side) ---------------------------------------------------


class Latency:
    """Times of one LatencyDoc run in this pool process, pushed to Redis after the task."""

    prerun: float | None = None
    claim_ack: float | None = None
    returned: float | None = None
    end_ack: float | None = None

    @classmethod
    def acknowledged(cls, command: str, moment: float) -> None:
        if TaskLabel.label != "run:LatencyDoc.noop":
            return
        if command == "findAndModify" and cls.claim_ack is None:
            cls.claim_ack = moment
        elif command == "update" and cls.returned is not None and cls.end_ack is None:
            cls.end_ack = moment


_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(RESULT_URL)
    return _client


def _label(task: Any, args: Any) -> str:
    name = getattr(task, "name", "")
    if name == "procstatus.run" and args and len(args) >= 3:
        return f"run:{args[0]}.{args[2]}"
    if name == "procstatus.join" and args:
        return f"join:{args[0]}"
    return name or "-"


@signals.task_prerun.connect(weak=False)
def _before(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    TaskLabel.label = _label(task, args)
    TaskLabel.task_id = task_id
    if TaskLabel.label == "run:LatencyDoc.noop":
        Latency.prerun = time.time()
        Latency.claim_ack = Latency.returned = Latency.end_ack = None


@signals.task_postrun.connect(weak=False)
def _after(task_id: str | None = None, **_: Any) -> None:
    if TaskLabel.label == "run:LatencyDoc.noop":
        record = {
            "task_id": task_id, "prerun": Latency.prerun, "claim_ack": Latency.claim_ack,
            "returned": Latency.returned, "end_ack": Latency.end_ack,
        }
        _redis().rpush(LATENCY_KEY, json.dumps(record))
    TaskLabel.label = "-"
    TaskLabel.task_id = None
