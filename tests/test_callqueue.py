"""The queue of calls: non-blocking processes called on a busy document wait, in order, none lost.

Real workers and callers: 20 threads in two OS processes call at once while the document
is busy; every call is queued on the document in one conditional write and runs exactly
once, in queue order, after the run before it ends.
"""

from __future__ import annotations

import pytest

import procstatus
from devtools.services import wait_for
from procstatus import ProcessAlreadyRunning, ProcessStatus, callqueue, dispatch, messages, runtime
from procstatus.errors import CallQueueFull
from procstatus.spec import process_spec
from tests.support.models import QueueJob, gate_key, runs_key
from tests.support.thread_callers import run_callers

pytestmark = pytest.mark.integration


def runs(redis_client, pk) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.decode() for r in redis_client.lrange(runs_key(pk), 0, -1)]


def stored(job: QueueJob) -> QueueJob:
    return QueueJob.objects.get(pk=job.pk)


def holding(job: QueueJob, redis_client) -> None:  # type: ignore[no-untyped-def]
    job.append("hold")
    wait_for(lambda: runs(redis_client, job.pk) == ["hold"], timeout=30, what="the held run")


def settled(job: QueueJob, count: int, redis_client):  # type: ignore[no-untyped-def]
    """Wait until ``count`` bodies ran and nothing is running or waiting; the document."""

    def done() -> QueueJob | None:
        doc = stored(job)
        idle = doc.process_status.is_completed and not doc.call_queue
        return doc if idle and len(runs(redis_client, job.pk)) >= count else None

    return wait_for(done, timeout=60, interval=0.05, what=f"{count} runs, then idle")


def test_twenty_concurrent_calls_each_run_once_in_queue_order(worker, worker_env, redis_client):
    job = QueueJob.create()
    holding(job, redis_client)
    outcomes = run_callers(
        "tests.support.queue_caller", [[str(job.pk), "10", label] for label in ("a", "b")],
        worker_env,
    )
    assert len(outcomes) == 20 and all(o.startswith("called ") for o in outcomes), outcomes
    waiting = stored(job).call_queue
    queued_order = [entry["args"][0] for entry in waiting]
    assert sorted(queued_order) == sorted(o.removeprefix("called ") for o in outcomes)
    with pytest.raises(ProcessAlreadyRunning, match="with 20 queued call"):
        job.blocking()  # a blocking process is still refused while the document is busy
    redis_client.rpush(gate_key(job.pk), 1)
    done = settled(job, 21, redis_client)
    assert runs(redis_client, job.pk) == ["hold", *queued_order]
    assert done.process_status is ProcessStatus.SUCCESS and done.current_process == "append"
    assert done.celery_task_id == waiting[-1]["id"]  # the last queued call ran last


def test_a_failure_drops_the_waiting_calls_unless_told_to_keep_them(worker, redis_client):
    clearing = QueueJob.create()
    holding(clearing, redis_client)
    clearing.fail_clearing("x")
    clearing.append("after")
    redis_client.rpush(gate_key(clearing.pk), 1)
    done = settled(clearing, 2, redis_client)
    assert runs(redis_client, clearing.pk) == ["hold", "fail:x"]
    assert done.process_status is ProcessStatus.FAILURE and done.call_queue == []

    keeping = QueueJob.create()
    holding(keeping, redis_client)
    keeping.fail_keeping("y")
    keeping.append("after")
    redis_client.rpush(gate_key(keeping.pk), 1)
    done = settled(keeping, 3, redis_client)
    assert runs(redis_client, keeping.pk) == ["hold", "fail:y", "after"]
    assert done.process_status is ProcessStatus.SUCCESS


def test_a_full_queue_refuses_the_call_and_changes_nothing(
    worker, redis_client, monkeypatch
):
    monkeypatch.setattr(callqueue, "MAX_QUEUED_CALLS", 2)
    job = QueueJob.create()
    holding(job, redis_client)
    job.append("one")
    job.append("two")
    with pytest.raises(CallQueueFull, match="2 calls already wait on this document"):
        job.append("three")
    assert [e["args"][0] for e in stored(job).call_queue] == ["one", "two"]
    redis_client.rpush(gate_key(job.pk), 1)
    settled(job, 3, redis_client)
    assert runs(redis_client, job.pk) == ["hold", "one", "two"]


def test_priority_travels_with_the_message(monkeypatch):
    sent = []
    publisher = type("P", (), {
        "app": type("A", (), {"conf": type("C", (), {"task_always_eager": False})})(),
        "apply_async": lambda self, **options: sent.append(options),
    })()
    monkeypatch.setattr(runtime.current, "run_task", publisher)

    @dispatch.process(priority=7)
    def urgent(self) -> None: ...

    spec = process_spec(type("Holder", (), {"urgent": urgent}), "urgent")
    assert spec is not None
    messages.publish(QueueJob, "id", spec, [], {}, "task-1")
    assert sent[0]["priority"] == 7
    with pytest.raises(ValueError, match="priority must be an int from 0 to 255"):
        dispatch.process(priority=300)


def test_the_sweeper_starts_a_queued_call_stranded_on_an_idle_document(
    worker, redis_client
):
    job = QueueJob.create()
    holding(job, redis_client)
    job.append("stranded")
    # As if the run that ended had died before starting the next call: the queue stays.
    QueueJob._get_collection().update_one(
        {"_id": job.pk}, {"$set": {"process_status": "SUCCESS"}}
    )
    report = procstatus.sweep(classes=[QueueJob])
    assert report.queued_calls_sent == [f"QueueJob({job.pk})"]
    wait_for(lambda: "stranded" in runs(redis_client, job.pk), timeout=30, what="the call")
    redis_client.rpush(gate_key(job.pk), 1)  # let the first run end; its write is refused
