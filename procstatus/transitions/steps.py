"""The writes a running process makes to its own document: step, progress, warnings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from procstatus.status import (
    ProcessStatus,
)
from procstatus.text import cut
from procstatus.transitions.addressing import (
    Target,
    _update,
)
from procstatus.transitions.fields import (
    _S,
    _bounded,
    _capped_push,
    _is,
)


def set_step(
    target: Target,
    task_id: str | None,
    step: str | None,
    *,
    progress: Mapping[str, Any] | None = None,
) -> bool:
    """Write ``current_process_step`` while this run is RUNNING (one update).

    ``progress`` (``progress_done``/``progress_total``) is the run's progress held back by
    the throttle, written in the same command.
    """
    step = None if step is None else cut(step)
    return _update(
        target,
        {"process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id},
        {"$set": {"current_process_step": step, **_progress_fields(progress)}},
        lambda state: _is(state, process_status=_S.RUNNING.value, celery_task_id=task_id,
                          current_process_step=step),
        matched=True,
    )


def _progress_fields(progress: Mapping[str, Any] | None) -> dict[str, Any]:
    """Only ``progress_done``/``progress_total`` of ``progress``: nothing else rides along."""
    if not progress:
        return {}
    return {"progress_done": progress["progress_done"],
            "progress_total": progress["progress_total"]}


def set_progress(target: Target, task_id: str | None, done: int, total: int | None) -> bool:
    """Write ``progress_done``/``progress_total`` while this run is RUNNING (one update)."""
    return _update(
        target,
        {"process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id},
        {"$set": {"progress_done": done, "progress_total": total}},
        lambda state: _is(state, process_status=_S.RUNNING.value, celery_task_id=task_id,
                          progress_done=done, progress_total=total),
        matched=True,
    )


def add_warnings(
    target: Target,
    task_id: str | None,
    messages: Sequence[str],
    *,
    progress: Mapping[str, Any] | None = None,
) -> bool:
    """Append ``messages`` to ``warnings`` while this run is RUNNING (one update).

    ``progress`` is written in the same command, as with :func:`set_step`.
    """
    texts = _bounded(messages)
    update: dict[str, Any] = {"$push": _capped_push("warnings", texts)}
    if progress:
        update["$set"] = _progress_fields(progress)
    return _update(
        target,
        {"process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id},
        update,
        lambda state: _is(state, process_status=_S.RUNNING.value, celery_task_id=task_id)
        and list(state.get("warnings") or [])[-len(texts):] == texts,
        matched=True,
    )
