"""Calls that wait on a busy document, in order: the queue of non-blocking processes.

A process declared ``@process(is_blocking=False)`` and called while its document is busy
— processing, or with calls already waiting — is not refused. The call is appended to the
document's ``call_queue`` in one conditional write (:func:`transitions.enqueue_call`), so
of any number of concurrent callers none is lost and each gets its place; the queue is
bounded by :data:`MAX_QUEUED_CALLS` and a call past it raises :class:`CallQueueFull`.

When a run ends — SUCCESS, or FAILURE of a process declared
``clear_queue_on_failure=False`` — :func:`procstatus.endings.after_end` calls
:func:`dispatch_next`, which schedules the first waiting call in one write conditional on
that call still being first, takes it off the queue and publishes it under its own id as
the task id. It ends nothing itself: a call it scheduled but could not send comes back
as a :class:`NextCall` for :mod:`procstatus.endings` to end. A FAILURE of a process with
``clear_queue_on_failure=True`` (the default) drops the waiting calls in the same write
that records the failure. A new call never overtakes waiting ones: scheduling requires an
empty queue. Blocking processes (the default) still raise ``ProcessAlreadyRunning``
while the document is busy.

Limits: classes with a non-blocking process pay one read after each run's end, to look
for a waiting call; other classes pay nothing. If the process that ends a run dies before
it schedules the next call, the next call to that document (or the sweeper's next pass
over it) schedules it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from procstatus import messages, transitions
from procstatus.clock import utcnow
from procstatus.errors import CallQueueFull
from procstatus.spec import process_spec
from procstatus.status import SCHEDULABLE, values

if TYPE_CHECKING:
    from procstatus.document import ProcDocument
    from procstatus.spec import ProcessSpec

logger = logging.getLogger("procstatus")

MAX_QUEUED_CALLS = 100
"""The most calls that may wait on one document."""


class Queueing(Enum):
    """What :func:`wait_in_queue` did with a call."""

    QUEUED = "queued"
    """The call waits in the document's queue."""
    IDLE = "idle"
    """Nothing written: the document is no longer busy, so the call may be scheduled."""


class NextCallOutcome(Enum):
    """What :func:`dispatch_next` did."""

    NOTHING = "nothing"
    """No call waits, or the document is busy."""
    TAKEN = "taken"
    """Another ending run scheduled the call first."""
    SENT = "sent"
    """The first waiting call is PENDING and its message sent."""
    UNKNOWN_PROCESS = "unknown process"
    """Scheduled, but it names no ``@process`` method: the run must be ended."""
    NOT_SENT = "not sent"
    """Scheduled, but its message could not be sent: the run must be ended."""


@dataclass(frozen=True)
class NextCall:
    """The outcome of :func:`dispatch_next`, with the run it scheduled, if any."""

    outcome: NextCallOutcome
    task_id: str | None = None
    process: str | None = None
    error: str | None = None


def wait_in_queue(proc: ProcDocument, spec: ProcessSpec, arguments: dict[str, Any]) -> Queueing:
    """Queue a call of ``spec`` on a busy ``proc``; :data:`Queueing.IDLE` if it is no longer
    busy. After :data:`Queueing.QUEUED`, the caller starts the queue's head in case the
    document went idle meanwhile."""
    target = proc._target()
    entry = {
        "id": messages.new_task_id(),
        "process": spec.name,
        "args": arguments["args"],
        "kwargs": arguments["kwargs"],
        "queued_at": utcnow(),
    }
    if transitions.enqueue_call(target, entry, MAX_QUEUED_CALLS):
        logger.info("%s(%s).%s queued as %s", type(proc).__name__, proc.pk, spec.name,
                    entry["id"])
        return Queueing.QUEUED
    state = transitions.read_state(target)
    if state is None:
        raise proc.DoesNotExist(f"{type(proc).__name__}({proc.pk}) does not exist")
    if len(state.get("call_queue") or ()) >= MAX_QUEUED_CALLS:
        raise CallQueueFull(
            f"cannot queue {type(proc).__name__}({proc.pk}).{spec.name}(): "
            f"{MAX_QUEUED_CALLS} calls already wait on this document. Wait for some to run, "
            "or cancel the current process (cancel()) and let the queue drain."
        )
    return Queueing.IDLE


def dispatch_next(cls: type[ProcDocument], pk: Any) -> NextCall:
    """Schedule and publish the first waiting call of an idle ``cls(pk)``."""
    target = cls._state_target(pk)
    idle_with_calls = target.where(
        {"process_status": {"$in": values(SCHEDULABLE)}, "call_queue.0": {"$exists": True}}
    )
    state = target.collection.find_one(idle_with_calls, {"call_queue": {"$slice": 1}})
    if state is None:
        return NextCall(NextCallOutcome.NOTHING)
    head = state["call_queue"][0]
    process = str(head.get("process"))
    spec = process_spec(cls, head.get("process") or "")
    args: list[Any] = list(head.get("args") or [])
    kwargs: dict[str, Any] = dict(head.get("kwargs") or {})
    arguments = {"args": args, "kwargs": kwargs}
    task_id = str(head["id"])
    if not transitions.schedule_next(target, task_id, process, task_id, arguments):
        return NextCall(NextCallOutcome.TAKEN)
    if spec is None:
        return NextCall(
            NextCallOutcome.UNKNOWN_PROCESS, task_id, head.get("process"),
            f"queued call {head.get('process')!r} is not a @process method",
        )
    try:
        messages.publish(cls, pk, spec, args, kwargs, task_id)
    except Exception as exc:
        return NextCall(
            NextCallOutcome.NOT_SENT, task_id, spec.name,
            f"the queued call could not be sent: {exc}",
        )
    logger.info("%s(%s).%s: queued call %s sent", cls.__name__, pk, spec.name, task_id)
    return NextCall(NextCallOutcome.SENT, task_id, spec.name)
