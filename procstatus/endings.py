"""Ending a run from outside its own process: one path that writes the end, then tells the parent.

A run ends in its own process (see :mod:`procstatus.runner`) or from outside it:

- ``cancel()``;
- the sweeper: a lost worker, an orphaned run, a message that never came;
- the worker's main process: a lost pool process, a hard time limit;
- a start that could not happen (exhausted start retries, a claim that failed for good);
- a resend or retry that could not be published.

Each of these calls :func:`end_run`. It writes FAILURE through
:func:`procstatus.transitions.fail_run` — conditional on the run's task id and process,
so only the run that was meant ends, and a late or second ending changes nothing — or,
for a process marked ``retry_on_worker_lost``, moves the run back to PENDING and sends
it again under a new task id. A run that ended is then announced to its parent through
:func:`procstatus.join.notify_parent`, which sends a join task and never runs ``join()``
here, and the next queued call of the document, if any, is started
(:mod:`procstatus.callqueue`). Limit: if MongoDB cannot be written, nothing here can end
the run; the sweeper finds it again on its next pass.

One outside path is not an ending: a lost pool process whose message the broker gives
back (``acks_late`` + ``reject_on_worker_lost``) goes through :func:`await_redelivery`,
back to PENDING under the same task id, and its redelivery starts it again; a lost join
task whose message comes back, through :func:`await_join_redelivery`, which makes its
parent wait again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from procstatus import callqueue, dispatch, join, transitions
from procstatus.status import PROCESSING, ProcessStatus

if TYPE_CHECKING:
    from procstatus.document import Proc
    from procstatus.messages import ProcessCall

logger = logging.getLogger("procstatus")

FAILED = "failed"
SENT_AGAIN = "sent again"


@dataclass(frozen=True)
class RunRef:
    """Which run to end: the document, the task id that owns the run, and its process."""

    cls: type[Proc]
    pk: Any
    task_id: str | None
    process: str | None

    def describe(self) -> str:
        return f"{self.cls.__name__}({self.pk}).{self.process}"


def end_run(
    run: RunRef,
    error: str,
    *,
    statuses: frozenset[ProcessStatus] = PROCESSING,
    send_again: ProcessCall | None = None,
) -> str | None:
    """End ``run`` from outside with ``error``, or send it again; then tell its parent.

    Returns :data:`FAILED`, :data:`SENT_AGAIN`, or ``None`` when the run had already
    ended or moved on (the write was conditional and matched nothing).
    """
    collection = run.cls._get_collection()
    if send_again is not None:
        new_id = dispatch.new_task_id()
        moved = transitions.back_to_pending(
            collection, run.pk, run.task_id or "", new_task_id=new_id,
            message=f"Process {run.process} pending again: {error}",
            warning=f"sent again after {error}",
        )
        if moved:
            try:
                dispatch.publish(
                    send_again.cls, send_again.pk, send_again.spec, send_again.args,
                    send_again.kwargs, new_id,
                )
            except Exception as exc:
                logger.error("%s: could not send again: %s", run.describe(), exc)
                resend_failed = RunRef(run.cls, run.pk, new_id, run.process)
                return end_run(
                    resend_failed, f"{error}; could not send again: {_text(exc)}",
                    statuses=frozenset({ProcessStatus.PENDING}),
                )
            logger.warning("%s: %s; sent again as task %s", run.describe(), error, new_id)
            return SENT_AGAIN
    spec = dispatch.process_spec(run.cls, run.process or "")
    if not transitions.fail_run(
        collection, run.pk, run.task_id, run.process, error, statuses,
        clear_queue=spec is None or spec.clear_queue_on_failure,
    ):
        return None
    logger.warning("%s ended from outside: %s", run.describe(), error)
    join.notify_parent_of(run.cls, run.pk, run.process)
    callqueue.after_end(run.cls, run.pk, ProcessStatus.FAILURE)
    return FAILED


def await_redelivery(run: RunRef, error: str) -> bool:
    """RUNNING → PENDING under the same task id: the broker will deliver the message again.

    For runs under ``acks_late`` with ``reject_on_worker_lost``, whose message is
    acknowledged only after the run:

    - a pool process lost (or killed at its hard time limit): Celery puts the message
      back on its queue and sends no ``task_failure``, and behind a backlog the
      redelivery may come long after the sweeper would take the silent run for orphaned.
      The worker's main process writes this before the message is requeued;
    - a whole worker lost (the sweeper): the broker gives its unacknowledged messages
      back, at once on RabbitMQ, after the visibility timeout on Redis.

    The redelivery claims PENDING like any start. This is not an ending, so no parent is
    told. Limit: a message that never comes back is failed by the sweeper's
    ``pending_timeout``. ``False`` when the run was not RUNNING under this task id (it
    died before its claim, so it is still PENDING, or it had already moved on).
    """
    moved = transitions.back_to_pending(
        run.cls._get_collection(), run.pk, run.task_id or "",
        message=f"Process {run.process} pending again: {error}; the broker delivers it again",
        warning=f"restarted after {error}",
    )
    if moved:
        logger.warning("%s: %s; waiting for the broker to deliver it again", run.describe(), error)
    return moved


def await_join_redelivery(cls: type[Proc], pk: Any, task_id: str, error: str) -> bool:
    """The pool process running a join was lost and the broker gives the join task back.

    The parent waits again (RUNNING → WAITING_FOR_RESULT), so the redelivered join task
    claims the wait and runs ``join()`` again: at least once, as ``acks_late`` promises.
    ``False`` when that join task no longer runs the parent (it never began, or ended).
    """
    moved = transitions.abandon_join(
        cls._get_collection(), pk, task_id, warning=f"join restarted after {error}"
    )
    if moved:
        logger.warning("%s(%s): join lost (%s); waiting for the broker to deliver it again",
                       cls.__name__, pk, error)
    return moved


def cancel(proc: Proc, *, terminate: bool = False) -> bool:
    """End ``proc``'s process under way as FAILURE "cancelled"; ``False`` if none was.

    The status is written first; the task is revoked after (killed with ``terminate``).
    A cancelled child's parent is told at once, like any other ending.
    """
    state = transitions.read_state(proc._get_collection(), proc.pk)
    if state is None:
        raise proc.DoesNotExist(f"{type(proc).__name__}({proc.pk}) does not exist")
    status = state.get("process_status")
    if status not in {s.value for s in PROCESSING}:
        proc._set_state(state)
        return False
    task_id = state.get("celery_task_id")
    run = RunRef(type(proc), proc.pk, task_id, state.get("current_process"))
    if end_run(run, "cancelled") is None:
        proc.reload_status()
        return False
    if status != ProcessStatus.WAITING_FOR_RESULT.value and task_id:
        try:
            sent = dispatch.revoke(task_id, terminate=terminate)
        except Exception as exc:  # the status is written; a worker that gets it cannot claim
            logger.warning("%s cancelled, but the revoke failed: %s", run.describe(), exc)
        else:
            if not sent:
                logger.warning(
                    "%s cancelled; the broker did not take the revoke within %g s (it is "
                    "still being sent)%s", run.describe(), dispatch.REVOKE_WAIT,
                    "; a RUNNING process is killed once it arrives" if terminate else "",
                )
    proc.reload_status()
    return True


def _text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

