"""One run driven without Celery: resolve → claim → execute → finish / fail."""

from __future__ import annotations

import logging
import pickle

import pytest
from bson import ObjectId

from procstatus import ProcessFailure, ProcessStatus, failures, runner, transitions
from procstatus.messages import resolve
from tests.unit import compat
from tests.unit.compat import at
from tests.unit.models import UnitHooks, UnitJob

S = ProcessStatus

pytestmark = pytest.mark.usefixtures("test_db")


def raw(cls, pk):
    return cls._get_collection().find_one({"_id": pk})


def scheduled(cls, method, *args, task_id=None, fields=None, **kwargs):
    """A new document of ``cls`` made PENDING for ``method`` as dispatch would do it."""
    proc = cls.create(**(fields or {}))
    task_id = task_id or f"task-{ObjectId()}"
    assert transitions.schedule(at(cls._get_collection(), proc.pk), method, task_id) is not None
    call = resolve([cls.__name__, str(proc.pk), method, list(args), kwargs], {})
    return call, task_id


def claimed(cls, method, *args, fields=None, **kwargs):
    call, task_id = scheduled(cls, method, *args, fields=fields, **kwargs)
    run = compat.claim(call, task_id, "unit@host")
    assert run is not None
    return run


def drive(run):
    """What the Celery hooks do: execute, then finish or fail."""
    try:
        outcome = runner.execute(run)
    except Exception as exc:
        return runner.fail(run.proc, exc)
    return runner.finish(run.proc, outcome)


# --- claim -------------------------------------------------------------------------------


def test_claim_moves_pending_to_running_and_returns_the_run():
    call, task_id = scheduled(UnitJob, "noop")
    run = compat.claim(call, task_id, "unit@host")
    assert run.task_id == task_id and run.call is call
    assert run.describe() == f"UnitJob({call.pk}).noop"
    assert isinstance(run.proc, UnitJob) and run.proc.pk == call.pk
    assert run.proc.process_status is S.RUNNING
    assert run.proc.celery_task_id == task_id
    stored = raw(UnitJob, call.pk)
    assert stored["process_status"] == "RUNNING"
    assert stored["worker_hostname"] == "unit@host"
    assert stored["start_time"] is not None


def test_claim_is_lost_for_a_wrong_task_id(caplog):
    call, task_id = scheduled(UnitJob, "noop")
    before = raw(UnitJob, call.pk)
    with caplog.at_level(logging.WARNING, logger="procstatus"):
        assert compat.claim(call, "another-task", "h") is None
    assert raw(UnitJob, call.pk) == before
    assert "PENDING for another task" in caplog.text


def test_duplicate_claim_is_lost(caplog):
    call, task_id = scheduled(UnitJob, "noop")
    assert compat.claim(call, task_id, "first") is not None
    running = raw(UnitJob, call.pk)
    with caplog.at_level(logging.WARNING, logger="procstatus"):
        try:
            second = compat.claim(call, task_id, "second")
        except Exception as exc:
            # The worker-liveness work in progress may defer the decision (it cannot
            # tell yet whether "first" is alive); it must not take the run over either.
            assert type(exc).__name__ == "ClaimUndecided", exc
        else:
            assert second is None
            assert "RUNNING" in caplog.text
    assert raw(UnitJob, call.pk) == running


def test_claim_of_a_deleted_document_is_lost_and_creates_nothing(caplog):
    call, task_id = scheduled(UnitJob, "noop")
    UnitJob.objects(pk=call.pk).delete()
    with caplog.at_level(logging.WARNING, logger="procstatus"):
        assert compat.claim(call, task_id, "h") is None
    assert UnitJob.objects(pk=call.pk).count() == 0
    assert "no longer exists" in caplog.text


# --- success and waiting -----------------------------------------------------------------


def test_success():
    run = claimed(UnitJob, "noop")
    assert runner.execute(run) is None
    assert runner.finish(run.proc, None) is S.SUCCESS
    stored = raw(UnitJob, run.proc.pk)
    assert stored["process_status"] == "SUCCESS"
    assert stored["last_status_message"] == "Process noop completed successfully"
    assert stored["errors"] == []
    assert stored["complete_time"] >= stored["start_time"]
    assert run.proc.process_status is S.SUCCESS


def test_process_body_gets_its_arguments_and_may_save_domain_fields():
    run = claimed(UnitJob, "takes", "in.csv", options={"b": 2, "a": 1})
    assert drive(run) is S.SUCCESS
    stored = raw(UnitJob, run.proc.pk)
    assert stored["note"] == "in.csv:[('a', 1), ('b', 2)]"
    assert stored["process_status"] == "SUCCESS"


def test_steps_and_warnings_written_by_the_body():
    run = claimed(UnitJob, "steps_and_warnings", "reading")
    assert drive(run) is S.SUCCESS
    stored = raw(UnitJob, run.proc.pk)
    assert stored["current_process_step"] == "reading"
    assert stored["warnings"] == ["careful", "42"]


@pytest.mark.parametrize("method", ["wait_for_children", "wait_for_children_as_str"])
def test_returning_waiting_for_result(method):
    run = claimed(UnitJob, method)
    assert runner.execute(run) is S.WAITING_FOR_RESULT
    assert runner.finish(run.proc, S.WAITING_FOR_RESULT) is S.WAITING_FOR_RESULT
    stored = raw(UnitJob, run.proc.pk)
    assert stored["process_status"] == "WAITING_FOR_RESULT"
    assert stored["last_status_message"] == f"Process {method} waiting for results"
    assert stored.get("complete_time") is None


def test_returning_another_string_is_success():
    run = claimed(UnitJob, "returns_other_string")
    assert runner.execute(run) is None
    assert drive(run) is S.SUCCESS


# --- failure -----------------------------------------------------------------------------


def test_exception_becomes_failure_with_type_and_message():
    run = claimed(UnitJob, "fail_with", "the input was bad")
    with pytest.raises(ValueError):
        runner.execute(run)
    assert runner.fail(run.proc, ValueError("the input was bad")) is S.FAILURE
    stored = raw(UnitJob, run.proc.pk)
    assert stored["process_status"] == "FAILURE"
    assert stored["errors"] == ["ValueError: the input was bad"]
    assert stored["last_status_message"] == (
        "Process fail_with failed: ValueError: the input was bad"
    )
    assert stored["complete_time"] is not None


def test_process_failure_sets_exactly_the_chosen_messages():
    run = claimed(UnitJob, "fail_on_purpose", "first reason", "second reason")
    assert drive(run) is S.FAILURE
    stored = raw(UnitJob, run.proc.pk)
    assert stored["errors"] == ["first reason", "second reason"]
    assert stored["last_status_message"] == (
        "Process fail_on_purpose failed: first reason; second reason"
    )


def test_process_failure_without_messages():
    run = claimed(UnitJob, "fail_on_purpose")
    assert drive(run) is S.FAILURE
    assert raw(UnitJob, run.proc.pk)["errors"] == ["process failed"]


def test_wrong_arity_is_a_failure_not_a_crash():
    run = claimed(UnitJob, "noop", "unexpected")
    assert drive(run) is S.FAILURE
    [error] = raw(UnitJob, run.proc.pk)["errors"]
    assert error.startswith("TypeError: ") and "positional argument" in error


def test_failure_messages():
    assert failures.failure_messages(ValueError("x")) == ["ValueError: x"]
    assert failures.failure_messages(RuntimeError()) == ["RuntimeError"]
    assert failures.failure_messages(KeyError("k")) == ["KeyError: 'k'"]
    assert failures.failure_messages(ProcessFailure("a", 2)) == ["a", "2"]


def test_fail_with_context_prefixes_every_error():
    run = claimed(UnitJob, "noop")
    assert runner.fail(run.proc, ProcessFailure("a", "b"), context="join") is S.FAILURE
    assert raw(UnitJob, run.proc.pk)["errors"] == ["join failed: a", "join failed: b"]


def test_process_failure_survives_pickling():
    original = ProcessFailure("one", "two", log_level=logging.WARNING)
    copy = pickle.loads(pickle.dumps(original))
    assert copy.errors == ["one", "two"] and copy.log_level == logging.WARNING
    assert str(copy) == "one; two"


# --- hooks that raise --------------------------------------------------------------------


def test_on_success_that_raises_turns_the_run_into_failure():
    run = claimed(UnitHooks, "succeed", fields={"explode_in": "on_success"})
    assert drive(run) is S.FAILURE
    stored = raw(UnitHooks, run.proc.pk)
    assert stored["errors"] == ["on_success hook failed: RuntimeError: on_success exploded"]


def test_on_waiting_for_result_that_raises_turns_the_run_into_failure():
    run = claimed(UnitHooks, "wait", fields={"explode_in": "on_waiting_for_result"})
    assert drive(run) is S.FAILURE
    assert raw(UnitHooks, run.proc.pk)["errors"] == [
        "on_waiting_for_result hook failed: RuntimeError: on_waiting_for_result exploded"
    ]


def test_on_fail_that_raises_is_recorded_too():
    run = claimed(UnitHooks, "fail", fields={"explode_in": "on_fail"})
    assert drive(run) is S.FAILURE
    stored = raw(UnitHooks, run.proc.pk)
    assert stored["errors"] == [
        "KeyError: 'boom'",
        "on_fail hook failed: RuntimeError: on_fail exploded",
    ]
    assert stored["last_status_message"] == (
        "Process fail failed: KeyError: 'boom'; on_fail hook failed: RuntimeError: on_fail exploded"
    )


# --- late, duplicate and orphaned completions --------------------------------------------


def test_finish_on_a_deleted_document_writes_nothing_and_does_not_recreate_it(caplog):
    run = claimed(UnitJob, "noop")
    runner.execute(run)
    UnitJob.objects(pk=run.proc.pk).delete()
    with caplog.at_level(logging.INFO, logger="procstatus"):
        assert runner.finish(run.proc, None) is None
        assert runner.fail(run.proc, ValueError("late")) is None
    assert UnitJob._get_collection().count_documents({"_id": run.proc.pk}) == 0
    assert "was deleted during its process; nothing written" in caplog.text


def test_duplicate_finish_does_not_overwrite_the_first():
    run = claimed(UnitJob, "noop")
    assert runner.finish(run.proc, None) is S.SUCCESS
    first = raw(UnitJob, run.proc.pk)
    assert runner.fail(run.proc, ValueError("late")) is None
    assert runner.finish(run.proc, None) is None
    assert raw(UnitJob, run.proc.pk) == first


def test_finish_of_a_superseded_run_writes_nothing(caplog):
    run = claimed(UnitJob, "noop")
    coll = UnitJob._get_collection()
    # The run was failed from outside and a new process was called meanwhile.
    assert compat.fail_unclaimed(coll, run.proc.pk, run.task_id, "WorkerLostError: x")
    assert transitions.schedule(at(coll, run.proc.pk), "noop", "t-new") is not None
    before = raw(UnitJob, run.proc.pk)
    with caplog.at_level(logging.WARNING, logger="procstatus"):
        assert runner.finish(run.proc, None) is None
    assert raw(UnitJob, run.proc.pk) == before
    assert "is PENDING for task t-new" in caplog.text
