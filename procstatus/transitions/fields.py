"""The state fields, the edges each write declares, and the values writes share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from procstatus.status import (
    LEGAL_TRANSITIONS,
    SCHEDULABLE,
    ProcessStatus,
    values,
)
from procstatus.text import cut

MAX_LIST_ENTRIES = 100
"""The most entries ``errors`` and ``warnings`` keep: the last ones pushed."""


STATE_FIELDS: tuple[str, ...] = (
    "process_status",
    "current_process",
    "current_process_step",
    "errors",
    "warnings",
    "last_status_message",
    "start_time",
    "complete_time",
    "status_changed_at",
    "worker_hostname",
    "worker_instance",
    "worker_pid",
    "worker_redelivers",
    "worker_losses",
    "celery_task_id",
    "process_arguments",
    "joining",
    "call_queue",
    "progress_done",
    "progress_total",
)
"""Fields written only through this module."""


_QUEUE_HEAD = "call_queue.0"


_COUNT_LOSS = {"worker_losses": 1}
"""The ``$inc`` of a write that records a lost worker."""


# None also matches a missing field: a document saved before its class became a Proc.
_SCHEDULABLE: list[str | None] = [*values(SCHEDULABLE), None]


_PROJECTION = {name: 1 for name in STATE_FIELDS}


def _bounded(entries: Sequence[str]) -> list[str]:
    """``entries`` as a capped push stores them: the last :data:`MAX_LIST_ENTRIES`, each cut."""
    # Only the entries that can survive the $slice are sent, so the command stays small too.
    return [cut(entry) for entry in list(entries)[-MAX_LIST_ENTRIES:]]


def _capped_push(field: str, entries: Sequence[str]) -> dict[str, Any]:
    """The ``$push`` of ``entries`` to ``field`` (``errors``/``warnings``), each cut, the
    list keeping its last :data:`MAX_LIST_ENTRIES` entries."""
    return {field: {"$each": _bounded(entries), "$slice": -MAX_LIST_ENTRIES}}


_S = ProcessStatus


def _is(state: Mapping[str, Any], **fields: Any) -> bool:
    """Whether ``state`` has every one of ``fields``' values."""
    return all(state.get(name) == value for name, value in fields.items())


Edge = tuple[ProcessStatus, ProcessStatus]


F = TypeVar("F", bound=Callable[..., Any])


EDGES_BY_WRITE: dict[str, frozenset[Edge]] = {}
"""The status edges each write function performs, by function name."""


def performs(*edges: Edge) -> Callable[[F], F]:
    """Declare the status edges a write performs; an edge the table lacks fails at import."""
    illegal = [f"{a}→{b}" for a, b in edges if b not in LEGAL_TRANSITIONS[a]]
    if illegal:
        raise AssertionError(f"not in LEGAL_TRANSITIONS: {', '.join(illegal)}")

    def register(function: F) -> F:
        EDGES_BY_WRITE[function.__name__] = frozenset(edges)
        return function

    return register


@dataclass(frozen=True)
class WorkerRef:
    """The worker fields a claim records: node name, worker-start instance, pool pid, and
    whether the broker gives the message back if this worker is lost (``acks_late`` +
    ``reject_on_worker_lost``: the message is acknowledged only after the run)."""

    hostname: str | None = None
    instance: str | None = None
    pid: int | None = None
    redelivers: bool = False

    def fields(self) -> dict[str, Any]:
        return {
            "worker_hostname": self.hostname,
            "worker_instance": self.instance,
            "worker_pid": self.pid,
            "worker_redelivers": self.redelivers,
        }

    def claimed(self, state: Mapping[str, Any], task_id: str | None) -> bool:
        """Whether ``state`` is RUNNING under ``task_id`` in this very worker process."""
        return self.instance is not None and _is(
            state, process_status=_S.RUNNING.value, celery_task_id=task_id,
            worker_instance=self.instance, worker_pid=self.pid,
        )


@dataclass(frozen=True)
class WorkerLoss:
    """A run's lost worker, as the write that tries the run again (or ends it) records it.

    ``cap``: how many lost workers a run may have and still be tried again. A write that
    tries it again matches only while ``worker_losses`` is below the cap, and counts the
    loss in the same command; the write after the cap matches nothing, and
    :func:`fail_run` with ``over_cap`` ends the run instead. ``instance``/``pid``: the
    worker instance and pool process of the lost attempt, when known; a write naming them
    leaves alone an attempt that has started since under the same task id.
    """

    cap: int
    instance: str | None = None
    pid: int | None = None

    def attempt(self) -> dict[str, Any]:
        """The conditions naming the lost attempt (none for what is not known)."""
        named = {"worker_instance": self.instance, "worker_pid": self.pid}
        return {name: value for name, value in named.items() if value is not None}

    def within_cap(self) -> dict[str, Any]:
        """The conditions of a write that tries the run again."""
        # $not also matches a missing count: a run scheduled before it existed lost none.
        return {"worker_losses": {"$not": {"$gte": self.cap}}, **self.attempt()}

    def past_cap(self) -> dict[str, Any]:
        """The conditions of the ending after the last loss the cap allows."""
        return {"worker_losses": {"$gte": self.cap}, **self.attempt()}


_ANY = (_S.READY, _S.PENDING, _S.RUNNING, _S.WAITING_FOR_RESULT, _S.SUCCESS, _S.FAILURE)
