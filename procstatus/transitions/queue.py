"""The writes of the call queue: a call waiting its turn, and its start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from procstatus.status import (
    PROCESSING,
    values,
)
from procstatus.transitions.addressing import (
    Target,
    _update,
)
from procstatus.transitions.fields import (
    _QUEUE_HEAD,
    _S,
    _SCHEDULABLE,
    _is,
    performs,
)
from procstatus.transitions.runs import (
    _pending_update,
)


def enqueue_call(target: Target, call: Mapping[str, Any], limit: int) -> bool:
    """Append ``call`` to ``call_queue`` while the document is busy; ``False`` if it is not.

    Busy means processing, or with calls already waiting. The write is refused too when
    ``limit`` calls already wait. No status changes.
    """
    return _update(
        target,
        {
            "$or": [
                {"process_status": {"$in": values(PROCESSING)}},
                {_QUEUE_HEAD: {"$exists": True}},
            ],
            f"call_queue.{limit - 1}": {"$exists": False},
        },
        {"$push": {"call_queue": dict(call)}},
        lambda state: any(queued.get("id") == call.get("id")
                          for queued in state.get("call_queue") or ()),
    )


@performs((_S.READY, _S.PENDING), (_S.SUCCESS, _S.PENDING), (_S.FAILURE, _S.PENDING))
def schedule_next(
    target: Target, head_id: str, process: str, task_id: str, arguments: Mapping[str, Any]
) -> bool:
    """READY/SUCCESS/FAILURE → PENDING for the first queued call, taken off the queue.

    Conditional on that call still being first, so of several runs ending at once
    exactly one schedules it.
    """
    return _update(
        target,
        {"process_status": {"$in": _SCHEDULABLE}, "call_queue.0.id": head_id},
        {**_pending_update(process, task_id, arguments), "$pop": {"call_queue": -1}},
        lambda state: _is(state, process_status=_S.PENDING.value, celery_task_id=task_id),
    )
