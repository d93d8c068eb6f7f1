"""Numeric progress (throttled, the last value written with the end), reset, and a dry sweep."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import procstatus
from procstatus import ProcessStatus, runner, runtime, sweeper, transitions
from tests.unit.compat import at
from tests.unit.models import UnitJob
from tests.unit.test_document import make_running

S = ProcessStatus

pytestmark = pytest.mark.usefixtures("test_db")


def raw(job):  # type: ignore[no-untyped-def]
    return job._get_collection().find_one({"_id": job.pk})


def test_progress_is_written_at_once_then_throttled_and_the_last_value_ends_with_the_run(
    monkeypatch,
):
    monkeypatch.setattr(runtime.current, "progress_interval", 60.0)
    job = UnitJob.create(name="p")
    make_running(job)
    job.set_progress(1, 10)
    assert (raw(job)["progress_done"], raw(job)["progress_total"]) == (1, 10)
    job.set_progress(7, 10)  # within the interval: kept for later
    assert raw(job)["progress_done"] == 1
    assert runner.finish(job, None) is S.SUCCESS
    assert (raw(job)["progress_done"], raw(job)["progress_total"]) == (7, 10)


def test_progress_without_throttling_writes_every_call(monkeypatch):
    monkeypatch.setattr(runtime.current, "progress_interval", 0.0)
    job = UnitJob.create(name="p0")
    make_running(job)
    for done in range(3):
        job.set_progress(done)
        assert raw(job)["progress_done"] == done and raw(job)["progress_total"] is None


@pytest.mark.parametrize("done,total", [(-1, None), (1.5, None), (True, None), (1, 0), (1, "9")])
def test_bad_progress_is_refused_with_a_clear_error(done, total):
    job = UnitJob.create(name="bad")
    make_running(job)
    with pytest.raises(ValueError, match="progress (done|total) must be"):
        job.set_progress(done, total)
    assert raw(job).get("progress_done") is None


def test_progress_from_another_copy_is_refused():
    job = UnitJob.create(name="other")
    make_running(job)
    with pytest.raises(procstatus.NotRunning, match="loaded elsewhere"):
        UnitJob.objects.get(pk=job.pk).set_progress(1)


def test_a_new_run_clears_the_progress_of_the_last():
    job = UnitJob.create(name="again")
    make_running(job)
    job.set_progress(5, 5)
    runner.finish(job, None)
    transitions.schedule(at(job._get_collection(), job.pk), "noop", "t-next")
    assert raw(job)["progress_done"] is None and raw(job)["progress_total"] is None


def test_reset_refuses_a_processing_document_unless_forced_and_keeps_domain_fields():
    job = UnitJob.create(name="domain value")
    make_running(job)
    job.warning("w")
    coll = job._get_collection()
    assert transitions.reset(at(coll, job.pk)) is None
    assert raw(job)["process_status"] == "RUNNING"
    before = transitions.reset(at(coll, job.pk), force=True)
    assert before is not None and before["process_status"] == "RUNNING"
    after = raw(job)
    assert after["process_status"] == "READY" and after["warnings"] == []
    assert after["errors"] == [] and after["current_process_step"] is None
    assert after["name"] == "domain value" and after["celery_task_id"] is None
    assert transitions.reset(at(coll, job.pk)) is None  # already READY: nothing to do


def test_reset_of_a_failure_clears_its_errors():
    job = UnitJob.create(name="failed")
    make_running(job)
    runner.fail(job, ValueError("boom"))
    assert transitions.reset(at(job._get_collection(), job.pk))["errors"] == ["ValueError: boom"]
    assert raw(job)["errors"] == [] and raw(job)["process_status"] == "READY"


def test_a_dry_sweep_reports_and_writes_nothing(mongo_client, test_db):
    job = UnitJob.create(name="lost")
    make_running(job)
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    job._get_collection().update_one({"_id": job.pk}, {"$set": {"status_changed_at": long_ago}})
    before = raw(job)
    report = sweeper.sweep(threshold=3, classes=[UnitJob], dry_run=True)
    assert f"UnitJob({job.pk})" in report.failed
    assert raw(job) == before


def test_cancel_returns_while_the_broker_does_not_take_the_revoke(publisher, monkeypatch):
    import threading
    from types import SimpleNamespace

    from procstatus import messages

    released = threading.Event()
    sent: list[str] = []

    def revoke_into_a_dead_broker(task_id, **_):  # type: ignore[no-untyped-def]
        released.wait(30)  # as Celery's broadcast retries while the broker is down
        sent.append(task_id)

    publisher.app = SimpleNamespace(
        conf=publisher.app.conf, control=SimpleNamespace(revoke=revoke_into_a_dead_broker)
    )
    monkeypatch.setattr(messages, "REVOKE_WAIT", 0.2)
    job = UnitJob.create(name="cancel, broker down")
    task_id = make_running(job)
    assert job.cancel() is True  # returned while the revoke is still blocked
    assert sent == [] and raw(job)["process_status"] == "FAILURE"
    released.set()
    deadline_thread = [t for t in threading.enumerate() if t.name.endswith(task_id)]
    for thread in deadline_thread:
        thread.join(10)
    assert sent == [task_id]
