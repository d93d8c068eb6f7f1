"""What users get for their own suites: inline runs (Celery's eager mode) and one configuration.

The inline tests run in this test process on the session's app, with no worker: the
state machine's writes are the same as on a worker, so the caller's copy and the stored
document must both show the final status.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from procstatus import ProcessStatus
from procstatus.testing import run_inline
from tests.support.models import Batch, FaultJob, Item, Job, runs_key

pytestmark = pytest.mark.usefixtures("celery_app_under_test")


def stored(doc):  # type: ignore[no-untyped-def]
    return type(doc).objects.get(pk=doc.pk)


def test_an_inline_call_returns_with_the_final_status_on_the_callers_copy(procstatus_inline):
    job = Job.create(name="inline")
    job.noop()
    assert job.process_status is ProcessStatus.SUCCESS
    done = stored(job)
    assert done.process_status is ProcessStatus.SUCCESS
    assert done.last_status_message == "Process noop completed successfully"
    assert done.start_time is not None and done.complete_time is not None


def test_an_inline_failure_is_recorded_not_raised(procstatus_inline):
    job = Job.create(name="inline failure")
    job.fail_with("bad input")
    assert job.process_status is ProcessStatus.FAILURE
    assert stored(job).errors == ["ValueError: bad input"]


def test_an_inline_parent_runs_its_children_and_joins_once(redis_client):
    batch = Batch.create()
    with run_inline():
        batch.spawn(8)
    assert batch.process_status is ProcessStatus.SUCCESS
    assert int(redis_client.get(f"procstatus-test:joins:{batch.pk}")) == 1
    assert Item.objects(batch=batch.pk).processing().count() == 0
    assert stored(batch).joined_items == 7  # item 3 fails on purpose (number % 7 == 3)


def test_inline_retries_run_at_once_and_keep_their_history(procstatus_inline, redis_client):
    job = FaultJob.create(name="inline retries")
    job.flaky_twice()
    assert job.process_status is ProcessStatus.SUCCESS
    assert redis_client.llen(runs_key(job.pk)) == 3
    assert len(stored(job).warnings) == 2


def test_run_inline_restores_the_apps_settings(celery_app_under_test):
    before = celery_app_under_test.conf.task_always_eager
    with run_inline():
        assert celery_app_under_test.conf.task_always_eager is True
    assert celery_app_under_test.conf.task_always_eager == before


CALLER = """
import os, sys
import mongoengine
from celery import Celery
import procstatus
from procstatus import Proc

def connect_own():
    mongoengine.connect(db="procstatus_callers_own", host=os.environ["MONGODB_URI"])

if sys.argv[1] == "own-connection-before":
    connect_own()
app = Celery("caller", broker=os.environ["CELERY_BROKER_URL"])
procstatus.install(app, mongodb_uri=os.environ["MONGODB_URI"], mongodb_db="procstatus_callers")
if sys.argv[1] == "own-connection-after":
    connect_own()

class Note(Proc):
    meta = {"collection": "notes"}

note = Note.create()
print(Note._get_db().name, Note.objects(pk=note.pk).count())
"""


@pytest.mark.parametrize(
    "mode", ["no-connection", "own-connection-before", "own-connection-after"]
)
def test_install_connects_the_caller_unless_it_has_its_own_connection(
    mode, mongodb_uri, broker_url, mongo_client
):
    result = subprocess.run(
        [sys.executable, "-c", CALLER, mode],
        env={**os.environ, "MONGODB_URI": mongodb_uri, "CELERY_BROKER_URL": broker_url},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    expected = "procstatus_callers" if mode == "no-connection" else "procstatus_callers_own"
    assert result.stdout.split() == [expected, "1"]
    mongo_client.drop_database(expected)
