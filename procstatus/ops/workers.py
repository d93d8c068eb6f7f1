"""The workers' heartbeats (``procstatus_workers``), as an operator reads them.

Each worker start writes one small document there (:mod:`procstatus.liveness`);
:func:`workers` reads them whole and says which still count as alive. Read-only: marking
silent workers stopped is :mod:`procstatus.liveness`'s (``procstatus workers --prune``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection

from procstatus.clock import aware, server_now
from procstatus.ops.values import jsonable, rounded, seconds_since


@dataclass
class Worker:
    """One worker start's heartbeat, and whether it still counts as alive."""

    instance: str
    hostname: str | None
    pid: int | None
    heartbeat_at: datetime | None
    active: list[str] = field(default_factory=list)
    stopped: bool = False
    gone_at: datetime | None = None
    alive: bool = False
    silent_s: float | None = None
    """Seconds since the last heartbeat."""

    @property
    def state(self) -> str:
        """``alive``, ``stopped`` (shut down or marked gone) or ``silent`` (past the
        threshold, not yet marked: killed, or cut off)."""
        if self.alive:
            return "alive"
        return "stopped" if self.stopped else "silent"

    def as_dict(self) -> dict[str, Any]:
        data = {k: jsonable(v) for k, v in asdict(self).items()}
        data["state"] = self.state
        data["silent_s"] = rounded(self.silent_s)
        return data


def workers(
    collection: Collection, *, threshold: float, now: datetime | None = None
) -> list[Worker]:
    """Every heartbeat in ``procstatus_workers``, by hostname; alive = beat within
    ``threshold`` seconds and not stopped.

    The collection holds one small document per worker start and stopped ones are
    deleted a day later (:func:`procstatus.liveness.mark_gone`), so it is read whole,
    in ``_id`` index order. Silence is measured on the server's clock (the one that
    wrote the beats) unless ``now`` is given.
    """
    now = now or server_now(collection.database)
    found: list[Worker] = []
    for document in collection.find({}).hint([("_id", ASCENDING)]):
        beat = aware(document.get("heartbeat_at"))
        silent = seconds_since(beat, now)
        stopped = bool(document.get("stopped"))
        found.append(
            Worker(
                instance=str(document["_id"]),
                hostname=document.get("hostname"),
                pid=document.get("pid"),
                heartbeat_at=beat,
                active=list(document.get("active") or []),
                stopped=stopped,
                gone_at=aware(document.get("gone_at")),
                alive=not stopped and silent is not None and silent <= threshold,
                silent_s=silent,
            )
        )
    found.sort(key=lambda w: (not w.alive, w.hostname or "", w.silent_s or 0.0))
    return found
