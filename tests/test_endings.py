"""How runs end, on real workers: every ending path reaches SUCCESS or FAILURE with a true reason.

One test per way a run used to be left stuck or wrong: cancelled children and their
waiting parent, a join that waits for nothing, children with their own primary key,
exception types Celery replaces by stand-ins, writes from a copy outside the run, a
final write or a claim that fails, a retry that cannot be sent, start attempts counted
apart from retries, joins that must not run in the sweeper's caller or the worker's main
process, a worker whose main process has no MongoDB connection, and what operators read.

Faults in MongoDB writes and in publishing are injected into the workers of one test
only, through the knobs of ``tests/support/worker_app.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import mongoengine
import pytest

import procstatus
from devtools import services
from devtools.services import wait_for
from procstatus import ProcessStatus
from procstatus.join import NOTHING_TO_WAIT_FOR
from tests.support.models import (
    FAULT_QUEUE,
    IDLE_QUEUE,
    BlockingJoinParent,
    BrokenEndJob,
    BrokenEveryEndJob,
    BrokenStartJob,
    FaultJob,
    FlakyStartJob,
    Job,
    KeyedChild,
    KeyedParent,
    Mistakes,
    RetryUnrecordedJob,
    SlowChild,
    SlowParent,
    UnconnectedJob,
    UnreachableStartJob,
    WaitsForNothing,
    gate_key,
    runs_key,
)
from tests.unit.compat import at

pytestmark = pytest.mark.integration

THRESHOLD = 3.0  # the test workers beat every second


def fresh(doc):  # type: ignore[no-untyped-def]
    return type(doc).objects.get(pk=doc.pk)


def runs(redis_client, pk) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.decode() for r in redis_client.lrange(runs_key(pk), 0, -1)]


def joins(redis_client, pk) -> int:  # type: ignore[no-untyped-def]
    return int(redis_client.get(f"procstatus-test:joins:{pk}") or 0)


def status_is(doc, *statuses):  # type: ignore[no-untyped-def]
    return lambda: fresh(doc).process_status in statuses


# --- cancelled and never-started children ------------------------------------------------


def test_cancelled_children_let_their_waiting_parent_join(worker, start_worker, redis_client):
    start_worker("cancels", FAULT_QUEUE, concurrency=2)
    parent = SlowParent.create()
    parent.spawn(3)
    wait_for(status_is(parent, ProcessStatus.WAITING_FOR_RESULT), timeout=30,
             what="the parent waiting")
    children = list(SlowChild.objects(parent_id=parent.pk))
    wait_for(lambda: SlowChild.objects(parent_id=parent.pk, process_status="RUNNING").count() == 2,
             timeout=30, what="two children RUNNING, one PENDING")
    for child in children:
        running = fresh(child).process_status is ProcessStatus.RUNNING
        assert child.cancel(terminate=running) is True
    assert parent.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert joins(redis_client, parent.pk) == 1
    for child in children:
        done = fresh(child)
        assert done.process_status is ProcessStatus.FAILURE and done.errors == ["cancelled"]
        assert done.last_status_message == "Process hang failed: cancelled"


def test_a_child_failed_by_the_pending_timeout_lets_its_parent_join(worker, redis_client):
    parent = SlowParent.create()
    parent.wait_on_idle_child()  # its child waits on a queue nobody consumes
    wait_for(status_is(parent, ProcessStatus.WAITING_FOR_RESULT), timeout=30,
             what="the parent waiting")
    child = SlowChild.objects.get(parent_id=parent.pk)
    report = procstatus.sweep(pending_timeout=0, classes=[SlowChild])
    assert report.never_started == [f"SlowChild({child.pk})"]
    assert fresh(child).errors == ["never started: no worker took the task in time"]
    assert parent.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert joins(redis_client, parent.pk) == 1


# --- joins ---------------------------------------------------------------------------------


def test_a_join_that_waits_for_nothing_fails_and_frees_its_worker(worker, redis_client):
    parent = WaitsForNothing.create()
    parent.wait()
    assert parent.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert fresh(parent).errors == [NOTHING_TO_WAIT_FOR]
    assert joins(redis_client, parent.pk) == 1
    # Both pool processes still take work.
    jobs = [Job.create(name=f"after waits-for-nothing {i}") for i in range(2)]
    for job in jobs:
        job.noop()
    assert all(j.block_until_complete(timeout=30) is ProcessStatus.SUCCESS for j in jobs)


def test_children_with_their_own_primary_key_are_joined(worker, redis_client):
    parent = KeyedParent.create()
    parent.spawn(3)
    assert parent.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert fresh(parent).errors == []
    assert joins(redis_client, parent.pk) == 1
    assert KeyedChild.objects(parent_id=parent.pk, process_status="SUCCESS").count() == 3


def test_the_sweeper_sends_a_missed_join_and_never_runs_it_itself(worker, redis_client):
    parent = BlockingJoinParent.create()
    parent.wait()  # no children: its own join is sent at once
    wait_for(lambda: joins(redis_client, parent.pk) == 1, timeout=30, what="the first join")
    redis_client.rpush(gate_key(parent.pk), 1)
    assert parent.block_until_complete(timeout=30) is ProcessStatus.SUCCESS

    # Now a wait whose notification was lost: written straight into WAITING_FOR_RESULT.
    collection = BlockingJoinParent._get_collection()
    procstatus.transitions.schedule(at(collection, parent.pk), "wait", "lost-notification")
    procstatus.transitions.start(at(collection, parent.pk), "lost-notification",
                                 procstatus.transitions.WorkerRef(hostname="gone@nowhere"))
    procstatus.transitions.complete(at(collection, parent.pk), "lost-notification",
                                    ProcessStatus.WAITING_FOR_RESULT, message="waiting")

    def join_sent() -> bool:
        return procstatus.sweep(threshold=THRESHOLD, classes=[BlockingJoinParent]).joins_sent \
            == [f"BlockingJoinParent({parent.pk})"]

    wait_for(join_sent, timeout=4 * THRESHOLD, interval=0.2, what="the sweeper's join")
    # The sweep returned while join() blocks on its gate: it ran on a worker, not here.
    wait_for(lambda: joins(redis_client, parent.pk) == 2, timeout=30, what="the second join")
    assert fresh(parent).process_status is ProcessStatus.RUNNING and fresh(parent).joining
    join_pids = {int(r.split(":")[1]) for r in runs(redis_client, parent.pk)}
    assert os.getpid() not in join_pids
    redis_client.rpush(gate_key(parent.pk), 1)
    assert parent.block_until_complete(timeout=30) is ProcessStatus.SUCCESS


def test_a_lost_child_is_joined_by_a_pool_process_not_the_main_process(
    worker, start_worker, redis_client
):
    lost_worker = start_worker("lostchild", FAULT_QUEUE, concurrency=1)
    parent = SlowParent.create()
    parent.spawn(1)
    child = wait_for(lambda: SlowChild.objects(parent_id=parent.pk, process_status="RUNNING")
                     .first(), timeout=30, what="the child RUNNING")
    os.kill(child.worker_pid, signal.SIGKILL)
    assert parent.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert fresh(child).errors[0].startswith("WorkerLostError: worker lost")
    join_pid = next(int(r.split(":")[1]) for r in runs(redis_client, parent.pk)
                    if r.startswith("join:"))
    assert join_pid != lost_worker.process.pid  # not the lost child's worker's main process


# --- true exception types and who may write ------------------------------------------------


def test_errors_record_the_true_exception_type(worker):
    again = Mistakes.create()
    again.call_myself()
    quota = Mistakes.create()
    quota.exceed_quota()
    assert again.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert quota.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert fresh(again).errors[0].startswith("ProcessAlreadyRunning: cannot start Mistakes(")
    assert fresh(quota).errors == ["QuotaExceeded: used 5 of 3"]
    assert fresh(quota).last_status_message == (
        "Process exceed_quota failed: QuotaExceeded: used 5 of 3"
    )


def test_another_process_cannot_write_the_step_or_warnings_of_a_run(
    worker, worker_env, redis_client
):
    job = Job.create(name="owned run")
    job.gated(["mine"])
    wait_for(lambda: fresh(job).current_process_step == "mine", timeout=30, what="the step")
    script = (
        "import mongoengine, os\n"
        "from procstatus import NotRunning\n"
        "from tests.support.models import Job\n"
        "mongoengine.connect(db=os.environ['PROCSTATUS_TEST_DB'], "
        "host=os.environ['MONGODB_URI'])\n"
        f"copy = Job.objects.get(name='owned run', pk='{job.pk}')\n"
        "for write in (lambda: copy.set_process_step('theirs'), lambda: copy.warning('w')):\n"
        "    try:\n"
        "        write()\n"
        "    except NotRunning as exc:\n"
        "        print('refused:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, **worker_env},
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.count("refused:") == 2, result.stdout + result.stderr
    running = fresh(job)
    assert running.current_process_step == "mine" and running.warnings == []
    redis_client.rpush(gate_key(job.pk), 1)
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS


# --- writes and starts that fail -------------------------------------------------------------

BROKEN_WRITES = ",".join([
    "complete:broken_end_jobs:permanent",
    "complete:broken_every_end_jobs:permanent",
    "fail_run:broken_every_end_jobs:permanent",
    "start:broken_start_jobs:permanent",
    "start:unreachable_start_jobs:transient",
    "start:flaky_start_jobs:transient:2",
    "back_to_pending:retry_unrecorded_jobs:transient",
])


@pytest.fixture
def broken_worker(worker, start_worker):  # type: ignore[no-untyped-def]
    return start_worker("broken", FAULT_QUEUE, PROCSTATUS_TEST_BREAK=BROKEN_WRITES,
                        PROCSTATUS_TEST_START_RETRY_LIMIT="3")


def test_a_final_write_that_fails_still_ends_the_run(broken_worker):
    job = BrokenEndJob.create()
    job.noop()
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert fresh(job).errors == [
        "could not record the end of the run: OperationFailure: injected fault: complete"
    ]


def test_a_run_whose_end_cannot_be_written_is_failed_as_orphaned(broken_worker, redis_client):
    job = BrokenEveryEndJob.create()
    job.noop()
    wait_for(lambda: runs(redis_client, job.pk), timeout=30, what="the body to run")
    assert fresh(job).process_status is ProcessStatus.RUNNING  # its worker lives on

    def swept() -> bool:
        procstatus.sweep(threshold=THRESHOLD, classes=[BrokenEveryEndJob])
        return fresh(job).process_status is ProcessStatus.FAILURE

    wait_for(swept, timeout=6 * THRESHOLD, interval=0.3, what="the sweeper")
    assert fresh(job).errors[0].startswith("orphaned: broken-")
    assert "is alive but no longer runs task" in fresh(job).errors[0]


def test_a_claim_that_fails_for_good_fails_the_document(broken_worker, redis_client):
    job = BrokenStartJob.create()
    job.noop()
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert fresh(job).errors == ["could not start: OperationFailure: injected fault: start"]
    assert runs(redis_client, job.pk) == []


def test_start_attempts_that_run_out_fail_the_document(broken_worker, redis_client):
    job = UnreachableStartJob.create()
    job.noop()
    assert job.block_until_complete(timeout=60) is ProcessStatus.FAILURE
    assert fresh(job).errors == [
        "could not start after 3 attempts: AutoReconnect: injected fault: start"
    ]
    assert runs(redis_client, job.pk) == []


def test_start_attempts_do_not_use_up_the_process_retries(broken_worker, redis_client):
    job = FlakyStartJob.create()
    job.always_flaky()  # two failed claims, then three attempts of the body
    assert job.block_until_complete(timeout=60) is ProcessStatus.FAILURE
    assert len(runs(redis_client, job.pk)) == 3
    assert fresh(job).warnings == [
        "attempt 1 of 3 failed: FlakyError: still flaky",
        "attempt 2 of 3 failed: FlakyError: still flaky",
    ]


def test_a_retry_that_cannot_be_recorded_fails_the_document(broken_worker, redis_client):
    job = RetryUnrecordedJob.create()
    job.always_flaky()
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert fresh(job).errors == [
        "FlakyError: still flaky",
        "the retry could not be recorded: AutoReconnect: injected fault: back_to_pending",
    ]
    assert len(runs(redis_client, job.pk)) == 1


def test_a_retry_that_cannot_be_sent_fails_the_document(worker, start_worker, redis_client):
    start_worker("noretry", FAULT_QUEUE, PROCSTATUS_TEST_BREAK_RETRY_PUBLISH="1")
    job = FaultJob.create(name="retry never sent")
    job.always_flaky()
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    done = fresh(job)
    assert len(runs(redis_client, job.pk)) == 1
    assert done.errors == [
        "FlakyError: still flaky; the retry could not be sent: "
        "injected fault: broker refused the retry"
    ]


def test_a_worker_without_a_connection_of_its_own_is_caught_by_the_sweeper(
    worker, start_worker, test_db, mongodb_uri
):
    mongoengine.connect(db=test_db, host=mongodb_uri, alias="unconnected")
    try:
        unconnected_worker = start_worker("unconnected", FAULT_QUEUE)
        job = UnconnectedJob.create()
        job.noop()
        wait_for(lambda: "cannot start UnconnectedJob" in unconnected_worker.log_text(),
                 timeout=30, what="the failed claim")
        assert "stays PENDING with no message behind it" in unconnected_worker.log_text()
        report = procstatus.sweep(pending_timeout=0, classes=[UnconnectedJob])
        assert report.never_started == [f"UnconnectedJob({job.pk})"]
        assert fresh(job).process_status is ProcessStatus.FAILURE
    finally:
        mongoengine.disconnect("unconnected")


def test_a_worker_whose_main_process_cannot_reach_mongodb_stops_and_takes_nothing(
    worker, worker_env, service_log_dir, redis_client
):
    job = FaultJob.create(name="waits for a well-configured worker")
    job.queued_nowhere()
    env = {**worker_env, "PROCSTATUS_TEST_COMMAND_LOG": ""}
    broken = services.start_worker(
        "tests.support.process_init_app", service_log_dir, hostname="noconn@%h", env=env,
        queues=IDLE_QUEUE,
    )
    try:
        assert broken.process.wait(60) == 0  # a warm shutdown
        assert "has no MongoDB connection" in broken.log_text()
    finally:
        broken.kill_group()
    assert fresh(job).process_status is ProcessStatus.PENDING
    assert runs(redis_client, job.pk) == []
    good = services.start_worker("tests.support.worker_app", service_log_dir,
                                 hostname="goodconn@%h", env=env, queues=IDLE_QUEUE)
    try:
        assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    finally:
        good.kill_group()


# --- what operators read -----------------------------------------------------------------------


def test_cancelling_a_running_process_logs_no_error(worker, redis_client):
    job = Job.create(name="cancel without terminate")
    job.gated(["first", "second"])
    wait_for(lambda: fresh(job).current_process_step == "first", timeout=30, what="step one")
    assert job.cancel() is True
    redis_client.rpush(gate_key(job.pk), 1)  # the body goes on to its next step and stops
    wait_for(lambda: f"Job({job.pk}).gated stopped: its run was ended from outside"
             in worker.log_text(), timeout=30, what="the run to stop")
    lines = [line for line in worker.log_text().splitlines() if job.celery_task_id in line]
    assert not [line for line in lines if "ERROR" in line], lines
    done = fresh(job)
    assert done.errors == ["cancelled"] and done.last_status_message == (
        "Process gated failed: cancelled"
    )


def test_a_late_message_for_a_swept_run_says_why_it_does_not_run(
    worker, start_worker, redis_client
):
    job = FaultJob.create(name="swept before its worker came")
    job.queued_nowhere()
    procstatus.sweep(pending_timeout=0, classes=[FaultJob])
    late = start_worker("latecomer", IDLE_QUEUE)
    wait_for(lambda: f"not running FaultJob({job.pk}).queued_nowhere" in late.log_text(),
             timeout=30, what="the late message refused")
    assert "this run already ended, FAILURE: Process queued_nowhere failed: never started" \
        in late.log_text()
    assert runs(redis_client, job.pk) == []


def test_every_chosen_failure_message_is_kept_in_the_status_message(worker):
    job = Job.create(name="two reasons")
    job.fail_on_purpose("first reason", "second reason")
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    done = fresh(job)
    assert done.errors == ["first reason", "second reason"]
    assert done.last_status_message == (
        "Process fail_on_purpose failed: first reason; second reason"
    )
