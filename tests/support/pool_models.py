"""Parents and children run by one worker process with several runs in it (threads, gevent).

Under ``celery worker -P threads`` or ``-P gevent`` the runs of a worker share one OS
process. These classes let a test make two of them overlap on purpose:

- ``*PoolWaiter`` (parent A): ``wait`` starts no child and returns WAITING_FOR_RESULT, so
  its join task is sent at once; its ``join()`` starts no child either and asks to wait
  again, so A must end FAILURE with :data:`procstatus.join.NOTHING_TO_WAIT_FOR` (its
  ``on_waiting_for_result`` hook counts each WAITING_FOR_RESULT written for it). On its
  first run, ``join()`` reads how many children the spawners have published, records
  that it began, and blocks until a spawner has published one more: a child published
  by another run of the same process while A's ``join()`` runs.
- ``*PoolSpawner`` (parents B): ``spawn`` starts ``per_round`` children and waits; each
  ``join()`` starts the next round's children and waits again, until ``rounds`` waits
  have been joined, then ends SUCCESS. After each child's call returns, the spawner adds
  one to the pool's ``published`` counter.
- ``*PoolChild``: the spawners' children (``@process(is_child=True)``).

Each pool has its own classes, collections and queue, so the test of one pool runs all
of them on the one worker it starts. The side channel is the ``pool_signals``
collection (MongoDB, atomic ``$inc``): the ``published`` counter of each pool, one
counter of ``join()`` runs per parent and wait, and A's count of waits written.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from mongoengine import IntField, ObjectIdField
from mongoengine.connection import get_db
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from procstatus import Proc, ProcessStatus, process

SIGNALS = "pool_signals"
BASE_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests")
THREADS_QUEUE = f"{BASE_QUEUE}-pool-threads"
GEVENT_QUEUE = f"{BASE_QUEUE}-pool-gevent"

WAITER_JOIN_TIMEOUT = 60.0
"""How long the waiter's first ``join()`` waits for a spawner to publish a child."""


def published_key(pool: str) -> str:
    return f"published:{pool}"


def joins_key(pk: Any, wait: int) -> str:
    return f"joins:{pk}:{wait}"


def began_key(pk: Any) -> str:
    return f"join-began:{pk}"


def waits_key(pk: Any) -> str:
    return f"waits:{pk}"


def _signals() -> Any:
    return get_db()[SIGNALS]


def bump(key: str) -> int:
    """Add one to the counter ``key``; returns its new value."""
    # Create the counter first, apart from the increment: two runs of one process bumping
    # a new key at once raced in a single upsert (the server returned no document).
    try:
        _signals().update_one({"_id": key}, {"$setOnInsert": {"n": 0}}, upsert=True)
    except DuplicateKeyError:
        pass  # the other run created it
    document = _signals().find_one_and_update(
        {"_id": key}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
    )
    return int(document["n"])


def count(key: str) -> int:
    document = _signals().find_one({"_id": key})
    return int(document["n"]) if document else 0


# --- the shared bodies ------------------------------------------------------------------


class PoolChild(Proc):
    meta = {"abstract": True}

    parent_id = ObjectIdField(required=True)
    round = IntField()

    parent_class: ClassVar[type[Proc]]

    def parent(self) -> Proc:
        return self.parent_class.objects.get(pk=self.parent_id)


class PoolSpawner(Proc):
    """Parent B: spawns ``per_round`` children per wait, ``rounds`` waits in all."""

    meta = {"abstract": True}

    per_round = IntField(default=3)
    rounds = IntField(default=3)
    wait_number = IntField(default=0)

    pool: ClassVar[str]
    child_class: ClassVar[type[PoolChild]]

    def children(self):  # type: ignore[no-untyped-def]
        return self.child_class.objects(parent_id=self.pk)

    def _spawn_round(self, round_number: int) -> ProcessStatus:
        self.set_process_step(f"spawning round {round_number}")
        for _ in range(self.per_round):
            child = self.child_class.create(parent_id=self.pk, round=round_number)
            child.work()
            bump(published_key(self.pool))
        return ProcessStatus.WAITING_FOR_RESULT

    def join(self) -> ProcessStatus | None:
        wait = self.wait_number
        bump(joins_key(self.pk, wait))
        type(self).objects(pk=self.pk).update_one(set__wait_number=wait + 1)
        if wait + 1 < self.rounds:
            return self._spawn_round(wait + 1)
        return None


class PoolWaiter(Proc):
    """Parent A: asks to wait again without starting a child; must fail NOTHING_TO_WAIT_FOR."""

    meta = {"abstract": True}

    pool: ClassVar[str]
    child_class: ClassVar[type[PoolChild]]

    def children(self):  # type: ignore[no-untyped-def]
        return self.child_class.objects(parent_id=self.pk)  # never any

    def join(self) -> ProcessStatus:
        published = count(published_key(self.pool))  # read before the test may go on
        if bump(joins_key(self.pk, 0)) == 1:
            bump(began_key(self.pk))
            deadline = time.monotonic() + WAITER_JOIN_TIMEOUT
            while count(published_key(self.pool)) <= published:
                if time.monotonic() > deadline:
                    raise TimeoutError("no spawner published a child while join() ran")
                time.sleep(0.02)
        return ProcessStatus.WAITING_FOR_RESULT

    def on_waiting_for_result(self) -> None:
        """Counts the WAITING_FOR_RESULT writes: ``wait``'s, and any after a join (wrong)."""
        bump(waits_key(self.pk))


# --- -P threads -------------------------------------------------------------------------


class ThreadsPoolChild(PoolChild):
    meta = {"collection": "pool_threads_children", "indexes": [("parent_id", "process_status")]}

    @process(is_child=True, queue=THREADS_QUEUE)
    def work(self) -> None:
        self.set_process_step("working")


class ThreadsPoolSpawner(PoolSpawner):
    meta = {"collection": "pool_threads_spawners"}
    pool = "threads"
    child_class = ThreadsPoolChild

    @process(queue=THREADS_QUEUE)
    def spawn(self) -> ProcessStatus:
        return self._spawn_round(0)


class ThreadsPoolWaiter(PoolWaiter):
    meta = {"collection": "pool_threads_waiters"}
    pool = "threads"
    child_class = ThreadsPoolChild

    @process(queue=THREADS_QUEUE)
    def wait(self) -> ProcessStatus:
        return ProcessStatus.WAITING_FOR_RESULT


ThreadsPoolChild.parent_class = ThreadsPoolSpawner


# --- -P gevent --------------------------------------------------------------------------


class GeventPoolChild(PoolChild):
    meta = {"collection": "pool_gevent_children", "indexes": [("parent_id", "process_status")]}

    @process(is_child=True, queue=GEVENT_QUEUE)
    def work(self) -> None:
        self.set_process_step("working")


class GeventPoolSpawner(PoolSpawner):
    meta = {"collection": "pool_gevent_spawners"}
    pool = "gevent"
    child_class = GeventPoolChild

    @process(queue=GEVENT_QUEUE)
    def spawn(self) -> ProcessStatus:
        return self._spawn_round(0)


class GeventPoolWaiter(PoolWaiter):
    meta = {"collection": "pool_gevent_waiters"}
    pool = "gevent"
    child_class = GeventPoolChild

    @process(queue=GEVENT_QUEUE)
    def wait(self) -> ProcessStatus:
        return ProcessStatus.WAITING_FOR_RESULT


GeventPoolChild.parent_class = GeventPoolSpawner

POOL_CLASSES: dict[str, tuple[str, type[PoolWaiter], type[PoolSpawner], type[PoolChild]]] = {
    "threads": (THREADS_QUEUE, ThreadsPoolWaiter, ThreadsPoolSpawner, ThreadsPoolChild),
    "gevent": (GEVENT_QUEUE, GeventPoolWaiter, GeventPoolSpawner, GeventPoolChild),
}
