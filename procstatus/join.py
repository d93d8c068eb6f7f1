"""Parents and children: when a waiting parent's join task is sent.

A process that returns WAITING_FOR_RESULT waits for its children. After every ending
of a child — in its own process or from outside — :func:`procstatus.endings.after_end`
calls :func:`notify_parent_of`; after the parent itself wrote WAITING_FOR_RESULT it
calls :func:`join_if_ready`, in case its children were faster. Either sends a join task
(``procstatus.join``) when the parent waits and no child is still processing. The
join task runs :func:`procstatus.runner.perform_join` on a worker, under the parent
process's queue and time limits: the conditional WAITING_FOR_RESULT → RUNNING write lets
exactly one join task per wait run ``join()``, whoever sent it and however many were
sent. Nothing here runs ``join()``.

The sweeper sends the join of any waiting parent with no processing child, so a
notification lost to a crash is made up for on its next pass.

Cost: "is any child still processing?" is asked at every child's end. It is one command
only if an index begins with the children() fields and ``process_status``;
:func:`warn_if_unindexed` names that index, once per parent class, when it is missing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pymongo import ReadPreference

from procstatus import messages, transitions
from procstatus.spec import process_spec
from procstatus.status import PROCESSING, ProcessStatus

if TYPE_CHECKING:
    from procstatus.document import ProcDocument

logger = logging.getLogger("procstatus")

NOTHING_TO_WAIT_FOR = (
    "join() returned WAITING_FOR_RESULT but started no child and none is processing: "
    "start the new children before returning it, or return None to end the process"
)


_children_index_checked: set[type] = set()
"""Parent classes whose children() were checked for a serving index in this process."""


def any_child_processing(parent: ProcDocument) -> bool:
    """Whether any of ``parent.children()`` is PENDING, RUNNING or WAITING_FOR_RESULT."""
    children = parent.children()
    warn_if_unindexed(type(parent), children)
    id_name = children._document._meta["id_field"]  # children may have their own primary key
    busy = (
        children.filter(process_status__in=list(PROCESSING))
        .read_preference(ReadPreference.PRIMARY)  # a lagging secondary would join early
        .only(id_name)
        .first()
    )
    return busy is not None


def warn_if_unindexed(parent_cls: type[ProcDocument], children: Any) -> None:
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


def join_if_ready(parent: ProcDocument, *, dry_run: bool = False) -> bool:
    """Send ``parent``'s join task if it waits and no child is processing; ``True`` if sent.

    ``children()`` raising sends the join task too: the join task fails the parent with
    that error on a worker, rather than leaving it waiting. ``dry_run`` sends nothing and
    says whether it would.
    """
    state = transitions.read_state(parent._target())
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
    task_id = messages.publish_join(type(parent), parent.pk, spec)
    logger.info("%s(%s): join sent as task %s", type(parent).__name__, parent.pk, task_id)
    return True


def notify_parent_of(
    cls: type[ProcDocument], pk: Any, process: str | None, child: ProcDocument | None = None
) -> None:
    """A run of ``cls(pk)`` ended: if it is a child process, its parent may join now.

    ``child`` is the document when the caller has it (the run's own copy); else it is read.
    """
    spec = process_spec(cls, process or "")
    if spec is None or not spec.is_child:
        return
    if child is None:
        child = cls.objects(pk=pk).first()
    if child is None:
        return  # deleted: its parent learns of it from its other children or the sweeper
    notify_parent(child)


def notify_parent(child: ProcDocument) -> None:
    """Send the join of ``child.parent()`` if it is ready; errors are logged, not raised."""
    try:
        parent = child.parent()
        if parent is not None:
            join_if_ready(parent)
    except Exception:
        logger.exception("could not notify the parent of %s(%s)", type(child).__name__, child.pk)
