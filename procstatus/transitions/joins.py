"""The writes of a parent's join: won by one join task, given back when it is lost.
"""

from __future__ import annotations

from typing import Any

from procstatus.clock import server_time
from procstatus.status import (
    ProcessStatus,
)
from procstatus.transitions.addressing import (
    Target,
    _find_and_update,
    _update,
)
from procstatus.transitions.fields import (
    _COUNT_LOSS,
    _S,
    WorkerLoss,
    WorkerRef,
    _capped_push,
    _is,
    performs,
)


@performs((_S.WAITING_FOR_RESULT, _S.RUNNING))
def begin_join(target: Target, task_id: str | None, worker: WorkerRef) -> dict | None:
    """WAITING_FOR_RESULT → RUNNING, won by exactly one join task; returns the document after.

    ``celery_task_id`` and the worker fields then name the join task, so the liveness
    checks see who runs the join, and a second join task for the same wait loses.
    """
    return _find_and_update(
        target,
        {"process_status": ProcessStatus.WAITING_FOR_RESULT.value},
        {
            "$set": {
                "process_status": ProcessStatus.RUNNING.value,
                "last_status_message": "Joining results",
                "celery_task_id": task_id,
                "joining": True,
                **worker.fields(),
            },
            **server_time("status_changed_at"),
        },
        lambda state: state.get("joining") is True and worker.claimed(state, task_id),
        before=False,
    )


@performs((_S.RUNNING, _S.WAITING_FOR_RESULT))
def abandon_join(
    target: Target, task_id: str, *, warning: str, loss: WorkerLoss | None = None
) -> bool:
    """RUNNING → WAITING_FOR_RESULT: the join task ``task_id`` was lost and is delivered again.

    Undoes :func:`begin_join` (conditional on that join task still running it), so the
    redelivered join task wins the wait again like any join task. ``loss``: counted in
    ``worker_losses``, and the write matches only within its cap, as in
    :func:`back_to_pending`.
    """
    update: dict[str, Any] = {
        "$set": {
            "process_status": ProcessStatus.WAITING_FOR_RESULT.value,
            "last_status_message": "Waiting for the join task to be delivered again",
            "joining": False,
        },
        **server_time("status_changed_at"),
        "$push": _capped_push("warnings", [warning]),
    }
    if loss is not None:
        update["$inc"] = _COUNT_LOSS
    return _update(
        target,
        {"process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id,
         "joining": True, **(loss.within_cap() if loss is not None else {})},
        update,
        lambda state: _is(state, process_status=_S.WAITING_FOR_RESULT.value,
                          celery_task_id=task_id, joining=False),
    )
