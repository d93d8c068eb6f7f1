"""Sweeps ``SkewJob`` runs in a loop, in a process of its own (its clock may be skewed).

``python -m tests.support.clock_sweeper THRESHOLD INTERVAL KEY``: each pass runs
``procstatus.sweep(threshold=THRESHOLD)``, then counts the pass in Redis under ``KEY`` and
pushes the documents it failed to ``KEY:failed``; ``KEY:clock`` holds this process's
wall clock at start (``time.time()``), so the test can check the skew is real. Runs until
it is terminated.
"""

from __future__ import annotations

import sys
import time

import procstatus
from tests.support import worker_app  # noqa: F401  (install(): the connection, the app)
from tests.support.models import SkewJob, redis_client


def main(threshold: float, interval: float, key: str) -> None:
    client = redis_client()
    client.set(f"{key}:clock", repr(time.time()))
    while True:
        report = procstatus.sweep(threshold=threshold, classes=[SkewJob])
        for label in report.failed + report.sent_again + report.awaiting_redelivery:
            client.rpush(f"{key}:failed", label)
        client.incr(key)
        time.sleep(interval)


if __name__ == "__main__":
    main(float(sys.argv[1]), float(sys.argv[2]), sys.argv[3])
