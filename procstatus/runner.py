"""One delivery on a worker, top to bottom: claim, call, then finish, fail or retry.

:func:`perform` is the whole life of one ``procstatus.run`` message, in rq's
``perform_job`` shape::

    claim (PENDING → RUNNING) → call the method → finish (SUCCESS / WAITING_FOR_RESULT)
                                                | fail (FAILURE, the true exception type)
                                                | retry (back to PENDING)
    → endings.after_end (tell the parent, start the next queued call)

:func:`perform_join` sits beside it for ``procstatus.join`` and shares the steps: claim
the wait (WAITING_FOR_RESULT → RUNNING), call ``join()``, finish or fail, after_end.

Outcomes are types: :func:`perform` returns :class:`Ended` or :class:`RetryLater`, and
the Celery wiring (:mod:`procstatus.hooks`) turns a ``RetryLater`` into Celery's retry
and re-raises an ``Ended`` failure for Celery's own records. No Celery here, so a run
can be driven and tested without a broker.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymongo.errors import AutoReconnect, ConnectionFailure, NetworkTimeout

from procstatus import dispatch, endings, join, transitions
from procstatus.claims import ClaimUndecided, Run, attach, claim, owns
from procstatus.document import ProcDocument
from procstatus.endings import RunRef
from procstatus.errors import NotRunning, ProcessFailure
from procstatus.failures import describe, describe_failure, failure_messages
from procstatus.messages import JoinCall, ProcessCall
from procstatus.spec import process_spec
from procstatus.status import ProcessStatus
from procstatus.text import cut
from procstatus.transitions import WorkerRef

logger = logging.getLogger("procstatus")

START_RETRY_LIMIT = 10
"""Attempts to claim a run while MongoDB is unreachable, before the run is failed."""

TRANSIENT = (ConnectionFailure, AutoReconnect, NetworkTimeout, ClaimUndecided)
"""Errors of a claim that a later delivery may not meet: the start is tried again."""

_PENDING = frozenset({ProcessStatus.PENDING})
_RUNNING = frozenset({ProcessStatus.RUNNING})


@dataclass(frozen=True)
class Attempts:
    """How often this message was tried: its claims that met a transient error, and the
    process's own retries (``autoretry_for``). Counted apart, carried in the message."""

    starts: int = 0
    retries: int = 0


@dataclass(frozen=True)
class Ended:
    """The run ended here (``status`` written, ``None`` if another ending came first), or
    never ran (``status`` ``None``). ``error`` is what the process raised, if it did."""

    status: ProcessStatus | None
    error: BaseException | None = None


@dataclass(frozen=True)
class RetryLater:
    """The run is PENDING again: send its message again after ``countdown`` seconds."""

    run: RunRef
    error: Exception
    countdown: float
    attempts: Attempts


NOT_RUN = Ended(None)


def perform(
    call: ProcessCall, task_id: str, worker: WorkerRef, attempts: Attempts = Attempts()
) -> Ended | RetryLater:
    """``procstatus.run``: claim → call → finish | fail | retry, then after_end."""
    ref = RunRef(call.cls, call.pk, task_id, call.spec.name)
    try:
        run = claim(call, task_id, worker)
    except TRANSIENT as exc:
        return _retry_start(ref, exc, attempts)
    except Exception as exc:
        logger.exception("cannot start %s (task %s)", call.describe(), task_id)
        end_before_start(ref, f"could not start: {describe(exc)}")
        return NOT_RUN
    if run is None:
        return NOT_RUN
    began = time.monotonic()
    try:
        outcome = execute(run)
    except Exception as exc:
        return _after_raise(run, exc, attempts, began)
    written = _end_in_process(run.ref, functools.partial(finish, run.proc, outcome))
    _after_end(run.ref, run.proc, written, began)
    return Ended(written)


def _after_raise(run: Run, exc: Exception, attempts: Attempts, began: float) -> Ended | RetryLater:
    """The process raised: retry it, or write FAILURE with the true exception type."""
    errors = describe_failure(exc, run.call.spec)
    if run.call.spec.retries(exc, attempts.retries):
        try:
            return _retry_body(run, exc, attempts)
        except Exception as retry_exc:  # the retry could not be recorded: fail the run
            logger.exception("%s: could not schedule the retry", run.describe())
            errors.append(f"the retry could not be recorded: {describe(retry_exc)}")
    if isinstance(exc, NotRunning) and not owns(run):
        # Cancelled or swept meanwhile: that ending is the run's; run no hook, write nothing.
        logger.info("%s stopped: its run was ended from outside", run.describe())
        return NOT_RUN
    written = _end_in_process(run.ref, functools.partial(fail, run.proc, exc, errors=errors))
    _after_end(run.ref, run.proc, written, began)
    return Ended(written, exc)


def perform_join(call: JoinCall, task_id: str, worker: WorkerRef) -> ProcessStatus | None:
    """``procstatus.join``: claim the wait, run ``join()``, write the end; ``None`` if not
    ours (the parent does not wait, a child still runs, or another join task won)."""
    parent = call.cls.objects(pk=call.pk).first()
    if parent is None or parent.process_status is not ProcessStatus.WAITING_FOR_RESULT:
        logger.info("join of %s not needed: it is not waiting", call.describe())
        return None
    try:
        busy = join.any_child_processing(parent)
    except Exception as exc:  # children() itself failed: the parent fails with it
        claimed = _claim_join(call, task_id, worker)
        if claimed is None:
            return None
        return _end_join(claimed, task_id, functools.partial(
            fail, claimed, exc, context="children()"))
    if busy:
        return None  # the last child's ending sends the next join
    claimed = _claim_join(call, task_id, worker)
    if claimed is None:
        logger.info("join of %s lost: another join task runs it", call.describe())
        return None
    logger.info("joining %s (task %s)", call.describe(), task_id)
    write: Callable[[], ProcessStatus | None]
    with dispatch.counting_children() as started:
        try:
            outcome = _waiting_or_none(claimed.join())
            if outcome and not started.count and not join.any_child_processing(claimed):
                raise ProcessFailure(join.NOTHING_TO_WAIT_FOR)
            write = functools.partial(finish, claimed, outcome)
        except Exception as exc:
            chosen = isinstance(exc, ProcessFailure) and exc.errors == [join.NOTHING_TO_WAIT_FOR]
            write = functools.partial(fail, claimed, exc, context=None if chosen else "join")
    return _end_join(claimed, task_id, write)


def _claim_join(call: JoinCall, task_id: str, worker: WorkerRef) -> ProcDocument | None:
    document = transitions.begin_join(call.cls._state_target(call.pk), task_id, worker)
    return None if document is None else attach(call.cls._from_son(document), task_id)


def _end_join(
    parent: ProcDocument, task_id: str, write: Callable[[], ProcessStatus | None]
) -> ProcessStatus | None:
    ref = RunRef(type(parent), parent.pk, task_id, parent.current_process)
    written = _end_in_process(ref, write)
    endings.after_end(ref.cls, ref.pk, ref.process, written, proc=parent)
    return written


# --- the call and the final write ------------------------------------------------------


def execute(run: Run) -> ProcessStatus | None:
    """Call the process method on the claimed copy; returns WAITING_FOR_RESULT or ``None``."""
    return _waiting_or_none(run.call.spec.function(run.proc, *run.call.args, **run.call.kwargs))


def finish(proc: ProcDocument, outcome: ProcessStatus | None) -> ProcessStatus | None:
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
    proc: ProcDocument,
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
        errors.append(f"on_fail hook failed: {describe(hook_exc)}")
    message = f"Process {proc.current_process} failed: {'; '.join(errors)}"
    return _write(proc, ProcessStatus.FAILURE, message, errors)


def _write(
    proc: ProcDocument, status: ProcessStatus, message: str, errors: list[str] | None = None
) -> ProcessStatus | None:
    spec = process_spec(type(proc), proc.current_process or "")
    target = proc._target()
    won = transitions.complete(
        target, proc.celery_task_id, status,
        message=message, errors=errors or (),
        clear_queue=spec is None or spec.clear_queue_on_failure,
        progress=proc._unwritten_progress(),
    )
    if not won:
        state = transitions.read_state(target)
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
    # As stored: the write cut the message (see procstatus.transitions).
    proc._set_state({"process_status": status, "last_status_message": cut(message)})
    return status


def _end_in_process(
    ref: RunRef, write: Callable[[], ProcessStatus | None]
) -> ProcessStatus | None:
    """Write the run's end; if that write itself fails, end the run from outside instead."""
    try:
        return write()
    except Exception as exc:
        logger.exception("%s: could not record the end of the run", ref.describe())
        endings.end_run(
            ref, f"could not record the end of the run: {describe(exc)}", statuses=_RUNNING
        )
        return None


def _after_end(ref: RunRef, proc: ProcDocument, written: ProcessStatus | None,
               began: float) -> None:
    endings.after_end(ref.cls, ref.pk, ref.process, written, proc=proc)
    # The worker's one line per run: class, id, process, final status, duration.
    logger.info(
        "%s ended %s in %.2f s (task %s)", ref.describe(), written or "elsewhere",
        time.monotonic() - began, ref.task_id,
    )


def _waiting_or_none(result: object) -> ProcessStatus | None:
    """What a process or ``join()`` returned, as the outcome :func:`finish` takes."""
    waiting = isinstance(result, str) and result == ProcessStatus.WAITING_FOR_RESULT.value
    return ProcessStatus.WAITING_FOR_RESULT if waiting else None


# --- retries ---------------------------------------------------------------------------


def _retry_body(run: Run, exc: Exception, attempts: Attempts) -> Ended | RetryLater:
    """The process raised a retryable error: RUNNING → PENDING, the attempt in warnings."""
    spec = run.call.spec
    attempt = attempts.retries + 1
    countdown = spec.retry_countdown(attempts.retries)
    error = describe(exc)
    won = transitions.back_to_pending(
        run.proc._target(), run.task_id,
        message=f"Process {spec.name}: retry {attempt}/{spec.max_retries} in {countdown:g} s",
        warning=f"attempt {attempt} of {spec.max_retries + 1} failed: {error}",
    )
    if not won:
        return NOT_RUN  # ended from outside meanwhile (cancelled): nothing to retry
    logger.warning(
        "%s: attempt %d failed (%s); retry %d/%d in %g s",
        run.describe(), attempt, error, attempt, spec.max_retries, countdown,
    )
    return RetryLater(run.ref, exc, countdown, Attempts(attempts.starts, attempt))


def _retry_start(ref: RunRef, exc: Exception, attempts: Attempts) -> Ended | RetryLater:
    """The claim met a transient error: try again later, or end the run after the limit."""
    starts = attempts.starts + 1
    if starts >= START_RETRY_LIMIT:
        logger.error("%s: could not start after %d attempts: %s", ref.describe(), starts, exc)
        end_before_start(ref, f"could not start after {starts} attempts: {describe(exc)}")
        return NOT_RUN
    countdown = float(getattr(exc, "countdown", min(2 ** starts, 30)))
    logger.warning("cannot start %s yet (attempt %d): %s", ref.describe(), starts, exc)
    return RetryLater(ref, exc, countdown, Attempts(starts, attempts.retries))


def retry_not_sent(retry: RetryLater, reason: str) -> None:
    """The broker refused the retry's message: the PENDING run has none behind it."""
    end_before_start(retry.run, f"{describe(retry.error)}; the retry could not be sent: {reason}")


def end_before_start(ref: RunRef, error: str) -> None:
    """End a PENDING run whose message is being dropped; if even that fails, say so loudly."""
    try:
        endings.end_run(ref, error, statuses=_PENDING)
    except Exception as exc:
        logger.error(
            "%s stays PENDING with no message behind it (%s), and recording that failed: "
            "%s. The sweeper's pending_timeout ends it.", ref.describe(), error, describe(exc),
        )
