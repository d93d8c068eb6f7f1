"""Proc subclasses for the unit tests: unique class and collection names, no worker needed."""

from __future__ import annotations

from mongoengine import Document, IntField, StringField

from procstatus import Proc, ProcessFailure, ProcessStatus, process


class UnitJob(Proc):
    """Process bodies that the runner tests call in this process (no Celery)."""

    meta = {"collection": "unit_jobs"}

    name = StringField()
    note = StringField()
    counter = IntField(default=0)

    @process
    def noop(self):
        """Does nothing."""

    @process(queue="unit-heavy")
    def takes(self, path, options=None):
        self.note = f"{path}:{sorted((options or {}).items())}"
        self.save()

    @process
    def steps_and_warnings(self, step):
        self.set_process_step(step)
        self.warning("careful", 42)

    @process
    def wait_for_children(self):
        return ProcessStatus.WAITING_FOR_RESULT

    @process
    def wait_for_children_as_str(self):
        return "WAITING_FOR_RESULT"

    @process
    def returns_other_string(self):
        return "SUCCESS"

    @process
    def fail_with(self, message):
        raise ValueError(message)

    @process
    def fail_on_purpose(self, *errors):
        raise ProcessFailure(*errors)

    def not_a_process(self):
        """Deliberately undecorated."""


class UnitHooks(Proc):
    """Hooks that explode, to check they turn a run into FAILURE."""

    meta = {"collection": "unit_hooks"}

    explode_in = StringField()

    @process
    def succeed(self):
        pass

    @process
    def wait(self):
        return ProcessStatus.WAITING_FOR_RESULT

    @process
    def fail(self):
        raise KeyError("boom")

    def on_success(self):
        if self.explode_in == "on_success":
            raise RuntimeError("on_success exploded")

    def on_waiting_for_result(self):
        if self.explode_in == "on_waiting_for_result":
            raise RuntimeError("on_waiting_for_result exploded")

    def on_fail(self):
        if self.explode_in == "on_fail":
            raise RuntimeError("on_fail exploded")


class UnitIndexed(Proc):
    meta = {"collection": "unit_indexed", "indexes": ["name", ("-rank", "name")]}

    name = StringField()
    rank = IntField()


class UnitAbstractProc(Proc):
    meta = {"abstract": True}

    @process
    def noop(self):
        pass


class UnitPlainDocument(Document):
    """A mongoengine document that is not a Proc, with a method that looks like a process."""

    meta = {"collection": "unit_plain"}

    name = StringField()

    @process
    def noop(self):
        pass
