"""Runs the upload example end to end and prints every status change as it happens.

Starts what is missing (a SecantusDB unless MONGODB_URI is set, Redis unless
CELERY_BROKER_URL is set, and one prefork celery worker unless DEMO_USE_RUNNING_WORKER
is set, as in docker-compose.yml), processes one upload with
five entries, prints the timeline, and stops what it started.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from devtools import services


def main() -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="procstatus-demo-"))
    started: list[services.Service] = []
    try:
        if not os.environ.get("MONGODB_URI"):
            mongo = services.start_secantus(log_dir)
            started.append(mongo)
            os.environ["MONGODB_URI"] = mongo.url
            print(f"started SecantusDB at {mongo.url}")
        if not os.environ.get("CELERY_BROKER_URL"):
            services.ensure_local_redis()
        if not os.environ.get("DEMO_USE_RUNNING_WORKER"):
            worker = services.start_worker(
                "examples.upload_app", log_dir, hostname="demo@%h", env=dict(os.environ),
                concurrency=2,
            )
            started.append(worker)
            print(f"started a celery worker (prefork, 2 processes); its log: {worker.log_path}")
        return run_demo()
    finally:
        for service in reversed(started):
            service.stop()


def run_demo() -> int:
    import mongoengine

    from examples.upload_app import MONGODB_DB, Entry, Upload
    from procstatus import ProcessStatus

    mongoengine.connect(db=MONGODB_DB, host=os.environ["MONGODB_URI"])
    upload = Upload.create(
        path="survey.csv", lines=["alpha", "beta", "   ", "delta", "epsilon"]
    )
    print(f"\nUpload {upload.pk} is {upload.process_status}; calling process_upload()\n")
    upload.process_upload()
    print(f"{'t (s)':>6}  {'status':<19} {'step':<28} entries")
    started = time.monotonic()
    last = None
    while True:
        fresh = Upload.objects.get(pk=upload.pk)
        entries = Entry.objects(upload=upload.pk)
        counts = {s.value: entries.with_status(s).count() for s in ProcessStatus}
        summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
        line = (fresh.process_status.value, fresh.current_process_step or "", summary)
        if line != last:
            print(f"{time.monotonic() - started:6.2f}  {line[0]:<19} {line[1]:<28} {line[2]}")
            last = line
        if fresh.process_status in ProcessStatus.completed():
            break
        if time.monotonic() - started > 120:
            print("the upload did not complete within 120 s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"\nfinal: {fresh.process_status}  {fresh.last_status_message!r}")
    print(
        f"entries ok: {fresh.entries_ok}, failed: {fresh.entries_failed}, "
        f"warnings: {fresh.warnings}"
    )
    for entry in entries.failed():
        print(f"  entry {entry.number}: {entry.errors}")
    return 0 if fresh.process_status is ProcessStatus.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
