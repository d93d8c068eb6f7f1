"""Proc subclasses used by the tests; each method is one scenario the worker can be asked to run."""

from __future__ import annotations

import os
import signal
import time

import redis
from mongoengine import IntField, ObjectIdField, StringField

from devtools import services
from procstatus import Proc, ProcessFailure, ProcessStatus, process


def redis_client() -> redis.Redis:
    """The Redis that holds the tests' gates and run records, whatever the broker is."""
    # redis-py 8 times a socket read out after 5 s by default; gates block for longer.
    return redis.Redis.from_url(services.gate_redis_url(), socket_timeout=150)


def runs_key(pk: object) -> str:
    """Redis list that receives one entry per execution of a body for document ``pk``."""
    return f"procstatus-test:runs:{pk}"


def gate_key(pk: object) -> str:
    return f"procstatus-test:gate:{pk}"


class Job(Proc):
    meta = {"collection": "jobs", "indexes": ["name"]}

    name = StringField()
    note = StringField()

    def _record_run(self, label: str) -> None:
        redis_client().rpush(runs_key(self.pk), f"{label}:{os.getpid()}")

    @process
    def noop(self) -> None:
        self._record_run("noop")

    @process
    def gated(self, steps: list[str]) -> None:
        """Sets each step, then waits for the test to open the gate once per step."""
        self._record_run("gated")
        client = redis_client()
        for step in steps:
            self.set_process_step(step)
            if client.blpop([gate_key(self.pk)], timeout=60) is None:
                raise TimeoutError(f"gate for step {step!r} never opened")

    @process
    def fail_with(self, message: str) -> None:
        self._record_run("fail_with")
        raise ValueError(message)

    @process
    def fail_on_purpose(self, *errors: str) -> None:
        raise ProcessFailure(*errors)

    @process
    def warn_then_succeed(self, note: str) -> None:
        self.warning("first warning", "second warning")
        self.set_process_step("writing note")
        self.note = note
        self.save()

    @process
    def delete_self(self) -> None:
        self._record_run("delete_self")
        self.delete()

    @process
    def takes(self, path: str, options: dict | None = None) -> None:
        self._record_run(f"takes:{path}")

    def not_a_process(self) -> None:
        """Deliberately undecorated: a forged message naming it must not run it."""
        self._record_run("not_a_process")


class FailingHooks(Proc):
    meta = {"collection": "failing_hooks"}

    @process
    def succeed(self) -> None:
        pass

    def on_success(self) -> None:
        raise RuntimeError("on_success exploded")

    @process
    def fail(self) -> None:
        raise KeyError("boom")

    def on_fail(self) -> None:
        raise RuntimeError("on_fail exploded")


class BudgetJob(Proc):
    """Lives alone in its collection so the command-count test can filter on it."""

    meta = {"collection": "budget_jobs"}

    @process
    def noop(self) -> None:
        pass


class Batch(Proc):
    """A parent: spawns Items, waits for them, joins once."""

    meta = {"collection": "batches"}

    size = IntField(default=0)
    joined_items = IntField(default=0)

    @process
    def spawn(self, count: int, wait_until_children_done: bool = False) -> ProcessStatus:
        self.set_process_step(f"spawning {count} items")
        items = [Item(batch=self.pk, number=i) for i in range(count)]
        Item.objects.insert(items)
        for item in Item.objects(batch=self.pk):
            item.work()
        if wait_until_children_done:
            deadline = time.monotonic() + 120
            while self.children().processing().count():
                if time.monotonic() > deadline:
                    raise TimeoutError("children did not finish")
                time.sleep(0.05)
        self.set_process_step("waiting for items")
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return Item.objects(batch=self.pk)

    def join(self) -> None:
        redis_client().incr(f"procstatus-test:joins:{self.pk}")
        done = self.children().with_status(ProcessStatus.SUCCESS).count()
        Batch.objects(pk=self.pk).update_one(set__joined_items=done)


class Item(Proc):
    meta = {"collection": "items", "indexes": ["batch"]}

    batch = ObjectIdField(required=True)
    number = IntField()

    @process(is_child=True)
    def work(self) -> None:
        if self.number is not None and self.number % 7 == 3:
            raise ValueError(f"item {self.number} is bad")

    def parent(self) -> Batch:
        return Batch.objects.get(pk=self.batch)


# --- fault injection ---------------------------------------------------------------

FAULT_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-faults"
SPARE_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-spare"
IDLE_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-idle"


class FlakyError(Exception):
    """Raised by processes that succeed only after some attempts."""


def _hold(proc: Proc, label: str) -> None:
    """Record one run, then block until the test opens the gate (or 120 s pass)."""
    client = redis_client()
    client.rpush(runs_key(proc.pk), f"{label}:{os.getpid()}")
    if client.blpop([gate_key(proc.pk)], timeout=120) is None:
        raise TimeoutError("gate never opened")


class FaultJob(Proc):
    """Processes that a fault test kills, times out, cancels or retries."""

    meta = {"collection": "fault_jobs"}

    name = StringField()

    @process(queue=FAULT_QUEUE)
    def hang(self) -> None:
        _hold(self, "hang")

    @process(queue=SPARE_QUEUE)
    def hang_on_spare(self) -> None:
        _hold(self, "spare")

    @process(queue=FAULT_QUEUE, retry_on_worker_lost=True)
    def hang_idempotent(self) -> None:
        _hold(self, "idempotent")

    @process(queue=FAULT_QUEUE)
    def hang_first_time(self) -> None:
        """Blocks on its first run only; a second run (after a redelivery) returns."""
        client = redis_client()
        if client.rpush(runs_key(self.pk), f"first-time:{os.getpid()}") == 1:
            client.blpop([gate_key(self.pk)], timeout=120)

    @process(queue=FAULT_QUEUE, soft_time_limit=1)
    def overrun_soft(self) -> None:
        time.sleep(30)

    @process(queue=FAULT_QUEUE, time_limit=1)
    def overrun_hard(self) -> None:
        time.sleep(30)

    @process(queue=IDLE_QUEUE)
    def queued_nowhere(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"queued:{os.getpid()}")

    @process(queue=FAULT_QUEUE, autoretry_for=(FlakyError,), max_retries=2, retry_backoff=0.2)
    def always_flaky(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"flaky:{os.getpid()}")
        raise FlakyError("still flaky")

    @process(queue=FAULT_QUEUE, autoretry_for=(FlakyError,), max_retries=3, retry_backoff=1)
    def flaky_twice(self) -> None:
        if redis_client().rpush(runs_key(self.pk), f"flaky:{os.getpid()}") <= 2:
            raise FlakyError("not yet")


LOSS_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-losses"
"""The self-killing processes' own queue: a message that loops (as it does without the
worker-loss cap) is never taken by another test's worker."""
RESENT_LOSS_CAP = 2
"""``SelfKillingJob.crash_resent``'s own ``max_worker_losses``."""


def _die(proc: Proc, label: str) -> None:
    """Record one run, then kill this pool process, as the OOM killer or a segfault would."""
    redis_client().rpush(runs_key(proc.pk), f"{label}:{os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


class SelfKillingJob(Proc):
    """Processes that kill their own pool process on every run: without a cap on worker
    losses, a process tried again after a lost worker is tried again forever."""

    meta = {"collection": "self_killing_jobs"}

    @process(queue=LOSS_QUEUE, retry_on_worker_lost=True, max_worker_losses=RESENT_LOSS_CAP)
    def crash_resent(self) -> None:
        _die(self, "resent")

    @process(queue=LOSS_QUEUE)
    def crash_redelivered(self) -> None:
        """Under acks_late + reject_on_worker_lost: the broker delivers it again."""
        _die(self, "redelivered")

    @process(queue=LOSS_QUEUE)
    def wait(self) -> ProcessStatus:
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return SlowChild.objects(parent_id=self.pk)  # none: the join task is sent at once

    def join(self) -> None:
        _die(self, "join")


class OutageJob(Proc):
    """Lives on the second MongoDB server that the outage test stops and restarts."""

    meta = {"collection": "outage_jobs", "db_alias": "outage"}

    @process(queue=IDLE_QUEUE + "-outage")
    def noop(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"outage:{os.getpid()}")


# --- how runs end: scenarios for tests/test_endings.py ---------------------------------


def _record_join(parent: Proc) -> None:
    client = redis_client()
    client.incr(f"procstatus-test:joins:{parent.pk}")
    client.rpush(runs_key(parent.pk), f"join:{os.getpid()}")


class SlowParent(Proc):
    """Spawns children that hang on the fault queue until their gate opens."""

    meta = {"collection": "slow_parents"}

    @process
    def spawn(self, count: int) -> ProcessStatus:
        SlowChild.objects.insert([SlowChild(parent_id=self.pk, number=i) for i in range(count)])
        for child in SlowChild.objects(parent_id=self.pk):
            child.hang()
        return ProcessStatus.WAITING_FOR_RESULT

    @process
    def wait_on_idle_child(self) -> ProcessStatus:
        child = SlowChild.create(parent_id=self.pk, number=0)
        child.queued_nowhere()
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return SlowChild.objects(parent_id=self.pk)

    def join(self) -> None:
        _record_join(self)


class SlowChild(Proc):
    meta = {"collection": "slow_children", "indexes": [("parent_id", "process_status")]}

    parent_id = ObjectIdField(required=True)
    number = IntField()

    @process(is_child=True, queue=FAULT_QUEUE)
    def hang(self) -> None:
        _hold(self, "child")

    @process(is_child=True, queue=IDLE_QUEUE)
    def queued_nowhere(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"queued:{os.getpid()}")

    def parent(self) -> SlowParent:
        return SlowParent.objects.get(pk=self.parent_id)


class WaitsForNothing(Proc):
    """A parent whose join() asks to wait again without starting any child."""

    meta = {"collection": "waits_for_nothing"}

    @process
    def wait(self) -> ProcessStatus:
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return Job.objects(name=f"child of {self.pk}")

    def join(self) -> ProcessStatus:
        _record_join(self)
        return ProcessStatus.WAITING_FOR_RESULT


class KeyedParent(Proc):
    """Children with a primary key of their own (a string), as in NOMAD's child procs."""

    meta = {"collection": "keyed_parents"}

    @process
    def spawn(self, count: int) -> ProcessStatus:
        for i in range(count):
            KeyedChild.create(child_id=f"{self.pk}-{i}", parent_id=self.pk).work()
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return KeyedChild.objects(parent_id=self.pk)

    def join(self) -> None:
        _record_join(self)


class KeyedChild(Proc):
    meta = {"collection": "keyed_children", "indexes": ["parent_id"]}

    child_id = StringField(primary_key=True)
    parent_id = ObjectIdField(required=True)

    @process(is_child=True)
    def work(self) -> None:
        self.set_process_step("working")

    def parent(self) -> KeyedParent:
        return KeyedParent.objects.get(pk=self.parent_id)


class BlockingJoinParent(Proc):
    """A parent whose join() blocks on a gate: it shows where join() runs."""

    meta = {"collection": "blocking_join_parents"}

    def children(self):  # type: ignore[no-untyped-def]
        return Job.objects(name=f"child of {self.pk}")

    @process
    def wait(self) -> ProcessStatus:
        return ProcessStatus.WAITING_FOR_RESULT

    def join(self) -> None:
        _record_join(self)
        if redis_client().blpop([gate_key(self.pk)], timeout=120) is None:
            raise TimeoutError("gate never opened")


class RejoinedParent(Proc):
    """Waits on no child, so its join task is sent at once; join() blocks on its first run."""

    meta = {"collection": "rejoined_parents"}

    def children(self):  # type: ignore[no-untyped-def]
        return SlowChild.objects(parent_id=self.pk)

    @process(queue=FAULT_QUEUE)
    def wait(self) -> ProcessStatus:
        return ProcessStatus.WAITING_FOR_RESULT

    def join(self) -> None:
        client = redis_client()
        if client.rpush(runs_key(self.pk), f"join:{os.getpid()}") == 1:
            client.blpop([gate_key(self.pk)], timeout=120)


class QuotaExceeded(Exception):
    """A user exception whose constructor takes other arguments than its message."""

    def __init__(self, used: int, limit: int):
        super().__init__(f"used {used} of {limit}")
        self.used = used
        self.limit = limit


class Mistakes(Proc):
    """Processes that fail with exceptions Celery would replace by stand-ins."""

    meta = {"collection": "mistakes"}

    @process
    def call_myself(self) -> None:
        self.call_myself()  # the document is RUNNING: ProcessAlreadyRunning

    @process
    def exceed_quota(self) -> None:
        raise QuotaExceeded(5, 3)


class BrokenEndJob(Proc):
    """Its worker fails the final write (``complete``) with an injected OperationFailure."""

    meta = {"collection": "broken_end_jobs"}

    @process(queue=FAULT_QUEUE)
    def noop(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"broken-end:{os.getpid()}")


class BrokenEveryEndJob(Proc):
    """Its worker can write no end at all (``complete`` and ``fail_run`` fail)."""

    meta = {"collection": "broken_every_end_jobs"}

    @process(queue=FAULT_QUEUE)
    def noop(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"broken-every-end:{os.getpid()}")


class BrokenStartJob(Proc):
    """Its worker's claim fails with an injected OperationFailure (not a connection error)."""

    meta = {"collection": "broken_start_jobs"}

    @process(queue=FAULT_QUEUE)
    def noop(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"broken-start:{os.getpid()}")


class UnreachableStartJob(Proc):
    """Its worker's claim keeps failing with a transient error (MongoDB unreachable)."""

    meta = {"collection": "unreachable_start_jobs"}

    @process(queue=FAULT_QUEUE)
    def noop(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"unreachable:{os.getpid()}")


class FlakyStartJob(Proc):
    """Its claim fails transiently twice, then its body fails retryably every time."""

    meta = {"collection": "flaky_start_jobs"}

    @process(queue=FAULT_QUEUE, autoretry_for=(FlakyError,), max_retries=2, retry_backoff=0.2)
    def always_flaky(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"flaky:{os.getpid()}")
        raise FlakyError("still flaky")


class UnconnectedJob(Proc):
    """Lives on a connection alias that the test workers never open."""

    meta = {"collection": "unconnected_jobs", "db_alias": "unconnected"}

    @process(queue=FAULT_QUEUE)
    def noop(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"unconnected:{os.getpid()}")


# --- the queue of calls ------------------------------------------------------------------


class QueueJob(Proc):
    """Non-blocking processes whose calls wait in the document's queue while it is busy."""

    meta = {"collection": "queue_jobs"}

    def _record(self, entry: str) -> None:
        redis_client().rpush(runs_key(self.pk), entry)

    @process(is_blocking=False)
    def append(self, value: str) -> None:
        self._record(value)
        if value == "hold" and redis_client().blpop([gate_key(self.pk)], timeout=120) is None:
            raise TimeoutError("gate never opened")

    @process(is_blocking=False)
    def fail_clearing(self, value: str) -> None:
        self._record(f"fail:{value}")
        raise ProcessFailure(f"{value} failed; the calls waiting are dropped")

    @process(is_blocking=False, clear_queue_on_failure=False)
    def fail_keeping(self, value: str) -> None:
        self._record(f"fail:{value}")
        raise ProcessFailure(f"{value} failed; the calls waiting still run")

    @process
    def blocking(self) -> None:
        self._record("blocking")


class RetryUnrecordedJob(Proc):
    """Fails retryably, and its worker cannot record the retry (back_to_pending fails)."""

    meta = {"collection": "retry_unrecorded_jobs"}

    @process(queue=FAULT_QUEUE, autoretry_for=(FlakyError,), max_retries=2, retry_backoff=0.2)
    def always_flaky(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"flaky:{os.getpid()}")
        raise FlakyError("still flaky")


# --- clock skew (tests/test_clock_skew.py) ---------------------------------------------

BEHIND_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-behind"
AHEAD_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-ahead"


def clock_key(pk: object) -> str:
    """Redis hash: the wall clock (``time.time()``) of each body run for ``pk``, by pid."""
    return f"procstatus-test:clock:{pk}"


class SkewJob(Proc):
    """Runs held on a worker whose clock is behind, or ahead, of the others'."""

    meta = {"collection": "skew_jobs"}

    name = StringField()

    def _hold_and_tell_the_time(self, label: str) -> None:
        redis_client().hset(clock_key(self.pk), str(os.getpid()), repr(time.time()))
        _hold(self, label)

    @process(queue=BEHIND_QUEUE)
    def hold_behind(self) -> None:
        self._hold_and_tell_the_time("behind")

    @process(queue=AHEAD_QUEUE)
    def hold_ahead(self) -> None:
        self._hold_and_tell_the_time("ahead")
