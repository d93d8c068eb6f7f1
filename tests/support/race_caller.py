"""Calls one Job's process from many threads at a signal; prints how each call ended.

Run as ``python -m tests.support.race_caller JOB_ID THREADS``; prints ``ready``, waits
for a line on stdin, releases all threads at once, then prints a JSON list of outcomes.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import mongoengine

from procstatus import ProcessAlreadyRunning
from tests.support.models import Job
from tests.support.worker_app import app  # noqa: F401  (installs procstatus for dispatch)


def main() -> None:
    job_id, thread_count = sys.argv[1], int(sys.argv[2])
    mongoengine.connect(db=os.environ["PROCSTATUS_TEST_DB"], host=os.environ["MONGODB_URI"])
    go = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(copy: Job) -> None:
        go.wait()
        try:
            copy.gated(["held"])
            outcome = "dispatched"
        except ProcessAlreadyRunning:
            outcome = "already-running"
        except Exception as exc:  # reported to the test, which fails on it
            outcome = f"error: {exc!r}"
        with lock:
            outcomes.append(outcome)

    threads = [
        threading.Thread(target=call, args=(Job.objects.get(pk=job_id),))
        for _ in range(thread_count)
    ]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for thread in threads:
        thread.join(60)
    print(json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    main()
