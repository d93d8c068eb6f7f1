"""Calls that wait on a busy document, in order: the queue of non-blocking processes.

A process declared ``@process(is_blocking=False)`` and called while its document is busy
— processing, or with calls already waiting — is not refused. The call is appended to the
document's ``call_queue`` in one conditional write (:func:`transitions.enqueue_call`), so
of any number of concurrent callers none is lost and each gets its place; the queue is
bounded by :data:`MAX_QUEUED_CALLS` and a call past it raises :class:`CallQueueFull`.

When a run ends — SUCCESS, or FAILURE of a process declared
``clear_queue_on_failure=False`` — :func:`dispatch_next` schedules the first waiting call
in one write conditional on that call still being first, takes it off the queue and
publishes it under its own id as the task id. A FAILURE of a process with
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
from typing import TYPE_CHECKING, Any

from procstatus import dispatch, transitions
from procstatus.errors import CallQueueFull
from procstatus.status import COMPLETED, SCHEDULABLE, ProcessStatus, values

if TYPE_CHECKING:
    from procstatus.dispatch import ProcessSpec
    from procstatus.document import Proc

logger = logging.getLogger("procstatus")

MAX_QUEUED_CALLS = 100
"""The most calls that may wait on one document."""

QUEUED = "queued"
IDLE = "idle"

_has_queue: dict[type, bool] = {}


def has_queue(cls: type[Proc]) -> bool:
    """Whether ``cls`` has a non-blocking process, so its documents may have waiting calls."""
    if cls not in _has_queue:
        specs = (dispatch.process_spec(cls, name) for name in dir(cls))
        _has_queue[cls] = any(spec is not None and not spec.is_blocking for spec in specs)
    return _has_queue[cls]


def wait_in_queue(proc: Proc, spec: ProcessSpec, arguments: dict[str, Any]) -> str:
    """Queue a call of ``spec`` on a busy ``proc``; :data:`IDLE` if it is no longer busy."""
    collection = proc._get_collection()
    entry = {
        "id": dispatch.new_task_id(),
        "process": spec.name,
        "args": arguments["args"],
        "kwargs": arguments["kwargs"],
        "queued_at": transitions.now(),
    }
    if transitions.enqueue_call(collection, proc.pk, entry, MAX_QUEUED_CALLS):
        logger.info("%s(%s).%s queued as %s", type(proc).__name__, proc.pk, spec.name,
                    entry["id"])
        dispatch_next(type(proc), proc.pk)  # in case the document went idle meanwhile
        return QUEUED
    state = transitions.read_state(collection, proc.pk)
    if state is None:
        raise proc.DoesNotExist(f"{type(proc).__name__}({proc.pk}) does not exist")
    if len(state.get("call_queue") or ()) >= MAX_QUEUED_CALLS:
        raise CallQueueFull(
            f"cannot queue {type(proc).__name__}({proc.pk}).{spec.name}(): "
            f"{MAX_QUEUED_CALLS} calls already wait on this document. Wait for some to run, "
            "or cancel the current process (cancel()) and let the queue drain."
        )
    return IDLE


def after_end(cls: type[Proc], pk: Any, status: ProcessStatus | None) -> None:
    """A run of ``cls(pk)`` ended with ``status``: start the next waiting call, if any."""
    if status in COMPLETED and has_queue(cls):
        try:
            dispatch_next(cls, pk)
        except Exception:
            logger.exception("could not start the next queued call of %s(%s)", cls.__name__, pk)


def dispatch_next(cls: type[Proc], pk: Any) -> bool:
    """Schedule and publish the first waiting call of an idle ``cls(pk)``; ``True`` if sent."""
    from procstatus import endings  # endings notify this module; import at use

    collection = cls._get_collection()
    idle_with_calls = {
        "_id": pk,
        "process_status": {"$in": values(SCHEDULABLE)},
        "call_queue.0": {"$exists": True},
    }
    state = collection.find_one(idle_with_calls, {"call_queue": {"$slice": 1}})
    if state is None:
        return False
    head = state["call_queue"][0]
    spec = dispatch.process_spec(cls, head.get("process") or "")
    args: list[Any] = list(head.get("args") or [])
    kwargs: dict[str, Any] = dict(head.get("kwargs") or {})
    arguments = {"args": args, "kwargs": kwargs}
    task_id = str(head["id"])
    if not transitions.schedule_next(
        collection, pk, task_id, str(head.get("process")), task_id, arguments
    ):
        return False  # another ending run scheduled it first
    run = endings.RunRef(cls, pk, task_id, head.get("process"))
    if spec is None:
        endings.end_run(run, f"queued call {head.get('process')!r} is not a @process method")
        return False
    try:
        dispatch.publish(cls, pk, spec, args, kwargs, task_id)
    except Exception as exc:
        endings.end_run(run, f"the queued call could not be sent: {exc}")
        return False
    logger.info("%s(%s).%s: queued call %s sent", cls.__name__, pk, spec.name, task_id)
    return True
