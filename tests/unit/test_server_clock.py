"""One clock, the server's: what procstatus writes and judges does not depend on this host's.

The local clock is patched far off (a day or an hour ahead or behind) in every procstatus
module — its ``utcnow`` and its ``datetime.now`` — and the times written must still be
the MongoDB server's, the verdicts the same as with true clocks. The reference is the
server's own ``hello.localTime``, read here directly. ``tests/test_clock_skew.py`` does
the same with real workers under libfaketime.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from devtools.services import wait_for
from procstatus import ProcessStatus, liveness, sweeper, transitions
from procstatus.transitions import WorkerRef
from tests.support.command_log import CommandRecorder
from tests.unit.models import UnitJob

pytestmark = pytest.mark.usefixtures("test_db", "publisher")

S = ProcessStatus
TOLERANCE = timedelta(seconds=60)
"""How close a stamp must be to the server's time (the patched clocks are hours off)."""
_real_datetime = datetime


def server_clock(database: Any) -> datetime:
    """The server's time, from its ``hello`` answer (not through procstatus)."""
    return database.command("hello")["localTime"].replace(tzinfo=timezone.utc)


def close_to_server(stamp: Any, database: Any) -> bool:
    if not isinstance(stamp, datetime):
        return False
    return abs(stamp.replace(tzinfo=timezone.utc) - server_clock(database)) < TOLERANCE


class LocalClock:
    """This host's clock as procstatus reads it, moved by :attr:`offset`."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self, tz: Any = None) -> datetime:
        return _real_datetime.now(tz) + self.offset


class _SkewedType(type):
    # A real datetime (as pymongo returns) still passes isinstance checks on the stand-in.
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, _real_datetime)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, _real_datetime)


@pytest.fixture
def local_clock(monkeypatch: pytest.MonkeyPatch) -> LocalClock:
    """Patches ``utcnow`` and ``datetime`` in every loaded procstatus module to ``clock``."""
    clock = LocalClock()

    class SkewedDatetime(_real_datetime, metaclass=_SkewedType):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return clock.now(tz)

        @classmethod
        def utcnow(cls) -> datetime:  # type: ignore[override]
            return clock.now(timezone.utc).replace(tzinfo=None)

    for name, module in list(sys.modules.items()):
        if name != "procstatus" and not name.startswith("procstatus."):
            continue
        if callable(getattr(module, "utcnow", None)):
            monkeypatch.setattr(module, "utcnow", lambda: clock.now(timezone.utc))
        if getattr(module, "datetime", None) is _real_datetime:
            monkeypatch.setattr(module, "datetime", SkewedDatetime)
    return clock


@pytest.fixture(params=[timedelta(days=1), -timedelta(days=1)], ids=["day-ahead", "day-behind"])
def far_off(request: pytest.FixtureRequest, local_clock: LocalClock) -> LocalClock:
    local_clock.offset = request.param
    return local_clock


@pytest.fixture
def recorded(mongodb_uri: str, fresh_db_name: str) -> Iterator[tuple[Any, CommandRecorder]]:
    """A collection on a client of its own whose commands are recorded (``hello`` aside)."""
    recorder = CommandRecorder()
    client: pymongo.MongoClient = pymongo.MongoClient(mongodb_uri, event_listeners=[recorder])
    try:
        yield client[fresh_db_name]["jobs"], recorder
    finally:
        client.close()


# --- the helpers ---------------------------------------------------------------------------


def test_server_time_is_one_currentdate_operator():
    from procstatus import clock

    assert clock.server_time("a", "b") == {"$currentDate": {"a": True, "b": True}}
    with pytest.raises(ValueError, match="at least one field"):
        clock.server_time()


def test_server_now_is_the_servers_time_not_this_hosts(coll, far_off):
    from procstatus import clock

    assert abs(clock.utcnow() - _real_datetime.now(timezone.utc)) > timedelta(hours=23)
    now = clock.server_now(coll.database)
    assert now.tzinfo is not None
    assert close_to_server(now, coll.database)


# --- writes --------------------------------------------------------------------------------


def test_every_status_write_stamps_the_servers_time_in_one_command(recorded, far_off):
    coll, recorder = recorded
    pk = ObjectId()
    coll.insert_one({"_id": pk, "process_status": "READY", "errors": [], "warnings": []})
    t = transitions.target(coll, pk)
    worker = WorkerRef(hostname="w@host", instance="w1", pid=1)
    steps: list[tuple[str, Any, tuple[str, ...]]] = [
        ("schedule", lambda: transitions.schedule(t, "crunch", "t1"),
         ("status_changed_at",)),
        ("start", lambda: transitions.start(t, "t1", worker),
         ("start_time", "status_changed_at")),
        ("back_to_pending", lambda: transitions.back_to_pending(
            t, "t1", message="retry", warning="retry 1"), ("status_changed_at",)),
        ("start", lambda: transitions.start(t, "t1", worker),
         ("start_time", "status_changed_at")),
        ("reclaim", lambda: transitions.reclaim(
            t, "t1", {"worker_instance": "w1", "worker_pid": 1},
            WorkerRef(hostname="w2@host", instance="w2", pid=2), "lost"),
         ("start_time", "status_changed_at")),
        ("complete", lambda: transitions.complete(
            t, "t1", S.WAITING_FOR_RESULT, message="waiting"), ("status_changed_at",)),
        ("begin_join", lambda: transitions.begin_join(t, "j1", worker),
         ("status_changed_at",)),
        ("abandon_join", lambda: transitions.abandon_join(t, "j1", warning="lost"),
         ("status_changed_at",)),
        ("begin_join", lambda: transitions.begin_join(t, "j2", worker),
         ("status_changed_at",)),
        ("complete", lambda: transitions.complete(t, "j2", S.SUCCESS, message="done"),
         ("status_changed_at", "complete_time")),
        ("schedule", lambda: transitions.schedule(t, "crunch", "t2"),
         ("status_changed_at",)),
        ("fail_run", lambda: transitions.fail_run(t, "t2", "crunch", "cancelled"),
         ("status_changed_at", "complete_time")),
        ("reset", lambda: transitions.reset(t), ("status_changed_at",)),
    ]
    for name, write, stamped in steps:
        # Move the stored times far away first, so each step must write its own.
        coll.update_one({"_id": pk}, {"$set": dict.fromkeys(stamped, datetime(2000, 1, 1))})
        recorder.commands.clear()
        recorder.active = True
        won = write()
        recorder.active = False
        assert won, f"{name} lost its condition"
        assert len(recorder.commands) == 1, f"{name} sent {recorder.commands}"
        after = coll.find_one({"_id": pk})
        for field in stamped:
            assert close_to_server(after[field], coll.database), (
                f"{name} wrote {field}={after[field]}, server time {server_clock(coll.database)}"
            )


def test_the_next_queued_call_is_scheduled_at_the_servers_time(coll, far_off):
    pk = ObjectId()
    coll.insert_one({"_id": pk, "process_status": "SUCCESS", "errors": [], "warnings": [],
                     "call_queue": [{"id": "q1", "process": "crunch", "args": [], "kwargs": {}}]})
    assert transitions.schedule_next(transitions.target(coll, pk), "q1", "crunch", "t3",
                                     {"args": [], "kwargs": {}})
    assert close_to_server(coll.find_one({"_id": pk})["status_changed_at"], coll.database)


def test_heartbeats_suspicions_and_gone_marks_are_the_servers_time(coll, far_off, monkeypatch):
    monkeypatch.setattr(liveness.WorkerIdentity, "instance", "w-stamped")
    liveness.beat(coll, ["t1"])
    assert close_to_server(coll.find_one({"_id": "w-stamped"})["heartbeat_at"], coll.database)
    # Silent for a minute by the server's clock: suspected, then (past the grace) gone.
    minute_ago = server_clock(coll.database) - timedelta(seconds=60)
    coll.update_one({"_id": "w-stamped"}, {"$set": {"heartbeat_at": minute_ago}})
    suspected = liveness.suspect_silent(coll, threshold=3.0)["w-stamped"].suspected_at
    assert close_to_server(suspected, coll.database)
    coll.update_one({"_id": "w-stamped"}, {"$set": {"suspected_at": minute_ago}})
    assert liveness.mark_gone(coll, threshold=3.0, prune_after=86400) == 1
    assert close_to_server(coll.find_one({"_id": "w-stamped"})["gone_at"], coll.database)


# --- judgements ----------------------------------------------------------------------------


def _running_on(instance: str, clock: LocalClock, offset: timedelta) -> tuple[UnitJob, dict]:
    """A run claimed, and its worker beating, on a host whose clock is ``offset`` off."""
    clock.offset = offset
    job = UnitJob.create(name=f"on {instance}")
    t = transitions.target(job._get_collection(), job.pk)
    task_id = f"task-{ObjectId()}"
    assert transitions.schedule(t, "noop", task_id) is not None
    assert transitions.start(t, task_id,
                             WorkerRef(hostname=f"{instance}@host", instance=instance, pid=1))
    beat_as(instance, [task_id])
    return job, transitions.read_state(t) or {}


def beat_as(instance: str, active: list[str]) -> None:
    identity = liveness.WorkerIdentity
    previous = (identity.instance, identity.hostname)
    identity.instance, identity.hostname = instance, f"{instance}@host"
    try:
        liveness.beat(liveness.workers_collection(), active)
    finally:
        identity.instance, identity.hostname = previous


def test_a_redelivery_on_a_host_ahead_does_not_take_over_a_live_run_behind(local_clock):
    instance = f"behind-{ObjectId()}"
    _, state = _running_on(instance, local_clock, -timedelta(hours=1))
    # A sweep on a host with the true time suspects nothing: the worker just beat.
    local_clock.offset = timedelta(0)
    liveness.suspect_silent(liveness.workers_collection(), threshold=3.0)
    # The redelivered message reaches a worker an hour ahead: the run is alive.
    local_clock.offset = timedelta(hours=1)
    assert liveness.judge_remote_run(state) is None


def test_the_sweeper_ends_a_dead_worker_whose_clock_was_ahead_in_time(local_clock):
    instance = f"ahead-{ObjectId()}"
    job, _ = _running_on(instance, local_clock, timedelta(hours=1))
    local_clock.offset = -timedelta(hours=1)  # the host that sweeps is two hours behind
    label = f"UnitJob({job.pk})"

    def ended() -> bool:  # the worker never beats again: lost after threshold + grace
        sweeper.sweep(threshold=0.5, classes=[UnitJob], pending_timeout=None)
        return UnitJob.objects.get(pk=job.pk).process_status is S.FAILURE

    wait_for(ended, timeout=10, interval=0.1, what=f"the sweeper to end {label}")
    [error] = UnitJob.objects.get(pk=job.pk).errors
    assert error.startswith(f"worker lost: no heartbeat from {instance}@host"), error


def test_the_sweeper_spares_a_live_worker_whose_clock_is_behind(local_clock):
    instance = f"behind-{ObjectId()}"
    job, state = _running_on(instance, local_clock, -timedelta(hours=1))
    # An operator's prune on a host with the true time, then sweeps on a host two hours
    # ahead of the worker: the worker beat just now, whatever each clock says.
    local_clock.offset = timedelta(0)
    liveness.suspect_silent(liveness.workers_collection(), threshold=30.0)
    local_clock.offset = timedelta(hours=1)
    for _ in range(3):
        report = sweeper.sweep(threshold=30.0, classes=[UnitJob], pending_timeout=None)
        assert f"UnitJob({job.pk})" not in report.failed
        beat_as(instance, [state["celery_task_id"]])
    assert UnitJob.objects.get(pk=job.pk).process_status is S.RUNNING


def test_a_pending_run_called_from_a_host_behind_is_not_taken_for_never_started(local_clock):
    local_clock.offset = -timedelta(hours=2)
    job = UnitJob.create(name="called from behind")
    t = transitions.target(job._get_collection(), job.pk)
    assert transitions.schedule(t, "noop", "t-pending") is not None
    local_clock.offset = timedelta(0)
    report = sweeper.sweep(threshold=30.0, classes=[UnitJob], pending_timeout=3600)
    assert f"UnitJob({job.pk})" not in report.never_started
    assert UnitJob.objects.get(pk=job.pk).process_status is S.PENDING
