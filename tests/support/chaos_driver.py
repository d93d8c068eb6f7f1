"""The chaos soak's driver: private servers, two workers, 300+ processes, seeded faults.

Run as ``python -m tests.support.chaos_driver --work-dir DIR`` (``tests/test_chaos.py``
does, and asserts on the JSON it writes to ``DIR/chaos.json``). Environment:
``PROCSTATUS_CHAOS_SEED`` (replays a schedule), ``PROCSTATUS_CHAOS_SIZE`` (a multiplier:
processes, faults and the fault window all scale with it; 1 is the CI size).

The soak stops and restarts its own broker and MongoDB server, so it owns everything:

1. **Servers.** A private ``redis-server`` with ``--appendonly yes --appendfsync always``
   and a private SecantusDB with on-disk storage, advertising a single-node replica set
   with test commands (``configureFailPoint``, ``replSetStepDown``), each on a fixed
   loopback port that its restarts reuse, so queued messages and documents survive a
   restart.
2. **Workers.** Two ``celery worker`` processes (prefork, concurrency 2) running
   :mod:`tests.support.chaos_app` on the soak's queue, heartbeat 1 s (threshold 3 s),
   a visibility timeout of a few seconds. Worker ``chaos-a`` runs with acks_late +
   reject_on_worker_lost and retryable writes, ``chaos-b`` with neither
   (``retryWrites=false``), so both documented behaviours of a lost pool process, and
   both ways a write cut by a failover is settled, are exercised. Each client names
   itself (``appName``: ``chaos-a``, ``chaos-b``, ``chaos-driver``) for the fail
   points. A killed worker is replaced under the same hostname (a
   new instance, as a restarted service would be); a worker that exits on its own (Celery
   sometimes stops with "Unrecoverable error" after a broker restart, or when its pool
   cannot start on a loaded machine) is replaced too, as a service manager would, and
   reported.
3. **Plan.** From the seed: batches (parents) with 5–20 children in one or two waves,
   standalone tasks of four kinds, how long each works (0–1 s of sleep in the body),
   which fail on purpose, and when each is called; at least 300 processes at size 1.
4. **Faults.** From the seed: 44 faults at random moments of the fault window (a fault
   with no target for 6 s is skipped and reported; the test wants 30 applied) —
   SIGKILL of a pool process (preferably one whose document is RUNNING), SIGKILL of a
   whole worker's process group then a replacement, ``cancel()`` and
   ``cancel(terminate=True)`` of random processing documents (parents and children),
   Redis stopped then restarted, the MongoDB server stopped then restarted, a
   PENDING or RUNNING document's task delivered a second time (same task id), a
   ``failCommand`` fail point on the next ``update`` or ``findAndModify`` (the
   lifecycle's writes: schedule, claim, step, progress, warning, end, join, cancel, the
   sweeper's) of one client — the driver or a worker — failing it once as
   ``not-primary``, ``close`` or ``write-concern`` (see :mod:`tests.support.failpoints`;
   a fail point armed replaces one not yet met), and a ``replSetStepDown`` refusing all
   writes for 2–5 s.
   Meanwhile the driver calls ``procstatus.sweep()`` every second, as beat would.
5. **Drain and settle.** Faults stop; the driver waits until the broker queue and its
   unacknowledged set are empty and no worker reports an active, reserved or scheduled
   task, twice in a row ("drained"); from then on it sweeps with a ``pending_timeout``
   of one heartbeat threshold whenever the queue is empty, and measures how long until
   no document is PENDING, RUNNING or WAITING_FOR_RESULT (the bound is 2 × threshold).
6. **Verdicts** (see :func:`analyse`): stuck documents, parents not ended, joins per
   wait (from the ``chaos_log`` collection the models write), bodies that ran more often
   than their documented restarts, resends and retries allow, a body that began while an
   earlier body of the same document still ran (it had recorded no end and its pool
   process had not been killed: two live executions at once), and every FAILURE's
   errors mapped to a fault that was injected — with per-document evidence where there
   is any: the cancelled set; the pids the soak killed, and when; the worker instances
   it killed or that exited. A "worker lost" failure whose worker instance had not been
   killed (nor had exited) when the verdict was written, and whose pool process had not
   been killed either, is *untrue*: that worker was alive — it beat on afterwards, and
   was killed later or never.

Honest limits: the seed replays the plan and the fault schedule (kinds, moments, the
random numbers that pick targets; a digest of them is printed), not the victims: which
document is RUNNING when a fault fires depends on timing, so a replay hits other
documents. A body record is written at the start of a body, so a body killed before
that write is not counted. A ``never started`` failure (a message lost for good, e.g.
a caller killed between its PENDING write and its publish) is attributed to the fault
kinds that can lose a message, not to one fault. The body-run check counts runs per
document; overlap is judged from start and end records and the pids the soak killed,
so a body whose end record was lost to a MongoDB outage, on a pool process the soak did
not kill, would be reported as overlapping: its worker log tells. Timing verdicts
(heartbeats, the settle bound) assume the machine is not starved by other work.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from devtools import services
from tests.support import failpoints

HEARTBEAT = 1.0
THRESHOLD = 3 * HEARTBEAT
VISIBILITY_TIMEOUT = 4.0
QUEUE = "procstatus-chaos"
DB_NAME = "procstatus_chaos"
MIN_PROCESSES = 300
WINDOW = 40.0
"""Seconds of the fault window at size 1: batches are called in its first half, tasks in
its first 85 %, so that work is under way until the last fault."""
FAULTS_AT_SIZE_1 = {  # 44: a fault with no target for 6 s is skipped; 30 must be applied
    "pool-kill": 9,
    "worker-kill": 4,
    "cancel": 7,
    "cancel-terminate": 3,
    "redis-restart": 3,
    "mongo-restart": 3,
    "duplicate": 5,
    # Drawn after the kinds above, so a seed replays the same schedule of those.
    "failpoint": 8,
    "step-down": 2,
}
FAILPOINT_COMMANDS = ("update", "findAndModify")
FAILPOINT_KINDS = ("not-primary", "close", "write-concern")
CLIENTS = {"a": "chaos-a", "b": "chaos-b", "driver": "chaos-driver"}
"""The ``appName`` of each client a fail point can aim at."""
FAILPOINT_WAIT = 3.0
"""Seconds a fail point is left to be met before another may replace it (one at a time)."""
SLOTS = {"a": {"PROCSTATUS_TEST_ACKS_LATE": "1"}, "b": {}}
SWEEP_EVERY = 1.0
DRAIN_TIMEOUT = 90.0
DIAGNOSE_FOR = 30.0
"""Seconds the driver keeps sweeping after a missed settle deadline, to report the rest."""
PROCESSING = ("PENDING", "RUNNING", "WAITING_FOR_RESULT")
STATE_FIELDS = (
    "process_status", "current_process", "current_process_step", "celery_task_id",
    "worker_hostname", "worker_instance", "worker_pid", "errors", "warnings",
    "last_status_message", "joining", "status_changed_at",
)


def say(line: str) -> None:
    print(f"CHAOS {line}", flush=True)


# --- the plan ------------------------------------------------------------------------


@dataclass
class BatchPlan:
    label: str
    method: str
    sizes: list[int]
    seconds: list[list[float]]
    failing: list[list[bool]]
    strict: bool
    at: float


@dataclass
class TaskPlan:
    label: str
    method: str
    seconds: float
    at: float


@dataclass(order=True)
class Fault:
    at: float
    seq: int
    kind: str = field(compare=False)
    pick: float = field(compare=False)
    down_for: float = field(default=0.0, compare=False)
    deferred: int = field(default=0, compare=False)
    aim: str = field(default="", compare=False)
    """A fail point's ``"<kind> <command> <client>"``."""


@dataclass
class Plan:
    batches: list[BatchPlan]
    tasks: list[TaskPlan]
    faults: list[Fault]
    window: float

    def digest(self) -> str:
        """A short hash of everything the seed decides, to check that a replay replays."""
        text = json.dumps([asdict(b) for b in self.batches] + [asdict(t) for t in self.tasks]
                          + [asdict(f) for f in self.faults])
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def processes(self) -> int:
        children = sum(sum(b.sizes) for b in self.batches)
        return len(self.batches) + children + len(self.tasks)


def work_seconds(rng: random.Random, slow_share: float) -> float:
    if rng.random() < slow_share:
        return round(rng.uniform(0.05, 1.0), 3)
    return round(rng.uniform(0.0, 0.05), 3)


def make_plan(seed: int, size: float) -> Plan:
    rng = random.Random(seed)
    window = WINDOW * size
    batches = []
    for i in range(max(1, round(14 * size))):
        total = rng.randint(5, 20)
        second = rng.randint(2, min(6, total - 5)) if total >= 8 and rng.random() < 0.35 else 0
        sizes = [total - second, second] if second else [total]
        batches.append(BatchPlan(
            label=f"batch-{i}",
            method="spawn_idempotent" if rng.random() < 0.3 else "spawn",
            sizes=sizes,
            seconds=[[work_seconds(rng, 0.3) for _ in range(n)] for n in sizes],
            failing=[[rng.random() < 0.08 for _ in range(n)] for n in sizes],
            strict=rng.random() < 0.3,
            at=round(rng.uniform(0, 0.5 * window), 2),
        ))
    wanted = math.ceil(MIN_PROCESSES * size)
    planned = len(batches) + sum(sum(b.sizes) for b in batches)
    methods = ["work"] * 10 + ["work_idempotent"] * 4 + ["work_flaky"] * 3 + [
        "fail_on_purpose"
    ] * 3
    tasks = [
        TaskPlan(
            label=f"task-{i}", method=rng.choice(methods), seconds=work_seconds(rng, 0.5),
            at=round(rng.uniform(0, 0.85 * window), 2),
        )
        for i in range(max(wanted - planned, round(100 * size)))
    ]
    faults = []
    seq = 0
    for kind, count in FAULTS_AT_SIZE_1.items():
        for _ in range(max(1, round(count * size))):
            seq += 1
            fault = Fault(
                at=round(rng.uniform(1.5, window), 2), seq=seq, kind=kind, pick=rng.random(),
                down_for=round(rng.uniform(0.5, 2.5), 2) if kind.endswith("restart") else 0.0,
            )
            if kind == "failpoint":
                fault.aim = " ".join((rng.choice(FAILPOINT_KINDS),
                                      rng.choice(FAILPOINT_COMMANDS),
                                      rng.choice(sorted(CLIENTS.values()))))
            elif kind == "step-down":
                fault.down_for = float(rng.randint(2, 5))
            faults.append(fault)
    return Plan(batches, tasks, sorted(faults), window)


# --- the services ----------------------------------------------------------------------


class Services:
    """The soak's private Redis, MongoDB server and workers; everything is stopped by close()."""

    def __init__(self, work_dir: Path) -> None:
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(tempfile.mkdtemp(prefix="chaos-data-", dir=work_dir))
        self.pids_path = work_dir / "pids"
        self.redis_port = services.free_port()
        self.mongo_port = services.free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.mongo_base_url = (
            f"mongodb://127.0.0.1:{self.mongo_port}/?replicaSet={services.REPLICA_SET_NAME}"
        )
        self.mongo_url = self.client_url("driver")
        self.redis: services.Service | None = None
        self.mongo: services.Service | None = None
        self.workers: dict[str, services.Service | None] = dict.fromkeys(SLOTS)
        self.restarting: set[str] = set()
        self.lock = threading.Lock()
        self.restarts: list[threading.Thread] = []
        self.ready_at: dict[str, float] = {}
        self.run_tag = uuid.uuid4().hex[:6]
        """In worker hostnames: tells this soak's workers from any other run's."""
        self.tracked: dict[int, tuple[str, str]] = {}
        self.log_offsets: dict[int, int] = {}
        """Worker main pid → where its lines begin in the slot's log (restarts append)."""

    def track(self, pid: int, *, group: bool, marker: str) -> None:
        """List a live service in the pid file, so the test can clean up if this driver dies.

        Each line is ``group|proc PID MARKER``: the test kills ``PID`` (its process group
        for a worker) only if its command line still contains ``MARKER``.
        """
        with self.lock:
            self.tracked[pid] = ("group" if group else "proc", marker)
            self._write_pids()

    def untrack(self, pid: int) -> None:
        with self.lock:
            self.tracked.pop(pid, None)
            self._write_pids()

    def _write_pids(self) -> None:
        text = "".join(f"{kind} {pid} {marker}\n" for pid, (kind, marker) in self.tracked.items())
        partial = self.pids_path.with_suffix(".tmp")
        partial.write_text(text)
        partial.replace(self.pids_path)

    def start_redis(self) -> None:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise services.ServiceError("redis-server is not installed")
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        log_path = self.log_dir / f"redis-{self.redis_port}.log"
        log = open(log_path, "ab")
        process = subprocess.Popen(
            [redis_server, "--bind", "127.0.0.1", "--port", str(self.redis_port),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--dir", str(redis_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.track(process.pid, group=False, marker=str(self.redis_port))
        self.redis = services.Service("redis", process, log_path, self.redis_url, log)
        services.wait_for(
            lambda: services.port_open("127.0.0.1", self.redis_port), timeout=20,
            what=f"redis on port {self.redis_port}",
        )

    def client_url(self, client: str) -> str:
        """The MongoDB URI of ``client`` (a worker slot or ``driver``): it names itself, so
        that a fail point can aim at it; worker ``b`` does without retryable writes. A
        500 ms heartbeat finds the primary again soon after a step-down (this server does
        not answer a waiting ``hello`` early, as mongod does)."""
        retry = "false" if client == "b" else "true"
        return (f"{self.mongo_base_url}&appName={CLIENTS[client]}&retryWrites={retry}"
                "&heartbeatFrequencyMS=500")

    def start_mongo(self) -> None:
        self.mongo = services.start_secantus(
            self.log_dir, port=self.mongo_port, storage_path=str(self.data_dir / "mongo"),
            replica_set=True, test_commands=True,
        )
        self.track(self.mongo.process.pid, group=False, marker=str(self.mongo_port))

    def worker_env(self, slot: str) -> dict[str, str]:
        return {
            "MONGODB_URI": self.client_url(slot),
            "CELERY_BROKER_URL": self.redis_url,
            "PROCSTATUS_TEST_REDIS_URL": self.redis_url,
            "PROCSTATUS_TEST_DB": DB_NAME,
            "PROCSTATUS_TEST_QUEUE": QUEUE,
            "PROCSTATUS_TEST_HEARTBEAT": str(HEARTBEAT),
            "PROCSTATUS_TEST_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "PROCSTATUS_TEST_COMMAND_LOG": "",
            "PROCSTATUS_TEST_ACKS_LATE": "",
            **SLOTS[slot],
        }

    def hostname(self, slot: str) -> str:
        return f"chaos-{slot}-{self.run_tag}@soak"

    def start_worker(self, slot: str) -> None:
        log_path = self.log_dir / f"worker-{self.hostname(slot).split('@')[0]}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        service = services.start_worker(
            "tests.support.chaos_app", self.log_dir, hostname=self.hostname(slot),
            env=self.worker_env(slot), concurrency=2, queues=QUEUE,
        )
        self.track(service.process.pid, group=True, marker=self.hostname(slot))
        self.log_offsets[service.process.pid] = offset
        with self.lock:
            self.workers[slot] = service
            self.restarting.discard(slot)
            self.ready_at[slot] = time.monotonic()

    def restart_worker_later(self, slot: str) -> None:
        def restart() -> None:
            try:
                self.start_worker(slot)
            except Exception as exc:  # reported; the drain then times out and says so
                say(f"! replacement worker {slot} did not start: {exc}")

        thread = threading.Thread(target=restart, name=f"restart-{slot}", daemon=True)
        self.restarts.append(thread)
        thread.start()

    def live_workers(self) -> dict[str, services.Service]:
        with self.lock:
            return {s: w for s, w in self.workers.items() if w is not None}

    def close(self) -> None:
        for thread in self.restarts:
            thread.join(90)
        for service in self.live_workers().values():
            try:
                service.kill_group()
                self.untrack(service.process.pid)
            except Exception as exc:
                say(f"! could not kill worker {service.url}: {exc}")
        for service in (self.redis, self.mongo):
            if service is not None:
                try:
                    service.stop()
                    self.untrack(service.process.pid)
                except Exception as exc:
                    say(f"! could not stop {service.name}: {exc}")
        shutil.rmtree(self.data_dir, ignore_errors=True)


# --- the soak ----------------------------------------------------------------------------


@dataclass
class Evidence:
    """What the faults did, for attributing each failure to its fault."""

    cancelled: set[str] = field(default_factory=set)
    killed_pids: dict[int, str] = field(default_factory=dict)
    """pid → the fault kind that killed it."""
    killed_at: dict[int, datetime] = field(default_factory=dict)
    """pid → when the soak killed it (UTC); workers that exited on their own have none."""
    killed_mains: dict[int, str] = field(default_factory=dict)
    """main pid of a worker killed by a fault, or that exited on its own → which."""
    exited_at: dict[int, datetime] = field(default_factory=dict)
    """main pid of a worker that exited on its own → when the soak noticed (UTC)."""
    pool_of: dict[int, int] = field(default_factory=dict)
    """Every pool pid seen during the soak → its worker's main pid."""
    worker_exits: list[str] = field(default_factory=list)
    """Workers that exited without being killed (and were replaced), and why."""
    applied: Counter = field(default_factory=Counter)
    back_at: list[tuple[str, datetime]] = field(default_factory=list)
    """When each stopped server answered again (UTC)."""
    cancel_blocked: list[str] = field(default_factory=list)
    """cancel() calls that took over a second, and how long."""
    skipped: Counter = field(default_factory=Counter)
    failpoints: Counter = field(default_factory=Counter)
    """Fail points armed, by ``"<kind> <command> <client>"``."""


def key(cls_name: str, pk: Any) -> str:
    return f"{cls_name}({pk})"


class Soak:
    def __init__(self, plan: Plan, svc: Services) -> None:
        import mongoengine

        from tests.support import chaos_models
        from tests.support.chaos_app import app

        self.plan = plan
        self.svc = svc
        self.app = app
        self.models = chaos_models
        self.classes = chaos_models.CLASSES
        # install() may have made a lazy connection already; the driver wants short timeouts
        # so that it notices an outage at once instead of waiting 30 s in each call.
        mongoengine.disconnect()
        mongoengine.connect(
            db=DB_NAME, host=svc.mongo_url, serverSelectionTimeoutMS=2000,
            connectTimeoutMS=1000,
        )
        import redis

        self.redis = redis.Redis.from_url(svc.redis_url, socket_timeout=2, socket_connect_timeout=1)
        import pymongo

        self.admin: pymongo.MongoClient = pymongo.MongoClient(
            svc.mongo_base_url, serverSelectionTimeoutMS=2000, connectTimeoutMS=1000
        )
        self.stepped_down_until = 0.0
        self.failpoint_armed: tuple[float, str, int] | None = None
        """When the last fail point was armed, for which client, and how many faults that
        client had met by then."""
        self.evidence = Evidence()
        self.fault_log: list[dict[str, Any]] = []
        self.events: list[Fault] = list(plan.faults)
        heapq.heapify(self.events)
        self.recovering: set[str] = set()
        self.recovery_threads: list[threading.Timer] = []
        self.redis_up = True
        self.mongo_up = True
        self.t0 = time.monotonic()
        self.last_fault_end = 0.0
        self.sweeps: Counter = Counter()
        self.last_sweep_error = ""
        self.drain_diagnosis: dict[str, Any] = {}
        self.fatal: str | None = None
        self.next_pool_snapshot = 0.0
        """Set when the soak cannot go on (a server that will not restart)."""
        self.dispatch_errors = 0
        self.pending_calls: list[tuple[float, str, Any, str]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- setting up the documents ----------------------------------------------------------

    def create_documents(self) -> None:
        ChaosBatch, ChaosTask = self.models.ChaosBatch, self.models.ChaosTask
        calls = []
        for b in self.plan.batches:
            doc = ChaosBatch.create(
                sizes=b.sizes, seconds=b.seconds, failing=b.failing, strict=b.strict
            )
            calls.append((b.at, "ChaosBatch", doc.pk, b.method))
        for t in self.plan.tasks:
            doc = ChaosTask.create(seconds=t.seconds)
            calls.append((t.at, "ChaosTask", doc.pk, t.method))
        self.pending_calls = sorted(calls, key=lambda c: (c[0], str(c[2])))

    def dispatch_due(self) -> None:
        still = []
        for at, cls_name, pk, method in self.pending_calls:
            if at > self.now() or not (self.redis_up and self.mongo_up):
                still.append((at, cls_name, pk, method))
                continue
            cls = self.cls(cls_name)
            try:
                getattr(cls.objects.get(pk=pk), method)()
            except Exception as exc:  # the broker or MongoDB went away meanwhile: call again
                self.dispatch_errors += 1
                say(f"  call of {key(cls_name, pk)}.{method} failed ({type(exc).__name__}); "
                    "calling again later")
                still.append((self.now() + 0.5, cls_name, pk, method))
        self.pending_calls = sorted(still, key=lambda c: (c[0], str(c[2])))

    def cls(self, name: str) -> Any:
        return {c.__name__: c for c in self.classes}[name]

    # --- faults ---------------------------------------------------------------------------

    def run_faults_due(self) -> None:
        while self.events and self.events[0].at <= self.now():
            fault = heapq.heappop(self.events)
            detail = self.apply(fault)
            if detail is None:
                continue  # deferred
            applied = not detail.startswith("skipped")
            (self.evidence.applied if applied else self.evidence.skipped)[fault.kind] += 1
            moment = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            self.fault_log.append({"t": round(self.now(), 2), "at": moment, "kind": fault.kind,
                                   "detail": detail, "applied": applied})
            if applied:
                self.last_fault_end = max(self.last_fault_end, self.now())
            say(f"  t={self.now():6.1f}s fault {fault.kind:16} {detail}")

    def supervise(self) -> None:
        """Replace a worker that exited on its own, as a service manager would, saying why;
        and note which pool processes each worker has (to know later whose run died)."""
        if self.now() >= self.next_pool_snapshot:
            import psutil

            self.next_pool_snapshot = self.now() + 0.5
            for service in self.svc.live_workers().values():
                try:
                    for child in psutil.Process(service.process.pid).children():
                        self.evidence.pool_of[child.pid] = service.process.pid
                except psutil.Error:
                    continue
        with self.svc.lock:
            exited = [(slot, w) for slot, w in self.svc.workers.items()
                      if w is not None and w.process.poll() is not None]
            for slot, _ in exited:
                self.svc.workers[slot] = None
                self.svc.restarting.add(slot)
        for slot, service in exited:
            service.kill_group()  # any pool process it left behind
            self.svc.untrack(service.process.pid)
            own_lines = service.log_text()[self.svc.log_offsets.get(service.process.pid, 0):]
            crash = [ln for ln in own_lines.splitlines() if "Unrecoverable error" in ln]
            why = crash[-1][:200] if crash else f"exit code {service.process.returncode}"
            how = "worker-exit (Unrecoverable error)" if crash else "worker-exit"
            self.evidence.killed_mains[service.process.pid] = how
            self.evidence.exited_at[service.process.pid] = datetime.now(timezone.utc)
            self.evidence.worker_exits.append(
                f"t={self.now():.1f}s chaos-{slot} (main {service.process.pid}): {why}"
            )
            say(f"  t={self.now():6.1f}s ! worker chaos-{slot} exited on its own: {why}; "
                "replacing it")
            self.svc.restart_worker_later(slot)

    def defer(self, fault: Fault, reason: str, *, waiting_for_server: bool = False) -> str | None:
        """Try ``fault`` again in 0.3 s; after 6 s without a target, skip it (reported).

        Waiting for a stopped server to come back does not count: it comes back (or the
        soak stops with an error), and then the fault applies.
        """
        if not waiting_for_server:
            fault.deferred += 1
        if fault.deferred > 20:
            return f"skipped: {reason}"
        fault.at = self.now() + 0.3
        heapq.heappush(self.events, fault)
        return None

    def apply(self, fault: Fault) -> str | None:
        kind = fault.kind
        if kind == "pool-kill":
            return self.kill_pool_process(fault)
        if kind == "worker-kill":
            return self.kill_worker(fault)
        if kind in ("cancel", "cancel-terminate"):
            return self.cancel(fault, terminate=kind == "cancel-terminate")
        if kind == "duplicate":
            return self.duplicate(fault)
        if kind == "failpoint":
            return self.arm_failpoint(fault)
        if kind == "step-down":
            return self.step_down(fault)
        if kind == "redis-restart":
            if not self.redis_up:
                return self.defer(fault, "redis already down", waiting_for_server=True)
            assert self.svc.redis is not None
            self.svc.redis.stop()
            self.svc.untrack(self.svc.redis.process.pid)
            self.redis_up = False
            self.recover_later("redis", fault.down_for)
            return f"redis stopped for {fault.down_for:.1f}s"
        if kind == "mongo-restart":
            if not self.mongo_up:
                return self.defer(fault, "mongo already down", waiting_for_server=True)
            assert self.svc.mongo is not None
            self.svc.mongo.stop()
            self.svc.untrack(self.svc.mongo.process.pid)
            self.mongo_up = False
            self.recover_later("mongo", fault.down_for)
            return f"MongoDB server stopped for {fault.down_for:.1f}s"
        raise ValueError(kind)

    def arm_failpoint(self, fault: Fault) -> str | None:
        """Fail the next ``update``/``findAndModify`` of one client once (replacing a fail
        point not yet met)."""
        if not self.mongo_up:
            return self.defer(fault, "MongoDB down", waiting_for_server=True)
        if self.failpoint_waiting():
            return self.defer(fault, "the last fail point is not met yet", waiting_for_server=True)
        kind, command, client = fault.aim.split()
        try:
            failpoints.arm(self.admin, command, kind, client)
        except Exception as exc:
            return self.defer(fault, f"cannot arm it: {exc!r}", waiting_for_server=True)
        self.failpoint_armed = (self.now(), client, self.faults_met_by(client))
        self.evidence.failpoints[fault.aim] += 1
        return f"the next {command} of {client} fails once: {kind}"

    def faults_met_by(self, client: str) -> int:
        try:
            return int(self.redis.llen(failpoints.seen_key(client)))
        except Exception:
            return -1  # Redis is down: unknown

    def failpoint_waiting(self) -> bool:
        """Whether the last fail point was armed under ``FAILPOINT_WAIT`` s ago and its
        client has met no fault since (arming another would replace it unmet)."""
        if self.failpoint_armed is None:
            return False
        armed_at, client, met_before = self.failpoint_armed
        if self.now() - armed_at >= FAILPOINT_WAIT:
            return False
        return self.faults_met_by(client) <= met_before

    def step_down(self, fault: Fault) -> str | None:
        """The server refuses every write for ``down_for`` seconds, as a primary that stepped
        down does until an election."""
        if not self.mongo_up or self.now() < self.stepped_down_until:
            return self.defer(fault, "MongoDB down or stepped down", waiting_for_server=True)
        try:
            failpoints.step_down(self.admin, int(fault.down_for))
        except Exception as exc:
            return self.defer(fault, f"cannot step down: {exc!r}", waiting_for_server=True)
        self.stepped_down_until = self.now() + fault.down_for
        self.last_fault_end = max(self.last_fault_end, self.stepped_down_until)
        return f"the server refuses writes for {fault.down_for:.0f}s"

    def failpoints_met(self) -> dict[str, int]:
        """The faults each client met, as its ``FaultRecorder`` logged them in Redis (a
        fault met while Redis was down is not counted)."""
        met: Counter = Counter()
        for client in CLIENTS.values():
            try:
                lines = self.redis.lrange(failpoints.seen_key(client), 0, -1)
            except Exception:
                continue
            for line in lines:
                command, kind = line.decode().split(" ", 1)
                met[f"{kind} {command} {client}"] += 1
        return dict(met)

    def recover_later(self, what: str, down_for: float, attempt: int = 1) -> None:
        """Restart ``what`` after ``down_for`` s, on a timer thread: a call that blocks the
        main loop while the server is down (a revoke does) must not keep it down."""
        self.recovering.add(what)
        timer = threading.Timer(down_for, self.recover, args=(what, attempt))
        timer.daemon = True
        self.recovery_threads.append(timer)
        timer.start()

    def recover(self, what: str, attempt: int) -> None:
        try:
            if what == "redis":
                self.svc.start_redis()
                self.redis_up = True
            else:
                self.svc.start_mongo()
                self.mongo_up = True
        except Exception as exc:
            say(f"! {what} did not come back (attempt {attempt}): {exc}")
            if attempt < 5:
                self.recover_later(what, 1.0, attempt + 1)
            else:
                self.fatal = f"{what} did not come back after {attempt} attempts: {exc}"
            return
        self.last_fault_end = max(self.last_fault_end, self.now())
        self.recovering.discard(what)
        self.evidence.back_at.append((what, datetime.now(timezone.utc)))
        say(f"  t={self.now():6.1f}s {what} is back")

    def pool_pids(self) -> dict[int, str]:
        import psutil

        pids = {}
        for slot, service in self.svc.live_workers().items():
            if slot in self.svc.restarting:
                continue
            try:
                for child in psutil.Process(service.process.pid).children():
                    pids[child.pid] = slot
            except psutil.Error:
                continue
        return pids

    def processing_docs(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        docs = []
        for cls in self.classes:
            for state in cls._get_collection().find(
                {"process_status": {"$in": list(statuses)}}, dict.fromkeys(STATE_FIELDS, 1)
            ):
                docs.append({"cls": cls.__name__, **state})
        return sorted(docs, key=lambda d: (d["cls"], str(d["_id"])))

    def kill_pool_process(self, fault: Fault) -> str | None:
        pids = {p: s for p, s in self.pool_pids().items() if p not in self.evidence.killed_pids}
        if not pids:
            return self.defer(fault, "no pool process")
        busy: list[dict[str, Any]] = []
        if self.mongo_up:
            try:
                running = self.processing_docs(("RUNNING",))
                busy = [d for d in running if d.get("worker_pid") in pids]
            except Exception:
                busy = []
        if busy:
            victim = busy[int(fault.pick * len(busy))]
            pid, what = victim["worker_pid"], f"running {key(victim['cls'], victim['_id'])}"
        else:
            pid = sorted(pids)[int(fault.pick * len(pids))]
            what = "idle or unknown"
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return self.defer(fault, "pool process already gone")
        self.evidence.killed_pids[pid] = "pool-kill"
        self.evidence.killed_at[pid] = datetime.now(timezone.utc)
        return f"SIGKILL pool process {pid} of chaos-{pids[pid]} ({what})"

    def kill_worker(self, fault: Fault) -> str | None:
        import psutil

        with self.svc.lock:
            live = sorted(s for s, w in self.svc.workers.items()
                          if w is not None and s not in self.svc.restarting)
        if not live:
            return self.defer(fault, "no live worker")
        slot = live[int(fault.pick * len(live))]
        service = self.svc.workers[slot]
        assert service is not None
        main_pid = service.process.pid
        try:
            pool = [c.pid for c in psutil.Process(main_pid).children(recursive=True)]
        except psutil.Error:
            pool = []
        with self.svc.lock:
            self.svc.restarting.add(slot)
            self.svc.workers[slot] = None
        service.kill_group()
        self.svc.untrack(main_pid)
        self.evidence.killed_mains[main_pid] = "worker-kill"
        self.evidence.killed_at[main_pid] = datetime.now(timezone.utc)
        for pid in [main_pid, *pool]:
            self.evidence.killed_pids[pid] = "worker-kill"
            self.evidence.killed_at.setdefault(pid, datetime.now(timezone.utc))
        self.svc.restart_worker_later(slot)
        return f"SIGKILL worker chaos-{slot} (main {main_pid}, pool {pool}); replacement started"

    def cancel(self, fault: Fault, *, terminate: bool) -> str | None:
        if not self.mongo_up:
            return self.defer(fault, "MongoDB down", waiting_for_server=True)
        wanted = ("RUNNING",) if terminate else PROCESSING
        try:
            docs = self.processing_docs(wanted)
        except Exception as exc:
            return self.defer(fault, f"cannot read documents: {exc}", waiting_for_server=True)
        if not docs:
            return self.defer(fault, "nothing processing")
        victim = docs[int(fault.pick * len(docs))]
        label = key(victim["cls"], victim["_id"])
        added = label not in self.evidence.cancelled
        self.evidence.cancelled.add(label)  # attempted: the status write may precede an error
        terminated = terminate and victim.get("worker_pid") not in (
            None, *self.evidence.killed_pids)
        if terminated:  # revoke(terminate=True) SIGKILLs the pool process running it
            self.evidence.killed_pids[victim["worker_pid"]] = "cancel-terminate"
            self.evidence.killed_at[victim["worker_pid"]] = datetime.now(timezone.utc)
        began = time.monotonic()
        try:
            proc = self.cls(victim["cls"]).objects.get(pk=victim["_id"])
            done = proc.cancel(terminate=terminate)
        except Exception as exc:
            return self.defer(fault, f"cancel raised {exc!r}", waiting_for_server=True)
        took = time.monotonic() - began
        blocked = ""
        if took > 1.0:
            blocked = f"; cancel() blocked {took:.1f}s (redis up: {self.redis_up})"
            self.evidence.cancel_blocked.append(f"{label}: {took:.1f}s")
        if not done:  # it ended between the query and the cancel: pick another one
            if added:
                self.evidence.cancelled.discard(label)
            if terminated:
                self.evidence.killed_pids.pop(victim["worker_pid"], None)
                self.evidence.killed_at.pop(victim["worker_pid"], None)
            return self.defer(fault, f"{label} had ended before the cancel{blocked}")
        return f"{label} was {victim['process_status']}{blocked}"

    def duplicate(self, fault: Fault) -> str | None:
        if not (self.mongo_up and self.redis_up):
            return self.defer(fault, "a server is down", waiting_for_server=True)
        try:
            docs = [d for d in self.processing_docs(("PENDING", "RUNNING"))
                    if d.get("celery_task_id") and not d.get("joining")]
        except Exception as exc:
            return self.defer(fault, f"cannot read documents: {exc}", waiting_for_server=True)
        if not docs:
            return self.defer(fault, "nothing pending or running")
        # Half of the duplicates go to a RUNNING document when there is one.
        running = [d for d in docs if d["process_status"] == "RUNNING"]
        pool, pick = (running, fault.pick * 2) if running and fault.pick < 0.5 else (
            docs, fault.pick)
        victim = pool[int(pick * len(pool)) % len(pool)]
        cls = self.cls(victim["cls"])
        state = cls._get_collection().find_one({"_id": victim["_id"]}) or {}
        arguments = state.get("process_arguments") or {}
        try:
            self.app.send_task(
                "procstatus.run",
                args=[victim["cls"], str(victim["_id"]), victim["current_process"],
                      arguments.get("args") or [], arguments.get("kwargs") or {}],
                task_id=victim["celery_task_id"], queue=QUEUE,
            )
        except Exception as exc:
            return self.defer(fault, f"send failed: {exc!r}", waiting_for_server=True)
        return (f"{key(victim['cls'], victim['_id'])}.{victim['current_process']} "
                f"({victim['process_status']}) task {victim['celery_task_id']} sent again")

    # --- the sweeper and the drain ---------------------------------------------------------

    def sweep(self, pending_timeout: float | None) -> None:
        import procstatus

        if not self.mongo_up:
            return
        try:
            report = procstatus.sweep(
                threshold=THRESHOLD, pending_timeout=pending_timeout, classes=self.classes
            )
        except Exception as exc:  # a server is down: the next pass tries again
            self.sweeps["errors"] += 1
            self.last_sweep_error = f"{type(exc).__name__}: {exc}"[:200]
            return
        self.sweeps["passes"] += 1
        for name in ("failed", "orphaned", "sent_again", "never_started", "joins_sent"):
            self.sweeps[name] += len(getattr(report, name))

    def queued(self) -> int:
        """Messages in the soak's queue (every priority) plus taken-but-unacknowledged ones."""
        total = 0
        for name in self.redis.scan_iter(match=f"{QUEUE}*"):
            if self.redis.type(name) == b"list":
                total += int(self.redis.llen(name))
        return total + int(self.redis.hlen("unacked"))

    def workers_idle(self) -> bool:
        live = self.svc.live_workers()
        if len(live) < len(SLOTS) or self.svc.restarting:
            return False
        names = [self.svc.hostname(s) for s in live]
        inspect = self.app.control.inspect(destination=names, timeout=1.0)
        for ask in (inspect.active, inspect.reserved, inspect.scheduled):
            replies = ask() or {}
            if set(replies) != set(names) or any(replies.values()):
                return False
        return True

    def broker_state(self) -> dict[str, Any]:
        """What keeps the queue from draining: for the report when the drain times out."""
        state: dict[str, Any] = {}
        try:
            r = self.redis
            state["lists"] = {name.decode(errors="replace"): int(r.llen(name))
                              for name in r.scan_iter(match=f"{QUEUE}*")
                              if r.type(name) == b"list"}
            state["unacked"] = int(r.hlen("unacked"))
            now = time.time()
            state["unacked_ages_s"] = [round(now - score, 1) for _, score in
                                       r.zrange("unacked_index", 0, -1, withscores=True)]
            state["unacked_mutex_ttl_s"] = int(r.ttl("unacked_mutex"))
        except Exception as exc:
            state["redis_error"] = repr(exc)
        try:
            live = self.svc.live_workers()
            names = [self.svc.hostname(s) for s in live]
            state["live_workers"] = names
            state["restarting"] = sorted(self.svc.restarting)
            inspect = self.app.control.inspect(destination=names, timeout=1.0)
            for ask in ("active", "reserved", "scheduled"):
                replies = getattr(inspect, ask)() or {}
                state[ask] = {w: [t.get("id") or t.get("request", {}).get("id") for t in tasks]
                              for w, tasks in replies.items()}
        except Exception as exc:
            state["inspect_error"] = repr(exc)
        return state

    def drained(self) -> bool:
        try:
            return self.queued() == 0 and self.workers_idle() and self.queued() == 0
        except Exception:
            return False

    def counts(self) -> Counter:
        counts: Counter = Counter()
        for cls in self.classes:
            for row in cls._get_collection().aggregate(
                [{"$group": {"_id": "$process_status", "n": {"$sum": 1}}}]
            ):
                counts[row["_id"]] += row["n"]
        return counts

    def stuck(self) -> list[dict[str, Any]]:
        return self.processing_docs(PROCESSING)

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.create_documents()
        say(f"fault window {self.plan.window:.0f}s; {len(self.plan.faults)} faults scheduled")
        next_sweep = next_report = 0.0
        while True:
            self.supervise()
            self.dispatch_due()
            self.run_faults_due()
            if self.now() >= next_sweep:
                self.sweep(pending_timeout=None)
                next_sweep = self.now() + SWEEP_EVERY
            if self.now() >= next_report and self.mongo_up:
                self.progress()
                next_report = self.now() + 5
            if self.fatal:
                raise RuntimeError(self.fatal)
            if (self.now() >= self.plan.window and not self.events and not self.recovering
                    and not self.pending_calls and not self.svc.restarting
                    and self.now() >= self.stepped_down_until
                    and not self.failpoint_waiting()):
                break
            if self.now() > 2 * self.plan.window + 30:
                raise RuntimeError(
                    f"the fault phase did not end: {len(self.events)} faults and "
                    f"{len(self.pending_calls)} calls left, recovering {self.recovering}, "
                    f"restarting {self.svc.restarting}"
                )
            time.sleep(0.05)  # the loop's pace, not a synchronisation
        faults_end = self.now()
        try:
            failpoints.disarm(self.admin)  # one not met yet would fire during the drain
        except Exception as exc:
            say(f"! could not disarm the fail point: {exc!r}")
        say(f"t={faults_end:.1f}s faults over; waiting for the queue to drain")

        # Drained: twice in a row, the queue and the unacked set empty and no worker busy.
        drained_once = False
        drain_deadline = self.now() + DRAIN_TIMEOUT * max(1.0, self.plan.window / WINDOW)
        drained_at = None
        while self.now() < drain_deadline:
            self.supervise()
            self.sweep(pending_timeout=None)
            if self.drained():
                if drained_once:
                    drained_at = self.now()
                    break
                drained_once = True
            else:
                drained_once = False
            if self.now() >= next_report:
                self.progress()
                next_report = self.now() + 5
            time.sleep(0.2)
        if drained_at is None:
            self.drain_diagnosis = self.broker_state()
            say(f"! the queue did not drain within {DRAIN_TIMEOUT:.0f}s: {self.drain_diagnosis}")
            drained_at = self.now()
        say(f"t={drained_at:.1f}s drained; sweeping until nothing is processing")

        settle_deadline = drained_at + 2 * THRESHOLD
        all_terminal_at = None
        stuck_at_deadline: list[dict[str, Any]] = []
        while self.now() < settle_deadline + DIAGNOSE_FOR:
            self.supervise()
            try:
                empty = self.queued() == 0
            except Exception:
                empty = False
            self.sweep(pending_timeout=THRESHOLD if empty else None)
            try:
                remaining = self.stuck()
            except Exception:
                remaining = [{"cls": "?", "_id": "MongoDB unreadable"}]
            if not remaining:
                all_terminal_at = self.now()
                break
            if self.now() >= settle_deadline and not stuck_at_deadline:
                stuck_at_deadline = remaining
                say(f"! {len(remaining)} documents still processing "
                    f"{2 * THRESHOLD:.0f}s after the drain; sweeping {DIAGNOSE_FOR:.0f}s more")
            time.sleep(0.5)
        if all_terminal_at is not None and all_terminal_at > settle_deadline:
            pass  # settled late: stuck_at_deadline lists what was left at the deadline
        final_stuck = [] if all_terminal_at is not None else self.stuck()
        timing = {
            "faults_end": round(faults_end, 2),
            "last_fault_end": round(self.last_fault_end, 2),
            "drained_at": round(drained_at, 2),
            "all_terminal_at": None if all_terminal_at is None else round(all_terminal_at, 2),
            "settle_after_drain": None if all_terminal_at is None
            else round(all_terminal_at - drained_at, 2),
            "settle_after_last_fault": None if all_terminal_at is None
            else round(all_terminal_at - self.last_fault_end, 2),
        }
        return {"timing": timing, "stuck_at_deadline": stuck_at_deadline,
                "stuck_at_end": final_stuck}

    def progress(self) -> None:
        try:
            counts = self.counts()
        except Exception:
            return
        text = " ".join(f"{s}={counts[s]}" for s in sorted(counts))
        applied = sum(self.evidence.applied.values())
        say(f"t={self.now():6.1f}s faults={applied}/{len(self.plan.faults)} "
            f"calls-left={len(self.pending_calls)} {text}")


# --- verdicts ------------------------------------------------------------------------------

MONGO_ERRORS = re.compile(
    r"ServerSelectionTimeoutError|AutoReconnect|NetworkTimeout|NotPrimary|"
    r"could not start|could not record the end|connection closed"
)
REDIS_ERRORS = re.compile(
    r"OperationalError|ConnectionError|Error \d+ connecting|Connection refused|"
    r"could not send again|the retry could not be sent"
)


def normalise(text: str) -> str:
    text = re.sub(r"\b[0-9a-f]{24}\b", "<id>", text)
    text = re.sub(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<task>",
                  text)
    text = re.sub(r"chaos-[ab]-[0-9a-f]+@soak", "<worker>", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)


@dataclass
class Verdicts:
    unexplained: list[dict[str, Any]] = field(default_factory=list)
    untrue: list[dict[str, Any]] = field(default_factory=list)
    """FAILUREs saying 'worker lost' while that worker instance was alive: neither it nor the
    run's pool process had been killed (it was killed later, or never, and beat on)."""
    join_violations: list[str] = field(default_factory=list)
    double_runs: list[dict[str, Any]] = field(default_factory=list)
    overlapping_runs: list[dict[str, Any]] = field(default_factory=list)
    """A body that started while an earlier body of the same document was still running:
    it had not recorded its end, and its pool process had not been killed."""
    parents_not_ended: list[str] = field(default_factory=list)
    unexpected_ready: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    attributed: Counter = field(default_factory=Counter)
    side_channel: Counter = field(default_factory=Counter)
    """Records read from ``chaos_log``, and documents whose body ran more than once."""
    final: Counter = field(default_factory=Counter)


UNTRUE_WORKER_LOST = "UNTRUE: 'worker lost' while its worker was alive"
PAST_LOSS_CAP = re.compile(
    r"lost its worker (?:once|\d+ times), more than max_worker_losses=\d+ allows; last: "
)


def utc(moment: datetime) -> datetime:
    """pymongo returns naive UTC datetimes; the driver's own are aware."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def analyse(
    soak: Soak, gone: dict[str, tuple[str, int]], beats: dict[str, datetime]
) -> Verdicts:
    """Judge the final documents against the side channel and the faults' evidence.

    ``gone``: worker instance → how it was lost (killed, or exited on its own) and its pid;
    ``beats``: worker instance → its last heartbeat.
    """
    from tests.support.chaos_models import DELIBERATE, LOG_COLLECTION, STRICT

    ev = soak.evidence
    verdicts = Verdicts()
    docs: dict[str, dict[str, Any]] = {}
    for cls in soak.classes:
        for state in cls._get_collection().find():
            docs[key(cls.__name__, state["_id"])] = {"cls": cls.__name__, **state}
    log = list(soak.classes[0]._get_collection().database[LOG_COLLECTION].find())
    bodies: Counter = Counter()
    starts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ends: dict[tuple[str, Any, Any], list[datetime]] = defaultdict(list)
    joins: dict[str, Counter] = defaultdict(Counter)
    waits: dict[str, set[int]] = defaultdict(set)
    for entry in log:
        verdicts.side_channel[f"{entry['kind']} records"] += 1
        label = key(entry["cls"], entry["doc"])
        if entry["kind"] == "body":
            bodies[label] += 1
            starts[label].append(entry)
        elif entry["kind"] == "end":
            ends[(label, entry["task_id"], entry["pid"])].append(utc(entry["at"]))
        elif entry["kind"] == "join":
            joins[label][entry["wave"]] += 1
            if entry.get("busy"):
                verdicts.join_violations.append(
                    f"{label}: join() of wave {entry['wave']} ran while {entry['busy']} "
                    "children were processing"
                )
        elif entry["kind"] == "wait":
            waits[label].add(entry["wave"])
    children_of: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for doc in docs.values():
        if doc["cls"] == "ChaosItem":
            children_of[doc["batch"]].append(doc)

    def dead_by(pid: int, moment: datetime) -> str | None:
        """How pool process ``pid`` was known dead by ``moment``, or ``None``."""
        main = ev.pool_of.get(pid)
        for victim, what in ((pid, "its pool process was killed"),
                             (main, "its worker was killed")):
            at = ev.killed_at.get(victim) if victim is not None else None
            if at is not None and at <= moment:
                return what
        exited = ev.exited_at.get(main) if main is not None else None
        if exited is not None:  # noticed late: it exited at some moment before this
            return "its worker exited"
        return None

    def overlaps(label: str) -> list[dict[str, Any]]:
        """Pairs of bodies of ``label`` where the later began while the earlier still ran."""
        found = []
        runs = sorted(starts[label], key=lambda e: e["at"])
        for i, later in enumerate(runs):
            began = utc(later["at"])
            for earlier in runs[:i]:
                ended = [at for at in ends[(label, earlier["task_id"], earlier["pid"])]
                         if at >= utc(earlier["at"])]
                if ended and min(ended) <= began:
                    continue
                if dead_by(earlier["pid"], began):
                    continue
                found.append({
                    "doc": label, "first": f"task {earlier['task_id']} pid {earlier['pid']} "
                    f"from {utc(earlier['at']).isoformat()}"
                    + (f" to {min(ended).isoformat()}" if ended else " (no end recorded)"),
                    "second": f"task {later['task_id']} pid {later['pid']} "
                    f"from {began.isoformat()}",
                })
        return found

    def fate(instance: str | None) -> str:
        if instance not in gone:
            return "alive until the soak ended"
        how, main_pid = gone[instance]  # type: ignore[index]
        at = ev.killed_at.get(main_pid)
        return f"{how} at {at.isoformat() if at else 'an unknown moment'}"

    def servers_back_before(moment: datetime | None) -> list[str]:
        """Which stopped servers came back in the 10 s before ``moment``, and how long before."""
        if moment is None:
            return []
        moment = moment.replace(tzinfo=timezone.utc)
        return [f"{what} back {(moment - at).total_seconds():.1f}s before"
                for what, at in ev.back_at if 0 <= (moment - at).total_seconds() <= 10]

    def explain(label: str, doc: dict[str, Any], error: str) -> str | None:
        """The fault ``error`` names, with this document's evidence; ``None`` if none does."""
        text = error
        for prefix in ("join failed: ", "join lost: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
        past_cap = PAST_LOSS_CAP.match(text)
        if past_cap:  # ended by the cap on lost workers: the last loss names the fault
            text = text[past_cap.end():]
        pid = doc.get("worker_pid")
        ended = doc.get("complete_time")

        def killed_before(victim: Any) -> bool:
            """The soak killed ``victim`` before this run was ended (or it exited itself)."""
            at = ev.killed_at.get(victim)
            return at is None or ended is None or at <= ended.replace(tzinfo=timezone.utc)

        if text == "cancelled":
            return "cancel" if label in ev.cancelled else None
        if text.startswith("WorkerLostError"):
            if pid is None and ended is not None:  # lost before its claim: no pid recorded
                end = ended.replace(tzinfo=timezone.utc)
                kinds = {ev.killed_pids[p] for p, at in ev.killed_at.items()
                         if 0 <= (end - at).total_seconds() <= 10}
                return f"{'/'.join(sorted(kinds))} (before its claim)" if kinds else None
            return ev.killed_pids.get(pid) if killed_before(pid) else None
        if text.startswith("worker lost:"):
            instance = doc.get("worker_instance")
            if instance in gone and killed_before(gone[instance][1]):
                return gone[instance][0]
            if pid in ev.killed_pids and killed_before(pid):  # its pool process was lost
                return f"{ev.killed_pids[pid]} (reported as a lost worker)"
            if instance in beats:  # a known instance, alive when this verdict was written
                return UNTRUE_WORKER_LOST
            return None
        if text.startswith("orphaned:"):
            if pid in ev.killed_pids and killed_before(pid):
                return ev.killed_pids[pid]
            return "mongo-restart (run abandoned on a MongoDB error)" if ev.applied[
                "mongo-restart"] else None
        if text.startswith("never started"):
            kinds = [k for k in ("worker-kill", "redis-restart", "pool-kill") if ev.applied[k]]
            return "lost message (" + "/".join(kinds) + ")" if kinds else None
        if text.startswith(DELIBERATE):
            planned = doc.get("fails") or doc.get("current_process") == "fail_on_purpose"
            return "deliberate" if planned else None
        if text.startswith(STRICT):
            failed = [c for c in children_of[doc["_id"]] if c["process_status"] == "FAILURE"]
            return "deliberate (strict batch)" if doc.get("strict") and failed else None
        if REDIS_ERRORS.search(text) and ev.applied["redis-restart"]:
            return "redis-restart"
        if MONGO_ERRORS.search(text):
            kinds = [k for k in ("mongo-restart", "failpoint", "step-down") if ev.applied[k]]
            return "/".join(kinds) + " (a MongoDB error)" if kinds else None
        return None

    for label, doc in sorted(docs.items()):
        status = doc.get("process_status")
        verdicts.final[status] += 1
        warnings = doc.get("warnings") or []
        if status == "FAILURE":
            errors = doc.get("errors") or ["(no error recorded)"]
            for error in errors:
                fault = explain(label, doc, error)
                verdicts.reasons[(status, normalise(error))] += 1
                verdicts.attributed[fault or "UNEXPLAINED"] += 1
                if fault is None or fault == UNTRUE_WORKER_LOST:
                    (verdicts.unexplained if fault is None else verdicts.untrue).append(
                        {"doc": label, "error": error,
                         **{f: str(doc.get(f)) for f in (*STATE_FIELDS, "complete_time")},
                         "worker_last_beat": str(beats.get(doc.get("worker_instance"))),
                         "worker_fate": fate(doc.get("worker_instance")),
                         "servers_back_before": servers_back_before(doc.get("complete_time"))}
                    )
        elif status == "SUCCESS":
            notes = sorted({normalise(w.split(":")[0]) for w in warnings})
            verdicts.reasons[(status, "; ".join(notes) or "clean")] += 1
        else:
            verdicts.reasons[(status, doc.get("last_status_message") or "")] += 1
        allowed = 1 + sum(
            1 for w in warnings
            if re.match(r"restarted after |sent again after |attempt \d+ of \d+ failed", w)
        )
        if bodies[label] > 1:
            verdicts.side_channel["documents whose body ran more than once"] += 1
            verdicts.overlapping_runs.extend(overlaps(label))
        if bodies[label] > allowed:
            verdicts.double_runs.append(
                {"doc": label, "bodies": bodies[label], "allowed": allowed, "warnings": warnings,
                 "status": status}
            )
        if doc["cls"] == "ChaosBatch":
            if status not in ("SUCCESS", "FAILURE"):
                verdicts.parents_not_ended.append(f"{label} is {status}")
            for wave, count in joins[label].items():
                if count > 1:
                    verdicts.join_violations.append(f"{label}: join() ran {count} times "
                                                    f"for wave {wave}")
                if wave not in waits[label]:
                    verdicts.join_violations.append(f"{label}: join() of wave {wave} without "
                                                    "a wait")
            if status == "SUCCESS":
                expected = set(range(1, len(doc.get("sizes") or []) + 1))
                if set(joins[label]) != expected:
                    verdicts.join_violations.append(
                        f"{label}: SUCCESS with joins for waves {sorted(joins[label])}, "
                        f"expected {sorted(expected)}"
                    )
                busy = [c for c in children_of[doc["_id"]]
                        if c["process_status"] not in ("SUCCESS", "FAILURE")]
                if busy:
                    verdicts.join_violations.append(
                        f"{label}: SUCCESS while {len(busy)} children are not ended"
                    )
        if status == "READY":
            parent = docs.get(key("ChaosBatch", doc.get("batch")))
            if not (doc["cls"] == "ChaosItem" and parent
                    and parent.get("process_status") == "FAILURE"):
                verdicts.unexpected_ready.append(label)
    return verdicts


def worker_instances(soak: Soak) -> tuple[dict[str, tuple[str, int]], dict[str, datetime]]:
    """(instances lost to a fault or that exited → (how, main pid), every instance → its
    last beat)."""
    from procstatus.liveness import WORKERS_COLLECTION

    workers = soak.classes[0]._get_collection().database[WORKERS_COLLECTION]
    gone, beats = {}, {}
    for beat in workers.find():
        beats[beat["_id"]] = beat["heartbeat_at"]
        how = soak.evidence.killed_mains.get(beat.get("pid"))
        if how is not None:
            gone[beat["_id"]] = (how, beat["pid"])
    return gone, beats


def worker_log_lines(svc: Services, needles: list[str], limit: int = 12) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    texts = [p.read_text(errors="replace") for p in sorted(svc.log_dir.glob("worker-*.log"))]
    for needle in needles:
        found = [ln for text in texts for ln in text.splitlines() if needle in ln]
        lines[needle] = found[-limit:]
    return lines


def print_tables(result: dict[str, Any]) -> None:
    say("---- faults by kind ----")
    for kind, count in sorted(result["faults_by_kind"].items()):
        skipped = result["faults_skipped"].get(kind, 0)
        say(f"  {kind:18} {count:4d}" + (f"   (+{skipped} skipped: no target)" if skipped else ""))
    say(f"  {'total':18} {sum(result['faults_by_kind'].values()):4d}")
    say("---- fail points: armed (kind, command, client) / met by that client ----")
    say("  (a restart's dropped connections are met as close too; a step-down's refusals")
    say("  are counted apart, as step-down)")
    armed, met = result["failpoints_armed"], result["failpoints_met"]
    for aim in sorted(set(armed) | set(met)):
        say(f"  {aim:42} {armed.get(aim, 0):4d} / {met.get(aim, 0):4d}")
    say("---- documents by final status and reason ----")
    for row in result["reasons"]:
        say(f"  {row['count']:4d}  {row['status']:8} {row['reason'][:110]}")
    say("---- failures by the fault they name ----")
    for fault, count in sorted(result["attributed"].items()):
        say(f"  {fault:34} {count:4d}")
    for title, name in (("workers that exited on their own (replaced)", "worker_exits"),
                        ("cancel() calls that blocked over 1 s", "cancel_blocked")):
        if result[name]:
            say(f"---- {title} ----")
            for line in result[name]:
                say(f"  {line}")
    timing = result["timing"]
    say("---- settling ----")
    say(f"  last fault ended at t={timing['last_fault_end']}s, drained at "
        f"t={timing['drained_at']}s, all terminal at t={timing['all_terminal_at']}s")
    say(f"  slowest settle: {timing['settle_after_last_fault']}s after the last fault, "
        f"{timing['settle_after_drain']}s after the drain (bound {2 * THRESHOLD:.0f}s)")
    say(f"  sweeper: {result['sweeps']}")
    say(f"  side channel: {result['side_channel']}")
    for name in ("unexplained", "untrue", "join_violations", "double_runs", "overlapping_runs",
                 "parents_not_ended", "unexpected_ready", "stuck_at_deadline", "stuck_at_end"):
        if result[name]:
            say(f"! {name}: {len(result[name])}")
            for item in result[name][:20]:
                say(f"!   {item}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    seed_text = os.environ.get("PROCSTATUS_CHAOS_SEED")
    seed = int(seed_text) if seed_text else random.SystemRandom().randrange(1, 10**6)
    size = float(os.environ.get("PROCSTATUS_CHAOS_SIZE") or 1)
    say(f"seed={seed} size={size:g}")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="procstatus-chaos-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "logs").mkdir(exist_ok=True)
    logging.basicConfig(  # the driver's own procstatus/celery log lines go to a file
        filename=work_dir / "logs" / "driver.log", level=logging.INFO,
        format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s",
    )
    plan = make_plan(seed, size)
    digest = plan.digest()
    schedule = [f"{f.at:.2f}s {f.kind}" for f in plan.faults]
    say(f"plan: {len(plan.batches)} batches with {sum(sum(b.sizes) for b in plan.batches)} "
        f"children, {len(plan.tasks)} tasks: {plan.processes} processes; "
        f"{len(plan.faults)} faults; digest {digest} (equal digests: the same schedule)")
    svc = Services(work_dir)
    started = time.monotonic()
    result: dict[str, Any] = {"seed": seed, "size": size, "work_dir": str(work_dir)}
    try:
        svc.start_redis()
        svc.start_mongo()
        os.environ.update(
            CELERY_BROKER_URL=svc.redis_url, MONGODB_URI=svc.mongo_url,
            PROCSTATUS_TEST_DB=DB_NAME, PROCSTATUS_TEST_QUEUE=QUEUE,
            PROCSTATUS_TEST_HEARTBEAT=str(HEARTBEAT),
            PROCSTATUS_TEST_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        )
        for slot in SLOTS:
            svc.start_worker(slot)
        soak = Soak(plan, svc)
        outcome = soak.run()
        verdicts = analyse(soak, *worker_instances(soak))
        stuck_ids = [str(d["_id"]) for d in outcome["stuck_at_deadline"]][:10]
        result.update(
            planned={"batches": len(plan.batches),
                     "children": sum(sum(b.sizes) for b in plan.batches),
                     "tasks": len(plan.tasks), "processes": plan.processes,
                     "children_per_batch": [sum(b.sizes) for b in plan.batches]},
            faults_scheduled=len(plan.faults),
            digest=digest,
            schedule=schedule,
            faults_by_kind=dict(soak.evidence.applied),
            faults_skipped=dict(soak.evidence.skipped),
            failpoints_armed=dict(soak.evidence.failpoints),
            failpoints_met=soak.failpoints_met(),
            fault_log=soak.fault_log,
            servers_back=[f"{what} {at.isoformat()}" for what, at in soak.evidence.back_at],
            cancel_blocked=soak.evidence.cancel_blocked,
            drain_diagnosis=soak.drain_diagnosis,
            worker_exits=soak.evidence.worker_exits,
            dispatch_errors=soak.dispatch_errors,
            sweeps=dict(soak.sweeps),
            final=dict(verdicts.final),
            reasons=[{"status": s, "reason": r, "count": n}
                     for (s, r), n in sorted(verdicts.reasons.items())],
            attributed=dict(verdicts.attributed),
            side_channel=dict(verdicts.side_channel),
            unexplained=verdicts.unexplained,
            untrue=verdicts.untrue,
            join_violations=verdicts.join_violations,
            double_runs=verdicts.double_runs,
            overlapping_runs=verdicts.overlapping_runs,
            parents_not_ended=verdicts.parents_not_ended,
            unexpected_ready=verdicts.unexpected_ready,
            timing=outcome["timing"],
            stuck_at_deadline=[{k: str(v) for k, v in d.items()}
                               for d in outcome["stuck_at_deadline"]],
            stuck_at_end=[{k: str(v) for k, v in d.items()} for d in outcome["stuck_at_end"]],
            stuck_log_lines=worker_log_lines(svc, stuck_ids),
            unexplained_log_lines=worker_log_lines(
                svc, [u["celery_task_id"] for u in verdicts.unexplained + verdicts.untrue][:10]
            ),
        )
        print_tables(result)
    finally:
        svc.close()
        result["duration"] = round(time.monotonic() - started, 1)
        (work_dir / "chaos.json").write_text(json.dumps(result, indent=2, default=str))
        say(f"duration {result['duration']}s; logs in {svc.log_dir}")
        say(f"seed={seed} (rerun: PROCSTATUS_CHAOS_SEED={seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

