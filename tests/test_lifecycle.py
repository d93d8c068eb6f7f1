"""The lifecycle seen from outside, against a real broker, MongoDB server and prefork worker."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError

import procstatus
from devtools import services
from devtools.services import wait_for
from procstatus import ProcessAlreadyRunning, ProcessStatus
from tests.conftest import CALLER_COMMANDS
from tests.support.models import (
    Batch,
    BudgetJob,
    FailingHooks,
    Item,
    Job,
    gate_key,
    runs_key,
)
from tests.support.thread_callers import run_callers

pytestmark = pytest.mark.integration


def state(proc_cls, pk):  # type: ignore[no-untyped-def]
    fresh = proc_cls.objects.get(pk=pk)
    return fresh.process_status, fresh.current_process_step


def runs(redis_client, pk) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.decode() for r in redis_client.lrange(runs_key(pk), 0, -1)]


def test_success_path(worker, redis_client):
    job = Job.create(name="simple")
    assert job.process_status is ProcessStatus.READY
    job.noop()
    assert job.process_status is ProcessStatus.PENDING
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    fresh = Job.objects.get(pk=job.pk)
    assert fresh.current_process == "noop"
    assert fresh.complete_time is not None and fresh.start_time is not None
    assert fresh.worker_hostname and fresh.worker_hostname.startswith("main-")
    assert fresh.errors == []
    assert fresh.last_status_message == "Process noop completed successfully"
    assert len(runs(redis_client, job.pk)) == 1


def test_statuses_observed_pending_running_with_steps_then_success(worker, redis_client):
    blockers = [Job.create(name=f"blocker{i}") for i in range(2)]
    for blocker in blockers:
        blocker.gated(["blocking"])
    wait_for(
        lambda: all(state(Job, b.pk) == (ProcessStatus.RUNNING, "blocking") for b in blockers),
        timeout=30, what="both pool processes busy",
    )
    job = Job.create(name="observed")
    job.gated(["step one", "step two"])
    # Both pool processes are busy, so the message waits: PENDING is what others see.
    assert state(Job, job.pk) == (ProcessStatus.PENDING, None)
    assert Job.objects.processing().filter(pk=job.pk).count() == 1
    for blocker in blockers:
        redis_client.rpush(gate_key(blocker.pk), 1)
    wait_for(lambda: state(Job, job.pk) == (ProcessStatus.RUNNING, "step one"), timeout=30,
             what="RUNNING at step one")
    redis_client.rpush(gate_key(job.pk), 1)
    wait_for(lambda: state(Job, job.pk) == (ProcessStatus.RUNNING, "step two"), timeout=30,
             what="RUNNING at step two")
    redis_client.rpush(gate_key(job.pk), 1)
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    for blocker in blockers:
        assert blocker.block_until_complete(timeout=30) is ProcessStatus.SUCCESS


def test_exception_ends_in_failure_with_error_text(worker):
    job = Job.create(name="fails")
    job.fail_with("the input was bad")
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    fresh = Job.objects.get(pk=job.pk)
    assert fresh.errors == ["ValueError: the input was bad"]
    assert fresh.complete_time is not None
    assert fresh.last_status_message == "Process fail_with failed: ValueError: the input was bad"
    assert "Traceback" in worker.log_text()


def test_process_failure_sets_chosen_messages(worker):
    job = Job.create(name="chosen")
    job.fail_on_purpose("first reason", "second reason")
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert Job.objects.get(pk=job.pk).errors == ["first reason", "second reason"]


def test_warnings_steps_and_domain_fields_saved_by_the_process(worker):
    job = Job.create(name="warns")
    job.warn_then_succeed("written on the worker")
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    fresh = Job.objects.get(pk=job.pk)
    assert fresh.warnings == ["first warning", "second warning"]
    assert fresh.current_process_step == "writing note"
    assert fresh.note == "written on the worker"


def test_failing_hooks_do_not_leave_status_stuck(worker):
    proc = FailingHooks.create()
    proc.succeed()
    assert proc.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    # on_fail runs for the failed on_success too, and its own failure is recorded.
    assert FailingHooks.objects.get(pk=proc.pk).errors == [
        "on_success hook failed: RuntimeError: on_success exploded",
        "on_fail hook failed: RuntimeError: on_fail exploded",
    ]
    proc.fail()
    assert proc.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert FailingHooks.objects.get(pk=proc.pk).errors == [
        "KeyError: 'boom'",
        "on_fail hook failed: RuntimeError: on_fail exploded",
    ]


def test_a_process_can_run_again_after_it_completed(worker, redis_client):
    job = Job.create(name="again")
    job.fail_with("first time")
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    job.noop()
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    fresh = Job.objects.get(pk=job.pk)
    assert fresh.errors == [] and fresh.current_process == "noop"
    assert [r.split(":")[0] for r in runs(redis_client, job.pk)] == ["fail_with", "noop"]


def test_already_running_is_refused_and_sends_nothing(worker, redis_client):
    job = Job.create(name="busy")
    job.gated(["held"])
    wait_for(lambda: state(Job, job.pk)[0] is ProcessStatus.RUNNING, timeout=30, what="RUNNING")
    with pytest.raises(ProcessAlreadyRunning, match="gated"):
        Job.objects.get(pk=job.pk).noop()
    redis_client.rpush(gate_key(job.pk), 1)
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert runs(redis_client, job.pk)[0].startswith("gated:")
    assert len(runs(redis_client, job.pk)) == 1


def test_twenty_threads_in_two_processes_yield_exactly_one_run(worker, worker_env, redis_client):
    job = Job.create(name="race")
    outcomes = run_callers("tests.support.race_caller", [[str(job.pk), "10"]] * 2, worker_env)
    assert sorted(set(outcomes)) == ["already-running", "dispatched"], outcomes
    assert outcomes.count("dispatched") == 1 and outcomes.count("already-running") == 19
    wait_for(lambda: state(Job, job.pk)[0] is ProcessStatus.RUNNING, timeout=30, what="RUNNING")
    redis_client.rpush(gate_key(job.pk), 1)
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert len(runs(redis_client, job.pk)) == 1


def test_non_json_arguments_are_refused_before_any_state_change(worker):
    job = Job.create(name="bad-args")
    with pytest.raises(TypeError, match="argument 'options' of Job.takes"):
        job.takes("ok", options={"when": datetime.datetime.now()})
    with pytest.raises(TypeError, match="positional argument 0 of Job.takes"):
        job.takes(object())
    with pytest.raises(ValueError, match="over the"):
        job.takes("x" * 300_000)
    assert state(Job, job.pk) == (ProcessStatus.READY, None)
    assert Job.objects.get(pk=job.pk).current_process is None


def test_unsaved_document_is_refused(worker):
    with pytest.raises(ValueError, match="save\\(\\) the Job before calling noop"):
        Job(name="unsaved").noop()


def test_process_that_deletes_its_own_document_is_not_recreated(worker, redis_client):
    job = Job.create(name="self-deleting")
    job.delete_self()
    wait_for(lambda: f"Job({job.pk}) was deleted during its process" in worker.log_text(),
             timeout=30, what="the deletion to be logged")
    assert Job.objects(pk=job.pk).count() == 0
    assert len(runs(redis_client, job.pk)) == 1


def test_broker_down_at_dispatch_restores_the_previous_state(
    celery_app_under_test, service_log_dir, test_db, monkeypatch
):
    from celery import Celery

    private = services.start_redis(service_log_dir)
    # Celery reads CELERY_BROKER_URL from the environment before any configured broker_url.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    app = Celery("broker-down", broker=private.url)
    app.conf.task_publish_retry_policy = {
        "max_retries": 1, "interval_start": 0, "interval_step": 0.1,
    }
    installed = procstatus.runtime.current  # the tests' app, with its heartbeat settings
    procstatus.install(app)
    try:
        job = Job.create(name="no-broker")
        private.stop()
        with pytest.raises(OperationalError):
            job.noop()
        assert state(Job, job.pk) == (ProcessStatus.READY, None)
        fresh = Job.objects.get(pk=job.pk)
        assert fresh.celery_task_id is None and fresh.current_process is None
        # A FAILURE keeps its errors when a retry cannot be published.
        Job._get_collection().update_one(
            {"_id": job.pk}, {"$set": {"process_status": "FAILURE", "errors": ["old error"]}}
        )
        with pytest.raises(OperationalError):
            Job.objects.get(pk=job.pk).noop()
        fresh = Job.objects.get(pk=job.pk)
        assert fresh.process_status is ProcessStatus.FAILURE and fresh.errors == ["old error"]
    finally:
        private.stop()
        procstatus.runtime.current = installed


FORGED = {
    "unknown class": lambda pk: ["NoSuchProc", str(pk), "noop", [], {}],
    "undecorated method": lambda pk: ["Job", str(pk), "not_a_process", [], {}],
    "missing method": lambda pk: ["Job", str(pk), "no_such_method", [], {}],
    "invalid id": lambda pk: ["Job", "not-an-object-id", "noop", [], {}],
    "wrong shape": lambda pk: ["Job", str(pk)],
    "abstract base": lambda pk: ["Proc", str(pk), "noop", [], {}],
}


@pytest.mark.parametrize("kind", sorted(FORGED))
def test_forged_messages_are_rejected_and_nothing_runs(kind, worker, celery_app_under_test,
                                                       redis_client):
    job = Job.create(name=f"forged {kind}")
    result = celery_app_under_test.send_task("procstatus.run", args=FORGED[kind](job.pk))
    wait_for(lambda: f"rejected task {result.id}" in worker.log_text(), timeout=30,
             what="the rejection to be logged")
    assert state(Job, job.pk) == (ProcessStatus.READY, None)
    assert runs(redis_client, job.pk) == []


def test_pickle_payload_is_refused(worker, celery_app_under_test, redis_client):
    job = Job.create(name="pickled")
    celery_app_under_test.send_task(
        "procstatus.run", args=["Job", str(job.pk), "noop", [], {}], serializer="pickle"
    )
    wait_for(lambda: "untrusted content of type pickle" in worker.log_text(), timeout=30,
             what="the refusal to be logged")
    assert state(Job, job.pk) == (ProcessStatus.READY, None)
    assert runs(redis_client, job.pk) == []


def test_a_plain_lifecycle_costs_exactly_three_mongodb_commands(worker, worker_env, redis_client):
    log = Path(worker_env["PROCSTATUS_TEST_COMMAND_LOG"])
    # Warm both pool processes: their first use of a collection creates its indexes.
    warmers = [Job.create(name=f"warm{i}") for i in range(2)]
    for warmer in warmers:
        warmer.gated(["warming"])
    wait_for(lambda: all(state(Job, w.pk)[0] is ProcessStatus.RUNNING for w in warmers),
             timeout=30, what="both pool processes busy")
    for warmer in warmers:
        BudgetJob.objects.create()  # so both processes have the class loaded too
        redis_client.rpush(gate_key(warmer.pk), 1)
        warmer.block_until_complete(timeout=30)
    for _ in range(4):
        warm = BudgetJob.create()
        warm.noop()
        warm.block_until_complete(timeout=30)

    job = BudgetJob.create()
    log.write_text("")
    CALLER_COMMANDS.commands.clear()
    CALLER_COMMANDS.active = True
    try:
        job.noop()
    finally:
        CALLER_COMMANDS.active = False
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    caller = [c for c in CALLER_COMMANDS.commands if c[1] == "budget_jobs"]
    worker_commands = [
        tuple(line.split()[1:]) for line in log.read_text().splitlines()
        if line.split()[2] == "budget_jobs"
    ]
    assert caller == [("findAndModify", "budget_jobs")]
    assert worker_commands == [("findAndModify", "budget_jobs"), ("update", "budget_jobs")]


def test_fifty_children_on_two_worker_processes_join_exactly_once(worker, redis_client):
    batch = Batch.create(size=50)
    batch.spawn(50)
    assert batch.block_until_complete(timeout=180) is ProcessStatus.SUCCESS
    assert redis_client.get(f"procstatus-test:joins:{batch.pk}") == b"1"
    items = Item.objects(batch=batch.pk)
    assert items.count() == 50
    assert items.processing().count() == 0
    failed = {i.number for i in items.failed()}
    assert failed == {n for n in range(50) if n % 7 == 3}
    assert all(i.errors == [f"ValueError: item {i.number} is bad"] for i in items.failed())
    assert Batch.objects.get(pk=batch.pk).joined_items == 50 - len(failed)


def test_join_happens_at_once_when_children_finished_first(worker, redis_client):
    batch = Batch.create(size=6)
    batch.spawn(6, wait_until_children_done=True)
    assert batch.block_until_complete(timeout=120) is ProcessStatus.SUCCESS
    assert redis_client.get(f"procstatus-test:joins:{batch.pk}") == b"1"
