"""The state machine's conditional writes, against the real MongoDB-protocol server."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
from bson import ObjectId

from procstatus import ProcessStatus, transitions
from procstatus.transitions import STATE_FIELDS
from tests.unit import compat
from tests.unit.compat import at

S = ProcessStatus
OLD_TIME = datetime(2020, 1, 2, 3, 4, 5, 678000)


def same_moment(a, b):
    """Two ``$currentDate`` fields of one update: equal on SecantusDB; MongoDB does not
    promise that, so a millisecond apart is the same moment too."""
    return abs((a - b).total_seconds()) <= 0.001


def insert(coll, status, task_id="task-1", **fields):
    """A document as the state machine leaves it in ``status`` (plus domain fields)."""
    doc = {
        "_id": ObjectId(),
        "name": "domain",
        "process_status": status.value,
        "current_process": "old_process",
        "current_process_step": "old step",
        "errors": ["old error"],
        "warnings": ["old warning"],
        "last_status_message": "old message",
        "start_time": OLD_TIME,
        "complete_time": OLD_TIME,
        "status_changed_at": OLD_TIME,
        "worker_hostname": "old-host",
        "celery_task_id": task_id,
        **fields,
    }
    coll.insert_one(doc)
    return doc


def stored(coll, pk):
    return coll.find_one({"_id": pk})


# --- schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.READY, S.SUCCESS, S.FAILURE], ids=str)
def test_schedule_from_schedulable_wins_and_returns_the_before_image(coll, status):
    doc = insert(coll, status)
    before = transitions.schedule(at(coll, doc["_id"]), "crunch", "task-2")
    assert before is not None
    # The projection: the state fields as they were, nothing else.
    assert before == {k: doc[k] for k in ("_id", *STATE_FIELDS) if k in doc}
    after = stored(coll, doc["_id"])
    assert after["process_status"] == "PENDING"
    assert after["current_process"] == "crunch"
    assert after["celery_task_id"] == "task-2"
    assert after["current_process_step"] is None
    assert after["errors"] == [] and after["warnings"] == []
    assert after["start_time"] is None and after["complete_time"] is None
    assert after["worker_hostname"] is None
    assert after["last_status_message"] == "Process crunch pending"
    assert after["status_changed_at"] > OLD_TIME
    assert after["name"] == "domain"  # domain fields untouched


@pytest.mark.parametrize("status", [S.PENDING, S.RUNNING, S.WAITING_FOR_RESULT], ids=str)
def test_schedule_while_processing_returns_none_and_changes_nothing(coll, status):
    doc = insert(coll, status)
    assert transitions.schedule(at(coll, doc["_id"]), "crunch", "task-2") is None
    assert stored(coll, doc["_id"]) == doc


def test_schedule_of_a_document_without_status_field_counts_as_ready(coll):
    # Saved before its class became a Proc: it reads as READY, so it can be scheduled.
    pk = coll.insert_one({"name": "legacy"}).inserted_id
    assert transitions.schedule(at(coll, pk), "crunch", "t") == {"_id": pk}
    after = stored(coll, pk)
    assert (after["process_status"], after["name"]) == ("PENDING", "legacy")


def test_second_schedule_loses(coll):
    doc = insert(coll, S.READY)
    assert transitions.schedule(at(coll, doc["_id"]), "a", "t-a") is not None
    assert transitions.schedule(at(coll, doc["_id"]), "b", "t-b") is None
    after = stored(coll, doc["_id"])
    assert (after["current_process"], after["celery_task_id"]) == ("a", "t-a")


# --- no function creates a document ------------------------------------------------------


MISSING_CALLS = {
    "schedule": lambda c, pk: transitions.schedule(at(c, pk), "p", "t"),
    "unschedule": lambda c, pk: transitions.unschedule(
        at(c, pk), "t", {"process_status": "READY"}
    ),
    "start": lambda c, pk: compat.start(c, pk, "t", "host"),
    "complete": lambda c, pk: transitions.complete(at(c, pk), "t", S.SUCCESS, message="m"),
    "complete_failure": lambda c, pk: transitions.complete(
        at(c, pk), "t", S.FAILURE, message="m", errors=["e"]
    ),
    "fail_unclaimed": lambda c, pk: compat.fail_unclaimed(c, pk, "t", "E: x"),
    "begin_join": lambda c, pk: compat.begin_join(c, pk),
    "set_step": lambda c, pk: transitions.set_step(at(c, pk), "t", "step"),
    "add_warnings": lambda c, pk: transitions.add_warnings(at(c, pk), "t", ["w"]),
    "read_state": lambda c, pk: transitions.read_state(at(c, pk)),
}


@pytest.mark.parametrize("name", list(MISSING_CALLS))
def test_missing_document_is_never_created(coll, name):
    other = insert(coll, S.RUNNING, task_id="t")  # a neighbour that must stay as it is
    result = MISSING_CALLS[name](coll, ObjectId())
    assert result in (None, False)
    assert list(coll.find()) == [other]


@pytest.mark.parametrize("name", [n for n in MISSING_CALLS if n != "read_state"])
def test_missing_document_with_other_id_type_is_never_created(coll, name):
    MISSING_CALLS[name](coll, "string-id")
    MISSING_CALLS[name](coll, 17)
    assert coll.count_documents({}) == 0


# --- unschedule --------------------------------------------------------------------------


def test_unschedule_restores_previous_fields_exactly(coll):
    doc = insert(coll, S.FAILURE)
    previous = transitions.schedule(at(coll, doc["_id"]), "crunch", "task-2")
    assert transitions.unschedule(at(coll, doc["_id"]), "task-2", previous) is True
    assert stored(coll, doc["_id"]) == doc


def test_unschedule_unsets_fields_that_were_absent(coll):
    # As Proc.create() leaves it: None-valued fields are not stored at all.
    pk = coll.insert_one(
        {"process_status": "READY", "errors": [], "warnings": [], "name": "n"}
    ).inserted_id
    original = stored(coll, pk)
    previous = transitions.schedule(at(coll, pk), "crunch", "task-2")
    assert previous == {"_id": pk, "process_status": "READY", "errors": [], "warnings": []}
    assert transitions.unschedule(at(coll, pk), "task-2", previous) is True
    restored = stored(coll, pk)
    assert restored == original
    assert "celery_task_id" not in restored and "status_changed_at" not in restored


def test_unschedule_for_another_task_changes_nothing(coll):
    doc = insert(coll, S.READY)
    previous = transitions.schedule(at(coll, doc["_id"]), "crunch", "task-2")
    pending = stored(coll, doc["_id"])
    assert transitions.unschedule(at(coll, doc["_id"]), "task-other", previous) is False
    assert stored(coll, doc["_id"]) == pending


def test_unschedule_after_the_task_started_changes_nothing(coll):
    doc = insert(coll, S.READY)
    previous = transitions.schedule(at(coll, doc["_id"]), "crunch", "task-2")
    compat.start(coll, doc["_id"], "task-2", "h")
    running = stored(coll, doc["_id"])
    assert transitions.unschedule(at(coll, doc["_id"]), "task-2", previous) is False
    assert stored(coll, doc["_id"]) == running


# --- start -------------------------------------------------------------------------------


def test_start_wins_for_pending_with_same_task_id(coll):
    doc = insert(coll, S.PENDING, task_id="t1")
    after = compat.start(coll, doc["_id"], "t1", "worker@host")
    assert after is not None
    assert after["process_status"] == "RUNNING"
    assert after["worker_hostname"] == "worker@host"
    assert same_moment(after["start_time"], after["status_changed_at"])
    assert after["status_changed_at"] > OLD_TIME
    assert after["name"] == "domain"  # the whole document is returned
    assert stored(coll, doc["_id"]) == after


def test_start_with_wrong_task_id_changes_nothing(coll):
    doc = insert(coll, S.PENDING, task_id="t1")
    assert compat.start(coll, doc["_id"], "t2", "h") is None
    assert stored(coll, doc["_id"]) == doc


@pytest.mark.parametrize("status", [s for s in S if s is not S.PENDING], ids=str)
def test_start_only_from_pending(coll, status):
    doc = insert(coll, status, task_id="t1")
    assert compat.start(coll, doc["_id"], "t1", "h") is None
    assert stored(coll, doc["_id"]) == doc


def test_duplicate_start_loses(coll):
    doc = insert(coll, S.PENDING, task_id="t1")
    first = compat.start(coll, doc["_id"], "t1", "a")
    assert first is not None
    assert compat.start(coll, doc["_id"], "t1", "b") is None
    assert stored(coll, doc["_id"])["worker_hostname"] == "a"


# --- complete ----------------------------------------------------------------------------


def test_complete_success_from_running(coll):
    doc = insert(coll, S.RUNNING, task_id="t1", errors=[])
    assert transitions.complete(at(coll, doc["_id"]), "t1", S.SUCCESS, message="done") is True
    after = stored(coll, doc["_id"])
    assert after["process_status"] == "SUCCESS"
    assert after["last_status_message"] == "done"
    assert same_moment(after["complete_time"], after["status_changed_at"])
    assert after["status_changed_at"] > OLD_TIME
    assert after["errors"] == []


def test_complete_failure_appends_errors(coll):
    doc = insert(coll, S.RUNNING, task_id="t1", errors=["earlier"])
    assert transitions.complete(
        at(coll, doc["_id"]), "t1", S.FAILURE, message="bad", errors=["E: one", "E: two"]
    )
    after = stored(coll, doc["_id"])
    assert after["process_status"] == "FAILURE"
    assert after["errors"] == ["earlier", "E: one", "E: two"]


def test_complete_waiting_for_result_sets_no_complete_time(coll):
    doc = insert(coll, S.RUNNING, task_id="t1", complete_time=None)
    assert transitions.complete(
        at(coll, doc["_id"]), "t1", S.WAITING_FOR_RESULT, message="waiting"
    )
    after = stored(coll, doc["_id"])
    assert after["process_status"] == "WAITING_FOR_RESULT"
    assert after["complete_time"] is None


def test_complete_with_wrong_task_id_changes_nothing(coll):
    doc = insert(coll, S.RUNNING, task_id="t1")
    assert transitions.complete(at(coll, doc["_id"]), "t2", S.SUCCESS, message="m") is False
    assert stored(coll, doc["_id"]) == doc


@pytest.mark.parametrize("status", [s for s in S if s is not S.RUNNING], ids=str)
@pytest.mark.parametrize("outcome", [S.SUCCESS, S.FAILURE, S.WAITING_FOR_RESULT], ids=str)
def test_complete_only_from_running(coll, status, outcome):
    doc = insert(coll, status, task_id="t1")
    assert transitions.complete(
        at(coll, doc["_id"]), "t1", outcome, message="late", errors=["E: late"]
    ) is False
    assert stored(coll, doc["_id"]) == doc


def test_duplicate_complete_never_overwrites_the_first(coll):
    doc = insert(coll, S.RUNNING, task_id="t1", errors=[])
    assert transitions.complete(at(coll, doc["_id"]), "t1", S.SUCCESS, message="first")
    first = stored(coll, doc["_id"])
    assert not transitions.complete(
        at(coll, doc["_id"]), "t1", S.FAILURE, message="second", errors=["E: x"]
    )
    assert not transitions.complete(at(coll, doc["_id"]), "t1", S.SUCCESS, message="third")
    assert stored(coll, doc["_id"]) == first


@pytest.mark.parametrize("status", [S.READY, S.PENDING, S.RUNNING], ids=str)
def test_complete_refuses_non_final_statuses(coll, status):
    doc = insert(coll, S.RUNNING, task_id="t1")
    with pytest.raises(ValueError, match=f"cannot write {status.value}"):
        transitions.complete(at(coll, doc["_id"]), "t1", status, message="m")
    assert stored(coll, doc["_id"]) == doc


# --- fail_unclaimed ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.PENDING, S.RUNNING, S.WAITING_FOR_RESULT], ids=str)
def test_fail_unclaimed_from_pending_and_running(coll, status):
    doc = insert(coll, status, task_id="t1", errors=[])
    assert compat.fail_unclaimed(coll, doc["_id"], "t1", "WorkerLostError: gone")
    after = stored(coll, doc["_id"])
    assert after["process_status"] == "FAILURE"
    assert after["errors"] == ["WorkerLostError: gone"]
    assert after["last_status_message"] == "Process old_process failed: WorkerLostError: gone"
    assert same_moment(after["complete_time"], after["status_changed_at"])
    assert after["status_changed_at"] > OLD_TIME


@pytest.mark.parametrize("status", [S.READY, S.SUCCESS, S.FAILURE], ids=str)
def test_fail_unclaimed_not_from_other_states(coll, status):
    doc = insert(coll, status, task_id="t1")
    assert compat.fail_unclaimed(coll, doc["_id"], "t1", "E: x") is False
    assert stored(coll, doc["_id"]) == doc


def test_fail_unclaimed_for_another_task_changes_nothing(coll):
    doc = insert(coll, S.RUNNING, task_id="t1")
    assert compat.fail_unclaimed(coll, doc["_id"], "t-old", "E: x") is False
    assert stored(coll, doc["_id"]) == doc


# --- begin_join --------------------------------------------------------------------------


def test_begin_join_from_waiting(coll):
    doc = insert(coll, S.WAITING_FOR_RESULT, task_id="t1")
    after = compat.begin_join(coll, doc["_id"])
    assert after["process_status"] == "RUNNING"
    assert after["last_status_message"] == "Joining results"
    assert compat.begin_join(coll, doc["_id"]) is None


@pytest.mark.parametrize("status", [s for s in S if s is not S.WAITING_FOR_RESULT], ids=str)
def test_begin_join_only_from_waiting(coll, status):
    doc = insert(coll, status)
    assert compat.begin_join(coll, doc["_id"]) is None
    assert stored(coll, doc["_id"]) == doc


def test_begin_join_is_won_by_exactly_one_of_many_threads(coll):
    threads_count = 16
    docs = [insert(coll, S.WAITING_FOR_RESULT) for _ in range(5)]
    for doc in docs:
        barrier = threading.Barrier(threads_count)
        results = [None] * threads_count
        errors = []

        def contend(i, pk=doc["_id"], barrier=barrier, results=results, errors=errors):
            try:
                barrier.wait(timeout=10)
                results[i] = compat.begin_join(coll, pk)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(threads_count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert not errors
        assert not any(t.is_alive() for t in threads)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert winners[0]["process_status"] == "RUNNING"
        assert stored(coll, doc["_id"])["process_status"] == "RUNNING"


# --- set_step / add_warnings -------------------------------------------------------------


def test_set_step_while_running_with_right_task(coll):
    doc = insert(coll, S.RUNNING, task_id="t1")
    assert transitions.set_step(at(coll, doc["_id"]), "t1", "reading") is True
    assert stored(coll, doc["_id"])["current_process_step"] == "reading"
    # Writing the same step again still counts as allowed (matched, not modified).
    assert transitions.set_step(at(coll, doc["_id"]), "t1", "reading") is True
    assert transitions.set_step(at(coll, doc["_id"]), "t1", None) is True
    assert stored(coll, doc["_id"])["current_process_step"] is None


@pytest.mark.parametrize("status", [s for s in S if s is not S.RUNNING], ids=str)
def test_set_step_and_add_warnings_refused_when_not_running(coll, status):
    doc = insert(coll, status, task_id="t1")
    assert transitions.set_step(at(coll, doc["_id"]), "t1", "x") is False
    assert transitions.add_warnings(at(coll, doc["_id"]), "t1", ["w"]) is False
    assert stored(coll, doc["_id"]) == doc


def test_set_step_and_add_warnings_refused_for_another_task(coll):
    doc = insert(coll, S.RUNNING, task_id="t1")
    assert transitions.set_step(at(coll, doc["_id"]), "t2", "x") is False
    assert transitions.add_warnings(at(coll, doc["_id"]), "t2", ["w"]) is False
    assert transitions.set_step(at(coll, doc["_id"]), None, "x") is False
    assert stored(coll, doc["_id"]) == doc


def test_add_warnings_appends_in_order(coll):
    doc = insert(coll, S.RUNNING, task_id="t1", warnings=[])
    assert transitions.add_warnings(at(coll, doc["_id"]), "t1", ["a", "b"])
    assert transitions.add_warnings(at(coll, doc["_id"]), "t1", ("c",))
    assert stored(coll, doc["_id"])["warnings"] == ["a", "b", "c"]


# --- read_state --------------------------------------------------------------------------


def test_read_state_projects_state_fields_only(coll):
    doc = insert(coll, S.RUNNING)
    state = transitions.read_state(at(coll, doc["_id"]))
    assert "name" not in state
    assert state == {k: doc[k] for k in ("_id", *STATE_FIELDS) if k in doc}
