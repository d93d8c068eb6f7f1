"""Worker liveness: one heartbeat document per worker, and the judgement "is this run lost?".

Each worker's main process writes ``{_id: instance, hostname, heartbeat_at, active}`` to
the ``procstatus_workers`` collection every ``interval`` seconds — one write per worker,
whatever the number of processes it runs. ``instance`` is new for every start of a
worker, so a restarted worker with the same hostname never vouches for the runs its
killed predecessor left RUNNING. ``active`` lists the procstatus task ids the worker is
executing, which tells a redelivered message whether its first delivery still runs.

Silence alone does not condemn a worker: during a MongoDB outage no worker can beat, and
the first sweep after it would otherwise take every worker for dead. A worker silent past
the threshold is first marked *suspected* (:func:`suspect_silent`); its runs are judged
lost only once it has stayed silent for a grace of half the threshold after that,
and its next beat clears the mark. The cost is one more sweep before a dead worker's
runs are ended.

One clock: every time here is the server's. Heartbeats, suspicions and ``gone_at`` are
stamped with ``$currentDate``, runs' times are stamped so by :mod:`procstatus.transitions`,
and every judgement compares them with the server's "now" (:func:`procstatus.clock.server_now`,
read once per decision), so workers, callers and the sweeper may run on hosts whose
clocks disagree by any amount. Heartbeats and the ``Proc`` collections are expected on
one server (or on servers whose clocks agree): a run's times are compared with its
worker's heartbeat.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from mongoengine.connection import ConnectionFailure as NoConnectionDefined
from mongoengine.connection import get_db
from pymongo.collection import Collection
from pymongo.database import Database

from procstatus import connection, runtime
from procstatus.clock import aware, server_now, server_time

logger = logging.getLogger("procstatus")

WORKERS_COLLECTION = "procstatus_workers"
PRUNE_HEARTBEATS_AFTER = 24 * 3600.0
"""Seconds after its last beat that a stopped worker's heartbeat document is deleted (by
the sweeper and by ``procstatus workers --prune``)."""
NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""The last beat of a heartbeat document that holds no time: silent since ever."""


class LossKind(Enum):
    """Why a RUNNING run is lost."""

    WORKER_LOST = "worker lost"
    """Its worker is gone: silent past the threshold and its grace, stopped, or unknown."""
    ORPHANED = "orphaned"
    """Its worker is alive but no longer runs it (its pool process died unheard)."""


@dataclass(frozen=True)
class Loss:
    """The verdict "this run is lost": its kind, and the text recorded on the document."""

    kind: LossKind
    text: str

    def __str__(self) -> str:
        return self.text


class Undecided:
    """The verdict of :func:`judge_remote_run` while the run's worker has not beaten since
    the run began: ask again after a heartbeat interval."""


UNDECIDED = Undecided()




class WorkerIdentity:
    """Who runs a process: this worker start's instance id, its hostname, this pid."""

    instance: str | None = None
    hostname: str | None = None

    @classmethod
    def begin(cls, hostname: str | None) -> str:
        """Called once in the worker's main process, before the pool forks."""
        cls.instance = uuid.uuid4().hex
        cls.hostname = hostname
        return cls.instance

    @staticmethod
    def pid() -> int:
        return os.getpid()


@dataclass(frozen=True)
class WorkerBeat:
    instance: str
    hostname: str | None
    heartbeat_at: datetime
    active: frozenset[str]
    stopped: bool = False
    suspected_at: datetime | None = None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> WorkerBeat:
        return cls(
            instance=document["_id"],
            hostname=document.get("hostname"),
            heartbeat_at=aware(document.get("heartbeat_at")) or NEVER,
            active=frozenset(document.get("active") or ()),
            stopped=bool(document.get("stopped")),
            suspected_at=aware(document.get("suspected_at")),
        )


def workers_collection(database: Database | None = None) -> Collection:
    """``procstatus_workers`` in ``database``; by default in the database of the
    connection ``install()`` was given."""
    if database is None:
        alias = runtime.current.alias
        connection.ensure(alias)
        database = get_db(alias)
    return connection.durable(database[WORKERS_COLLECTION])


def beat(collection: Collection, active: Iterable[str], *, stopped: bool = False) -> None:
    """Record that this worker instance is alive and what it runs (one write), at the
    server's time: this host's clock is never written."""
    collection.update_one(
        {"_id": WorkerIdentity.instance},
        {
            "$set": {
                "hostname": WorkerIdentity.hostname,
                "pid": os.getpid(),
                "active": sorted(active),
                "stopped": stopped,
            },
            **server_time("heartbeat_at"),
            "$unset": {"suspected_at": "", "gone_at": ""},  # alive after all
        },
        upsert=True,  # the worker's own heartbeat document, never a Proc
    )


def suspect_silent(
    collection: Collection, *, threshold: float, now: datetime | None = None
) -> dict[str, WorkerBeat]:
    """Mark workers silent past ``threshold`` as suspected (once); return every beat.

    ``now`` is the server's time (read with ``hello`` when not given); the mark is the
    server's time of the write.
    """
    now = now or server_now(collection.database)
    collection.update_many(
        {
            "heartbeat_at": {"$lt": now - timedelta(seconds=threshold)},
            "suspected_at": {"$exists": False},
        },
        server_time("suspected_at"),
    )
    return read_beats(collection)


def grace(threshold: float) -> float:
    """Seconds a suspected worker must stay silent before its runs are judged lost.

    Half the threshold: 1.5 heartbeat intervals with the default threshold of 3.
    """
    return threshold / 2


def read_beats(collection: Collection) -> dict[str, WorkerBeat]:
    return {d["_id"]: WorkerBeat.from_document(d) for d in collection.find()}


class Heartbeat:
    """A daemon thread in the worker's main process that calls :func:`beat` periodically."""

    def __init__(
        self, collection: Callable[[], Collection], active: Callable[[], Iterable[str]],
        interval: float,
    ) -> None:
        self._collection = collection
        self._active = active
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat_now(self, *, stopped: bool = False, raise_missing_connection: bool = False) -> None:
        try:
            beat(self._collection(), self._active(), stopped=stopped)
        except NoConnectionDefined:
            if raise_missing_connection:
                raise
            logger.error("procstatus heartbeat failed: no MongoDB connection is defined")
        except Exception as exc:  # an outage must not kill the thread; the next beat retries
            logger.warning("procstatus heartbeat failed: %s", exc)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="procstatus-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.beat_now(stopped=True)

    def _loop(self) -> None:
        self.beat_now()  # at once: the beat from worker_init may be old by now
        while not self._stop.wait(self.interval):
            self.beat_now()


def judge(
    state: Mapping[str, Any],
    beats: Mapping[str, WorkerBeat],
    *,
    threshold: float,
    now: datetime,
    check_active: bool = False,
    orphan_after: float | None = None,
) -> Loss | None:
    """Whether the RUNNING run described by ``state`` is lost; ``None`` if it may be alive.

    Lost means: its worker instance has no heartbeat, stopped, or has not beaten for
    ``threshold`` seconds. With ``check_active``, also when its worker beat after the run
    began and does not list the task; with ``orphan_after``, only once the worker beat
    more than that many seconds after the run began (a beat taken just before the
    claim may not list it yet) — the sweeper's "orphaned run" on a live worker.

    ``now`` is the server's time (:func:`procstatus.clock.server_now`), the clock that
    wrote the heartbeats and the run's times.
    """
    instance = state.get("worker_instance")
    hostname = state.get("worker_hostname") or "an unknown worker"
    began = aware(state.get("status_changed_at") or state.get("start_time")) or now
    worker = beats.get(instance) if instance else None
    if worker is None:
        if now - began < timedelta(seconds=threshold):
            return None  # give a worker that has not beaten yet its threshold
        return Loss(LossKind.WORKER_LOST, f"worker lost: no heartbeat from {hostname}")
    if now - worker.heartbeat_at > timedelta(seconds=threshold):
        suspected = worker.suspected_at
        if suspected is None or now - suspected < timedelta(seconds=grace(threshold)):
            return None  # maybe MongoDB was down for everyone: wait for its next beat
        return Loss(
            LossKind.WORKER_LOST,
            f"worker lost: no heartbeat from {hostname} for "
            f"{(now - worker.heartbeat_at).total_seconds():.0f} s",
        )
    if worker.stopped:
        return Loss(LossKind.WORKER_LOST, f"worker lost: {hostname} stopped while the process ran")
    task_id = state.get("celery_task_id")
    if task_id in worker.active:
        return None
    if orphan_after is not None and worker.heartbeat_at - began > timedelta(seconds=orphan_after):
        return Loss(
            LossKind.ORPHANED, f"orphaned: {hostname} is alive but no longer runs task {task_id}"
        )
    if check_active and worker.heartbeat_at > began:
        return Loss(LossKind.WORKER_LOST, f"worker lost: {hostname} no longer runs task {task_id}")
    return None


def mark_gone(
    collection: Collection,
    *,
    threshold: float,
    prune_after: float,
    now: datetime | None = None,
    dry_run: bool = False,
) -> int:
    """Mark heartbeats silent past ``threshold`` as stopped; delete those past ``prune_after``.

    A deleted heartbeat still judges right: a run naming an unknown instance is lost.
    Returns how many heartbeats were newly marked stopped. ``now`` is the server's time
    (read with ``hello`` when not given).
    """
    now = now or server_now(collection.database)
    silent = {
        "stopped": {"$ne": True},
        "heartbeat_at": {"$lt": now - timedelta(seconds=threshold)},
        "suspected_at": {"$lt": now - timedelta(seconds=grace(threshold))},
    }
    if dry_run:
        return int(collection.count_documents(silent))
    marked = collection.update_many(
        silent, {"$set": {"stopped": True}, **server_time("gone_at")}
    ).modified_count
    collection.delete_many(
        {"stopped": True, "heartbeat_at": {"$lt": now - timedelta(seconds=prune_after)}}
    )
    return int(marked)


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def judge_remote_run(state: Mapping[str, Any]) -> Loss | Undecided | None:
    """For a redelivered task: a :class:`Loss` if its first run is lost, ``None`` if it is
    alive, or :data:`UNDECIDED` when its worker has not beaten since the run started.

    Judged on the server's clock (one ``hello``), never this worker's: the first run's
    worker may be another host whose clock disagrees with this one's.
    """
    threshold = runtime.current.heartbeat_threshold
    workers = workers_collection()
    now = server_now(workers.database)
    beats = suspect_silent(workers, threshold=threshold, now=now)
    loss = judge(state, beats, threshold=threshold, now=now, check_active=True)
    if loss is not None:
        return loss
    worker = beats.get(state.get("worker_instance") or "")
    started = aware(state.get("start_time"))
    if worker is None or (started is not None and worker.heartbeat_at <= started):
        return UNDECIDED
    if now - worker.heartbeat_at > timedelta(seconds=threshold):
        return UNDECIDED  # silent, but within its grace: ask again later
    return None
