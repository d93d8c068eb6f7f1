"""A class whose ``meta`` declares a shard key: every procstatus write filters by it.

Checked by command monitoring: each ``update`` and ``findAndModify`` procstatus sends to the
sharded class's collection names the document's shard-key values beside its ``_id``, as
mongoengine's own ``save()`` does, so that a sharded cluster routes it to one shard. (This
server is not sharded: mongos itself cannot be shown here; the filters are what it needs.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mongoengine
import pytest
from mongoengine import StringField
from pymongo import monitoring

from procstatus import Proc, ProcessStatus, process, runtime, sweeper, transitions
from procstatus.document import shard_fields
from procstatus.messages import resolve
from procstatus.ops import actions
from procstatus.ops.sources import Source
from tests.unit import compat
from tests.unit.test_runner import drive

ALIAS = "sharding-test"
WRITES = {"update", "findAndModify"}


class Recorder(monitoring.CommandListener):
    """The write commands a client sends to one collection."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.reads: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        if event.command_name == "update" and command["update"] == "sharded_jobs":
            self.writes.extend(("update", u["q"]) for u in command["updates"])
        elif event.command_name == "findAndModify" and command["findAndModify"] == "sharded_jobs":
            self.writes.append(("findAndModify", command["query"]))
        elif event.command_name == "find" and command["find"] == "sharded_jobs":
            self.reads.append(command["filter"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class ShardedJob(Proc):
    meta = {"collection": "sharded_jobs", "db_alias": ALIAS, "shard_key": ("tenant", "region")}

    tenant = StringField(required=True)
    region = StringField(db_field="rg")

    @process
    def work(self) -> None:
        self.set_process_step("working")
        self.warning("careful")
        self.set_progress(1, 2)

    @process(is_blocking=False)
    def later(self) -> None:
        """A non-blocking process: queued while another runs."""


@pytest.fixture
def recorder(mongodb_uri: str, fresh_db_name: str) -> Iterator[Recorder]:
    found = Recorder()
    mongoengine.connect(db=fresh_db_name, host=mongodb_uri, alias=ALIAS, event_listeners=[found])
    try:
        yield found
    finally:
        mongoengine.disconnect(ALIAS)
        ShardedJob._collection = None


def test_shard_fields_are_database_names():
    assert shard_fields(ShardedJob) == ("tenant", "rg")


def test_a_target_reads_missing_shard_values_once_from_the_document(recorder):
    job = ShardedJob.create(tenant="t1", region="eu")
    target = ShardedJob._state_target(job.pk)
    assert dict(target.key) == {"_id": job.pk, "tenant": "t1", "rg": "eu"}
    assert recorder.reads == [{"_id": job.pk}]
    assert dict(job._target().key) == dict(target.key)  # from the copy: no read
    assert len(recorder.reads) == 1


def test_the_whole_lifecycle_filters_by_the_shard_key(recorder, publisher, monkeypatch):
    monkeypatch.setattr(runtime.current, "alias", ALIAS)
    job = ShardedJob.create(tenant="t1", region="eu")
    other = ShardedJob.create(tenant="t2", region="us")
    recorder.writes.clear()

    job.work()  # schedule
    task_id = publisher.calls[-1]["task_id"]
    job.later()  # queued behind the PENDING run
    call = resolve(["ShardedJob", str(job.pk), "work", [], {}], {})
    run = compat.claim(call, task_id, "unit@host")
    assert run is not None
    assert drive(run) is ProcessStatus.SUCCESS  # step, warning, progress, end
    # the end started the queued call: schedule_next

    other.work()
    assert other.cancel()  # an ending from outside
    actions.reset_document(Source("ShardedJob", ShardedJob._get_collection(), ShardedJob),
                           other.pk, force=True)
    sweeper.sweep(classes=[ShardedJob], pending_timeout=None)  # starts the stranded call

    commands = {command for command, _ in recorder.writes}
    assert commands == WRITES
    for command, query in recorder.writes:
        owner = job if query.get("_id") == job.pk else other
        assert query.get("tenant") == owner.tenant and query.get("rg") == owner.region, (
            f"{command} without the shard key: {query}"
        )
    stored = transitions.read_state(ShardedJob._state_target(job.pk))
    assert stored is not None and stored["current_process"] == "later"
    assert stored["process_status"] == ProcessStatus.PENDING.value
