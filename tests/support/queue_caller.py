"""Calls one QueueJob's non-blocking process from many threads at once; prints each outcome.

Run as ``python -m tests.support.queue_caller JOB_ID THREADS LABEL``; prints ``ready``,
waits for a line on stdin, releases all threads at once, then prints a JSON list.
"""

from __future__ import annotations

import json
import sys
import threading

from tests.support.models import QueueJob
from tests.support.worker_app import app  # noqa: F401  (installs procstatus: one configuration)


def main() -> None:
    job_id, thread_count, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    go = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(copy: QueueJob, value: str) -> None:
        go.wait()
        try:
            copy.append(value)
            outcome = f"called {value}"
        except Exception as exc:  # reported to the test, which fails on it
            outcome = f"error: {exc!r}"
        with lock:
            outcomes.append(outcome)

    threads = [
        threading.Thread(target=call, args=(QueueJob.objects.get(pk=job_id), f"{label}-{i}"))
        for i in range(thread_count)
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
