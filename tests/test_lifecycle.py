"""The lifecycle seen from outside, against a real broker, MongoDB server and prefork worker."""

from __future__ import annotations

import pytest

from devtools.services import wait_for
from procstatus import ProcessStatus
from tests.support.models import Job, gate_key, runs_key

pytestmark = pytest.mark.integration


def status_of(job: Job) -> tuple:
    fresh = Job.objects.get(pk=job.pk)
    return fresh.process_status, fresh.current_process_step


def test_success_path(worker, redis_client):
    job = Job.create(name="simple")
    assert job.process_status is ProcessStatus.READY
    job.noop()
    assert job.process_status is ProcessStatus.PENDING
    assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    fresh = Job.objects.get(pk=job.pk)
    assert fresh.current_process == "noop"
    assert fresh.complete_time is not None and fresh.start_time is not None
    assert fresh.worker_hostname and fresh.worker_hostname.startswith("main-")
    assert fresh.errors == []
    assert fresh.last_status_message == "Process noop completed successfully"
    assert redis_client.llen(runs_key(job.pk)) == 1
