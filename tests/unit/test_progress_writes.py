"""The run's step and warning writes can carry its held-back progress: same condition, same
command, refused whole for another run."""

from __future__ import annotations

from typing import Any

import pytest

from procstatus import transitions
from tests.unit.compat import at
from tests.unit.models import UnitJob
from tests.unit.test_document import make_running

pytestmark = pytest.mark.usefixtures("test_db")


def raw(job: UnitJob) -> dict[str, Any]:
    found = job._get_collection().find_one({"_id": job.pk})
    assert found is not None
    return found


@pytest.mark.parametrize("write", ["set_step", "add_warnings"])
def test_a_step_or_warning_carries_progress_and_nothing_else(write: str) -> None:
    job = UnitJob.create(name="carried")
    task_id = make_running(job)
    coll = job._get_collection()
    held = {"progress_done": 2, "progress_total": 3, "process_status": "SUCCESS"}
    if write == "set_step":
        assert transitions.set_step(at(coll, job.pk), task_id, "x", progress=held) is True
        assert raw(job)["current_process_step"] == "x"
    else:
        assert transitions.add_warnings(at(coll, job.pk), task_id, ["w"], progress=held) is True
        assert raw(job)["warnings"] == ["w"]
    after = raw(job)
    assert (after["progress_done"], after["progress_total"]) == (2, 3)
    assert after["process_status"] == "RUNNING"


@pytest.mark.parametrize("write", ["set_step", "add_warnings"])
def test_a_step_or_warning_carrying_progress_is_refused_whole_for_another_run(write: str) -> None:
    job = UnitJob.create(name="carried")
    make_running(job)
    coll, held = job._get_collection(), {"progress_done": 2, "progress_total": 3}
    before = raw(job)
    if write == "set_step":
        assert transitions.set_step(at(coll, job.pk), "t-other", "x", progress=held) is False
        assert transitions.set_step(at(coll, job.pk), None, "x", progress=held) is False
    else:
        assert transitions.add_warnings(at(coll, job.pk), "t-other", ["w"], progress=held) is False
        assert transitions.add_warnings(at(coll, job.pk), None, ["w"], progress=held) is False
    assert raw(job) == before
