"""How runs end: one path for every ending from outside, and one step after every ending.

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
it again under a new task id. Limit: if MongoDB cannot be written, nothing here can end
the run; the sweeper finds it again on its next pass.

The cap on lost workers: every write that tries a run again because its worker was lost
(a resend here, :func:`await_redelivery`, :func:`await_join_redelivery`, a redelivered
message's reclaim in :mod:`procstatus.claims`) counts the loss in ``worker_losses`` and
matches only below the run's cap (:func:`loss_cap`). The loss after the cap therefore
moves nothing, and :func:`end_past_cap` ends the run FAILURE instead, saying how often it
lost its worker and why the last time — so a process that kills its worker on every run
(out of memory, a crashing extension) runs at most cap + 1 times, not forever.

Every ending, in the run's own process or from outside, is followed by
:func:`after_end`, the only caller of the parent notice (:mod:`procstatus.join`, which
sends a join task and never runs ``join()`` here) and, through :func:`start_next_call`,
of the queue of calls (:mod:`procstatus.callqueue`).

One outside path is not an ending: a lost pool process whose message the broker gives
back (``acks_late`` + ``reject_on_worker_lost``) goes through :func:`await_redelivery`,
back to PENDING under the same task id, and its redelivery starts it again; a lost join
task whose message comes back, through :func:`await_join_redelivery`, which makes its
parent wait again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from procstatus import callqueue, join, messages, runtime, transitions
from procstatus.callqueue import NextCall, NextCallOutcome
from procstatus.failures import describe
from procstatus.spec import has_non_blocking, process_spec
from procstatus.status import PROCESSING, SCHEDULABLE, ProcessStatus
from procstatus.transitions import WorkerLoss

if TYPE_CHECKING:
    from procstatus.document import ProcDocument
    from procstatus.messages import ProcessCall

logger = logging.getLogger("procstatus")

_RUNNING = frozenset({ProcessStatus.RUNNING})


class Ending(Enum):
    """What :func:`end_run` did."""

    FAILED = "failed"
    SENT_AGAIN = "sent again"
    REDELIVERY = "awaiting redelivery"
    """Back to PENDING (a join: waiting again) until the broker delivers the message again."""


@dataclass(frozen=True)
class RunRef:
    """Which run to end: the document, the task id that owns the run, and its process."""

    cls: type[ProcDocument]
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
    over_cap: WorkerLoss | None = None,
) -> Ending | None:
    """End ``run`` from outside with ``error``, or send it again; then :func:`after_end`.

    ``send_again``: the run's worker was lost and its process is ``retry_on_worker_lost``;
    it is sent again within its cap on lost workers, and past it ended as
    :func:`end_past_cap` says. ``over_cap``: end the run only if it is past that cap.
    Returns what it did, or ``None`` when the run had already ended or moved on (the
    write was conditional and matched nothing).
    """
    target = run.cls._state_target(run.pk)
    if send_again is not None:
        loss = worker_loss(run)
        new_id = messages.new_task_id()
        moved = transitions.back_to_pending(
            target, run.task_id or "", new_task_id=new_id,
            message=f"Process {run.process} pending again: {error}",
            warning=f"sent again after {error}", loss=loss,
        )
        if moved:
            try:
                messages.publish(
                    send_again.cls, send_again.pk, send_again.spec, send_again.args,
                    send_again.kwargs, new_id,
                )
            except Exception as exc:
                logger.error("%s: could not send again: %s", run.describe(), exc)
                resend_failed = RunRef(run.cls, run.pk, new_id, run.process)
                return end_run(
                    resend_failed, f"{error}; could not send again: {describe(exc)}",
                    statuses=frozenset({ProcessStatus.PENDING}),
                )
            logger.warning("%s: %s; sent again as task %s", run.describe(), error, new_id)
            return Ending.SENT_AGAIN
        past_cap = end_past_cap(run, loss, error)
        if past_cap is not None:
            return past_cap
        # Neither sent again nor past the cap: it died before its claim, or moved on.
    spec = process_spec(run.cls, run.process or "")
    if not transitions.fail_run(
        target, run.task_id, run.process, error, statuses,
        clear_queue=spec is None or spec.clear_queue_on_failure, over_cap=over_cap,
    ):
        return None
    logger.warning("%s ended from outside: %s", run.describe(), error)
    after_end(run.cls, run.pk, run.process, ProcessStatus.FAILURE)
    return Ending.FAILED


def loss_cap(cls: type[ProcDocument], process: str | None) -> int:
    """How many times a run of ``cls.process`` may lose its worker and still be tried
    again: its ``@process(max_worker_losses=N)``, else ``install(max_worker_losses=...)``.

    Read in the process that records the loss (a worker's main or pool process, the
    sweeper's): give every process the same ``install()`` settings.
    """
    spec = process_spec(cls, process or "")
    if spec is not None and spec.max_worker_losses is not None:
        return spec.max_worker_losses
    return runtime.current.max_worker_losses


def worker_loss(
    run: RunRef, *, instance: str | None = None, pid: int | None = None
) -> WorkerLoss:
    """``run``'s lost worker with its cap; ``instance``/``pid`` name the lost attempt."""
    return WorkerLoss(loss_cap(run.cls, run.process), instance, pid)


def end_past_cap(
    run: RunRef, loss: WorkerLoss, reason: str, *, context: str = ""
) -> Ending | None:
    """End ``run`` FAILURE because its worker was lost once more than ``loss.cap`` allows.

    Called after a write that would have tried the run again matched nothing: it ends the
    run only if the cap is why (the run is RUNNING under its task id, on the lost attempt
    if ``loss`` names it, with ``worker_losses`` at the cap). ``reason`` is the last loss's;
    ``context`` goes before the error (``"join failed: "``). ``None`` if the run had moved
    on instead.
    """
    # Exact while the cap stays the same; a cap lowered during the run understates it.
    losses = loss.cap + 1
    times = "once" if losses == 1 else f"{losses} times"
    error = (
        f"{context}lost its worker {times}, more than max_worker_losses={loss.cap} allows; "
        f"last: {reason}"
    )
    return end_run(run, error, statuses=_RUNNING, over_cap=loss)


def after_end(
    cls: type[ProcDocument],
    pk: Any,
    process: str | None,
    status: ProcessStatus | None,
    *,
    proc: ProcDocument | None = None,
) -> None:
    """After a run of ``cls(pk)``'s ``process`` ended and left the document ``status``.

    ``status`` is what the ending wrote (``None``: it wrote nothing, the run had moved
    on). A parent that now waits gets its join sent if its children are done; a child
    tells its parent, even when its own write was refused (the parent may wait on
    nothing else); an idle document starts its next queued call. ``proc`` is the run's
    own copy, when the caller has it. Errors are logged: the ending stands.
    """
    try:
        if status is ProcessStatus.WAITING_FOR_RESULT:
            join.join_if_ready(proc if proc is not None else cls.objects(pk=pk).get())
        else:
            join.notify_parent_of(cls, pk, process, child=proc)
    except Exception:
        logger.exception("could not send the join after %s(%s) ended", cls.__name__, pk)
    if status in SCHEDULABLE:
        start_next_call(cls, pk)


def start_next_call(cls: type[ProcDocument], pk: Any) -> NextCall:
    """Start the first call waiting on an idle ``cls(pk)``; end it if it cannot be sent.

    Classes without a non-blocking process have no queue and pay nothing.
    """
    if not has_non_blocking(cls):
        return NextCall(NextCallOutcome.NOTHING)
    try:
        next_call = callqueue.dispatch_next(cls, pk)
    except Exception:
        logger.exception("could not start the next queued call of %s(%s)", cls.__name__, pk)
        return NextCall(NextCallOutcome.NOTHING)
    if next_call.outcome in (NextCallOutcome.UNKNOWN_PROCESS, NextCallOutcome.NOT_SENT):
        end_run(RunRef(cls, pk, next_call.task_id, next_call.process), next_call.error or "")
    return next_call


def await_redelivery(
    run: RunRef, error: str, *, instance: str | None = None, pid: int | None = None
) -> Ending | None:
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
    ``pending_timeout``. ``instance``/``pid`` name the lost attempt, when known.

    Returns :attr:`Ending.REDELIVERY`; :attr:`Ending.FAILED` when the loss was one past
    the cap and the run ended instead (its message need not come back); ``None`` when
    the run was not RUNNING under this task id (it died before its claim, so it is still
    PENDING, or it had already moved on).
    """
    loss = worker_loss(run, instance=instance, pid=pid)
    moved = transitions.back_to_pending(
        run.cls._state_target(run.pk), run.task_id or "",
        message=f"Process {run.process} pending again: {error}; the broker delivers it again",
        warning=f"restarted after {error}", loss=loss,
    )
    if not moved:
        return end_past_cap(run, loss, error)
    logger.warning("%s: %s; waiting for the broker to deliver it again", run.describe(), error)
    return Ending.REDELIVERY


def await_join_redelivery(
    cls: type[ProcDocument], pk: Any, task_id: str, error: str, *,
    instance: str | None = None, pid: int | None = None,
) -> Ending | None:
    """The pool process running a join was lost and the broker gives the join task back.

    The parent waits again (RUNNING → WAITING_FOR_RESULT), so the redelivered join task
    claims the wait and runs ``join()`` again: at least once, as ``acks_late`` promises,
    and within the cap on lost workers of the parent's process; past it the parent ends
    FAILURE ``join failed: lost its worker …``. Returns :attr:`Ending.REDELIVERY`,
    :attr:`Ending.FAILED`, or ``None`` when that join task no longer runs the parent (it
    never began, or ended).
    """
    target = cls._state_target(pk)
    # The cap is the parent's process's: one read to learn which (a lost join is rare).
    state = transitions.read_state(target) or {}
    run = RunRef(cls, pk, task_id, state.get("current_process"))
    loss = worker_loss(run, instance=instance, pid=pid)
    moved = transitions.abandon_join(
        target, task_id, warning=f"join restarted after {error}", loss=loss
    )
    if not moved:
        return end_past_cap(run, loss, error, context="join failed: ")
    logger.warning("%s(%s): join lost (%s); waiting for the broker to deliver it again",
                   cls.__name__, pk, error)
    return Ending.REDELIVERY


def cancel(proc: ProcDocument, *, terminate: bool = False) -> bool:
    """End ``proc``'s process under way as FAILURE "cancelled"; ``False`` if none was.

    The status is written first; the task is revoked after (killed with ``terminate``).
    A cancelled child's parent is told at once, like any other ending.
    """
    state = transitions.read_state(proc._target())
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
            sent = messages.revoke(task_id, terminate=terminate)
        except Exception as exc:  # the status is written; a worker that gets it cannot claim
            logger.warning("%s cancelled, but the revoke failed: %s", run.describe(), exc)
        else:
            if not sent:
                logger.warning(
                    "%s cancelled; the broker did not take the revoke within %g s (it is "
                    "still being sent)%s", run.describe(), messages.REVOKE_WAIT,
                    "; a RUNNING process is killed once it arrives" if terminate else "",
                )
    proc.reload_status()
    return True
