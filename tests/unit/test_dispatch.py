"""@process, argument checks, dispatch with a fake publisher, and resolving task messages."""

from __future__ import annotations

import json
import math

import pytest
from bson import ObjectId

import procstatus
import procstatus.dispatch
import procstatus.runtime
from procstatus import ProcessStatus, transitions
from procstatus.messages import MessageRejected, ProcessCall, resolve
from procstatus.spec import MAX_ARGUMENT_BYTES, check_arguments, process_spec
from tests.unit import compat
from tests.unit.compat import at
from tests.unit.fakes import FakePublisher
from tests.unit.models import UnitAbstractProc, UnitHooks, UnitJob, UnitPlainDocument

S = ProcessStatus


def raw(proc):
    return proc._get_collection().find_one({"_id": proc.pk})


# --- check_arguments ---------------------------------------------------------------------


def test_check_arguments_accepts_json_values():
    check_arguments("X.m", ["s", 1, 2.5, True, None, [1, {"a": [None]}]], {"k": {"x": 1}})


def test_check_arguments_names_the_positional_index():
    with pytest.raises(TypeError, match=r"^positional argument 2 of X\.m\(\) is not JSON"):
        check_arguments("X.m", [1, "ok", object(), object()], {})


def test_check_arguments_names_the_keyword():
    with pytest.raises(TypeError, match=r"^argument 'when' of X\.m\(\) is not JSON"):
        check_arguments("X.m", [1], {"fine": [1], "when": {1, 2}})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, [1, math.nan], {"x": math.nan}])
def test_check_arguments_refuses_nan_and_infinity(bad):
    with pytest.raises(TypeError, match="positional argument 0"):
        check_arguments("X.m", [bad], {})
    with pytest.raises(TypeError, match="argument 'v'"):
        check_arguments("X.m", [], {"v": bad})


def test_check_arguments_size_limit_is_exact():
    overhead = len(json.dumps([[""], {}]))
    at_limit = "a" * (MAX_ARGUMENT_BYTES - overhead)
    assert len(json.dumps([[at_limit], {}])) == MAX_ARGUMENT_BYTES
    check_arguments("X.m", [at_limit], {})
    with pytest.raises(ValueError, match=rf"{MAX_ARGUMENT_BYTES + 1} bytes as JSON, over the "
                                         rf"{MAX_ARGUMENT_BYTES}-byte limit"):
        check_arguments("X.m", [at_limit + "a"], {})


def test_check_arguments_counts_keyword_payloads_too():
    half = "a" * (MAX_ARGUMENT_BYTES // 2)
    with pytest.raises(ValueError, match=r"arguments of X\.m\(\)"):
        check_arguments("X.m", [half], {"more": half})


# --- the decorator -----------------------------------------------------------------------


def test_bare_decorator_keeps_name_and_doc_and_records_a_spec():
    assert UnitJob.noop.__name__ == "noop"
    assert UnitJob.noop.__doc__ == "Does nothing."
    assert UnitJob.noop.__wrapped__.__name__ == "noop"
    spec = process_spec(UnitJob, "noop")
    assert spec.name == "noop" and spec.is_child is False and spec.queue is None
    assert spec.function is UnitJob.noop.__wrapped__


def test_decorator_with_options():
    def child_work(self, n):
        """Child doc."""

    decorated = procstatus.process(is_child=True, queue="q1")(child_work)
    assert decorated.__name__ == "child_work" and decorated.__doc__ == "Child doc."
    spec = decorated.__procstatus_process__
    assert (spec.name, spec.is_child, spec.queue) == ("child_work", True, "q1")
    assert process_spec(UnitJob, "takes").queue == "unit-heavy"


def test_process_spec_of_non_process_attributes_is_none():
    assert process_spec(UnitJob, "not_a_process") is None
    assert process_spec(UnitJob, "save") is None
    assert process_spec(UnitJob, "name") is None
    assert process_spec(UnitJob, "does_not_exist") is None


# --- dispatch ----------------------------------------------------------------------------


pytest_db = pytest.mark.usefixtures("test_db")


@pytest_db
def test_calling_before_install_raises_not_installed_and_writes_nothing(monkeypatch):
    monkeypatch.setattr(procstatus.runtime.current, "run_task", None)
    job = UnitJob.create(name="n")
    before = raw(job)
    with pytest.raises(procstatus.NotInstalled, match=r"UnitJob\.noop\(\).*install"):
        job.noop()
    assert raw(job) == before
    assert job.process_status is S.READY


@pytest_db
def test_dispatch_schedules_and_publishes_one_message(publisher):
    job = UnitJob.create(name="n")
    job.takes("in/file.csv", options={"fast": True})
    assert len(publisher.calls) == 1
    call = publisher.calls[0]
    assert call["args"] == [
        "UnitJob", str(job.pk), "takes", ["in/file.csv"], {"options": {"fast": True}}
    ]
    assert call["queue"] == "unit-heavy"
    stored = raw(job)
    assert stored["process_status"] == "PENDING"
    assert stored["current_process"] == "takes"
    assert stored["celery_task_id"] == call["task_id"]
    # The caller's copy mirrors the write without marking anything changed.
    assert job.process_status is S.PENDING
    assert job.celery_task_id == call["task_id"]
    assert job.process_running
    assert job._get_changed_fields() == []
    # The message resolves back to the same call.
    resolved = resolve(call["args"], {})
    assert (resolved.cls, resolved.pk, resolved.spec.name) == (UnitJob, job.pk, "takes")
    assert resolved.args == ["in/file.csv"] and resolved.kwargs == {"options": {"fast": True}}


@pytest_db
def test_each_dispatch_gets_a_new_task_id(publisher):
    job = UnitJob.create(name="n")
    job.noop()
    coll = job._get_collection()
    compat.start(coll, job.pk, job.celery_task_id, "h")
    transitions.complete(at(coll, job.pk), job.celery_task_id, S.SUCCESS, message="m")
    job.noop()
    ids = [c["task_id"] for c in publisher.calls]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert raw(job)["celery_task_id"] == ids[1]


@pytest_db
@pytest.mark.parametrize("status", [S.PENDING, S.RUNNING, S.WAITING_FOR_RESULT], ids=str)
def test_dispatch_while_processing_raises_and_publishes_nothing(publisher, status):
    job = UnitJob.create(name="n")
    coll = job._get_collection()
    transitions.schedule(at(coll, job.pk), "takes", "t-first")
    if status is not S.PENDING:
        compat.start(coll, job.pk, "t-first", "h")
    if status is S.WAITING_FOR_RESULT:
        transitions.complete(at(coll, job.pk), "t-first", S.WAITING_FOR_RESULT, message="w")
    before = raw(job)
    with pytest.raises(procstatus.ProcessAlreadyRunning) as info:
        job.noop()  # the in-memory copy still says READY: the database decides
    assert publisher.calls == []
    assert raw(job) == before
    assert info.value.status == status.value
    assert info.value.current_process == "takes"
    assert info.value.process == "noop"
    assert f"process 'takes' is {status.value}" in str(info.value)


@pytest_db
def test_dispatch_of_deleted_document_raises_does_not_exist(publisher):
    job = UnitJob.create(name="n")
    UnitJob.objects(pk=job.pk).delete()
    with pytest.raises(UnitJob.DoesNotExist):
        job.noop()
    assert publisher.calls == []
    assert UnitJob.objects(pk=job.pk).count() == 0


@pytest_db
def test_dispatch_of_unsaved_document_raises_value_error(publisher):
    job = UnitJob(name="unsaved")
    with pytest.raises(ValueError, match=r"save\(\) the UnitJob before calling noop\(\)"):
        job.noop()
    assert publisher.calls == []


@pytest_db
def test_dispatch_with_bad_arguments_writes_nothing(publisher):
    job = UnitJob.create(name="n")
    before = raw(job)
    with pytest.raises(TypeError, match="argument 'options'"):
        job.takes("p", options={"when": object()})
    assert publisher.calls == []
    assert raw(job) == before


@pytest_db
@pytest.mark.parametrize("error", [ConnectionError("broker down"), KeyboardInterrupt()])
def test_failed_publish_restores_the_previous_state_exactly(monkeypatch, error):
    failing = FakePublisher(error=error)
    monkeypatch.setattr(procstatus.runtime.current, "run_task", failing)
    job = UnitJob.create(name="n")
    coll = job._get_collection()
    # A previous run ended in FAILURE with errors and warnings.
    transitions.schedule(at(coll, job.pk), "fail_with", "t-old")
    compat.start(coll, job.pk, "t-old", "old-host")
    transitions.add_warnings(at(coll, job.pk), "t-old", ["old warning"])
    transitions.complete(at(coll, job.pk), "t-old", S.FAILURE, message="old", errors=["E: old"])
    before = raw(job)
    job.reload()
    with pytest.raises(type(error)):
        job.noop()
    assert len(failing.calls) == 1
    assert raw(job) == before
    assert job.process_status is S.FAILURE and job.celery_task_id == "t-old"


@pytest_db
def test_failed_publish_from_a_fresh_document_leaves_no_new_fields(monkeypatch):
    monkeypatch.setattr(procstatus.runtime.current, "run_task", FakePublisher(OSError("no broker")))
    job = UnitJob.create(name="n")
    before = raw(job)
    with pytest.raises(OSError, match="no broker"):
        job.noop()
    assert raw(job) == before  # fields absent before are absent again
    # ... and the document can be called again once the broker is back.
    ok = FakePublisher()
    monkeypatch.setattr(procstatus.runtime.current, "run_task", ok)
    job.noop()
    assert raw(job)["process_status"] == "PENDING" and len(ok.calls) == 1


# --- resolve -----------------------------------------------------------------------------


def message(class_name="UnitJob", pk=None, method="noop", args=None, kwargs=None):
    return [class_name, str(ObjectId()) if pk is None else pk, method,
            [] if args is None else args, {} if kwargs is None else kwargs]


def test_resolve_accepts_a_valid_message():
    pk = ObjectId()
    call = resolve(message(pk=str(pk), method="takes", args=["p"], kwargs={"options": {}}), {})
    assert isinstance(call, ProcessCall)
    assert call.cls is UnitJob
    assert call.pk == pk and isinstance(call.pk, ObjectId)
    assert call.spec is process_spec(UnitJob, "takes")
    assert call.args == ["p"] and call.kwargs == {"options": {}}
    assert call.describe() == f"UnitJob({pk}).takes"


def test_resolve_accepts_a_tuple_of_arguments():
    call = resolve(tuple(message(class_name="UnitHooks", method="succeed")), {})
    assert call.cls is UnitHooks


@pytest.mark.parametrize(
    "bad,match",
    [
        (message(class_name="NoSuchClass"), "unknown document class 'NoSuchClass'"),
        (message(class_name="UnitPlainDocument"), "not a concrete Proc subclass"),
        (message(class_name="Proc"), "not a concrete Proc subclass"),
        (message(class_name="UnitAbstractProc"), "not a concrete Proc subclass"),
        (message(method="not_a_process"), r"UnitJob\.not_a_process is not a @process"),
        (message(method="save"), "is not a @process"),
        (message(method="__class__"), "is not a @process"),
        (message(method="missing"), "is not a @process"),
        (message(pk="not-an-object-id"), "invalid document id 'not-an-object-id'"),
        (message(pk=12), "invalid document id 12"),
        (message(pk=["5f0000000000000000000000"]), "invalid document id"),
        (message()[:4], "expected 5 positional arguments, got 4"),
        (message() + ["extra"], "expected 5 positional arguments, got 6"),
        ([], "expected 5 positional arguments, got 0"),
        (message(args="abc"), "must be a list and a dict"),
        (message(args={"a": 1}), "must be a list and a dict"),
        (message(kwargs=["a"]), "must be a list and a dict"),
        (message(class_name=None), "must be strings"),
        (message(method=5), "must be strings"),
    ],
)
def test_resolve_rejects(bad, match):
    with pytest.raises(MessageRejected, match=match):
        resolve(bad, {})


def test_resolve_rejects_keyword_arguments():
    with pytest.raises(MessageRejected, match="expected 5 positional arguments"):
        resolve(message(), {"class_name": "UnitJob"})


def test_message_rejected_is_a_value_error():
    assert issubclass(MessageRejected, ValueError)
    # The guard classes really exist with those traits.
    assert UnitAbstractProc._meta["abstract"] and process_spec(UnitAbstractProc, "noop")
    assert process_spec(UnitPlainDocument, "noop") is not None


def test_resolve_rejects_a_null_document_id():
    with pytest.raises(MessageRejected, match="missing document id"):
        resolve(["UnitJob", None, "noop", [], {}], {})


@pytest_db
def test_document_without_a_stored_status_can_be_called(publisher):
    pk = UnitJob._get_collection().insert_one({"name": "legacy"}).inserted_id
    job = UnitJob.objects.get(pk=pk)
    assert job.process_status is S.READY and not job.process_running
    job.noop()
    assert len(publisher.calls) == 1
    assert raw(job)["process_status"] == "PENDING"
