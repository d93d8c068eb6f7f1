"""The cap on lost workers: the count is kept in the writes that try a run again, and the
write that would pass the cap matches nothing, so the one ending path ends the run.

Against the real MongoDB-protocol server: first the conditions of each write of
:mod:`procstatus.transitions`, then each path that tries a run again after a lost worker
(:func:`procstatus.endings.end_run` resending, :func:`~procstatus.endings.await_redelivery`,
:func:`~procstatus.endings.await_join_redelivery`, the claim's reclaim, the sweeper), then
where the cap comes from.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from bson import ObjectId
from celery import Celery

from procstatus import Proc, ProcessStatus, endings, hooks, runtime, sweeper, transitions
from procstatus.claims import claim
from procstatus.dispatch import process
from procstatus.endings import Ending, RunRef
from procstatus.messages import ProcessCall
from procstatus.spec import process_spec
from procstatus.transitions import WorkerLoss, WorkerRef
from tests.unit.compat import at

S = ProcessStatus
LONG_AGO = datetime(2020, 1, 2, 3, 4, 5)
DEAD_PID = 2**22 + 12345  # above Linux's pid_max: never a live process


def running(coll, losses=None, *, task_id="task-1", process="crunch", **fields):
    """A RUNNING run that has lost its worker ``losses`` times (``None``: no count stored,
    as for a run scheduled before the count existed)."""
    doc = {
        "_id": ObjectId(),
        "process_status": S.RUNNING.value,
        "current_process": process,
        "celery_task_id": task_id,
        "errors": [],
        "warnings": [],
        "worker_instance": "instance-a",
        "worker_pid": 4001,
        "status_changed_at": LONG_AGO,
        **fields,
    }
    if losses is not None:
        doc["worker_losses"] = losses
    coll.insert_one(doc)
    return doc


def stored(coll, pk):
    return coll.find_one({"_id": pk})


def send_back(coll, doc, loss, task_id="task-1"):
    return transitions.back_to_pending(
        at(coll, doc["_id"]), task_id, message="again", warning="lost", loss=loss
    )


# --- the count and the cap in the writes ---------------------------------------------------


@pytest.mark.parametrize(("losses", "cap"), [(None, 3), (0, 3), (2, 3), (None, 1), (0, 1)])
def test_sending_a_lost_run_back_counts_the_loss_in_the_same_write(coll, losses, cap):
    doc = running(coll, losses)
    assert send_back(coll, doc, WorkerLoss(cap)) is True
    after = stored(coll, doc["_id"])
    assert (after["process_status"], after["worker_losses"]) == ("PENDING", (losses or 0) + 1)
    assert after["warnings"] == ["lost"]


@pytest.mark.parametrize(("losses", "cap"), [(3, 3), (4, 3), (0, 0), (1, 1)])
def test_the_write_that_would_pass_the_cap_matches_nothing(coll, losses, cap):
    doc = running(coll, losses)
    assert send_back(coll, doc, WorkerLoss(cap)) is False
    assert stored(coll, doc["_id"]) == doc


def test_a_cap_of_zero_sends_back_even_a_run_without_a_count_only_once(coll):
    # The count is missing (scheduled before it existed): that run has lost nothing yet.
    doc = running(coll, None)
    assert send_back(coll, doc, WorkerLoss(0)) is True
    assert stored(coll, doc["_id"])["worker_losses"] == 1


def test_a_retry_of_the_body_is_no_worker_loss(coll):
    doc = running(coll, 3)
    assert transitions.back_to_pending(at(coll, doc["_id"]), "task-1", message="m", warning="w")
    assert stored(coll, doc["_id"])["worker_losses"] == 3  # neither counted nor capped


def test_a_loss_naming_its_attempt_leaves_another_attempt_alone(coll):
    # The lost attempt ran in pool process 4001 of instance-a; a redelivery has since
    # taken the run over elsewhere under the same task id.
    doc = running(coll, 0, worker_instance="instance-b", worker_pid=5001)
    assert send_back(coll, doc, WorkerLoss(3, "instance-a", 4001)) is False
    assert transitions.fail_run(
        at(coll, doc["_id"]), "task-1", "crunch", "e",
        over_cap=WorkerLoss(0, "instance-a", 4001),
    ) is False
    assert stored(coll, doc["_id"]) == doc
    assert send_back(coll, doc, WorkerLoss(3, "instance-b", 5001)) is True


def test_another_task_id_is_not_counted(coll):
    doc = running(coll, 0)
    assert send_back(coll, doc, WorkerLoss(3), task_id="task-0") is False
    assert stored(coll, doc["_id"]) == doc


@pytest.mark.parametrize(("losses", "cap", "won"), [(None, 2, True), (1, 2, True), (2, 2, False)])
def test_a_reclaim_counts_the_loss_within_the_cap(coll, losses, cap, won):
    doc = running(coll, losses)
    lost = {"worker_instance": "instance-a", "worker_pid": 4001}
    taken = transitions.reclaim(
        at(coll, doc["_id"]), "task-1", lost, WorkerRef("h", "instance-b", 5001), "lost",
        loss_cap=cap,
    )
    assert (taken is not None) is won
    if won:
        assert taken["worker_losses"] == (losses or 0) + 1
        assert taken["worker_instance"] == "instance-b"
    else:
        assert stored(coll, doc["_id"]) == doc


@pytest.mark.parametrize(("losses", "won"), [(0, True), (2, True), (3, False)])
def test_a_join_given_back_counts_the_loss_within_the_cap(coll, losses, won):
    doc = running(coll, losses, joining=True)
    moved = transitions.abandon_join(
        at(coll, doc["_id"]), "task-1", warning="w", loss=WorkerLoss(3)
    )
    assert moved is won
    after = stored(coll, doc["_id"])
    if won:
        assert (after["process_status"], after["worker_losses"]) == ("WAITING_FOR_RESULT",
                                                                     losses + 1)
    else:
        assert after == doc


@pytest.mark.parametrize(("losses", "cap", "won"), [(None, 3, False), (2, 3, False),
                                                     (3, 3, True), (5, 3, True), (0, 0, True)])
def test_the_ending_past_the_cap_needs_the_cap_reached(coll, losses, cap, won):
    doc = running(coll, losses)
    ended = transitions.fail_run(
        at(coll, doc["_id"]), "task-1", "crunch", "too often", frozenset({S.RUNNING}),
        over_cap=WorkerLoss(cap, "instance-a", 4001),
    )
    assert ended is won
    after = stored(coll, doc["_id"])
    if won:
        assert (after["process_status"], after["errors"]) == ("FAILURE", ["too often"])
        assert after["worker_losses"] == losses + 1  # the loss that ended it, counted too
    else:
        assert after == doc


def test_a_new_run_starts_with_no_loss_and_a_failed_publish_restores_the_count(coll):
    doc = running(coll, 4)
    coll.update_one({"_id": doc["_id"]}, {"$set": {"process_status": "FAILURE"}})
    before = transitions.schedule(at(coll, doc["_id"]), "crunch", "task-2")
    assert before["worker_losses"] == 4
    assert stored(coll, doc["_id"])["worker_losses"] == 0
    assert transitions.unschedule(at(coll, doc["_id"]), "task-2", before)
    assert stored(coll, doc["_id"])["worker_losses"] == 4
    assert transitions.reset(at(coll, doc["_id"])) is not None
    assert stored(coll, doc["_id"])["worker_losses"] == 0


def test_the_count_is_a_state_field_save_does_not_write():
    assert "worker_losses" in transitions.STATE_FIELDS
    assert LossJob().worker_losses == 0


# --- the paths that try a run again ----------------------------------------------------------


class LossJob(Proc):
    meta = {"collection": "unit_loss_jobs"}

    @process(retry_on_worker_lost=True)
    def resendable(self):
        """Sent again after a lost worker; install()'s cap."""

    @process(retry_on_worker_lost=True, max_worker_losses=1)
    def resendable_once(self):
        """Sent again at most once."""

    @process(retry_on_worker_lost=True, max_worker_losses=0)
    def resendable_never(self):
        """Never sent again: a lost worker ends it."""

    @process
    def plain(self):
        """Fails at a lost worker unless the broker gives its message back."""

    def children(self):
        return LossJob.objects(pk=None)


@pytest.fixture
def cap(monkeypatch, test_db):
    """install()'s cap, as the process that records a loss reads it; no LossJob left over."""
    monkeypatch.setattr(runtime.current, "max_worker_losses", 2)
    LossJob.objects.delete()
    return 2


def run_of(process_name, losses, **fields):
    """A LossJob RUNNING ``process_name`` under task-1 after ``losses`` lost workers."""
    job = LossJob.create()
    coll = LossJob._get_collection()
    coll.update_one({"_id": job.pk}, {"$set": {
        "process_status": "RUNNING", "current_process": process_name, "celery_task_id": "task-1",
        "worker_losses": losses, "worker_instance": "instance-a", "worker_pid": DEAD_PID,
        "worker_hostname": "lost@host", "status_changed_at": LONG_AGO,
        "process_arguments": {"args": [], "kwargs": {}}, **fields,
    }})
    return job, RunRef(LossJob, job.pk, "task-1", process_name)


def state(job):
    return LossJob._get_collection().find_one({"_id": job.pk})


def ended_past(cap, reason):
    return f"lost its worker {cap + 1} times, more than max_worker_losses={cap} allows; " \
           f"last: {reason}"


@pytest.mark.usefixtures("test_db")
class TestTheOneEndingPath:
    def test_a_resend_within_the_cap_is_sent_again_and_counted(self, publisher, cap):
        job, run = run_of("resendable", cap - 1)
        call = ProcessCall.from_state(LossJob, state(job))
        assert endings.end_run(run, "worker lost: x", send_again=call) is Ending.SENT_AGAIN
        assert len(publisher.calls) == 1
        assert (state(job)["process_status"], state(job)["worker_losses"]) == ("PENDING", cap)

    def test_the_resend_past_the_cap_ends_the_run_with_the_count_and_the_last_reason(
        self, publisher, cap
    ):
        job, run = run_of("resendable", cap)
        call = ProcessCall.from_state(LossJob, state(job))
        assert endings.end_run(run, "worker lost: x", send_again=call) is Ending.FAILED
        assert publisher.calls == []
        after = LossJob.objects.get(pk=job.pk)
        assert after.process_status is S.FAILURE
        assert after.errors == [ended_past(cap, "worker lost: x")]
        assert after.last_status_message == f"Process resendable failed: {after.errors[0]}"
        assert after.worker_losses == cap + 1

    def test_a_process_of_its_own_cap_is_held_to_it(self, publisher, cap):
        job, run = run_of("resendable_once", 1)
        call = ProcessCall.from_state(LossJob, state(job))
        assert endings.end_run(run, "gone", send_again=call) is Ending.FAILED
        assert LossJob.objects.get(pk=job.pk).errors == [
            "lost its worker 2 times, more than max_worker_losses=1 allows; last: gone"
        ]

    def test_a_lost_run_that_never_started_is_still_failed_as_lost(self, publisher, cap):
        # The pool process died before its claim: PENDING, nothing to count.
        job, run = run_of("resendable", cap, process_status="PENDING")
        call = ProcessCall.from_state(LossJob, state(job))
        ended = endings.end_run(
            run, "worker lost: x", send_again=call,
            statuses=frozenset({S.PENDING, S.RUNNING}),
        )
        assert ended is Ending.FAILED
        assert LossJob.objects.get(pk=job.pk).errors == ["worker lost: x"]

    def test_a_redelivery_within_the_cap_waits_pending_under_the_same_task(self, cap):
        job, run = run_of("plain", cap - 1)
        assert endings.await_redelivery(run, "lost", pid=DEAD_PID) is Ending.REDELIVERY
        after = state(job)
        assert (after["process_status"], after["celery_task_id"], after["worker_losses"]) == (
            "PENDING", "task-1", cap)

    def test_the_redelivery_past_the_cap_ends_the_run(self, cap):
        job, run = run_of("plain", cap)
        assert endings.await_redelivery(run, "lost (pool process 1)") is Ending.FAILED
        assert LossJob.objects.get(pk=job.pk).errors == [ended_past(cap, "lost (pool process 1)")]

    def test_a_redelivery_of_another_attempt_is_neither_counted_nor_ended(self, cap):
        job, run = run_of("plain", cap)
        assert endings.await_redelivery(run, "lost", instance="instance-a", pid=4242) is None
        assert state(job)["process_status"] == "RUNNING"

    def test_a_join_past_the_cap_ends_its_parent(self, cap):
        job, _ = run_of("plain", cap, joining=True)
        moved = endings.await_join_redelivery(LossJob, job.pk, "task-1", "lost")
        assert moved is Ending.FAILED
        assert LossJob.objects.get(pk=job.pk).errors == [f"join failed: {ended_past(cap, 'lost')}"]

    def test_a_join_within_the_cap_waits_again(self, cap):
        job, _ = run_of("plain", cap - 1, joining=True)
        assert endings.await_join_redelivery(LossJob, job.pk, "task-1", "lost") is (
            Ending.REDELIVERY)
        assert state(job)["process_status"] == "WAITING_FOR_RESULT"

    @pytest.mark.parametrize("losses", [0, 1, 2])
    def test_a_redelivered_message_takes_over_a_lost_run_within_the_cap(self, cap, losses):
        # Same worker instance, the pool process that ran it is dead: the claim reclaims.
        job, _ = run_of("plain", losses)
        call = ProcessCall(LossJob, job.pk, process_spec(LossJob, "plain"), [], {})
        me = WorkerRef("here@host", "instance-a", 6001)
        taken = claim(call, "task-1", me)
        if losses < cap:
            assert taken is not None and state(job)["worker_losses"] == losses + 1
        else:
            assert taken is None
            assert LossJob.objects.get(pk=job.pk).errors == [
                ended_past(cap, f"its worker process {DEAD_PID} was lost")
            ]

    @pytest.mark.parametrize("redelivers", [False, True])
    def test_the_sweeper_ends_a_lost_run_past_the_cap(self, publisher, cap, redelivers):
        resent, _ = run_of("resendable", cap, worker_instance="gone-instance")
        redelivered, _ = run_of("plain", cap, worker_instance="gone-instance",
                                worker_redelivers=redelivers)
        within, _ = run_of("resendable", cap - 1, worker_instance="gone-instance")
        report = sweeper.sweep(threshold=60, pending_timeout=None, classes=[LossJob])
        assert sorted(report.failed) == sorted(f"LossJob({j.pk})" for j in (resent, redelivered))
        assert report.sent_again == [f"LossJob({within.pk})"]
        assert report.awaiting_redelivery == []
        reason = "worker lost: no heartbeat from lost@host"
        assert LossJob.objects.get(pk=resent.pk).errors == [ended_past(cap, reason)]
        if redelivers:
            assert LossJob.objects.get(pk=redelivered.pk).errors == [ended_past(cap, reason)]
        else:  # not tried again, so not capped: failed as any lost run is
            assert LossJob.objects.get(pk=redelivered.pk).errors == [reason]


# --- where the cap comes from ----------------------------------------------------------------


@pytest.fixture
def isolated_install(monkeypatch):
    """install() here changes nothing the other tests see: the runtime and hook settings."""
    monkeypatch.setattr(runtime, "current", runtime.current)
    for name in ("mongodb_uri", "mongodb_db", "mongodb_alias"):
        monkeypatch.setattr(hooks._hooks, name, getattr(hooks._hooks, name))


@pytest.mark.usefixtures("isolated_install")
def test_install_keeps_its_cap_on_the_runtime():
    app = Celery("loss-cap-install", broker="memory://")
    hooks.install(app)
    assert runtime.current.max_worker_losses == 3
    hooks.install(app, max_worker_losses=7)
    assert runtime.current.max_worker_losses == 7
    assert endings.loss_cap(LossJob, "resendable") == 7
    assert endings.loss_cap(LossJob, "resendable_once") == 1


@pytest.mark.usefixtures("isolated_install")
@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_a_bad_cap_is_refused_saying_what_fits(bad):
    error = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
    with pytest.raises(error, match="max_worker_losses must be an int of 0 or more"):
        process(max_worker_losses=bad)
    with pytest.raises(error, match="max_worker_losses must be an int of 0 or more"):
        hooks.install(Celery("loss-cap-bad", broker="memory://"), max_worker_losses=bad)
    with pytest.raises(TypeError, match="max_worker_losses must be an int of 0 or more"):
        hooks.install(Celery("loss-cap-none", broker="memory://"), max_worker_losses=None)


@pytest.mark.usefixtures("test_db")
def test_a_cap_of_zero_ends_the_run_at_its_first_lost_worker(publisher, cap):
    job, run = run_of("resendable_never", 0)
    call = ProcessCall.from_state(LossJob, state(job))
    assert endings.end_run(run, "gone", send_again=call) is Ending.FAILED
    assert publisher.calls == []
    assert LossJob.objects.get(pk=job.pk).errors == [
        "lost its worker once, more than max_worker_losses=0 allows; last: gone"
    ]
