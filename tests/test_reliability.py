"""Fault injection into real processes: no status is ever left stuck or wrong.

Each test kills, times out, cancels, retries or duplicates something in real
``celery worker`` processes (prefork) on real Redis and a real MongoDB-protocol server.
Faults go to workers started for the test on their own queues, so the session's main
worker is unaffected. Figures (runs, kills, stuck) are printed for the README.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import mongoengine
import pytest

import procstatus
from devtools import services
from devtools.services import wait_for
from procstatus import ProcessStatus
from procstatus.liveness import pid_alive
from tests.support.models import (
    FAULT_QUEUE,
    IDLE_QUEUE,
    LOSS_QUEUE,
    RESENT_LOSS_CAP,
    SPARE_QUEUE,
    FaultJob,
    Job,
    OutageJob,
    RejoinedParent,
    SelfKillingJob,
    gate_key,
    runs_key,
)

pytestmark = pytest.mark.integration

HEARTBEAT = 1.0
THRESHOLD = 3 * HEARTBEAT
KILLS = int(os.environ.get("PROCSTATUS_TEST_KILLS", "20"))


def broker_kind() -> str:
    return services.broker_url().split(":", 1)[0]


def fresh(pk) -> FaultJob:  # type: ignore[no-untyped-def]
    return FaultJob.objects.get(pk=pk)


def running_pid(job: FaultJob, timeout: float = 30) -> int:
    doc = wait_for(
        lambda: (d := fresh(job.pk)).process_status is ProcessStatus.RUNNING and d,
        timeout=timeout, what=f"{job.name} RUNNING",
    )
    assert doc.worker_pid
    return doc.worker_pid


def runs(redis_client, pk) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.decode() for r in redis_client.lrange(runs_key(pk), 0, -1)]


def test_killing_the_pool_process_twenty_times_leaves_nothing_stuck(
    worker, start_worker, record_figure
):
    start_worker("kills", FAULT_QUEUE)
    jobs = []
    for i in range(KILLS):
        job = FaultJob.create(name=f"kill {i}")
        job.hang()
        os.kill(running_pid(job), signal.SIGKILL)
        assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
        jobs.append(job)
    stuck = FaultJob.objects(pk__in=[j.pk for j in jobs]).processing().count()
    errors = [fresh(j.pk).errors for j in jobs]
    record_figure(
        f"RELIABILITY pool-process kills ({broker_kind()}): runs={KILLS} kills={KILLS} "
        f"stuck={stuck}"
    )
    assert stuck == 0
    assert all(len(e) == 1 and e[0].startswith("WorkerLostError: worker lost") for e in errors)


def test_acks_late_redelivery_runs_the_process_again_once(worker, start_worker, redis_client):
    start_worker("ackslate", FAULT_QUEUE, PROCSTATUS_TEST_ACKS_LATE="1")
    job = FaultJob.create(name="redelivered")
    job.hang_first_time()
    first_pid = running_pid(job)
    # Kill only once the body has marked its first run, or the redelivery would block too.
    wait_for(lambda: runs(redis_client, job.pk), timeout=30, what="the first run's mark")
    os.kill(first_pid, signal.SIGKILL)
    assert job.block_until_complete(timeout=60) is ProcessStatus.SUCCESS
    done = fresh(job.pk)
    assert len(runs(redis_client, job.pk)) == 2
    assert done.errors == []
    # Moved back to PENDING by the main process before the message went back to the broker.
    [warning] = done.warnings
    assert warning.startswith("restarted after WorkerLostError: worker lost: ")
    assert warning.endswith(f"(pool process {first_pid})")


def test_an_acks_late_redelivery_behind_a_backlog_waits_pending_and_is_not_swept(
    worker, start_worker, redis_client, record_figure
):
    """The requeued message waits behind another task: PENDING meanwhile, never "orphaned".

    Redis puts a rejected message at the back of its queue, so the redelivery waits for
    the task sent after it; the sweeper must not take the run for lost meanwhile.
    """
    start_worker("ackslate-backlog", FAULT_QUEUE, concurrency=1, PROCSTATUS_TEST_ACKS_LATE="1")
    job = FaultJob.create(name="redelivered behind a backlog")
    job.hang_first_time()
    first_pid = running_pid(job)
    wait_for(lambda: runs(redis_client, job.pk), timeout=30, what="the first run's mark")
    blocker = FaultJob.create(name="the backlog")
    blocker.hang()
    os.kill(first_pid, signal.SIGKILL)
    running_pid(blocker)  # the replacement pool process holds it
    first = FaultJob._get_collection().find_one({"_id": job.pk})
    workers = procstatus.liveness.workers_collection()

    def sweeper_could_judge_it() -> bool:
        procstatus.sweep(threshold=THRESHOLD, classes=[FaultJob])
        if fresh(job.pk).process_status is not ProcessStatus.RUNNING:
            beat = workers.find_one({"_id": first["worker_instance"]}) or {}
            # Past this, a RUNNING run its live worker does not list is judged orphaned.
            return beat["heartbeat_at"] - first["start_time"] > timedelta(seconds=2 * THRESHOLD)
        return False

    wait_for(sweeper_could_judge_it, timeout=10 * THRESHOLD, interval=0.2, what="sweeps")
    waiting = fresh(job.pk)
    assert waiting.process_status is not ProcessStatus.FAILURE, waiting.last_status_message
    redis_client.rpush(gate_key(blocker.pk), 1)
    assert job.block_until_complete(timeout=60) is ProcessStatus.SUCCESS
    assert blocker.block_until_complete(timeout=60) is ProcessStatus.SUCCESS
    assert len(runs(redis_client, job.pk)) == 2
    assert fresh(job.pk).errors == []
    record_figure(f"RELIABILITY acks_late pool kill behind a backlog ({broker_kind()}): "
                  f"{waiting.process_status.value} after sweeps past 2x threshold, "
                  "SUCCESS at the end, body ran 2 times")


def test_an_acks_late_run_of_a_killed_worker_waits_for_its_redelivery_and_runs_again(
    worker, start_worker, redis_client, record_figure
):
    """The whole worker dies with an unacknowledged message: PENDING, then it runs again.

    The broker gives the message back (RabbitMQ at once, Redis after the visibility
    timeout, set here past the sweeper's judgement so the sweeper comes first).
    """
    env = {"PROCSTATUS_TEST_ACKS_LATE": "1", "PROCSTATUS_TEST_VISIBILITY_TIMEOUT": "8"}
    doomed = start_worker("ackslate-doomed", FAULT_QUEUE, concurrency=1, **env)
    job = FaultJob.create(name="redelivered after a worker loss")
    job.hang_first_time()
    running_pid(job)
    wait_for(lambda: runs(redis_client, job.pk), timeout=30, what="the first run's mark")
    assert FaultJob._get_collection().find_one({"_id": job.pk})["worker_redelivers"] is True
    doomed.kill_group()
    killed_at = time.monotonic()
    start_worker("ackslate-heir", FAULT_QUEUE, concurrency=1, **env)

    def resolved() -> bool:
        procstatus.sweep(threshold=THRESHOLD, classes=[FaultJob])
        return fresh(job.pk).process_status is not ProcessStatus.RUNNING

    wait_for(resolved, timeout=10 * THRESHOLD, interval=0.2, what="the sweeper")
    resolved_as = fresh(job.pk).process_status
    assert job.block_until_complete(timeout=60) is ProcessStatus.SUCCESS
    done = fresh(job.pk)
    assert done.errors == []
    assert len(runs(redis_client, job.pk)) == 2
    assert any(w.startswith("restarted after worker lost") for w in done.warnings), done.warnings
    record_figure(f"RELIABILITY acks_late whole-worker kill ({broker_kind()}): "
                  f"{resolved_as.value} once no longer RUNNING, SUCCESS on another worker "
                  f"{time.monotonic() - killed_at:.1f}s after the kill, body ran 2 times")


def test_an_acks_late_join_whose_pool_process_is_lost_joins_again(
    worker, start_worker, redis_client, record_figure
):
    """The join's message goes back to the broker: the parent waits again, and is joined."""
    start_worker("ackslate-join", FAULT_QUEUE, concurrency=1, PROCSTATUS_TEST_ACKS_LATE="1")
    parent = RejoinedParent.create()
    parent.wait()
    joins = wait_for(lambda: runs(redis_client, parent.pk), timeout=30, what="the first join")
    os.kill(int(joins[0].split(":")[1]), signal.SIGKILL)
    assert parent.block_until_complete(timeout=60) is ProcessStatus.SUCCESS
    done = RejoinedParent.objects.get(pk=parent.pk)
    assert len(runs(redis_client, parent.pk)) == 2
    assert done.errors == []
    [warning] = done.warnings
    assert warning.startswith("join restarted after WorkerLostError: worker lost: "), warning
    record_figure(f"RELIABILITY acks_late join pool kill ({broker_kind()}): the parent waited "
                  f"again and was joined, {done.process_status.value}, join() ran 2 times")


INSTALLED_LOSS_CAP = 3
"""``install()``'s default ``max_worker_losses``, which the test workers keep."""
LOST = "WorkerLostError: worker lost: "


def lost_until_the_cap(redis_client, job: SelfKillingJob, cap: int) -> SelfKillingJob:  # type: ignore[no-untyped-def]
    """Wait until ``job`` ends, or its body ran more often than the cap allows."""
    def ended_or_past_the_cap() -> SelfKillingJob | None:
        doc = SelfKillingJob.objects.get(pk=job.pk)
        over = len(runs(redis_client, job.pk)) > cap + 1
        return doc if over or doc.process_status not in ProcessStatus.processing() else None

    # About 5 s per loss: Celery notices a dead pool process at its maintenance tick.
    return wait_for(ended_or_past_the_cap, timeout=60 + 15 * cap, interval=0.2,
                    what=f"{job.pk} to end, or to run more than {cap + 1} times")


def assert_ended_by_the_cap(doc: SelfKillingJob, cap: int, body_runs: int) -> None:
    assert body_runs == cap + 1, f"the body ran {body_runs} times; the cap is {cap}"
    assert doc.process_status is ProcessStatus.FAILURE, doc.last_status_message
    [error] = doc.errors
    prefix = f"lost its worker {cap + 1} times, more than max_worker_losses={cap} allows; last: "
    assert error.startswith(prefix + LOST), error
    assert doc.last_status_message == f"Process {doc.current_process} failed: {error}"
    assert doc.worker_losses == cap + 1


def test_a_resent_process_that_kills_its_pool_process_every_time_ends_at_its_cap(
    worker, start_worker, redis_client, record_figure
):
    """``retry_on_worker_lost``: sent again after each lost pool process, up to the cap."""
    start_worker("losses-resent", LOSS_QUEUE, concurrency=1)
    job = SelfKillingJob.create()
    job.crash_resent()
    started = time.monotonic()
    doc = lost_until_the_cap(redis_client, job, RESENT_LOSS_CAP)
    body_runs = len(runs(redis_client, job.pk))
    assert_ended_by_the_cap(doc, RESENT_LOSS_CAP, body_runs)
    assert len(doc.warnings) == RESENT_LOSS_CAP
    assert all(w.startswith(f"sent again after {LOST}") for w in doc.warnings), doc.warnings
    record_figure(f"RELIABILITY loss cap, retry_on_worker_lost ({broker_kind()}): "
                  f"max_worker_losses={RESENT_LOSS_CAP}, body ran {body_runs} times, FAILURE "
                  f"{time.monotonic() - started:.1f}s after the call")


def test_a_redelivered_process_that_kills_its_pool_process_every_time_ends_at_the_cap(
    worker, start_worker, redis_client, record_figure
):
    """``acks_late`` + ``reject_on_worker_lost``: the broker gives the message back after
    each lost pool process, up to ``install()``'s cap; the last loss drops it."""
    loss_worker = start_worker(
        "losses-redelivered", LOSS_QUEUE, concurrency=1, PROCSTATUS_TEST_ACKS_LATE="1"
    )
    job = SelfKillingJob.create()
    job.crash_redelivered()
    started = time.monotonic()
    doc = lost_until_the_cap(redis_client, job, INSTALLED_LOSS_CAP)
    body_runs = len(runs(redis_client, job.pk))
    assert_ended_by_the_cap(doc, INSTALLED_LOSS_CAP, body_runs)
    assert len(doc.warnings) == INSTALLED_LOSS_CAP
    assert all(w.startswith(f"restarted after {LOST}") for w in doc.warnings), doc.warnings
    assert doc.errors[0].endswith(f"(pool process {doc.worker_pid})")
    # The last loss ended the run instead of giving the message back.
    wait_for(lambda: "not given back to the broker" in loss_worker.log_text(), timeout=30,
             what="the dropped message in the worker's log")
    record_figure(f"RELIABILITY loss cap, acks_late ({broker_kind()}): "
                  f"max_worker_losses={INSTALLED_LOSS_CAP}, body ran {body_runs} times, "
                  f"FAILURE {time.monotonic() - started:.1f}s after the call")


def test_a_join_that_kills_its_pool_process_every_time_ends_the_parent_at_the_cap(
    worker, start_worker, redis_client
):
    """``acks_late``: the join task is delivered again after each lost pool process, and
    the parent waits again, up to the cap of the parent's process."""
    start_worker("losses-join", LOSS_QUEUE, concurrency=1, PROCSTATUS_TEST_ACKS_LATE="1")
    parent = SelfKillingJob.create()
    parent.wait()
    doc = lost_until_the_cap(redis_client, parent, INSTALLED_LOSS_CAP)
    joins = len(runs(redis_client, parent.pk))
    assert joins == INSTALLED_LOSS_CAP + 1, f"join() ran {joins} times"
    assert doc.process_status is ProcessStatus.FAILURE, doc.last_status_message
    [error] = doc.errors
    assert error.startswith(
        f"join failed: lost its worker {INSTALLED_LOSS_CAP + 1} times, more than "
        f"max_worker_losses={INSTALLED_LOSS_CAP} allows; last: {LOST}"
    ), error
    assert all(w.startswith(f"join restarted after {LOST}") for w in doc.warnings)
    assert len(doc.warnings) == INSTALLED_LOSS_CAP


def test_sweeper_resolves_a_killed_worker_and_spares_a_healthy_one(
    worker, start_worker, redis_client, record_figure
):
    doomed_worker = start_worker("doomed", FAULT_QUEUE, concurrency=10)
    start_worker("healthy", SPARE_QUEUE, concurrency=2)
    doomed = [FaultJob.create(name=f"doomed {i}") for i in range(9)]
    for job in doomed:
        job.hang()
    idempotent = FaultJob.create(name="idempotent")
    idempotent.hang_idempotent()
    doomed.append(idempotent)
    healthy = [FaultJob.create(name=f"healthy {i}") for i in range(2)]
    for job in healthy:
        job.hang_on_spare()
    for job in doomed + healthy:
        running_pid(job)

    # All alive: none of this test's runs is touched (other tests' leftovers may be swept).
    ours = {f"FaultJob({j.pk})" for j in doomed + healthy}
    assert not ours & set(procstatus.sweep(threshold=THRESHOLD, classes=[FaultJob]).failed)
    doomed_worker.kill_group()
    killed_at = time.monotonic()

    def all_resolved() -> bool:
        procstatus.sweep(threshold=THRESHOLD, classes=[FaultJob])
        return FaultJob.objects(pk__in=[j.pk for j in doomed]).processing(
        ).filter(process_status=ProcessStatus.RUNNING).count() == 0

    wait_for(all_resolved, timeout=4 * THRESHOLD, interval=0.2, what="the sweeper")
    took = time.monotonic() - killed_at
    failed = [fresh(j.pk) for j in doomed[:9]]
    record_figure(f"RELIABILITY whole-worker kill: running=10 resolved=10 in {took:.1f}s "
          f"(threshold {THRESHOLD:.0f}s) healthy-touched=0")
    assert took <= 2 * THRESHOLD
    assert all(d.process_status is ProcessStatus.FAILURE for d in failed)
    assert all(d.errors[0].startswith("worker lost: no heartbeat from doomed-") for d in failed)
    # The idempotent one was sent again; a new worker on its queue finishes it.
    assert fresh(idempotent.pk).process_status is ProcessStatus.PENDING
    start_worker("replacement", FAULT_QUEUE)
    running_pid(idempotent)
    redis_client.rpush(gate_key(idempotent.pk), 1)
    assert idempotent.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    assert fresh(idempotent.pk).warnings[0].startswith("sent again after worker lost")
    # Keep sweeping for two more thresholds: the live worker's runs are never touched.
    healthy_labels = {f"FaultJob({j.pk})" for j in healthy}
    watch_until = time.monotonic() + 2 * THRESHOLD
    while time.monotonic() < watch_until:
        swept = procstatus.sweep(threshold=THRESHOLD, classes=[FaultJob])
        assert not healthy_labels & set(swept.failed)
    # Procs on the healthy worker still finish normally.
    for job in healthy:
        assert fresh(job.pk).process_status is ProcessStatus.RUNNING
        redis_client.rpush(gate_key(job.pk), 1)
        assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS


def test_soft_and_hard_time_limits_end_in_failure_naming_the_limit(worker, start_worker):
    start_worker("limits", FAULT_QUEUE)
    soft = FaultJob.create(name="soft")
    soft.overrun_soft()
    hard = FaultJob.create(name="hard")
    hard.overrun_hard()
    assert soft.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert hard.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    assert fresh(soft.pk).errors == [
        "SoftTimeLimitExceeded: soft time limit (1s) exceeded"
    ]
    assert fresh(hard.pk).errors == [
        "TimeLimitExceeded: hard time limit (1s) exceeded; the process was killed"
    ]


def test_cancel_pending_never_runs_even_without_the_revoke(worker, start_worker, redis_client):
    job = FaultJob.create(name="cancel pending")
    job.queued_nowhere()  # its queue has no consumer yet
    assert fresh(job.pk).process_status is ProcessStatus.PENDING
    assert job.cancel() is True
    done = fresh(job.pk)
    assert done.process_status is ProcessStatus.FAILURE and done.errors == ["cancelled"]
    # A worker started now never saw the revoke (no mingle); the claim alone stops it.
    late = start_worker("late", IDLE_QUEUE)
    wait_for(lambda: f"not running FaultJob({job.pk}).queued_nowhere" in late.log_text(),
             timeout=30, what="the cancelled message to be refused")
    assert runs(redis_client, job.pk) == []
    assert fresh(job.pk).process_status is ProcessStatus.FAILURE
    assert job.cancel() is False


def test_cancel_running_with_terminate_kills_it(worker, start_worker):
    start_worker("terminate", FAULT_QUEUE)
    job = FaultJob.create(name="cancel running")
    job.hang()
    pid = running_pid(job)
    assert job.cancel(terminate=True) is True
    assert job.process_status is ProcessStatus.FAILURE
    wait_for(lambda: not pid_alive(pid), timeout=30, what=f"pool process {pid} killed")
    done = fresh(job.pk)
    assert done.process_status is ProcessStatus.FAILURE and done.errors == ["cancelled"]


def test_retries_up_to_the_limit_keep_the_history(worker, start_worker, redis_client):
    start_worker("retries", FAULT_QUEUE)
    job = FaultJob.create(name="always flaky")
    job.always_flaky()
    assert job.block_until_complete(timeout=30) is ProcessStatus.FAILURE
    done = fresh(job.pk)
    assert len(runs(redis_client, job.pk)) == 3
    assert done.errors == ["FlakyError: still flaky"]
    assert done.warnings == [
        "attempt 1 of 3 failed: FlakyError: still flaky",
        "attempt 2 of 3 failed: FlakyError: still flaky",
    ]
    assert FaultJob.objects.count() == FaultJob.objects(pk__ne=None).count()  # no new docs


def test_retry_goes_back_to_pending_then_succeeds(worker, start_worker, redis_client):
    start_worker("retries2", FAULT_QUEUE)
    job = FaultJob.create(name="flaky twice")
    job.flaky_twice()
    wait_for(
        lambda: (d := fresh(job.pk)).process_status is ProcessStatus.PENDING
        and d.last_status_message == "Process flaky_twice: retry 1/3 in 1 s",
        timeout=30, interval=0.02, what="PENDING for retry 1/3",
    )
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    done = fresh(job.pk)
    assert len(runs(redis_client, job.pk)) == 3
    assert done.errors == [] and len(done.warnings) == 2


def test_the_same_message_delivered_twice_runs_once(
    worker, start_worker, celery_app_under_test, redis_client
):
    dup_worker = start_worker("duplicates", FAULT_QUEUE)
    job = FaultJob.create(name="duplicate")
    job.hang()
    running_pid(job)
    message = ["FaultJob", str(job.pk), "hang", [], {}]
    celery_app_under_test.send_task(
        "procstatus.run", args=message, task_id=job.celery_task_id, queue=FAULT_QUEUE
    )
    wait_for(lambda: "still running (duplicate delivery)" in dup_worker.log_text(),
             timeout=30, what="the duplicate to be refused")
    redis_client.rpush(gate_key(job.pk), 1)
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    celery_app_under_test.send_task(
        "procstatus.run", args=message, task_id=job.celery_task_id, queue=FAULT_QUEUE
    )
    wait_for(lambda: "this run already ended, SUCCESS" in dup_worker.log_text(),
             timeout=30, what="the late duplicate to be refused")
    assert len(runs(redis_client, job.pk)) == 1
    assert fresh(job.pk).process_status is ProcessStatus.SUCCESS


def test_mongodb_down_when_the_task_starts_is_retried_until_it_is_back(
    worker, start_worker, celery_app_under_test, service_log_dir, redis_client, tmp_path
):
    storage = tmp_path / "outage-db"
    port = services.free_port()
    server = services.start_secantus(service_log_dir, port=port, storage_path=str(storage))
    mongoengine.connect(db="outage", host=server.url, alias="outage",
                        serverSelectionTimeoutMS=1500)
    try:
        outage_worker = start_worker(
            "outage", FAULT_QUEUE, PROCSTATUS_TEST_OUTAGE_URI=server.url
        )
        job = OutageJob.create()
        job.noop()  # queued where nobody consumes yet
        server.stop()
        celery_app_under_test.control.add_consumer(
            IDLE_QUEUE + "-outage",
            destination=[outage_worker.url.replace("%h", os.uname().nodename)],
        )
        wait_for(lambda: "MongoDB unreachable" in outage_worker.log_text()
                 or "cannot start OutageJob" in outage_worker.log_text(),
                 timeout=60, what="the failed start")
        assert runs(redis_client, job.pk) == []
        server = services.start_secantus(service_log_dir, port=port, storage_path=str(storage))
        assert job.block_until_complete(timeout=90) is ProcessStatus.SUCCESS
        assert len(runs(redis_client, job.pk)) == 1
    finally:
        server.stop()
        mongoengine.disconnect("outage")


def test_oversize_forged_arguments_are_rejected(worker, celery_app_under_test, redis_client):
    job = Job.create(name="oversize")
    result = celery_app_under_test.send_task(
        "procstatus.run", args=["Job", str(job.pk), "takes", ["x" * 70_000], {}]
    )
    wait_for(lambda: f"rejected task {result.id}" in worker.log_text(), timeout=30,
             what="the rejection")
    assert "over the 65536-byte limit" in worker.log_text()
    assert runs(redis_client, job.pk) == []
    assert Job.objects.get(pk=job.pk).process_status is ProcessStatus.READY


def test_passwords_in_uris_are_redacted():
    from procstatus.text import redact

    assert redact("mongodb://app:s3cret@db1:27017,db2/x?replicaSet=r") == (
        "mongodb://app:***@db1:27017,db2/x?replicaSet=r"
    )
    assert redact("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact("mongodb://127.0.0.1") == "mongodb://127.0.0.1"
