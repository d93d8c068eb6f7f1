"""The state machine's writes: every change of a status field, each one conditional and atomic.

Each function here is one MongoDB command. Its filter names the status it expects (and,
once a task exists, that task's id), so a stale, duplicated or late event matches nothing
and changes nothing; the return value says whether the write won. Nothing here upserts:
a document deleted meanwhile stays deleted.

Each write declares the edges of :data:`procstatus.status.LEGAL_TRANSITIONS` it performs
(:func:`performs`); its filter accepts only those edges' source states, so the table is
enforced by the writes themselves and a test checks that both say the same.

This module knows collections and primary keys, not Documents, and imports no Celery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pymongo import ReturnDocument
from pymongo.collection import Collection

from procstatus.clock import utcnow
from procstatus.status import (
    COMPLETED,
    LEGAL_TRANSITIONS,
    PROCESSING,
    SCHEDULABLE,
    ProcessStatus,
    values,
)

STATE_FIELDS: tuple[str, ...] = (
    "process_status",
    "current_process",
    "current_process_step",
    "errors",
    "warnings",
    "last_status_message",
    "start_time",
    "complete_time",
    "status_changed_at",
    "worker_hostname",
    "worker_instance",
    "worker_pid",
    "worker_redelivers",
    "worker_losses",
    "celery_task_id",
    "process_arguments",
    "joining",
    "call_queue",
    "progress_done",
    "progress_total",
)
"""Fields written only through this module."""

_QUEUE_HEAD = "call_queue.0"
_COUNT_LOSS = {"worker_losses": 1}
"""The ``$inc`` of a write that records a lost worker."""

# None also matches a missing field: a document saved before its class became a Proc.
_SCHEDULABLE: list[str | None] = [*values(SCHEDULABLE), None]
_PROJECTION = {name: 1 for name in STATE_FIELDS}


_S = ProcessStatus
Edge = tuple[ProcessStatus, ProcessStatus]
F = TypeVar("F", bound=Callable[..., Any])

EDGES_BY_WRITE: dict[str, frozenset[Edge]] = {}
"""The status edges each write function performs, by function name."""


def performs(*edges: Edge) -> Callable[[F], F]:
    """Declare the status edges a write performs; an edge the table lacks fails at import."""
    illegal = [f"{a}→{b}" for a, b in edges if b not in LEGAL_TRANSITIONS[a]]
    if illegal:
        raise AssertionError(f"not in LEGAL_TRANSITIONS: {', '.join(illegal)}")

    def register(function: F) -> F:
        EDGES_BY_WRITE[function.__name__] = frozenset(edges)
        return function

    return register


@performs((_S.READY, _S.PENDING), (_S.SUCCESS, _S.PENDING), (_S.FAILURE, _S.PENDING))
def schedule(
    collection: Collection,
    pk: Any,
    process: str,
    task_id: str,
    arguments: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """READY/SUCCESS/FAILURE → PENDING for ``process`` under ``task_id``.

    Returns the state fields as they were before (so a failed publish can restore them),
    or ``None`` when the document is missing, processing, or has queued calls waiting
    (they go first: see :func:`schedule_next`).
    """
    return collection.find_one_and_update(
        {"_id": pk, "process_status": {"$in": _SCHEDULABLE}, _QUEUE_HEAD: {"$exists": False}},
        {"$set": _pending_fields(process, task_id, arguments)},
        projection=_PROJECTION,
        return_document=ReturnDocument.BEFORE,
    )


def _pending_fields(
    process: str, task_id: str, arguments: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The fields of a newly scheduled run: PENDING, and nothing left of the last run."""
    return {
        "process_status": ProcessStatus.PENDING.value,
        "current_process": process,
        "current_process_step": None,
        "errors": [],
        "warnings": [],
        "last_status_message": f"Process {process} pending",
        "start_time": None,
        "complete_time": None,
        "status_changed_at": utcnow(),
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


def enqueue_call(collection: Collection, pk: Any, call: Mapping[str, Any], limit: int) -> bool:
    """Append ``call`` to ``call_queue`` while the document is busy; ``False`` if it is not.

    Busy means processing, or with calls already waiting. The write is refused too when
    ``limit`` calls already wait. No status changes.
    """
    result = collection.update_one(
        {
            "_id": pk,
            "$or": [
                {"process_status": {"$in": values(PROCESSING)}},
                {_QUEUE_HEAD: {"$exists": True}},
            ],
            f"call_queue.{limit - 1}": {"$exists": False},
        },
        {"$push": {"call_queue": dict(call)}},
    )
    return result.modified_count == 1


@performs((_S.READY, _S.PENDING), (_S.SUCCESS, _S.PENDING), (_S.FAILURE, _S.PENDING))
def schedule_next(
    collection: Collection,
    pk: Any,
    head_id: str,
    process: str,
    task_id: str,
    arguments: Mapping[str, Any],
) -> bool:
    """READY/SUCCESS/FAILURE → PENDING for the first queued call, taken off the queue.

    Conditional on that call still being first, so of several runs ending at once
    exactly one schedules it.
    """
    result = collection.update_one(
        {"_id": pk, "process_status": {"$in": _SCHEDULABLE}, "call_queue.0.id": head_id},
        {"$set": _pending_fields(process, task_id, arguments), "$pop": {"call_queue": -1}},
    )
    return result.modified_count == 1


@performs((_S.PENDING, _S.READY), (_S.PENDING, _S.SUCCESS), (_S.PENDING, _S.FAILURE))
def unschedule(
    collection: Collection, pk: Any, task_id: str, previous: Mapping[str, Any]
) -> bool:
    """Undo :func:`schedule` after the task could not be published: restore ``previous``."""
    # Calls queued meanwhile stay: the queue is not part of the run being undone.
    restored = [name for name in STATE_FIELDS if name != "call_queue"]
    restore = {name: previous[name] for name in restored if name in previous}
    absent = {name: "" for name in restored if name not in previous}
    update: dict[str, Any] = {"$set": restore}
    if absent:
        update["$unset"] = absent
    result = collection.update_one(
        {"_id": pk, "process_status": ProcessStatus.PENDING.value, "celery_task_id": task_id},
        update,
    )
    return result.modified_count == 1


@performs((_S.PENDING, _S.RUNNING))
def start(collection: Collection, pk: Any, task_id: str, worker: WorkerRef) -> dict | None:
    """PENDING → RUNNING for exactly this task; returns the whole document after the write.

    ``None`` means the claim was lost: the document is gone, was cancelled, already ran
    (a duplicate delivery) or belongs to a newer task.
    """
    moment = utcnow()
    return collection.find_one_and_update(
        {"_id": pk, "process_status": ProcessStatus.PENDING.value, "celery_task_id": task_id},
        {
            "$set": {
                "process_status": ProcessStatus.RUNNING.value,
                "start_time": moment,
                "status_changed_at": moment,
                **worker.fields(),
            }
        },
        return_document=ReturnDocument.AFTER,
    )


@performs((_S.RUNNING, _S.RUNNING))
def reclaim(
    collection: Collection,
    pk: Any,
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
    moment = utcnow()
    cap = {} if loss_cap is None else WorkerLoss(loss_cap).within_cap()
    return collection.find_one_and_update(
        {
            "_id": pk,
            "process_status": ProcessStatus.RUNNING.value,
            "celery_task_id": task_id,
            "worker_instance": lost.get("worker_instance"),
            "worker_pid": lost.get("worker_pid"),
            **cap,
        },
        {
            "$set": {
                "start_time": moment,
                "status_changed_at": moment,
                "last_status_message": f"Process restarted: {reason}",
                **worker.fields(),
            },
            "$push": {"warnings": f"restarted after {reason}"},
            "$inc": _COUNT_LOSS,
        },
        return_document=ReturnDocument.AFTER,
    )


@performs((_S.RUNNING, _S.PENDING))
def back_to_pending(
    collection: Collection,
    pk: Any,
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
    update: dict[str, Any] = {
        "$set": {
            "process_status": ProcessStatus.PENDING.value,
            "last_status_message": message,
            "status_changed_at": utcnow(),
            "celery_task_id": new_task_id or task_id,
        },
        "$push": {"warnings": warning},
    }
    if loss is not None:
        update["$inc"] = _COUNT_LOSS
    result = collection.update_one(
        {"_id": pk, "process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id,
         **(loss.within_cap() if loss is not None else {})},
        update,
    )
    return result.modified_count == 1


@performs(
    (_S.RUNNING, _S.SUCCESS), (_S.RUNNING, _S.FAILURE), (_S.RUNNING, _S.WAITING_FOR_RESULT)
)
def complete(
    collection: Collection,
    pk: Any,
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
    moment = utcnow()
    fields: dict[str, Any] = {
        "process_status": status.value,
        "last_status_message": message,
        "status_changed_at": moment,
    }
    if status in COMPLETED:
        fields["complete_time"] = moment
    if clear_queue and status is ProcessStatus.FAILURE:
        fields["call_queue"] = []
    fields.update(progress or {})
    update: dict[str, Any] = {"$set": fields}
    if errors:
        update["$push"] = {"errors": {"$each": list(errors)}}
    result = collection.update_one(
        {"_id": pk, "process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id},
        update,
    )
    return result.modified_count == 1


@performs(
    (_S.PENDING, _S.FAILURE), (_S.RUNNING, _S.FAILURE), (_S.WAITING_FOR_RESULT, _S.FAILURE)
)
def fail_run(
    collection: Collection,
    pk: Any,
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
    moment = utcnow()
    fields: dict[str, Any] = {
        "process_status": ProcessStatus.FAILURE.value,
        "last_status_message": f"Process {process} failed: {error}",
        "complete_time": moment,
        "status_changed_at": moment,
    }
    if clear_queue:
        fields["call_queue"] = []
    update: dict[str, Any] = {"$set": fields, "$push": {"errors": error}}
    if over_cap is not None:
        update["$inc"] = _COUNT_LOSS
    result = collection.update_one(
        {
            "_id": pk,
            "process_status": {"$in": values(statuses)},
            "celery_task_id": task_id,
            "current_process": process,
            **(over_cap.past_cap() if over_cap is not None else {}),
        },
        update,
    )
    return result.modified_count == 1


@performs((_S.WAITING_FOR_RESULT, _S.RUNNING))
def begin_join(
    collection: Collection, pk: Any, task_id: str | None, worker: WorkerRef
) -> dict | None:
    """WAITING_FOR_RESULT → RUNNING, won by exactly one join task; returns the document after.

    ``celery_task_id`` and the worker fields then name the join task, so the liveness
    checks see who runs the join, and a second join task for the same wait loses.
    """
    moment = utcnow()
    return collection.find_one_and_update(
        {"_id": pk, "process_status": ProcessStatus.WAITING_FOR_RESULT.value},
        {
            "$set": {
                "process_status": ProcessStatus.RUNNING.value,
                "last_status_message": "Joining results",
                "status_changed_at": moment,
                "celery_task_id": task_id,
                "joining": True,
                **worker.fields(),
            }
        },
        return_document=ReturnDocument.AFTER,
    )


@performs((_S.RUNNING, _S.WAITING_FOR_RESULT))
def abandon_join(
    collection: Collection, pk: Any, task_id: str, *, warning: str,
    loss: WorkerLoss | None = None,
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
            "status_changed_at": utcnow(),
            "joining": False,
        },
        "$push": {"warnings": warning},
    }
    if loss is not None:
        update["$inc"] = _COUNT_LOSS
    result = collection.update_one(
        {"_id": pk, "process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id,
         "joining": True, **(loss.within_cap() if loss is not None else {})},
        update,
    )
    return result.modified_count == 1


@dataclass(frozen=True)
class WorkerRef:
    """The worker fields a claim records: node name, worker-start instance, pool pid, and
    whether the broker gives the message back if this worker is lost (``acks_late`` +
    ``reject_on_worker_lost``: the message is acknowledged only after the run)."""

    hostname: str | None = None
    instance: str | None = None
    pid: int | None = None
    redelivers: bool = False

    def fields(self) -> dict[str, Any]:
        return {
            "worker_hostname": self.hostname,
            "worker_instance": self.instance,
            "worker_pid": self.pid,
            "worker_redelivers": self.redelivers,
        }


@dataclass(frozen=True)
class WorkerLoss:
    """A run's lost worker, as the write that tries the run again (or ends it) records it.

    ``cap``: how many lost workers a run may have and still be tried again. A write that
    tries it again matches only while ``worker_losses`` is below the cap, and counts the
    loss in the same command; the write after the cap matches nothing, and
    :func:`fail_run` with ``over_cap`` ends the run instead. ``instance``/``pid``: the
    worker instance and pool process of the lost attempt, when known; a write naming them
    leaves alone an attempt that has started since under the same task id.
    """

    cap: int
    instance: str | None = None
    pid: int | None = None

    def attempt(self) -> dict[str, Any]:
        """The conditions naming the lost attempt (none for what is not known)."""
        named = {"worker_instance": self.instance, "worker_pid": self.pid}
        return {name: value for name, value in named.items() if value is not None}

    def within_cap(self) -> dict[str, Any]:
        """The conditions of a write that tries the run again."""
        # $not also matches a missing count: a run scheduled before it existed lost none.
        return {"worker_losses": {"$not": {"$gte": self.cap}}, **self.attempt()}

    def past_cap(self) -> dict[str, Any]:
        """The conditions of the ending after the last loss the cap allows."""
        return {"worker_losses": {"$gte": self.cap}, **self.attempt()}


def set_step(
    collection: Collection,
    pk: Any,
    task_id: str | None,
    step: str | None,
    *,
    progress: Mapping[str, Any] | None = None,
) -> bool:
    """Write ``current_process_step`` while this run is RUNNING (one update).

    ``progress`` (``progress_done``/``progress_total``) is the run's progress held back by
    the throttle, written in the same command.
    """
    result = collection.update_one(
        {"_id": pk, "process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id},
        {"$set": {"current_process_step": step, **_progress_fields(progress)}},
    )
    return result.matched_count == 1


def _progress_fields(progress: Mapping[str, Any] | None) -> dict[str, Any]:
    """Only ``progress_done``/``progress_total`` of ``progress``: nothing else rides along."""
    if not progress:
        return {}
    return {"progress_done": progress["progress_done"],
            "progress_total": progress["progress_total"]}


def set_progress(
    collection: Collection, pk: Any, task_id: str | None, done: int, total: int | None
) -> bool:
    """Write ``progress_done``/``progress_total`` while this run is RUNNING (one update)."""
    result = collection.update_one(
        {"_id": pk, "process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id},
        {"$set": {"progress_done": done, "progress_total": total}},
    )
    return result.matched_count == 1


_ANY = (_S.READY, _S.PENDING, _S.RUNNING, _S.WAITING_FOR_RESULT, _S.SUCCESS, _S.FAILURE)


@performs(*((status, _S.READY) for status in _ANY if status is not _S.READY))
def reset(collection: Collection, pk: Any, *, force: bool = False) -> dict | None:
    """SUCCESS/FAILURE (any status with ``force``) → READY: the operator's override.

    Clears the run's step, errors, warnings, progress, task and count of lost workers;
    domain fields and waiting calls are untouched. Returns the state before, or ``None`` if
    the document is missing, already READY, or (without ``force``) processing.
    """
    allowed = [s.value for s in _ANY if s is not _S.READY and (force or s in COMPLETED)]
    moment = utcnow()
    return collection.find_one_and_update(
        {"_id": pk, "process_status": {"$in": [*allowed, None]}},
        {
            "$set": {
                "process_status": ProcessStatus.READY.value,
                "current_process_step": None,
                "errors": [],
                "warnings": [],
                "last_status_message": "Reset to READY by an operator",
                "status_changed_at": moment,
                "celery_task_id": None,
                "joining": False,
                "worker_losses": 0,
                "progress_done": None,
                "progress_total": None,
            }
        },
        projection=_PROJECTION,
        return_document=ReturnDocument.BEFORE,
    )


def add_warnings(
    collection: Collection,
    pk: Any,
    task_id: str | None,
    messages: Sequence[str],
    *,
    progress: Mapping[str, Any] | None = None,
) -> bool:
    """Append ``messages`` to ``warnings`` while this run is RUNNING (one update).

    ``progress`` is written in the same command, as with :func:`set_step`.
    """
    update: dict[str, Any] = {"$push": {"warnings": {"$each": list(messages)}}}
    if progress:
        update["$set"] = _progress_fields(progress)
    result = collection.update_one(
        {"_id": pk, "process_status": ProcessStatus.RUNNING.value, "celery_task_id": task_id},
        update,
    )
    return result.matched_count == 1


def read_state(collection: Collection, pk: Any) -> dict | None:
    """The state fields as stored now (to explain a lost condition), or ``None`` if gone."""
    return collection.find_one({"_id": pk}, _PROJECTION)
