"""Parents and children: a parent in WAITING_FOR_RESULT is joined exactly once.

A child's process ends (SUCCESS or FAILURE, written first), then asks its parent to
join; a parent that has just written WAITING_FOR_RESULT asks too, in case its children
finished first. Whoever finds no child still processing tries the conditional
WAITING_FOR_RESULT → RUNNING write; MongoDB lets exactly one of them win, and the
winner runs ``parent.join()`` on its worker.
"""

from __future__ import annotations

import logging

from procstatus import runner, transitions
from procstatus.dispatch import process_spec
from procstatus.document import Proc
from procstatus.status import PROCESSING, ProcessStatus
from procstatus.transitions import WorkerRef

logger = logging.getLogger("procstatus")


def after_finish(
    proc: Proc,
    written: ProcessStatus | None,
    *,
    is_child: bool,
    task_id: str | None,
    worker: WorkerRef,
) -> None:
    """Called after every run's final write: start the joins it makes possible.

    ``task_id`` and ``worker`` name the task this runs in; a join it wins runs there.
    """
    if written is ProcessStatus.WAITING_FOR_RESULT:
        try_join(proc, task_id, worker)
    if is_child:
        # Even when this write lost (a deleted or duplicate child), the parent may be
        # waiting on nothing else now; trying again is harmless.
        _join_parent_of(proc, task_id, worker)


def _join_parent_of(child: Proc, task_id: str | None, worker: WorkerRef) -> None:
    try:
        parent = child.parent()
    except Exception:
        logger.exception("parent() of %s(%s) failed", type(child).__name__, child.pk)
        return
    if parent is not None:
        try_join(parent, task_id, worker)


def try_join(parent: Proc, task_id: str | None, worker: WorkerRef) -> None:
    """Join ``parent`` if it waits and none of its children is still processing."""
    while True:
        try:
            busy = parent.children().filter(
                process_status__in=list(PROCESSING)
            ).only("id").first()
        except Exception as exc:
            logger.exception("children() of %s(%s) failed", type(parent).__name__, parent.pk)
            _fail_waiting(parent, exc, task_id, worker)
            return
        if busy is not None:
            return
        document = transitions.begin_join(parent._get_collection(), parent.pk, task_id, worker)
        if document is None:
            return  # not waiting (yet), or another worker won the join
        parent = type(parent)._from_son(document)
        written = _run_join(parent)
        if written is not ProcessStatus.WAITING_FOR_RESULT:
            spec = process_spec(type(parent), parent.current_process or "")
            if spec is not None and spec.is_child:
                _join_parent_of(parent, task_id, worker)
            return
        # join() asked to wait again: its new children may all be done already.


def _run_join(parent: Proc) -> ProcessStatus | None:
    logger.info("joining %s(%s)", type(parent).__name__, parent.pk)
    try:
        outcome = parent.join()
    except Exception as exc:
        logger.exception("join() of %s(%s) failed", type(parent).__name__, parent.pk)
        return runner.fail(parent, exc, context="join")
    waiting = ProcessStatus.WAITING_FOR_RESULT if outcome == "WAITING_FOR_RESULT" else None
    return runner.finish(parent, waiting)


def _fail_waiting(parent: Proc, exc: Exception, task_id: str | None, worker: WorkerRef) -> None:
    document = transitions.begin_join(parent._get_collection(), parent.pk, task_id, worker)
    if document is not None:
        runner.fail(type(parent)._from_son(document), exc, context="children()")
