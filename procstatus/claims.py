"""Claiming a run: the conditional PENDING → RUNNING write, and what a lost claim means.

:func:`claim` makes a delivered message's run this worker's, or says why not (the
document moved on, another task owns it, a duplicate delivery). A redelivered message
whose first run is RUNNING takes it over only when that run is known to be lost: its
pool process on this machine is gone, or its worker is judged lost by
:mod:`procstatus.liveness`; while that is unclear, :class:`ClaimUndecided` asks for a
later delivery. Taking over counts the lost worker, within the run's cap on lost workers
(:func:`procstatus.endings.loss_cap`); past it the run ends FAILURE instead. The claimed
copy of the document carries the run's task id (:func:`attach`): only that copy, in that
process, may set the step or add warnings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TypeVar

from procstatus import endings, liveness, runtime, transitions
from procstatus.document import ProcDocument
from procstatus.endings import RunRef
from procstatus.messages import ProcessCall
from procstatus.status import COMPLETED, ProcessStatus

logger = logging.getLogger("procstatus")

P = TypeVar("P", bound=ProcDocument)


@dataclass
class Run:
    """A claimed call: the document is RUNNING under ``task_id`` and ``proc`` is its copy."""

    call: ProcessCall
    proc: ProcDocument
    task_id: str

    def describe(self) -> str:
        return self.call.describe()

    @property
    def ref(self) -> RunRef:
        return RunRef(self.call.cls, self.call.pk, self.task_id, self.call.spec.name)


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
    target = call.cls._state_target(call.pk)
    document = transitions.start(target, task_id, worker)
    if document is None:
        state = transitions.read_state(target)
        if state is None:
            reason = "the document no longer exists"
        elif state.get("celery_task_id") != task_id:
            reason = f"it is {state.get('process_status')} for another task"
        elif state.get("process_status") == ProcessStatus.RUNNING.value:
            document, reason = _reclaim_if_lost(call, target, task_id, state, worker)
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


def attach(proc: P, task_id: str) -> P:
    """Mark ``proc`` as the claimed copy of the run ``task_id``: it alone may write its step."""
    proc._run_task_id = task_id
    return proc


_STILL_RUNNING = "its first delivery is still running (duplicate delivery)"


def _reclaim_if_lost(
    call: ProcessCall,
    target: transitions.Target,
    task_id: str,
    state: dict,
    worker: transitions.WorkerRef,
) -> tuple[dict | None, str]:
    """The document taken over, or ``None`` and why not."""
    if state.get("worker_instance") == worker.instance and worker.instance is not None:
        # Same worker: the pool process that ran it either is this one (so that run is
        # over) or is alive or not, which this machine can tell directly.
        lost_pid = state.get("worker_pid")
        if lost_pid != os.getpid() and liveness.pid_alive(lost_pid):
            return None, _STILL_RUNNING
        reason = f"its worker process {lost_pid} was lost"
    else:
        verdict = liveness.judge_remote_run(state)
        if verdict is None:
            return None, _STILL_RUNNING
        if isinstance(verdict, liveness.Undecided):
            raise ClaimUndecided(
                f"{call.describe()} may still run on {state.get('worker_hostname')}",
                countdown=runtime.current.heartbeat_interval,
            )
        reason = verdict.text
    run = RunRef(call.cls, call.pk, task_id, call.spec.name)
    loss = endings.worker_loss(
        run, instance=state.get("worker_instance"), pid=state.get("worker_pid")
    )
    document = transitions.reclaim(target, task_id, state, worker, reason, loss_cap=loss.cap)
    if document is not None:
        logger.warning("%s: running again (task %s) because %s", call.describe(), task_id, reason)
        return document, ""
    if endings.end_past_cap(run, loss, reason) is not None:
        return None, f"{reason}, once more than max_worker_losses={loss.cap} allows: ended FAILURE"
    return None, "it was taken over or ended meanwhile"


def owns(run: Run) -> bool:
    """Whether ``run`` still owns its document: RUNNING under its task id (one read)."""
    state = transitions.read_state(run.proc._target()) or {}
    return (
        state.get("process_status") == ProcessStatus.RUNNING.value
        and state.get("celery_task_id") == run.task_id
    )
