"""Every write procstatus sends asks a majority to acknowledge it, and every read it decides
from goes to the primary, whatever the connection's URI says.

The URI here says the opposite: ``w=1`` and ``readPreference=secondaryPreferred``, against
the session's replica-set server. A pymongo ``CommandListener`` on that client records
each command procstatus sends while the test drives one document through a whole life —
a dispatch, a claim, a step, a warning and progress, a call queued behind the run, the
end (which starts the queued call), a cancel, a sweep that ends a run nobody started and
sends a waiting parent's join, the join itself, and an operator's reset — and checks
each: a write (``update``, ``findAndModify``, ``insert``, ``delete``) carries
``writeConcern: {w: "majority"}``; a read carries no ``$readPreference`` but primary
(pymongo sends ``{mode: "secondaryPreferred"}`` on reads a replica set gets with that
preference, and nothing for primary).

Limits: one server, so nothing is actually replicated or read from a secondary; what is
checked is what procstatus asks of a replica set, command by command.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mongoengine
import pytest
from mongoengine import StringField
from pymongo import monitoring

import procstatus.runtime
from procstatus import Proc, ProcessStatus, process, runner, runtime, sweeper, transitions
from procstatus.messages import JoinCall, resolve
from procstatus.ops import actions
from procstatus.ops.sources import Source
from tests.unit.fakes import FakePublisher

ALIAS = "durability-test"
WRITES = frozenset({"insert", "update", "delete", "findAndModify"})
READS = frozenset({"find", "aggregate", "count", "distinct", "getMore"})


class Recorder(monitoring.CommandListener):
    """Every read and write command the client sends while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name in WRITES | READS:
            self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class DurableJob(Proc):
    meta = {"collection": "durable_jobs", "db_alias": ALIAS}

    name = StringField()

    @process
    def work(self) -> None:
        self.set_process_step("working")
        self.warning("careful")
        self.set_progress(1, 2)

    @process(is_blocking=False)
    def later(self) -> None:
        """Queued while another run is under way."""

    @process(queue="nowhere")
    def never_taken(self) -> None:
        """Sent to a queue no worker reads."""


class DurableParent(Proc):
    meta = {"collection": "durable_parents", "db_alias": ALIAS}

    @process
    def wait(self) -> ProcessStatus:
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):  # type: ignore[no-untyped-def]
        return DurableJob.objects(name=f"child of {self.pk}")


@pytest.fixture
def recorder(replica_set_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    found = Recorder()
    separator = "&" if "?" in replica_set_uri else "/?"
    database = f"pstest_durability_{id(found):x}"
    mongoengine.connect(
        db=database, alias=ALIAS, event_listeners=[found],
        host=f"{replica_set_uri}{separator}readPreference=secondaryPreferred&w=1",
    )
    monkeypatch.setattr(runtime.current, "alias", ALIAS)  # procstatus_workers there too
    monkeypatch.setattr(procstatus.runtime.current, "join_task", FakePublisher())
    try:
        yield found
    finally:
        mongoengine.get_connection(ALIAS).drop_database(database)
        mongoengine.disconnect(ALIAS)
        DurableJob._collection = None
        DurableParent._collection = None


def test_the_uri_asks_for_less_and_pymongo_says_so(recorder: Recorder) -> None:
    """The check can fail: with this URI, a read of the user's own says secondaryPreferred
    and a write of the user's own says w: 1."""
    recorder.on = True
    job = DurableJob.create(name="user's own")
    DurableJob.objects(pk=job.pk).first()
    [(_, insert), (_, find)] = recorder.commands
    assert insert["writeConcern"] == {"w": 1}
    assert find["$readPreference"] == {"mode": "secondaryPreferred"}


def test_every_procstatus_write_is_majority_and_every_read_primary(
    recorder: Recorder, publisher: FakePublisher
) -> None:
    job = DurableJob.create(name="lives")
    other = DurableJob.create(name="cancelled")
    unstarted = DurableJob.create(name="never started")
    parent = DurableParent.create()
    reset_me = DurableJob.create(name="reset")
    recorder.on = True

    job.work()  # dispatch: schedule
    job.later()  # queued behind the run: enqueue_call
    worker = transitions.WorkerRef(hostname="unit@host", instance="instance-1", pid=1)
    # claim, step, warning, progress, end; then the queued call: schedule_next
    ended = runner.perform(resolve(["DurableJob", str(job.pk), "work", [], {}], {}),
                           publisher.calls[-1]["task_id"], worker)
    assert ended == runner.Ended(ProcessStatus.SUCCESS)
    assert publisher.calls[-1]["args"][2] == "later"

    other.work()
    assert other.cancel()  # an ending from outside

    unstarted.never_taken()
    parent.wait()
    waiting = runner.perform(resolve(["DurableParent", str(parent.pk), "wait", [], {}], {}),
                             publisher.calls[-1]["task_id"], worker)
    assert waiting == runner.Ended(ProcessStatus.WAITING_FOR_RESULT)
    join_task = procstatus.runtime.current.join_task
    joins_before = len(join_task.calls)
    report = sweeper.sweep(classes=[DurableJob, DurableParent], pending_timeout=0.0,
                           threshold=0.0)
    assert f"DurableJob({unstarted.pk})" in report.never_started
    assert len(join_task.calls) > joins_before
    assert runner.perform_join(JoinCall(DurableParent, parent.pk), "join-task",
                               worker) is ProcessStatus.SUCCESS

    reset_me.work()
    source = Source("DurableJob", DurableJob._get_collection(), DurableJob)
    assert actions.reset_document(source, reset_me.pk, force=True).ok
    recorder.on = False

    names = {name for name, _ in recorder.commands}
    assert {"update", "findAndModify", "find"} <= names
    weak_writes = [
        (name, command.get(name), command.get("writeConcern"))
        for name, command in recorder.commands
        if name in WRITES and (command.get("writeConcern") or {}).get("w") != "majority"
    ]
    secondary_reads = [
        (name, command.get(name), command.get("filter"), command["$readPreference"])
        for name, command in recorder.commands
        if name in READS and command.get("$readPreference", {"mode": "primary"})["mode"]
        != "primary"
    ]
    assert weak_writes == []
    assert secondary_reads == []
    stored = transitions.read_state(DurableJob._state_target(reset_me.pk))
    assert stored is not None and stored["process_status"] == ProcessStatus.READY.value
