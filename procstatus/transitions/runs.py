"""The writes of a run's life: schedule, start, retry, end, and the operator's reset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from procstatus.clock import server_time
from procstatus.status import (
    COMPLETED,
    PROCESSING,
    ProcessStatus,
    values,
)
from procstatus.text import cut
from procstatus.transitions.addressing import (
    Target,
    _find_and_update,
    _update,
)
from procstatus.transitions.fields import (
    _ANY,
    _COUNT_LOSS,
    _PROJECTION,
    _QUEUE_HEAD,
    _S,
    _SCHEDULABLE,
    STATE_FIELDS,
    WorkerLoss,
    WorkerRef,
    _capped_push,
    _is,
    performs,
)


@performs((_S.READY, _S.PENDING), (_S.SUCCESS, _S.PENDING), (_S.FAILURE, _S.PENDING))
def schedule(
    target: Target, process: str, task_id: str, arguments: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """READY/SUCCESS/FAILURE → PENDING for ``process`` under ``task_id``.

    Returns the state fields as they were before (so a failed publish can restore them),
    or ``None`` when the document is missing, processing, or has queued calls waiting
    (they go first: see :func:`schedule_next`). After an ambiguous write that did land,
    the state before is unknown: it returns READY with nothing else, which is what a
    failed publish then restores.
    """
    before = _find_and_update(
        target,
        {"process_status": {"$in": _SCHEDULABLE}, _QUEUE_HEAD: {"$exists": False}},
        _pending_update(process, task_id, arguments),
        lambda state: _is(state, process_status=_S.PENDING.value, celery_task_id=task_id),
        before=True,
        projection=_PROJECTION,
    )
    if before is not None and before.get("celery_task_id") == task_id:
        return {"process_status": _S.READY.value}  # settled: the state before is unknown
    return before


def _pending_update(
    process: str, task_id: str, arguments: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The update of a newly scheduled run: PENDING since the server's now, and nothing
    left of the last run."""
    return {"$set": _pending_fields(process, task_id, arguments),
            **server_time("status_changed_at")}


def _pending_fields(
    process: str, task_id: str, arguments: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "process_status": ProcessStatus.PENDING.value,
        "current_process": process,
        "current_process_step": None,
        "errors": [],
        "warnings": [],
        "last_status_message": cut(f"Process {process} pending"),
        "start_time": None,
        "complete_time": None,
        "worker_hostname": None,
        "worker_instance": None,
        "worker_pid": None,
        "worker_losses": 0,
        "celery_task_id": task_id,
        # Kept so a sweeper can send the call again after its worker was lost.
        "process_arguments": dict(arguments or {"args": [], "kwargs": {}}),
        "joining": False,
        "progress_done": None,
        "progress_total": None,
    }


@performs((_S.PENDING, _S.READY), (_S.PENDING, _S.SUCCESS), (_S.PENDING, _S.FAILURE))
def unschedule(target: Target, task_id: str, previous: Mapping[str, Any]) -> bool:
    """Undo :func:`schedule` after the task could not be published: restore ``previous``."""
    # Calls queued meanwhile stay: the queue is not part of the run being undone.
    restored = [name for name in STATE_FIELDS if name != "call_queue"]
    restore = {name: previous[name] for name in restored if name in previous}
    absent = {name: "" for name in restored if name not in previous}
    update: dict[str, Any] = {"$set": restore}
    if absent:
        update["$unset"] = absent
    return _update(
        target,
        {"process_status": ProcessStatus.PENDING.value, "celery_task_id": task_id},
        update,
        lambda state: _is(state, process_status=previous.get("process_status"),
                          celery_task_id=previous.get("celery_task_id")),
    )


@performs((_S.PENDING, _S.RUNNING))
def start(target: Target, task_id: str, worker: WorkerRef) -> dict | None:
    """PENDING → RUNNING for exactly this task; returns the whole document after the write.

    ``None`` means the claim was lost: the document is gone, was cancelled, already ran
    (a duplicate delivery) or belongs to a newer task. A document found RUNNING under this
    task id and this very worker process after an ambiguous write is this claim.
    """
    return _find_and_update(
        target,
        {"process_status": ProcessStatus.PENDING.value, "celery_task_id": task_id},
        {
            "$set": {"process_status": ProcessStatus.RUNNING.value, **worker.fields()},
            **server_time("start_time", "status_changed_at"),
        },
        lambda state: worker.claimed(state, task_id),
        before=False,
    )


@performs((_S.RUNNING, _S.RUNNING))
def reclaim(
    target: Target,
    task_id: str,
    lost: Mapping[str, Any],
    worker: WorkerRef,
    reason: str,
    *,
    loss_cap: int | None = None,
) -> dict | None:
    """RUNNING → RUNNING on a new worker, for a redelivered task whose first run was lost.

    Conditional on the lost run's task id, worker instance and pid, so of several
    redeliveries exactly one takes over, and (with ``loss_cap``) on the run having lost
    fewer workers than that; the loss is counted in ``worker_losses``. Returns the
    document after the write.
    """
    cap = {} if loss_cap is None else WorkerLoss(loss_cap).within_cap()
    return _find_and_update(
        target,
        {
            "process_status": ProcessStatus.RUNNING.value,
            "celery_task_id": task_id,
            "worker_instance": lost.get("worker_instance"),
            "worker_pid": lost.get("worker_pid"),
            **cap,
        },
        {
            "$set": {"last_status_message": cut(f"Process restarted: {reason}"),
                     **worker.fields()},
            **server_time("start_time", "status_changed_at"),
            "$push": _capped_push("warnings", [f"restarted after {reason}"]),
            "$inc": _COUNT_LOSS,
        },
        lambda state: worker.claimed(state, task_id),
        before=False,
    )


@performs((_S.RUNNING, _S.PENDING))
def back_to_pending(
    target: Target,
    task_id: str,
    *,
    message: str,
    warning: str,
    new_task_id: str | None = None,
    loss: WorkerLoss | None = None,
) -> bool:
    """RUNNING → PENDING for a run that will be tried again (a retry, a lost worker).

    With ``new_task_id`` the next attempt is a new message (the sweeper re-dispatching);
    without, Celery redelivers the same task id (a retry). ``warning`` keeps the history.
    ``loss``: the run is tried again because its worker was lost; the write counts it in
    ``worker_losses`` and matches only within the cap (and the lost attempt, if named).
    """
    next_task_id = new_task_id or task_id
    message = cut(message)
    update: dict[str, Any] = {
        "$set": {
            "process_status": ProcessStatus.PENDING.value,
            "last_status_message": message,
            "celery_task_id": next_task_id,
        },
        **server_time("status_changed_at"),
        "$push": _capped_push("warnings", [warning]),
    }
    if loss is not None:
        update["$inc"] = _COUNT_LOSS
    return _update(
        target,
        {"process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id,
         **(loss.within_cap() if loss is not None else {})},
        update,
        lambda state: _is(state, process_status=_S.PENDING.value,
                          celery_task_id=next_task_id, last_status_message=message),
    )


@performs(
    (_S.RUNNING, _S.SUCCESS), (_S.RUNNING, _S.FAILURE), (_S.RUNNING, _S.WAITING_FOR_RESULT)
)
def complete(
    target: Target,
    task_id: str | None,
    status: ProcessStatus,
    *,
    message: str,
    errors: Sequence[str] = (),
    clear_queue: bool = False,
    progress: Mapping[str, Any] | None = None,
) -> bool:
    """RUNNING → SUCCESS, FAILURE or WAITING_FOR_RESULT for the run owned by ``task_id``.

    ``clear_queue`` with FAILURE drops the queued calls in the same write; ``progress``
    (``progress_done``/``progress_total``) is the run's last, not yet written, progress.
    """
    status = ProcessStatus(status)
    if status not in COMPLETED and status is not ProcessStatus.WAITING_FOR_RESULT:
        raise ValueError(f"complete() cannot write {status}")
    message = cut(message)
    fields: dict[str, Any] = {"process_status": status.value, "last_status_message": message}
    if clear_queue and status is ProcessStatus.FAILURE:
        fields["call_queue"] = []
    fields.update(progress or {})
    stamped = ("status_changed_at", "complete_time") if status in COMPLETED else (
        "status_changed_at",)
    update: dict[str, Any] = {"$set": fields, **server_time(*stamped)}
    if errors:
        update["$push"] = _capped_push("errors", errors)
    return _update(
        target,
        {"process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id},
        update,
        lambda state: _is(state, process_status=status.value, celery_task_id=task_id,
                          last_status_message=message),
    )


@performs(
    (_S.PENDING, _S.FAILURE), (_S.RUNNING, _S.FAILURE), (_S.WAITING_FOR_RESULT, _S.FAILURE)
)
def fail_run(
    target: Target,
    task_id: str | None,
    process: str | None,
    error: str,
    statuses: frozenset[ProcessStatus] = PROCESSING,
    *,
    clear_queue: bool = False,
    over_cap: WorkerLoss | None = None,
) -> bool:
    """PENDING/RUNNING/WAITING_FOR_RESULT (or ``statuses``) → FAILURE, from outside the run.

    Conditional on the run's task id and process, so only the run that was meant ends.
    Used by :mod:`procstatus.endings` alone: cancel, the sweeper, a lost pool process,
    a start or a resend that could not happen. ``over_cap``: the run lost its worker once
    more than its cap allows; it ends only if it has lost ``over_cap.cap`` already (on the
    lost attempt, if named), and this loss is counted too.
    """
    if not statuses <= PROCESSING:
        raise ValueError(f"fail_run() ends runs under way, not {values(statuses - PROCESSING)}")
    message = cut(f"Process {process} failed: {error}")
    fields: dict[str, Any] = {
        "process_status": ProcessStatus.FAILURE.value,
        "last_status_message": message,
    }
    if clear_queue:
        fields["call_queue"] = []
    update: dict[str, Any] = {
        "$set": fields, **server_time("complete_time", "status_changed_at"),
        "$push": _capped_push("errors", [error]),
    }
    if over_cap is not None:
        update["$inc"] = _COUNT_LOSS
    return _update(
        target,
        {
            "process_status": {"$in": values(statuses)},
            "celery_task_id": task_id,
            "current_process": process,
            **(over_cap.past_cap() if over_cap is not None else {}),
        },
        update,
        lambda state: _is(state, process_status=_S.FAILURE.value, celery_task_id=task_id,
                          last_status_message=message),
    )


@performs(*((status, _S.READY) for status in _ANY if status is not _S.READY))
def reset(target: Target, *, force: bool = False) -> dict | None:
    """SUCCESS/FAILURE (any status with ``force``) → READY: the operator's override.

    Clears the run's step, errors, warnings, progress, task and count of lost workers;
    domain fields and waiting calls are untouched. Returns the state before, or ``None`` if
    the document is missing, already READY, or (without ``force``) processing. After an
    ambiguous write that did land, the state before is unknown and the state after is
    returned.
    """
    allowed = [s.value for s in _ANY if s is not _S.READY and (force or s in COMPLETED)]
    return _find_and_update(
        target,
        {"process_status": {"$in": [*allowed, None]}},
        {
            "$set": {
                "process_status": ProcessStatus.READY.value,
                "current_process_step": None,
                "errors": [],
                "warnings": [],
                "last_status_message": _RESET_MESSAGE,
                "celery_task_id": None,
                "joining": False,
                "worker_losses": 0,
                "progress_done": None,
                "progress_total": None,
            },
            **server_time("status_changed_at"),
        },
        lambda state: _is(state, process_status=_S.READY.value,
                          last_status_message=_RESET_MESSAGE, celery_task_id=None),
        before=True,
        projection=_PROJECTION,
    )


_RESET_MESSAGE = "Reset to READY by an operator"
