"""Failover faults in every write of the lifecycle, on real workers and a replica set.

Each case arms one ``failCommand`` fail point (:mod:`tests.support.failpoints`) on the
session's replica-set server, aimed by ``appName`` at the one client that sends the write:
the caller (this process: schedule, cancel, the sweeper) or the failover worker's pool
processes (claim, step, progress, warning, end, begin join, join end; never the
heartbeats of the worker's main process, which has an ``appName`` of its own). ``skip``
lets that client's earlier commands of the same name through (the parent's own claim
before its join's, say). Every case checks that its fault was met where it was aimed.

Kinds: ``not-primary`` (the server refuses: ``NotWritablePrimary``), ``close`` (the
connection is dropped instead of an answer), ``write-concern`` (the write runs and the
reply carries a ``writeConcernError``), each with the driver's retryable writes on
(``retrying``: pymongo sends the write once more, the server recognises it) and off
(``retryWrites=false``: procstatus alone settles the write by re-reading the document
from the primary). And a ``replSetStepDown`` of 5 s in the middle of runs.

Expected, everywhere: no document stuck, no parent joined twice, every body run exactly
once — no case here has a documented second run (those are an ``acks_late``
redelivery, a ``retry_on_worker_lost`` resend and a retry, none of which a failover
causes) — and the true end:

- a write that landed (``write-concern``), or was refused (``not-primary``: nothing was
  written, so procstatus sends it once more to the primary its re-read found), or was
  retried by the driver: the run ends as if nothing had happened;
- a dropped connection without retryable writes, whose re-read does not show the write:
  procstatus cannot know that it will not land later, so it does not send it again; the
  error goes to whoever wrote, as any MongoDB error would: the call or the cancel
  raises and changes nothing, a claim is tried again later, a write inside the run
  fails the run naming the error, an end that cannot be written is recorded from
  outside ("could not record the end of the run"), a join task that cannot claim its
  parent leaves it waiting for the sweeper's next pass, and a sweep that cannot end a
  run ends it on its next pass.

The clients use ``heartbeatFrequencyMS=500``: this server does not answer a waiting
``hello`` early when it steps down or back up, as mongod does, so without it a client
takes up to 10 s to see the primary again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mongoengine
import pymongo
import pytest
from pymongo.errors import AutoReconnect

import procstatus
from devtools import services
from devtools.services import wait_for
from procstatus import ProcessStatus, runtime
from tests.support.failover_models import (
    ALIAS,
    FAILOVER_QUEUE,
    PROGRESS,
    STEP,
    WARNING,
    FailoverJob,
    FailoverParent,
    FailoverUnstarted,
    joins_key,
)
from tests.support.failpoints import FaultRecorder, arm, disarm, seen_key, step_down
from tests.support.models import gate_key, runs_key

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
DB_NAME = f"procstatus_failover_{TAG}"
HEARTBEAT = 1.0
THRESHOLD = 3 * HEARTBEAT
KINDS = ("not-primary", "close", "write-concern")


@dataclass
class Mode:
    """One setting of the clients' retryable writes, with its worker and app names."""

    retrying: bool
    caller: str
    pool: str
    worker: services.Service

    def lands(self, kind: str) -> bool:
        """Whether a write that meets ``kind`` ends as if nothing had happened."""
        return self.retrying or kind != "close"


def with_options(uri: str, **options: str) -> str:
    joined = "&".join(f"{name}={value}" for name, value in options.items())
    return f"{uri}{'&' if '?' in uri else '/?'}{joined}"


@pytest.fixture(scope="module")
def admin(replica_set_uri: str) -> Iterator[pymongo.MongoClient]:
    client: pymongo.MongoClient = pymongo.MongoClient(replica_set_uri)
    try:
        yield client
    finally:
        disarm(client)
        client.drop_database(DB_NAME)
        client.close()


@pytest.fixture(scope="module", params=["retrying", "not-retrying"])
def mode(
    request: pytest.FixtureRequest,
    replica_set_uri: str,
    admin: pymongo.MongoClient,
    celery_app_under_test: Any,
    worker_env: dict,
    gate_redis: str,
    service_log_dir: Path,
) -> Iterator[Mode]:
    """The caller's ``failover`` connection and one worker, both with or without
    retryable writes; the worker is stopped gracefully (no silent heartbeat is left)."""
    retrying = request.param == "retrying"
    names = {side: f"fp-{side}-{request.param}-{TAG}" for side in ("caller", "pool", "main")}

    def uri(side: str) -> str:
        return with_options(
            replica_set_uri, appName=names[side], retryWrites=str(retrying).lower(),
            heartbeatFrequencyMS="500",
        )

    mongoengine.connect(db=DB_NAME, host=uri("caller"), alias=ALIAS,
                        event_listeners=[FaultRecorder(names["caller"], gate_redis)])
    worker = services.start_worker(
        "tests.support.failover_app", service_log_dir,
        hostname=f"failover-{request.param}-{TAG}@%h",
        env={
            **worker_env,
            "MONGODB_URI": uri("main"),
            "PROCSTATUS_TEST_DB": DB_NAME,
            "PROCSTATUS_TEST_FAILOVER_URI": uri("main"),
            "PROCSTATUS_TEST_FAILOVER_POOL_URI": uri("pool"),
            "PROCSTATUS_TEST_HEARTBEAT": str(HEARTBEAT),
            "PROCSTATUS_TEST_COMMAND_LOG": "",
        },
        concurrency=3,
        queues=FAILOVER_QUEUE,
    )
    try:
        yield Mode(retrying, names["caller"], names["pool"], worker)
    finally:
        disarm(admin)
        worker.stop()
        mongoengine.disconnect(ALIAS)


@pytest.fixture
def clean(mode: Mode, admin: pymongo.MongoClient, redis_client: Any,
          monkeypatch: pytest.MonkeyPatch) -> Mode:
    """No fail point armed and no fault recorded before the case; the sweeper's
    heartbeats are the failover workers' (``procstatus_workers`` of the failover alias)."""
    disarm(admin)
    redis_client.delete(seen_key(mode.caller), seen_key(mode.pool))
    monkeypatch.setattr(runtime.current, "alias", ALIAS)
    return mode


def seen(redis_client: Any, app_name: str) -> list[str]:
    return [line.decode() for line in redis_client.lrange(seen_key(app_name), 0, -1)]


def runs(redis_client: Any, pk: Any) -> int:
    return int(redis_client.llen(runs_key(pk)))


def joins(redis_client: Any, pk: Any) -> int:
    return int(redis_client.get(joins_key(pk)) or 0)


def running(job: FailoverJob) -> None:
    wait_for(lambda: job.reload_status() is ProcessStatus.RUNNING, timeout=30,
             what=f"{job.name} RUNNING")


def raised(call: Callable[[], Any]) -> BaseException | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


def sweep() -> procstatus.SweepReport:
    return procstatus.sweep(threshold=THRESHOLD, classes=[FailoverJob, FailoverParent],
                            pending_timeout=None)


def fresh(job: Any) -> Any:
    return type(job).objects.get(pk=job.pk)


# --- the caller's writes ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_schedule(clean: Mode, kind: str, admin: pymongo.MongoClient, redis_client: Any) -> None:
    job = FailoverJob.create(name=f"schedule {kind}")
    arm(admin, "findAndModify", kind, clean.caller)
    error = raised(lambda: job.work(["step"]))
    assert seen(redis_client, clean.caller) == [f"findAndModify {kind}"]
    if clean.lands(kind):
        assert error is None
    else:  # the call raised and nothing changed; calling again runs it
        assert isinstance(error, AutoReconnect), error
        stored = fresh(job)
        assert (stored.process_status, stored.celery_task_id) == (ProcessStatus.READY, None)
        job.work(["step"])
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert fresh(job).current_process_step == STEP
    assert runs(redis_client, job.pk) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_cancel(clean: Mode, kind: str, admin: pymongo.MongoClient, redis_client: Any) -> None:
    job = FailoverJob.create(name=f"cancel {kind}")
    job.work(["hold", "step"])
    running(job)
    arm(admin, "update", kind, clean.caller)
    error = raised(job.cancel)
    assert seen(redis_client, clean.caller) == [f"update {kind}"]
    if not clean.lands(kind):  # the cancel raised and the run goes on; cancelling again ends it
        assert isinstance(error, AutoReconnect), error
        assert fresh(job).process_status is ProcessStatus.RUNNING
        error = raised(job.cancel)
    assert error is None
    redis_client.rpush(gate_key(job.pk), 1)  # the body ends; its end is refused
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert fresh(job).errors == ["cancelled"]
    assert runs(redis_client, job.pk) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_sweepers_fail(clean: Mode, kind: str, admin: pymongo.MongoClient,
                           redis_client: Any) -> None:
    job = FailoverUnstarted.create()
    job.never_taken()

    def sweep_pending() -> procstatus.SweepReport:
        return procstatus.sweep(threshold=THRESHOLD, classes=[FailoverUnstarted],
                                pending_timeout=0.001)

    # The sweep's first update marks silent heartbeats suspected; its second is the fail.
    arm(admin, "update", kind, clean.caller, skip=1)
    error = raised(sweep_pending)
    assert seen(redis_client, clean.caller) == [f"update {kind}"]
    if not clean.lands(kind):  # that pass raised; the next one ends the run
        assert isinstance(error, AutoReconnect), error
        assert fresh(job).process_status is ProcessStatus.PENDING
        error = raised(sweep_pending)
    assert error is None
    stored = fresh(job)
    assert stored.process_status is ProcessStatus.FAILURE
    assert stored.errors == ["never started: no worker took the task in time"]
    assert runs(redis_client, job.pk) == 0


# --- the worker's writes ------------------------------------------------------------------

IN_RUN = {"step": "update", "warning": "update", "progress": "update"}


@pytest.mark.parametrize("kind", KINDS)
def test_claim(clean: Mode, kind: str, admin: pymongo.MongoClient, redis_client: Any) -> None:
    job = FailoverJob.create(name=f"claim {kind}")
    arm(admin, "findAndModify", kind, clean.pool)
    job.work(["step"])
    # Unsettled, the claim is tried again later (a transient error): it still runs once.
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert seen(redis_client, clean.pool)[0] == f"findAndModify {kind}"
    assert fresh(job).current_process_step == STEP
    assert runs(redis_client, job.pk) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("write", sorted(IN_RUN))
def test_in_run_write(clean: Mode, write: str, kind: str, admin: pymongo.MongoClient,
                      redis_client: Any) -> None:
    job = FailoverJob.create(name=f"{write} {kind}")
    arm(admin, "update", kind, clean.pool)  # the claim is a findAndModify: this is the write
    job.work([write])
    status = job.block_until_complete(timeout=30)
    assert seen(redis_client, clean.pool) == [f"update {kind}"]
    stored = fresh(job)
    if clean.lands(kind):
        assert status is ProcessStatus.SUCCESS, stored.errors
        assert {
            "step": stored.current_process_step == STEP,
            "warning": stored.warnings == [WARNING],
            "progress": (stored.progress_done, stored.progress_total) == PROGRESS,
        }[write]
    else:  # the run's own write raised into it: the run fails naming the error
        assert status is ProcessStatus.FAILURE
        [error] = stored.errors
        assert error.startswith("AutoReconnect: "), error
    assert runs(redis_client, job.pk) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_end(clean: Mode, kind: str, admin: pymongo.MongoClient, redis_client: Any) -> None:
    job = FailoverJob.create(name=f"end {kind}")
    arm(admin, "update", kind, clean.pool)  # no in-run write: the first update is the end
    job.work([])
    status = job.block_until_complete(timeout=30)
    assert seen(redis_client, clean.pool) == [f"update {kind}"]
    stored = fresh(job)
    if clean.lands(kind):
        assert status is ProcessStatus.SUCCESS, stored.errors
        assert stored.last_status_message == "Process work completed successfully"
    else:
        assert status is ProcessStatus.FAILURE
        [error] = stored.errors
        assert error.startswith("could not record the end of the run: AutoReconnect: "), error
    assert runs(redis_client, job.pk) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_begin_join(clean: Mode, kind: str, admin: pymongo.MongoClient,
                    redis_client: Any) -> None:
    parent = FailoverParent.create()
    arm(admin, "findAndModify", kind, clean.pool, skip=1)  # past the parent's own claim
    parent.wait()
    if not clean.lands(kind):
        # The join task could not claim the wait: the parent waits for the sweeper's pass.
        wait_for(lambda: seen(redis_client, clean.pool), timeout=30, what="the fault")
        assert fresh(parent).process_status is ProcessStatus.WAITING_FOR_RESULT
        label = f"FailoverParent({parent.pk})"
        wait_for(lambda: label in sweep().joins_sent, timeout=4 * THRESHOLD, interval=0.2,
                 what="the sweeper sending the join")
    assert parent.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert seen(redis_client, clean.pool) == [f"findAndModify {kind}"]
    assert joins(redis_client, parent.pk) == 1
    assert runs(redis_client, parent.pk) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_join_end(clean: Mode, kind: str, admin: pymongo.MongoClient,
                  redis_client: Any) -> None:
    parent = FailoverParent.create()
    arm(admin, "update", kind, clean.pool, skip=1)  # past the parent's WAITING_FOR_RESULT
    parent.wait()
    status = parent.block_until_complete(timeout=30)
    assert seen(redis_client, clean.pool) == [f"update {kind}"]
    stored = fresh(parent)
    if clean.lands(kind):
        assert status is ProcessStatus.SUCCESS, stored.errors
    else:
        assert status is ProcessStatus.FAILURE
        [error] = stored.errors
        assert error.startswith("could not record the end of the run: AutoReconnect: "), error
    assert joins(redis_client, parent.pk) == 1
    assert runs(redis_client, parent.pk) == 1


# --- a step-down in the middle of runs ----------------------------------------------------

STEP_DOWN_SECONDS = 5


def test_a_step_down_in_the_middle_of_runs(
    clean: Mode, admin: pymongo.MongoClient, redis_client: Any, record_figure: Any
) -> None:
    """For 5 s the server refuses every write, as a primary that stepped down does.

    A run writes its step, warning, progress and end into the window; the caller
    schedules a run and a parent in it; another run is held RUNNING across it while the
    sweeper runs after it, as beat would, for two thresholds: its worker's heartbeats
    failed in the window too, and must not make the sweeper take it for lost. (This
    server leaves the ``RetryableWriteError`` label off a stepped-down node's refusal,
    which mongod puts on, so the driver does not retry these: procstatus's own resend of a
    refused write is what keeps the runs true, with retryable writes on or off.)
    """
    writer = FailoverJob.create(name="writes into the window")
    steady = FailoverJob.create(name="held across the window")
    late = FailoverJob.create(name="scheduled in the window")
    parent = FailoverParent.create()  # created now: inserts are not procstatus's to settle
    writer.work(["hold", "step", "warning", "progress"])
    steady.work(["hold"])
    running(writer)
    running(steady)
    step_down(admin, STEP_DOWN_SECONDS)
    stepped_down_at = time.monotonic()
    redis_client.rpush(gate_key(writer.pk), 1)
    late.work(["step"])  # refused, then sent again once the primary is back
    parent.wait()
    for proc in (writer, late, parent):
        assert proc.block_until_complete(timeout=60) is ProcessStatus.SUCCESS, fresh(proc).errors
    sweeping_until = stepped_down_at + STEP_DOWN_SECONDS + 2 * THRESHOLD
    failed_by_sweeps: list[str] = []

    def sweeps_past_two_thresholds() -> bool:
        failed_by_sweeps.extend(sweep().failed)
        return time.monotonic() > sweeping_until

    wait_for(sweeps_past_two_thresholds, timeout=60, interval=0.5,
             what="sweeps for two thresholds after the window")
    assert failed_by_sweeps == []
    assert fresh(steady).process_status is ProcessStatus.RUNNING
    redis_client.rpush(gate_key(steady.pk), 1)
    assert steady.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    stored = fresh(writer)
    assert (stored.current_process_step, stored.warnings) == (STEP, [WARNING])
    assert (stored.progress_done, stored.progress_total) == PROGRESS
    for proc in (writer, steady, late):
        assert runs(redis_client, proc.pk) == 1
    assert joins(redis_client, parent.pk) == 1
    assert "update step-down" in seen(redis_client, clean.pool)
    assert "findAndModify step-down" in seen(redis_client, clean.caller)
    setting = "retryable writes" if clean.retrying else "retryWrites=false"
    record_figure(
        f"FAILOVER step-down {STEP_DOWN_SECONDS}s ({setting}): 5 runs SUCCESS, bodies once, "
        "joins once, refused writes "
        f"{len(seen(redis_client, clean.pool)) + len(seen(redis_client, clean.caller))}, "
        f"runs failed by the sweeper 0"
    )
