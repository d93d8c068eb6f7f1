"""One run on a worker: claim the document, call the method, run the user's hooks, write the end.

The Celery hooks in :mod:`procstatus.hooks` call these functions at the matching
signals; :mod:`procstatus.join` calls :func:`finish` for a parent's ``join()``. No
Celery here, so a run can be driven and tested without a broker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from procstatus import transitions
from procstatus.dispatch import ProcessCall
from procstatus.document import Proc
from procstatus.errors import ProcessFailure
from procstatus.status import ProcessStatus

logger = logging.getLogger("procstatus")


@dataclass
class Run:
    """A claimed call: the document is RUNNING under ``task_id`` and ``proc`` is its copy."""

    call: ProcessCall
    proc: Proc
    task_id: str

    def describe(self) -> str:
        return self.call.describe()


def claim(call: ProcessCall, task_id: str, hostname: str | None) -> Run | None:
    """PENDING → RUNNING; ``None`` (and a log line saying why) when the claim is lost."""
    collection = call.cls._get_collection()
    document = transitions.start(collection, call.pk, task_id, hostname)
    if document is None:
        state = transitions.read_state(collection, call.pk)
        if state is None:
            reason = "the document no longer exists"
        elif state.get("celery_task_id") != task_id:
            reason = f"it is {state.get('process_status')} for another task"
        else:
            reason = f"it is already {state.get('process_status')} (duplicate delivery?)"
        logger.warning("not running %s (task %s): %s", call.describe(), task_id, reason)
        return None
    return Run(call, call.cls._from_son(document), task_id)


def execute(run: Run) -> ProcessStatus | None:
    """Call the process method on the claimed copy; returns WAITING_FOR_RESULT or ``None``."""
    result = run.call.spec.function(run.proc, *run.call.args, **run.call.kwargs)
    return ProcessStatus.WAITING_FOR_RESULT if _is_waiting(result) else None


def _is_waiting(result: Any) -> bool:
    return isinstance(result, str) and result == ProcessStatus.WAITING_FOR_RESULT.value


def finish(proc: Proc, outcome: ProcessStatus | None) -> ProcessStatus | None:
    """Write the end of a run that returned normally; returns the status written, if any.

    ``outcome`` WAITING_FOR_RESULT → WAITING_FOR_RESULT, anything else → SUCCESS. A hook
    that raises turns the run into a FAILURE rather than leaving it RUNNING.
    """
    name = proc.current_process
    waiting = outcome is ProcessStatus.WAITING_FOR_RESULT
    try:
        if waiting:
            proc.on_waiting_for_result()
        else:
            proc.on_success()
    except Exception as exc:
        hook = "on_waiting_for_result" if waiting else "on_success"
        logger.exception("%s hook of %s(%s) failed", hook, type(proc).__name__, proc.pk)
        return fail(proc, exc, context=f"{hook} hook")
    if waiting:
        status, message = ProcessStatus.WAITING_FOR_RESULT, f"Process {name} waiting for results"
    else:
        status, message = ProcessStatus.SUCCESS, f"Process {name} completed successfully"
    return _write(proc, status, message)


def fail(proc: Proc, exc: BaseException, *, context: str | None = None) -> ProcessStatus | None:
    """Write FAILURE for ``exc`` raised by the process (or by ``context``)."""
    errors = failure_messages(exc)
    if context:
        errors = [f"{context} failed: {e}" for e in errors]
    if isinstance(exc, ProcessFailure):
        logger.log(
            exc.log_level,
            "%s(%s).%s failed: %s",
            type(proc).__name__, proc.pk, proc.current_process, "; ".join(errors),
        )
    try:
        proc.on_fail()
    except Exception as hook_exc:
        logger.exception("on_fail hook of %s(%s) failed", type(proc).__name__, proc.pk)
        errors.append(f"on_fail hook failed: {type(hook_exc).__name__}: {hook_exc}")
    message = f"Process {proc.current_process} failed: {errors[-1]}"
    return _write(proc, ProcessStatus.FAILURE, message, errors)


def failure_messages(exc: BaseException) -> list[str]:
    if isinstance(exc, ProcessFailure):
        return list(exc.errors)
    text = str(exc)
    return [f"{type(exc).__name__}: {text}" if text else type(exc).__name__]


def _write(
    proc: Proc, status: ProcessStatus, message: str, errors: list[str] | None = None
) -> ProcessStatus | None:
    won = transitions.complete(
        proc._get_collection(), proc.pk, proc.celery_task_id, status,
        message=message, errors=errors or (),
    )
    if not won:
        state = transitions.read_state(proc._get_collection(), proc.pk)
        if state is None:
            logger.info(
                "%s(%s) was deleted during its process; nothing written",
                type(proc).__name__, proc.pk,
            )
        else:
            logger.warning(
                "%s(%s): %s not written, the document is %s for task %s",
                type(proc).__name__, proc.pk, status, state.get("process_status"),
                state.get("celery_task_id"),
            )
        return None
    proc._set_state({"process_status": status, "last_status_message": message})
    return status
