"""The Proc classes of the chaos soak, and the MongoDB side channel that records what ran.

Three classes, each in its own collection of the soak's private database:

- ``ChaosTask``: a standalone process that sleeps (work, in slices, setting its step
  between slices so a cancel without ``terminate`` stops it), in four variants: plain,
  ``retry_on_worker_lost``, flaky (fails its first attempt, ``autoretry_for``) and one
  that fails on purpose.
- ``ChaosBatch``: a parent. ``spawn`` creates the children of wave 1 and calls them,
  then returns WAITING_FOR_RESULT; its ``join()`` either starts wave 2 (and waits
  again) or ends the batch. A *strict* batch fails its join when a child failed.
- ``ChaosItem``: a child (``@process(is_child=True)``), some of which fail on purpose.

The side channel is the ``chaos_log`` collection (MongoDB, not Redis, because the soak
restarts Redis): one ``body`` record each time a process body starts and, best effort,
one ``end`` record when it stops (a SIGKILLed body writes none), one ``wait``
record each time a parent is about to return WAITING_FOR_RESULT, and one ``join``
record each time ``join()`` starts — with the wave it joins and how many children it
saw still processing. The driver compares them with the documents' final state.

Spawning is idempotent (children are created only where missing and only READY ones
are called), so a documented second run of ``spawn`` — a redelivery with acks_late, a
``retry_on_worker_lost`` resend — neither duplicates children nor re-runs finished ones.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from mongoengine import BooleanField, FloatField, IntField, ListField, ObjectIdField
from mongoengine.connection import get_db

from procstatus import Proc, ProcessAlreadyRunning, ProcessFailure, ProcessStatus, process

LOG_COLLECTION = "chaos_log"
STEP_SECONDS = 0.2
"""Longest sleep between two ``set_process_step`` calls of a working body."""
DELIBERATE = "chaos: deliberate failure"
STRICT = "chaos: strict batch with failed children"


def record(kind: str, proc: Proc, **fields: Any) -> None:
    """One side-channel record; raises if MongoDB is unreachable (the body then fails)."""
    get_db()[LOG_COLLECTION].insert_one(
        {
            "kind": kind,
            "cls": type(proc).__name__,
            "doc": proc.pk,
            "task_id": proc.celery_task_id,
            "pid": os.getpid(),
            "at": datetime.now(timezone.utc),
            **fields,
        }
    )


@contextmanager
def body(proc: Proc, method: str) -> Iterator[None]:
    """Record that a body starts (if MongoDB is unreachable this raises and the body fails)
    and, best effort, that it ended, however it ends; a SIGKILLed body records no end."""
    record("body", proc, method=method)
    try:
        yield
    finally:
        try:
            record("end", proc, method=method)
        except Exception:
            pass  # MongoDB unreachable: the analysis then goes by the pid's fate


def do_work(proc: Proc, seconds: float) -> None:
    """Sleep ``seconds`` in slices (this is the process's work, not synchronisation)."""
    deadline = time.monotonic() + seconds
    slice_number = 0
    while (left := deadline - time.monotonic()) > 0:
        slice_number += 1
        proc.set_process_step(f"working, slice {slice_number}")
        time.sleep(min(STEP_SECONDS, left))


class FlakyError(Exception):
    """Raised by a flaky task's first attempt."""


class ChaosTask(Proc):
    meta = {"collection": "chaos_tasks"}

    seconds = FloatField(default=0.0)

    @process
    def work(self) -> None:
        with body(self, "work"):
            do_work(self, self.seconds)

    @process(retry_on_worker_lost=True)
    def work_idempotent(self) -> None:
        with body(self, "work_idempotent"):
            do_work(self, self.seconds)

    @process(autoretry_for=(FlakyError,), max_retries=2, retry_backoff=0.2)
    def work_flaky(self) -> None:
        with body(self, "work_flaky"):
            do_work(self, self.seconds)
            attempts = get_db()[LOG_COLLECTION].count_documents({"kind": "body", "doc": self.pk})
            if attempts == 1:
                raise FlakyError("first attempt fails on purpose")

    @process
    def fail_on_purpose(self) -> None:
        with body(self, "fail_on_purpose"):
            do_work(self, self.seconds)
            raise ProcessFailure(f"{DELIBERATE} of task {self.pk}")


class ChaosBatch(Proc):
    """A parent whose children come in one or two waves (``sizes[i]`` children in wave i+1)."""

    meta = {"collection": "chaos_batches"}

    sizes = ListField(IntField())
    seconds = ListField(ListField(FloatField()))
    """Per wave, per child: how long it works."""
    failing = ListField(ListField(BooleanField()))
    """Per wave, per child: whether it fails on purpose."""
    strict = BooleanField(default=False)
    wave = IntField(default=0)

    def _spawn_wave(self, wave: int) -> None:
        ChaosBatch.objects(pk=self.pk).update_one(set__wave=wave)
        self.set_process_step(f"spawning wave {wave}")
        present = set(ChaosItem.objects(batch=self.pk, wave=wave).distinct("number"))
        missing = [
            ChaosItem(
                batch=self.pk, wave=wave, number=n,
                seconds=self.seconds[wave - 1][n], fails=self.failing[wave - 1][n],
            )
            for n in range(self.sizes[wave - 1])
            if n not in present
        ]
        if missing:
            ChaosItem.objects.insert(missing)
        for item in ChaosItem.objects(
            batch=self.pk, wave=wave, process_status=ProcessStatus.READY
        ).order_by("number"):
            try:
                item.work()
            except ProcessAlreadyRunning:
                pass  # called by an earlier run of this spawn
        record("wait", self, wave=wave)
        self.set_process_step(f"waiting for wave {wave}")

    @process
    def spawn(self) -> ProcessStatus:
        with body(self, "spawn"):
            self._spawn_wave(1)
        return ProcessStatus.WAITING_FOR_RESULT

    @process(retry_on_worker_lost=True)
    def spawn_idempotent(self) -> ProcessStatus:
        with body(self, "spawn_idempotent"):
            self._spawn_wave(1)
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return ChaosItem.objects(batch=self.pk)

    def join(self) -> ProcessStatus | None:
        busy = self.children().processing().count()
        record("join", self, wave=self.wave, busy=busy)
        if self.wave < len(self.sizes):
            self._spawn_wave(self.wave + 1)
            return ProcessStatus.WAITING_FOR_RESULT
        failed = self.children().failed().count()
        if self.strict and failed:
            raise ProcessFailure(f"{STRICT}: {failed}")
        return None


class ChaosItem(Proc):
    meta = {"collection": "chaos_items", "indexes": ["batch"]}

    batch = ObjectIdField(required=True)
    wave = IntField(default=1)
    number = IntField()
    seconds = FloatField(default=0.0)
    fails = BooleanField(default=False)

    @process(is_child=True)
    def work(self) -> None:
        with body(self, "work"):
            do_work(self, self.seconds)
            if self.fails:
                raise ProcessFailure(f"{DELIBERATE} of item {self.wave}.{self.number}")

    def parent(self) -> ChaosBatch:
        return ChaosBatch.objects.get(pk=self.batch)


CLASSES: tuple[type[Proc], ...] = (ChaosTask, ChaosBatch, ChaosItem)
