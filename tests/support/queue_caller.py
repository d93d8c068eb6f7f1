"""Calls one QueueJob's non-blocking process from many threads at once; prints each outcome.

Run as ``python -m tests.support.queue_caller JOB_ID THREADS LABEL``; prints ``ready``,
waits for a line on stdin, releases all threads at once, then prints a JSON list
(:func:`tests.support.thread_callers.release_at_once`).
"""

from __future__ import annotations

import sys

from tests.support.models import QueueJob
from tests.support.thread_callers import release_at_once
from tests.support.worker_app import app  # noqa: F401  (installs procstatus: one configuration)


def append(copy: QueueJob, value: str) -> str:
    copy.append(value)
    return f"called {value}"


def main() -> None:
    job_id, thread_count, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # Each thread calls through its own copy of the document, as separate requests would.
    release_at_once(
        append, [(QueueJob.objects.get(pk=job_id), f"{label}-{i}") for i in range(thread_count)]
    )


if __name__ == "__main__":
    main()
