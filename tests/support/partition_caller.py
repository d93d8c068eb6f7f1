"""The caller and the sweeper of the partition test, in a process bound to that test's servers.

The pytest process has already imported the session's Celery app (bound to the session's
broker at import) and connected mongoengine to the session's server, and procstatus keeps
one publisher and one liveness setting per process. Rather than rebind those, the test
runs the procstatus side of its caller here, configured like any deployment's process:
``tests.support.worker_app`` imported with the private ``CELERY_BROKER_URL`` (so
``procstatus.install`` binds dispatch to the private broker) and mongoengine's default
connection on the private ``MONGODB_URI``.

Run as ``python -m tests.support.partition_caller``; prints ``ready``, then answers one
JSON request per stdin line with one JSON line on stdout (logging goes to stderr):

- ``{"op": "call", "method": m, "label": l, "directory": d}`` creates a
  ``PartitionJob(directory=d)``, calls ``job.m(l)``, answers ``{"pk", "task_id"}``;
- ``{"op": "sweep", "threshold": t}`` runs ``procstatus.sweep(threshold=t)`` once and
  answers its report.

A request that raises is answered ``{"error": "..."}``. :class:`CallerProcess` is the
test's end of the pipe.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from devtools import services


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import mongoengine

    import procstatus
    from tests.support.partition_models import PartitionJob
    from tests.support.worker_app import app  # noqa: F401  (installs procstatus for dispatch)

    mongoengine.connect(db=os.environ["PROCSTATUS_TEST_DB"], host=os.environ["MONGODB_URI"])
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "call":
                job = PartitionJob.create(directory=request["directory"])
                getattr(job, request["method"])(request["label"])
                reply: dict[str, Any] = {"pk": str(job.pk), "task_id": job.celery_task_id}
            elif request["op"] == "sweep":
                reply = procstatus.sweep(threshold=request["threshold"]).as_dict()
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
        except Exception as exc:  # answered to the test, which fails on it
            logging.exception("request %s failed", request)
            reply = {"error": repr(exc)}
        print(json.dumps(reply), flush=True)


class CallerProcess:
    """The test's handle on a running ``partition_caller``."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self._log: IO[bytes] = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.partition_caller"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **env}, cwd=str(services.REPO_ROOT),
        )
        ready = self._read_line(timeout=60)
        if ready != "ready":
            self.close()
            raise RuntimeError(f"partition_caller did not start: {ready!r} (see {log_path})")

    def _read_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not readable:
            raise TimeoutError(f"partition_caller gave no answer within {timeout:.0f}s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"partition_caller exited with {self.process.wait(5)}")
        return line.strip()

    def request(self, timeout: float = 30, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self._read_line(timeout))
        if "error" in reply:
            raise RuntimeError(f"partition_caller: {request} failed: {reply['error']}")
        return reply

    def call(self, method: str, label: str, directory: Path) -> tuple[str, str]:
        reply = self.request(op="call", method=method, label=label, directory=str(directory))
        return reply["pk"], reply["task_id"]

    def sweep(self, threshold: float) -> dict[str, Any]:
        return self.request(op="sweep", threshold=threshold)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()


if __name__ == "__main__":
    main()
