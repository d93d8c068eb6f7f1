"""Proc classes of the failover tests (``tests/test_failover.py``), on a replica set.

They live on the mongoengine alias ``failover``: the test process connects it to the
session's replica-set server (its default alias stays on the standalone one the other
tests use), and the failover workers (:mod:`tests.support.failover_app`) connect it in
every pool process with an ``appName`` of their own, so that a ``failCommand`` fail point
can aim at the pool processes' commands, or at the caller's, and at nothing else.

Each body records its run in Redis (``runs_key``) and each ``join()`` counts itself, so a
test can tell a body that ran twice or a parent joined twice.
"""

from __future__ import annotations

import os

from mongoengine import StringField

from procstatus import Proc, ProcessStatus, process
from tests.support.models import gate_key, redis_client, runs_key

ALIAS = "failover"
FAILOVER_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-failover"
NOWHERE_QUEUE = FAILOVER_QUEUE + "-nowhere"
"""A queue no worker reads: a run sent there stays PENDING until the sweeper ends it."""

STEP = "working"
WARNING = "careful"
PROGRESS = (1, 2)


def joins_key(pk: object) -> str:
    return f"procstatus-test:joins:{pk}"


def hold(proc: Proc) -> None:
    """Block until the test opens the gate (or 120 s pass): the test acts meanwhile."""
    if redis_client().blpop([gate_key(proc.pk)], timeout=120) is None:
        raise TimeoutError("gate never opened")


class FailoverJob(Proc):
    meta = {"collection": "failover_jobs", "db_alias": ALIAS,
            "indexes": [("name", "process_status")]}

    name = StringField()

    @process(queue=FAILOVER_QUEUE)
    def work(self, writes: list[str]) -> None:
        """Records its run, then makes the in-run writes named in ``writes``, in order:
        ``hold`` (wait for the gate), ``step``, ``warning``, ``progress``."""
        redis_client().rpush(runs_key(self.pk), f"work:{os.getpid()}")
        for write in writes:
            if write == "hold":
                hold(self)
            elif write == "step":
                self.set_process_step(STEP)
            elif write == "warning":
                self.warning(WARNING)
            elif write == "progress":
                self.set_progress(*PROGRESS)
            else:
                raise ValueError(f"unknown write {write!r}")

class FailoverParent(Proc):
    """Waits on no child, so its join task is sent as soon as it waits."""

    meta = {"collection": "failover_parents", "db_alias": ALIAS}

    hold_join = StringField(default="")

    @process(queue=FAILOVER_QUEUE)
    def wait(self) -> ProcessStatus:
        redis_client().rpush(runs_key(self.pk), f"wait:{os.getpid()}")
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return FailoverJob.objects(name=f"child of {self.pk}")

    def join(self) -> None:
        redis_client().incr(joins_key(self.pk))
        if self.hold_join:
            hold(self)


class FailoverUnstarted(Proc):
    """A run sent to a queue no worker reads: the sweeper's ``pending_timeout`` ends it."""

    meta = {"collection": "failover_unstarted", "db_alias": ALIAS}

    @process(queue=NOWHERE_QUEUE)
    def never_taken(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"never_taken:{os.getpid()}")
