"""Proc subclasses used by the tests; each method is one scenario the worker can be asked to run."""

from __future__ import annotations

import os
import time

import redis
from mongoengine import IntField, ObjectIdField, StringField

from procstatus import Proc, ProcessFailure, ProcessStatus, process


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))


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
