"""The Proc document with mongoengine, against the real server."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

import procstatus
from procstatus import Proc, ProcessStatus, runner, transitions
from tests.unit import compat
from tests.unit.compat import at
from tests.unit.models import UnitIndexed, UnitJob

S = ProcessStatus

pytestmark = pytest.mark.usefixtures("test_db")


def raw(proc):
    return proc._get_collection().find_one({"_id": proc.pk})


def make_running(job, process="noop", task_id=None):
    """Drive ``job`` to RUNNING through the state machine, as a worker would."""
    task_id = task_id or f"task-{ObjectId()}"
    coll = job._get_collection()
    assert transitions.schedule(at(coll, job.pk), process, task_id) is not None
    assert compat.start(coll, job.pk, task_id, "unit-host") is not None
    job.reload()
    runner.attach(job, task_id)  # the claimed copy, as a worker's claim makes it
    return task_id


# --- creation ----------------------------------------------------------------------------


def test_create_yields_ready_with_create_time():
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    job = UnitJob.create(name="a")
    assert job.pk is not None
    assert job.process_status is S.READY
    assert not job.process_running
    stored = raw(job)
    assert stored["process_status"] == "READY"
    assert stored["name"] == "a"
    created = stored["create_time"].replace(tzinfo=timezone.utc)
    assert before <= created <= datetime.now(timezone.utc) + timedelta(seconds=1)
    fresh = UnitJob.objects.get(pk=job.pk)
    assert fresh.process_status is S.READY
    assert fresh.errors == [] and fresh.warnings == []
    assert fresh.current_process is None and fresh.celery_task_id is None


def test_create_refuses_an_existing_pk():
    job = UnitJob.create(name="a")
    with pytest.raises(Exception, match="[Dd]uplicate|[Tt]ried to save duplicate"):
        UnitJob.create(pk=job.pk, name="b")
    assert raw(job)["name"] == "a"


def test_plain_construct_and_save_yields_ready():
    job = UnitJob(name="b")
    job.save()
    assert raw(job)["process_status"] == "READY"
    assert UnitJob.objects.get(pk=job.pk).process_status is S.READY
    assert raw(job)["create_time"] is not None


def test_status_enum_is_stored_as_its_word_and_read_back_as_member():
    job = UnitJob.create(name="x")
    make_running(job)
    assert raw(job)["process_status"] == "RUNNING"
    assert UnitJob.objects.get(pk=job.pk).process_status is S.RUNNING


# --- indexes -----------------------------------------------------------------------------


def test_subclass_indexes_are_merged_with_the_base_index():
    specs = [spec["fields"] for spec in UnitIndexed._meta["index_specs"]]
    assert [("process_status", 1)] in specs
    assert [("process_status", 1), ("status_changed_at", 1)] in specs
    assert [("name", 1)] in specs
    assert [("rank", -1), ("name", 1)] in specs
    # A subclass without its own indexes keeps just the base ones.
    assert [s["fields"] for s in UnitJob._meta["index_specs"]] == [
        [("process_status", 1)], [("process_status", 1), ("status_changed_at", 1)],
        [("call_queue.id", 1)],
    ]
    assert UnitJob._meta["index_specs"][2]["sparse"] is True  # idle documents hold no key


def test_ensure_indexes_creates_them_on_the_server():
    UnitIndexed.ensure_indexes()
    info = UnitIndexed._get_collection().index_information()
    keys = sorted(tuple(tuple(k) for k in v["key"]) for v in info.values())
    assert (("process_status", 1),) in keys
    assert (("name", 1),) in keys
    assert (("rank", -1), ("name", 1)) in keys


# --- save() guards the status fields -----------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("process_status", S.SUCCESS),
        ("current_process", "other"),
        ("current_process_step", "step"),
        ("errors", ["forged"]),
        ("warnings", ["forged"]),
        ("last_status_message", "forged"),
        ("start_time", datetime(2021, 1, 1)),
        ("complete_time", datetime(2021, 1, 1)),
        ("status_changed_at", datetime(2021, 1, 1)),
        ("worker_hostname", "forged"),
        ("celery_task_id", "forged"),
    ],
)
def test_save_with_a_changed_status_field_raises_and_writes_nothing(field, value):
    job = UnitJob.create(name="before")
    stored_before = raw(job)
    job = UnitJob.objects.get(pk=job.pk)
    job.name = "after"  # a domain change in the same save is not written either
    setattr(job, field, value)
    with pytest.raises(procstatus.StatusFieldWrite, match=field):
        job.save()
    assert raw(job) == stored_before


def test_save_with_a_mutated_status_list_raises():
    job = UnitJob.create(name="n")
    stored_before = raw(job)
    job.errors.append("forged")
    with pytest.raises(procstatus.StatusFieldWrite, match="errors"):
        job.save()
    assert raw(job) == stored_before


def test_status_field_write_message_names_every_field_and_the_document():
    job = UnitJob.create(name="n")
    job.process_status = S.FAILURE
    job.celery_task_id = "x"
    with pytest.raises(procstatus.StatusFieldWrite) as info:
        job.save()
    message = str(info.value)
    assert "celery_task_id, process_status" in message
    assert f"UnitJob({job.pk})" in message
    assert isinstance(info.value, procstatus.ProcStatusError)


def test_saving_domain_fields_does_not_touch_status_fields():
    job = UnitJob.create(name="old")  # in memory: READY
    make_running(UnitJob.objects.get(pk=job.pk), task_id="t-live")
    state_before = transitions.read_state(at(job._get_collection(), job.pk))
    job.name = "new"  # a stale copy that still believes READY
    job.counter = 3
    job.save()
    stored = raw(job)
    assert stored["name"] == "new" and stored["counter"] == 3
    assert transitions.read_state(at(job._get_collection(), job.pk)) == state_before
    assert stored["process_status"] == "RUNNING"


def test_setting_a_status_field_to_its_current_value_is_not_a_change():
    job = UnitJob.create(name="old")
    job.process_status = S.READY
    job.name = "new"
    job.save()
    assert raw(job)["name"] == "new"


# --- set_process_step / warning ----------------------------------------------------------


def test_set_process_step_outside_a_running_process_raises_not_running():
    job = UnitJob.create(name="n")
    with pytest.raises(procstatus.NotRunning, match=r"set_process_step\(\).*loaded elsewhere"):
        job.set_process_step("x")
    assert "current_process_step" not in raw(job)


def test_a_copy_loaded_while_the_process_runs_may_not_write_its_step_or_warnings():
    job = UnitJob.create(name="n")
    make_running(job)
    other_copy = UnitJob.objects.get(pk=job.pk)
    assert other_copy.process_status is S.RUNNING
    with pytest.raises(procstatus.NotRunning, match="loaded elsewhere. Nothing was written"):
        other_copy.set_process_step("x")
    with pytest.raises(procstatus.NotRunning, match="loaded elsewhere"):
        other_copy.warning("w")
    assert raw(job)["current_process_step"] is None and raw(job)["warnings"] == []


def test_set_process_step_for_another_tasks_run_names_it():
    job = UnitJob.create(name="n")
    make_running(job, task_id="t-old")
    coll = job._get_collection()
    assert compat.fail_unclaimed(coll, job.pk, "t-old", "cancelled")
    make_running(UnitJob.objects.get(pk=job.pk), task_id="t-other")  # called again
    with pytest.raises(procstatus.NotRunning, match="is RUNNING for another task"):
        job.set_process_step("x")
    assert raw(job)["current_process_step"] is None


def test_set_process_step_on_deleted_document_says_deleted():
    job = UnitJob.create(name="n")
    make_running(job)
    job.delete()
    with pytest.raises(procstatus.NotRunning, match="is deleted"):
        job.set_process_step("x")
    assert UnitJob.objects(pk=job.pk).count() == 0


@pytest.mark.parametrize("step", [1, b"bytes", ["a"], object()])
def test_set_process_step_with_non_str_raises_type_error(step):
    job = UnitJob.create(name="n")
    make_running(job)
    with pytest.raises(TypeError, match=type(step).__name__):
        job.set_process_step(step)
    assert raw(job)["current_process_step"] is None


def test_set_process_step_and_warning_while_running():
    job = UnitJob.create(name="n")
    make_running(job)
    job.set_process_step("reading")
    assert job.current_process_step == "reading"
    assert raw(job)["current_process_step"] == "reading"
    job.warning("w1", 2)
    job.warning()  # nothing to add: no write, no error
    assert job.warnings == ["w1", "2"]
    assert raw(job)["warnings"] == ["w1", "2"]
    job.set_process_step(None)
    assert raw(job)["current_process_step"] is None
    # Mirrored state is not a pending change: a domain save still works.
    job.name = "saved while running"
    job.save()
    assert raw(job)["name"] == "saved while running"


def test_warning_outside_a_running_process_raises_not_running():
    job = UnitJob.create(name="n")
    with pytest.raises(procstatus.NotRunning, match=r"warning\(\).*loaded elsewhere"):
        job.warning("w")
    assert raw(job)["warnings"] == []


# --- block_until_complete / reload_status / process_running ------------------------------


def test_block_until_complete_times_out_naming_the_status():
    job = UnitJob.create(name="n")
    transitions.schedule(at(job._get_collection(), job.pk), "noop", "t1")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"still PENDING \(noop: None\) after 0.3s"):
        job.block_until_complete(timeout=0.3, interval=0.02)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 3


@pytest.mark.parametrize("final", [S.SUCCESS, S.FAILURE], ids=str)
def test_block_until_complete_returns_the_final_status(final):
    job = UnitJob.create(name="n")
    make_running(job, task_id="t1")
    assert transitions.complete(at(job._get_collection(), job.pk), "t1", final, message="m")
    assert job.block_until_complete(timeout=5) is final
    assert job.process_status is final
    assert job.last_status_message == "m"


def test_block_until_complete_returns_at_once_when_ready():
    job = UnitJob.create(name="n")
    assert job.block_until_complete(timeout=0) is S.READY


def test_block_until_complete_sees_a_completion_from_another_thread():
    job = UnitJob.create(name="n")
    make_running(job, task_id="t1")
    coll = job._get_collection()
    completer = threading.Thread(
        target=transitions.complete,
        args=(at(coll, job.pk), "t1", S.SUCCESS),
        kwargs={"message": "m"},
    )
    completer.start()
    try:
        assert job.block_until_complete(timeout=10, interval=0.01) is S.SUCCESS
    finally:
        completer.join(timeout=10)


def test_block_until_complete_on_deleted_document_raises_does_not_exist():
    job = UnitJob.create(name="n")
    UnitJob.objects(pk=job.pk).delete()
    with pytest.raises(UnitJob.DoesNotExist):
        job.block_until_complete(timeout=1)


def test_reload_status_reads_only_status_fields():
    job = UnitJob.create(name="local")
    coll = job._get_collection()
    coll.update_one({"_id": job.pk}, {"$set": {"name": "remote"}})
    transitions.schedule(at(coll, job.pk), "noop", "t1")
    assert job.reload_status() is S.PENDING
    assert job.celery_task_id == "t1"
    assert job.current_process == "noop"
    assert job.name == "local"
    assert job._get_changed_fields() == []


@pytest.mark.parametrize("status", list(S), ids=str)
def test_process_running_property(status):
    job = UnitJob(name="n", process_status=status)
    assert job.process_running is (status in S.processing())


# --- ProcQuerySet ------------------------------------------------------------------------


def test_queryset_helpers():
    tag = f"qs-{ObjectId()}"
    by_status = {s: UnitJob.create(name=tag, process_status=s).pk for s in S}
    mine = UnitJob.objects(name=tag)

    def pks(qs):
        return {d.pk for d in qs}

    assert pks(mine.processing()) == {
        by_status[S.PENDING], by_status[S.RUNNING], by_status[S.WAITING_FOR_RESULT]
    }
    assert pks(mine.completed()) == {by_status[S.SUCCESS], by_status[S.FAILURE]}
    assert pks(mine.failed()) == {by_status[S.FAILURE]}
    assert pks(mine.with_status(S.READY)) == {by_status[S.READY]}
    assert pks(mine.with_status("READY", "SUCCESS")) == {by_status[S.READY], by_status[S.SUCCESS]}
    assert pks(mine.with_status()) == set()
    assert pks(UnitJob.objects.processing().filter(name=tag)) == pks(mine.processing())
    with pytest.raises(ValueError):
        mine.with_status("DONE")


def test_proc_itself_is_abstract():
    assert Proc._meta["abstract"] is True
    assert isinstance(UnitJob.objects, procstatus.ProcQuerySet)


# --- known gaps in the save() guard (see the reasons) ------------------------------------


def test_save_of_domain_fields_on_a_deleted_document_does_not_recreate_it():
    job = UnitJob.create(name="n")
    UnitJob.objects(pk=job.pk).delete()
    job.name = "written after the delete"
    try:
        job.save()
    except Exception:  # refusing is fine; recreating is not
        pass
    assert UnitJob._get_collection().count_documents({"_id": job.pk}) == 0


def test_save_of_a_constructed_copy_with_an_existing_pk_keeps_the_status():
    job = UnitJob.create(name="n")
    task_id = make_running(job, task_id="t-live")
    try:
        UnitJob(pk=job.pk, name="replacement").save()
    except Exception:  # refusing is fine; overwriting the status is not
        pass
    stored = raw(job)
    assert (stored["process_status"], stored["celery_task_id"]) == ("RUNNING", task_id)
