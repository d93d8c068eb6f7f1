"""Parents and children: a parent in WAITING_FOR_RESULT is joined exactly once, by a join task.

A process that returns WAITING_FOR_RESULT waits for its children. Every ending of a
child — in its own process or from outside (:mod:`procstatus.endings`) — calls
:func:`notify_parent_of`; the parent itself calls :func:`join_if_ready` right after it
wrote WAITING_FOR_RESULT, in case its children were faster. Either sends a join task
(``procstatus.join``) when the parent waits and no child is still processing. The
join task runs :func:`perform_join` on a worker, under the parent process's queue and
time limits: the conditional WAITING_FOR_RESULT → RUNNING write lets exactly one join
task per wait run ``join()``, whoever sent it and however many were sent. Nothing here
runs ``join()`` in a signal receiver, the worker's main process or a sweeper's caller.

The sweeper sends the join of any waiting parent with no processing child, so a
notification lost to a crash is made up for on its next pass.

Cost: "is any child still processing?" is asked at every child's end. It is one command
only if an index begins with the children() fields and ``process_status``;
:func:`warn_if_unindexed` names that index, once per parent class, when it is missing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from procstatus import callqueue, dispatch, runner, transitions
from procstatus.dispatch import process_spec
from procstatus.errors import ProcessFailure
from procstatus.status import PROCESSING, ProcessStatus
from procstatus.transitions import WorkerRef

if TYPE_CHECKING:
    from procstatus.document import Proc
    from procstatus.messages import JoinCall

logger = logging.getLogger("procstatus")

NOTHING_TO_WAIT_FOR = (
    "join() returned WAITING_FOR_RESULT but started no child and none is processing: "
    "start the new children before returning it, or return None to end the process"
)


_children_index_checked: set[type] = set()
"""Parent classes whose children() were checked for a serving index in this process."""


def any_child_processing(parent: Proc) -> bool:
    """Whether any of ``parent.children()`` is PENDING, RUNNING or WAITING_FOR_RESULT."""
    children = parent.children()
    warn_if_unindexed(type(parent), children)
    id_name = children._document._meta["id_field"]  # children may have their own primary key
    busy = children.filter(process_status__in=list(PROCESSING)).only(id_name).first()
    return busy is not None


def warn_if_unindexed(parent_cls: type[Proc], children: Any) -> None:
    """Once per parent class: warn when no index serves :func:`any_child_processing`.

    That question is asked at every child's end. An index that begins with the fields of
    ``children()``'s filter and ``process_status`` answers it from the first key; without
    one, the server reads through the parent's children (or the whole collection) each
    time, which is quadratic work per parent. One ``index_information`` command per class.
    """
    if parent_cls in _children_index_checked:
        return
    _children_index_checked.add(parent_cls)
    try:
        query = children._query
        wanted = {name for name in query if not name.startswith("$")} | {"process_status"}
        indexes = children._collection.index_information()
    except Exception:  # a checkless children() still works; the check is advice only
        return
    for index in indexes.values():
        leading = [name for name, _ in index.get("key", [])][: len(wanted)]
        if set(leading) == wanted:
            return
    fields = tuple(sorted(wanted - {"process_status"})) + ("process_status",)
    child = children._document.__name__
    logger.warning(
        "%s.children() finds its children by %s, and no index of %s begins with those "
        "fields and process_status, so every child's end reads through its siblings to "
        "ask whether any is still processing. Add %r to %s.meta['indexes'].",
        parent_cls.__name__, ", ".join(fields[:-1]) or "no field", child, fields, child,
    )


def join_if_ready(parent: Proc, *, dry_run: bool = False) -> bool:
    """Send ``parent``'s join task if it waits and no child is processing; ``True`` if sent.

    ``children()`` raising sends the join task too: the join task fails the parent with
    that error on a worker, rather than leaving it waiting. ``dry_run`` sends nothing and
    says whether it would.
    """
    state = transitions.read_state(parent._get_collection(), parent.pk)
    if state is None or state.get("process_status") != ProcessStatus.WAITING_FOR_RESULT.value:
        return False
    try:
        if any_child_processing(parent):
            return False
    except Exception as exc:
        logger.warning("children() of %s(%s) failed: %s", type(parent).__name__, parent.pk, exc)
    if dry_run:
        return True
    spec = process_spec(type(parent), state.get("current_process") or "")
    task_id = dispatch.publish_join(type(parent), parent.pk, spec)
    logger.info("%s(%s): join sent as task %s", type(parent).__name__, parent.pk, task_id)
    return True


def notify_parent_of(cls: type[Proc], pk: Any, process: str | None) -> None:
    """A run of ``cls(pk)`` ended: if it is a child process, its parent may join now."""
    spec = process_spec(cls, process or "")
    if spec is None or not spec.is_child:
        return
    child = cls.objects(pk=pk).first()
    if child is None:
        return  # deleted: its parent learns of it from its other children or the sweeper
    notify_parent(child)


def notify_parent(child: Proc) -> None:
    """Send the join of ``child.parent()`` if it is ready; errors are logged, not raised."""
    try:
        parent = child.parent()
        if parent is not None:
            join_if_ready(parent)
    except Exception:
        logger.exception("could not notify the parent of %s(%s)", type(child).__name__, child.pk)


def after_run(proc: Proc, written: ProcessStatus | None) -> None:
    """After a run wrote its own end: join a parent that now waits, or tell this child's."""
    if written is ProcessStatus.WAITING_FOR_RESULT:
        try:
            join_if_ready(proc)
        except Exception:
            logger.exception("could not send the join of %s(%s)", type(proc).__name__, proc.pk)
        return
    spec = process_spec(type(proc), proc.current_process or "")
    if spec is not None and spec.is_child:
        # Also when the write lost (a deleted child): the parent may wait on nothing else.
        notify_parent(proc)


def perform_join(call: JoinCall, task_id: str, worker: WorkerRef) -> ProcessStatus | None:
    """The join task: claim the wait, run ``join()``, write the end; ``None`` if not ours."""
    parent = call.cls.objects(pk=call.pk).first()
    if parent is None or parent.process_status is not ProcessStatus.WAITING_FOR_RESULT:
        logger.info("join of %s not needed: it is not waiting", call.describe())
        return None
    collection = call.cls._get_collection()
    try:
        busy = any_child_processing(parent)
    except Exception as exc:
        document = transitions.begin_join(collection, call.pk, task_id, worker)
        if document is None:
            return None
        claimed = runner.attach(call.cls._from_son(document), task_id)
        written = runner.fail(claimed, exc, context="children()")
        _after_join(claimed, written)
        return written
    if busy:
        return None  # the last child's ending sends the next join
    document = transitions.begin_join(collection, call.pk, task_id, worker)
    if document is None:
        logger.info("join of %s lost: another join task runs it", call.describe())
        return None
    parent = runner.attach(call.cls._from_son(document), task_id)
    logger.info("joining %s (task %s)", call.describe(), task_id)
    sent_before = dispatch.children_sent()
    try:
        outcome = parent.join()
        if outcome == ProcessStatus.WAITING_FOR_RESULT.value:
            if dispatch.children_sent() == sent_before and not any_child_processing(parent):
                raise ProcessFailure(NOTHING_TO_WAIT_FOR)
            written = runner.finish(parent, ProcessStatus.WAITING_FOR_RESULT)
        else:
            written = runner.finish(parent, None)
    except Exception as exc:
        written = runner.fail(parent, exc, context=None if _chosen(exc) else "join")
    _after_join(parent, written)
    return written


def _after_join(parent: Proc, written: ProcessStatus | None) -> None:
    after_run(parent, written)
    callqueue.after_end(type(parent), parent.pk, written)


def _chosen(exc: BaseException) -> bool:
    return isinstance(exc, ProcessFailure) and exc.errors == [NOTHING_TO_WAIT_FOR]
