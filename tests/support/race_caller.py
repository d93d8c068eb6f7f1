"""Calls one Job's process from many threads at a signal; prints how each call ended.

Run as ``python -m tests.support.race_caller JOB_ID THREADS``; prints ``ready``, waits
for a line on stdin, releases all threads at once, then prints a JSON list of outcomes
(:func:`tests.support.thread_callers.release_at_once`).
"""

from __future__ import annotations

import os
import sys

import mongoengine

from procstatus import ProcessAlreadyRunning
from tests.support.models import Job
from tests.support.thread_callers import release_at_once
from tests.support.worker_app import app  # noqa: F401  (installs procstatus for dispatch)


def gated(copy: Job) -> str:
    try:
        copy.gated(["held"])
    except ProcessAlreadyRunning:
        return "already-running"
    return "dispatched"


def main() -> None:
    job_id, thread_count = sys.argv[1], int(sys.argv[2])
    mongoengine.connect(db=os.environ["PROCSTATUS_TEST_DB"], host=os.environ["MONGODB_URI"])
    # Each thread calls through its own copy of the document, as separate requests would.
    release_at_once(gated, [(Job.objects.get(pk=job_id),) for _ in range(thread_count)])


if __name__ == "__main__":
    main()
