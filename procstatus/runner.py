"""One run on a worker: claim the document, call the method, run the user's hooks, write the end.

The generic tasks in :mod:`procstatus.hooks` call these in one linear body —
``claim → execute → finish | fail | retry_later`` — inside the task's own try/except,
so no Celery receiver can swallow an error; :mod:`procstatus.join` calls
:func:`finish` and :func:`fail` for a parent's ``join()``. The claimed copy of the
document carries the run's task id (:func:`attach`): only that copy, in that process,
may set the step or add warnings. No Celery here, so a run can be driven and tested
without a broker.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from procstatus import liveness, transitions
from procstatus.dispatch import process_spec
from procstatus.document import Proc
from procstatus.errors import ProcessFailure
from procstatus.messages import ProcessCall
from procstatus.status import COMPLETED, ProcessStatus

logger = logging.getLogger("procstatus")


@dataclass
class Run:
    """A claimed call: the document is RUNNING under ``task_id`` and ``proc`` is its copy."""

    call: ProcessCall
    proc: Proc
    task_id: str

    def describe(self) -> str:
        return self.call.describe()


class ClaimUndecided(Exception):
    """A redelivered task's first run may still be alive; ask again after ``countdown`` s."""

    def __init__(self, reason: str, countdown: float):
        super().__init__(reason)
        self.countdown = countdown


def claim(call: ProcessCall, task_id: str, worker: transitions.WorkerRef) -> Run | None:
    """PENDING → RUNNING; ``None`` (and a log line saying why) when the claim is lost.

    A redelivery of a task that is RUNNING takes over only when the first run is known
    to be lost (its pool process died, or its worker stopped beating); while that is
    unclear :class:`ClaimUndecided` asks Celery to deliver it again later.
    """
    collection = call.cls._get_collection()
    document = transitions.start(collection, call.pk, task_id, worker)
    if document is None:
        state = transitions.read_state(collection, call.pk)
        if state is None:
            reason = "the document no longer exists"
        elif state.get("celery_task_id") != task_id:
            reason = f"it is {state.get('process_status')} for another task"
        elif state.get("process_status") == ProcessStatus.RUNNING.value:
            document = _reclaim_if_lost(call, task_id, state, worker)
            reason = "its first delivery is still running (duplicate delivery)"
        elif state.get("process_status") in {s.value for s in COMPLETED}:
            reason = (
                f"this run already ended, {state.get('process_status')}: "
                f"{state.get('last_status_message')} (a duplicate or late delivery)"
            )
        else:
            reason = f"it is {state.get('process_status')}"
        if document is None:
            logger.warning("not running %s (task %s): %s", call.describe(), task_id, reason)
            return None
    return Run(call, attach(call.cls._from_son(document), task_id), task_id)


def attach(proc: Proc, task_id: str) -> Proc:
    """Mark ``proc`` as the claimed copy of the run ``task_id``: it alone may write its step."""
    proc._run_task_id = task_id
    return proc


def _reclaim_if_lost(
    call: ProcessCall, task_id: str, state: dict, worker: transitions.WorkerRef
) -> dict | None:
    if state.get("worker_instance") == worker.instance and worker.instance is not None:
        # Same worker: the pool process that ran it either is this one (so that run is
        # over) or is alive or not, which this machine can tell directly.
        lost_pid = state.get("worker_pid")
        if lost_pid != os.getpid() and liveness.pid_alive(lost_pid):
            return None
        reason = f"its worker process {lost_pid} was lost"
    else:
        verdict = liveness.judge_remote_run(state)
        if verdict is None:
            return None
        if verdict == liveness.UNDECIDED:
            raise ClaimUndecided(
                f"{call.describe()} may still run on {state.get('worker_hostname')}",
                countdown=liveness.settings.interval,
            )
        reason = verdict
    document = transitions.reclaim(
        call.cls._get_collection(), call.pk, task_id, state, worker, reason
    )
    if document is not None:
        logger.warning("%s: running again (task %s) because %s", call.describe(), task_id, reason)
    return document


def owns(run: Run) -> bool:
    """Whether ``run`` still owns its document: RUNNING under its task id (one read)."""
    state = transitions.read_state(run.proc._get_collection(), run.proc.pk) or {}
    return (
        state.get("process_status") == ProcessStatus.RUNNING.value
        and state.get("celery_task_id") == run.task_id
    )


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


def fail(
    proc: Proc,
    exc: BaseException,
    *,
    context: str | None = None,
    errors: list[str] | None = None,
) -> ProcessStatus | None:
    """Write FAILURE for ``exc`` raised by the process (or by ``context``).

    ``errors`` overrides the messages derived from ``exc``.
    """
    errors = list(errors) if errors else failure_messages(exc)
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
    message = f"Process {proc.current_process} failed: {'; '.join(errors)}"
    return _write(proc, ProcessStatus.FAILURE, message, errors)


def retry_later(run: Run, exc: BaseException, attempt: int, countdown: float) -> bool:
    """RUNNING → PENDING before Celery retries ``run``; the failed attempt goes to warnings."""
    spec = run.call.spec
    error = failure_messages(exc)[-1]
    won = transitions.back_to_pending(
        run.proc._get_collection(), run.proc.pk, run.task_id,
        message=f"Process {spec.name}: retry {attempt}/{spec.max_retries} in {countdown:g} s",
        warning=f"attempt {attempt} of {spec.max_retries + 1} failed: {error}",
    )
    if won:
        logger.warning(
            "%s: attempt %d failed (%s); retry %d/%d in %g s",
            run.describe(), attempt, error, attempt, spec.max_retries, countdown,
        )
    return won


def failure_messages(exc: BaseException) -> list[str]:
    if isinstance(exc, ProcessFailure):
        return list(exc.errors)
    text = str(exc)
    return [f"{type(exc).__name__}: {text}" if text else type(exc).__name__]


def _write(
    proc: Proc, status: ProcessStatus, message: str, errors: list[str] | None = None
) -> ProcessStatus | None:
    spec = process_spec(type(proc), proc.current_process or "")
    won = transitions.complete(
        proc._get_collection(), proc.pk, proc.celery_task_id, status,
        message=message, errors=errors or (),
        clear_queue=spec is None or spec.clear_queue_on_failure,
        progress=proc._unwritten_progress(),
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
