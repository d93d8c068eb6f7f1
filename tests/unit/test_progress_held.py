"""A throttled progress value is written within one interval: with the next step or warning
write (in that same command), else by one trailing write once the interval has passed.

Nothing here sleeps to synchronise: the trailing write is awaited by polling the stored
document with a deadline, and its timer thread by joining it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pymongo.collection import Collection

from devtools.services import wait_for
from procstatus import ProcessStatus, runner, runtime, transitions
from tests.unit.compat import at
from tests.unit.models import UnitJob
from tests.unit.test_document import make_running

S = ProcessStatus

pytestmark = pytest.mark.usefixtures("test_db")


def raw(job: UnitJob) -> dict[str, Any]:
    found = job._get_collection().find_one({"_id": job.pk})
    assert found is not None
    return found


def progress(job: UnitJob) -> tuple[Any, Any]:
    stored = raw(job)
    return stored.get("progress_done"), stored.get("progress_total")


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every update command sent (its update document), in order."""
    sent: list[dict[str, Any]] = []
    original = Collection.update_one

    def counted(self: Collection, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(update)
        return original(self, filter, update, *args, **kwargs)

    monkeypatch.setattr(Collection, "update_one", counted)
    return sent


@pytest.mark.parametrize("write", ["step", "warning"])
def test_a_held_value_goes_with_the_next_step_or_warning_in_that_one_command(
    monkeypatch: pytest.MonkeyPatch, updates: list[dict[str, Any]], write: str
) -> None:
    monkeypatch.setattr(runtime.current, "progress_interval", 60.0)
    job = UnitJob.create(name="held, then a step")
    make_running(job)
    job.set_progress(1, 3)
    job.set_progress(2, 3)  # within the interval: held
    assert progress(job) == (1, 3) and len(updates) == 1
    if write == "step":
        job.set_process_step("step 2 of 3")
        assert raw(job)["current_process_step"] == "step 2 of 3"
    else:
        job.warning("a wobble")
        assert raw(job)["warnings"] == ["a wobble"]
    assert progress(job) == (2, 3)
    assert len(updates) == 2  # the step (or warning) and the held progress: one command
    assert job._unwritten_progress() is None
    assert runner.finish(job, None) is S.SUCCESS
    assert progress(job) == (2, 3)


def test_a_step_with_nothing_held_writes_the_step_alone(
    monkeypatch: pytest.MonkeyPatch, updates: list[dict[str, Any]]
) -> None:
    monkeypatch.setattr(runtime.current, "progress_interval", 60.0)
    job = UnitJob.create(name="nothing held")
    make_running(job)
    job.set_progress(1, 3)
    job.set_process_step("reading")
    assert updates[-1] == {"$set": {"current_process_step": "reading"}}
    assert progress(job) == (1, 3)


def test_a_held_value_is_written_once_the_interval_has_passed_while_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch, updates: list[dict[str, Any]]
) -> None:
    monkeypatch.setattr(runtime.current, "progress_interval", 0.2)
    job = UnitJob.create(name="held, then a long wait")
    make_running(job)
    job.set_progress(1, 3)
    job.set_progress(2, 3)  # held; the process now works for an hour
    wait_for(lambda: progress(job) == (2, 3), timeout=10, what="the held 2/3 to be written")
    assert raw(job)["process_status"] == "RUNNING"
    assert len(updates) == 2  # the first value, then one trailing write
    assert job._unwritten_progress() is None
    assert runner.finish(job, None) is S.SUCCESS
    assert progress(job) == (2, 3)


def test_many_calls_within_one_interval_make_one_trailing_write_of_the_last_value(
    monkeypatch: pytest.MonkeyPatch, updates: list[dict[str, Any]]
) -> None:
    monkeypatch.setattr(runtime.current, "progress_interval", 0.5)
    job = UnitJob.create(name="a hundred calls")
    make_running(job)
    for done in range(1, 101):
        job.set_progress(done, 100)
    timer = job._progress_timer
    assert timer is not None
    timer.join(10)
    assert not timer.is_alive()
    assert progress(job) == (100, 100)
    assert len(updates) <= 3  # calls longer than an interval may write once more


def test_the_runs_end_writes_the_held_value_and_cancels_the_trailing_write(
    monkeypatch: pytest.MonkeyPatch, updates: list[dict[str, Any]]
) -> None:
    monkeypatch.setattr(runtime.current, "progress_interval", 60.0)
    job = UnitJob.create(name="held, then the end")
    make_running(job)
    job.set_progress(1, 3)
    job.set_progress(2, 3)
    timer = job._progress_timer
    assert timer is not None and timer.is_alive()
    assert runner.finish(job, None) is S.SUCCESS
    timer.join(10)  # cancelled: it ends at once instead of in 60 s
    assert not timer.is_alive()
    assert progress(job) == (2, 3) and len(updates) == 2


def test_a_trailing_write_after_the_run_ended_elsewhere_is_refused_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime.current, "progress_interval", 0.2)
    job = UnitJob.create(name="cancelled while held")
    task_id = make_running(job)
    job.set_progress(1, 3)
    job.set_progress(2, 3)
    timer = job._progress_timer
    assert timer is not None
    assert transitions.fail_run(at(job._get_collection(), job.pk), task_id, "noop", "cancelled")
    with caplog.at_level(logging.DEBUG, logger="procstatus"):
        timer.join(10)
    assert not timer.is_alive()
    assert raw(job)["process_status"] == "FAILURE" and progress(job) == (1, 3)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failing_trailing_write_is_logged_and_never_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime.current, "progress_interval", 0.2)
    job = UnitJob.create(name="database away")
    make_running(job)
    job.set_progress(1, 3)

    def broken(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("the database is away")

    monkeypatch.setattr(transitions, "set_progress", broken)
    job.set_progress(2, 3)
    timer = job._progress_timer
    assert timer is not None
    with caplog.at_level(logging.DEBUG, logger="procstatus"):
        timer.join(10)
    assert not timer.is_alive()
    assert any("the database is away" in r.getMessage() for r in caplog.records)
    # Still held: the run's end writes it.
    assert job._unwritten_progress() == {"progress_done": 2, "progress_total": 3}
    assert runner.finish(job, None) is S.SUCCESS
    assert progress(job) == (2, 3)

