"""The Proc of the network-partition test: bodies that hold at a gate file, never on the network.

Workers load it next to the usual test app:
``celery -A tests.support.worker_app worker --include tests.support.partition_models``.

Each body, and each status hook, appends one JSON line to ``events.jsonl`` in the
document's ``directory`` — a side channel that does not go through MongoDB or Redis, so
it records what ran even where the network was cut. A body sets its step, records
``started``, then polls for ``gate-<task id>`` in the same directory: a test releases
each run, the first and a re-sent one, separately. The file system is shared by the
namespace and the host, so the gate and the side channel work across a partition.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mongoengine import StringField

from procstatus import Proc, process

HOLD_TIMEOUT = 120.0
"""A held body gives up (TimeoutError) after this many seconds without its gate."""


def events_path(directory: str | Path) -> Path:
    return Path(directory) / "events.jsonl"


def gate_path(directory: str | Path, task_id: str) -> Path:
    return Path(directory) / f"gate-{task_id}"


def open_gate(directory: str | Path, task_id: str) -> None:
    gate_path(directory, task_id).touch()


def read_events(directory: str | Path) -> list[dict[str, Any]]:
    path = events_path(directory)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record(proc: PartitionJob, event: str, **extra: Any) -> None:
    """Append one event; a single O_APPEND write, so lines from processes never interleave."""
    line = json.dumps({
        "event": event, "pk": str(proc.pk), "task_id": proc.celery_task_id,
        "worker": proc.worker_hostname, "pid": os.getpid(), "at": time.time(), **extra,
    })
    with open(events_path(proc.directory or "."), "a") as out:
        out.write(line + "\n")


class PartitionJob(Proc):
    meta = {"collection": "partition_jobs"}

    directory = StringField(required=True)
    """Where the side channel and the gates live."""

    def _hold(self, label: str) -> None:
        self.set_process_step("holding")
        record(self, "started", label=label)
        gate = gate_path(self.directory, self.celery_task_id or "")
        deadline = time.monotonic() + HOLD_TIMEOUT
        while not gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} never appeared")
            time.sleep(0.05)

    @process
    def hold(self, label: str) -> None:
        """Holds, then sets a second step: a write that fails if the run ended meanwhile."""
        self._hold(label)
        self.set_process_step("released")
        record(self, "completed", label=label)

    @process(retry_on_worker_lost=True)
    def hold_idempotent(self, label: str) -> None:
        """Holds, then returns: its final write (SUCCESS) is the only write after the gate."""
        self._hold(label)
        record(self, "completed", label=label)

    def on_success(self) -> None:
        record(self, "on_success")

    def on_fail(self) -> None:
        record(self, "on_fail")
