"""Every state-machine write meets an ambiguous outcome once, and is settled right.

Each write of :mod:`procstatus.transitions` runs against the session's replica-set server,
through a client with ``retryWrites=false`` (so the driver sends nothing twice: what is
checked is procstatus's own handling), with a ``failCommand`` fail point aimed at that
client's next ``update`` or ``findAndModify``:

- ``write-concern``: the write runs and its reply carries a ``writeConcernError``. The
  write re-reads the document from the primary, finds its own change there, and reports
  that it won; the document is what the write makes it.
- ``not-primary``: the server refuses the write (``NotWritablePrimary``): nothing was
  written, so the write is sent once more and wins.
- ``close``: the server drops the connection without running the write. The re-read does
  not show it, and the write may yet land for all the client can tell, so the error is
  raised again; the document is exactly as before.

And a ``writeConcernError`` on a write whose condition had been lost (the run was ended
meanwhile) reports the write lost, not won.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pymongo
import pytest
from pymongo import monitoring
from pymongo.errors import AutoReconnect

from procstatus import transitions
from procstatus.status import ProcessStatus
from tests.support.failpoints import arm, describe_failure, disarm

APP_NAME = f"unit-ambiguous-{uuid.uuid4().hex[:6]}"
WORKER = transitions.WorkerRef(hostname="unit@host", instance="instance-1", pid=101)
ARGUMENTS = {"args": [], "kwargs": {}}


class Faults(monitoring.CommandListener):
    """The faults the client met: ``"<command> <kind>"``."""

    def __init__(self) -> None:
        self.met: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if "writeConcernError" in event.reply:
            self.met.append(f"{event.command_name} write-concern")

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.met.append(f"{event.command_name} {describe_failure(event.failure)}")


@dataclass(frozen=True)
class Case:
    """One write: the state it starts from, the call, and what it makes of the document."""

    command: str
    given: dict[str, Any]
    write: Callable[[transitions.Target], Any]
    expected: dict[str, Any]

    def won(self, result: Any) -> bool:
        return result is True or isinstance(result, dict)


RUNNING = {"process_status": "RUNNING", "celery_task_id": "task-1", "current_process": "work",
           "worker_instance": "instance-0", "worker_pid": 7}
CASES: dict[str, Case] = {
    "schedule": Case(
        "findAndModify", {"process_status": "READY"},
        lambda t: transitions.schedule(t, "work", "task-1", ARGUMENTS),
        {"process_status": "PENDING", "celery_task_id": "task-1", "current_process": "work"},
    ),
    "enqueue_call": Case(
        "update", RUNNING,
        lambda t: transitions.enqueue_call(t, {"id": "call-1", "process": "later"}, 100),
        {"process_status": "RUNNING", "call_queue": [{"id": "call-1", "process": "later"}]},
    ),
    "schedule_next": Case(
        "update", {"process_status": "SUCCESS", "call_queue": [{"id": "call-1"}]},
        lambda t: transitions.schedule_next(t, "call-1", "later", "task-2", ARGUMENTS),
        {"process_status": "PENDING", "celery_task_id": "task-2", "call_queue": []},
    ),
    "unschedule": Case(
        "update", {"process_status": "PENDING", "celery_task_id": "task-1"},
        lambda t: transitions.unschedule(
            t, "task-1", {"process_status": "FAILURE", "errors": ["before"],
                          "celery_task_id": "task-0"}),
        {"process_status": "FAILURE", "errors": ["before"], "celery_task_id": "task-0"},
    ),
    "start": Case(
        "findAndModify", {"process_status": "PENDING", "celery_task_id": "task-1"},
        lambda t: transitions.start(t, "task-1", WORKER),
        {"process_status": "RUNNING", "worker_instance": "instance-1", "worker_pid": 101},
    ),
    "reclaim": Case(
        "findAndModify", RUNNING,
        lambda t: transitions.reclaim(t, "task-1", RUNNING, WORKER, "worker lost"),
        {"process_status": "RUNNING", "worker_instance": "instance-1",
         "warnings": ["restarted after worker lost"]},
    ),
    "back_to_pending": Case(
        "update", RUNNING,
        lambda t: transitions.back_to_pending(t, "task-1", message="retry 1/2",
                                              warning="attempt 1 failed"),
        {"process_status": "PENDING", "celery_task_id": "task-1",
         "warnings": ["attempt 1 failed"]},
    ),
    "complete": Case(
        "update", RUNNING,
        lambda t: transitions.complete(t, "task-1", ProcessStatus.SUCCESS, message="done"),
        {"process_status": "SUCCESS", "last_status_message": "done"},
    ),
    "fail_run": Case(
        "update", RUNNING,
        lambda t: transitions.fail_run(t, "task-1", "work", "cancelled"),
        {"process_status": "FAILURE", "errors": ["cancelled"]},
    ),
    "begin_join": Case(
        "findAndModify", {"process_status": "WAITING_FOR_RESULT", "celery_task_id": "task-1"},
        lambda t: transitions.begin_join(t, "join-1", WORKER),
        {"process_status": "RUNNING", "joining": True, "celery_task_id": "join-1"},
    ),
    "abandon_join": Case(
        "update", {"process_status": "RUNNING", "celery_task_id": "join-1", "joining": True},
        lambda t: transitions.abandon_join(t, "join-1", warning="join lost"),
        {"process_status": "WAITING_FOR_RESULT", "joining": False, "warnings": ["join lost"]},
    ),
    "set_step": Case(
        "update", RUNNING,
        lambda t: transitions.set_step(t, "task-1", "parsing"),
        {"process_status": "RUNNING", "current_process_step": "parsing"},
    ),
    "set_progress": Case(
        "update", RUNNING,
        lambda t: transitions.set_progress(t, "task-1", 3, 4),
        {"process_status": "RUNNING", "progress_done": 3, "progress_total": 4},
    ),
    "add_warnings": Case(
        "update", RUNNING,
        lambda t: transitions.add_warnings(t, "task-1", ["careful"]),
        {"process_status": "RUNNING", "warnings": ["careful"]},
    ),
    "reset": Case(
        "findAndModify", {"process_status": "FAILURE", "errors": ["boom"]},
        lambda t: transitions.reset(t),
        {"process_status": "READY", "errors": [], "celery_task_id": None},
    ),
}


def test_every_write_of_the_state_machine_has_a_case() -> None:
    writes = {name for name, value in vars(transitions).items()
              if callable(value)
              and getattr(value, "__module__", "").startswith(f"{transitions.__name__}.")
              and not name.startswith("_") and name[0].islower()
              and name not in {"target", "read_state", "performs"}}
    assert writes == set(CASES)


@pytest.fixture(scope="module")
def admin(replica_set_uri: str) -> Iterator[pymongo.MongoClient]:
    client: pymongo.MongoClient = pymongo.MongoClient(replica_set_uri)
    yield client
    disarm(client)
    client.close()


@pytest.fixture(scope="module")
def faults() -> Faults:
    return Faults()


@pytest.fixture(scope="module")
def database(replica_set_uri: str, faults: Faults) -> Iterator[Any]:
    """A database on the replica set, through a client that retries no write."""
    separator = "&" if "?" in replica_set_uri else "/?"
    client: pymongo.MongoClient = pymongo.MongoClient(
        f"{replica_set_uri}{separator}appName={APP_NAME}&retryWrites=false"
        "&heartbeatFrequencyMS=500",
        event_listeners=[faults],
    )
    name = f"pstest_ambiguous_{uuid.uuid4().hex[:8]}"
    yield client[name]
    client.drop_database(name)
    client.close()


@pytest.fixture
def coll(database: Any, admin: pymongo.MongoClient, faults: Faults) -> Any:
    disarm(admin)
    faults.met.clear()
    return database[f"jobs_{uuid.uuid4().hex[:8]}"]


def given(coll: Any, state: dict[str, Any]) -> transitions.Target:
    pk = coll.insert_one(dict(state)).inserted_id
    return transitions.target(coll, pk)


def stored(target: transitions.Target) -> dict[str, Any]:
    document = target.collection.find_one(target.key)
    assert document is not None
    return document


@pytest.mark.parametrize("kind", ["write-concern", "not-primary"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_write_that_landed_or_was_refused_reports_won(
    coll: Any, admin: pymongo.MongoClient, faults: Faults, name: str, kind: str
) -> None:
    case = CASES[name]
    target = given(coll, case.given)
    arm(admin, case.command, kind, APP_NAME)
    result = case.write(target)
    assert faults.met == [f"{case.command} {kind}"]
    assert case.won(result), result
    document = stored(target)
    assert {field: document.get(field) for field in case.expected} == case.expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_dropped_connection_whose_write_did_not_land_raises(
    coll: Any, admin: pymongo.MongoClient, faults: Faults, name: str
) -> None:
    case = CASES[name]
    target = given(coll, case.given)
    before = stored(target)
    arm(admin, case.command, "close", APP_NAME)
    with pytest.raises(AutoReconnect):
        case.write(target)
    assert faults.met == [f"{case.command} close"]
    assert stored(target) == before


def test_a_write_concern_error_on_a_lost_condition_reports_lost(
    coll: Any, admin: pymongo.MongoClient, faults: Faults
) -> None:
    ended = {**RUNNING, "process_status": "FAILURE", "errors": ["cancelled"]}
    target = given(coll, ended)
    arm(admin, "update", "write-concern", APP_NAME)
    assert transitions.complete(target, "task-1", ProcessStatus.SUCCESS, message="done") is False
    assert faults.met == ["update write-concern"]
    assert stored(target) == {"_id": target.pk, **ended}
