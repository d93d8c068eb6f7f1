"""The state machine's writes: every change of a status field, each one conditional and atomic.

Each function here is one MongoDB command. Its filter names the status it expects (and,
once a task exists, that task's id), so a stale, duplicated or late event matches nothing
and changes nothing; the return value says whether the write won. Nothing here upserts:
a document deleted meanwhile stays deleted.

Each write declares the edges of :data:`procstatus.status.LEGAL_TRANSITIONS` it performs
(:func:`performs`); its filter accepts only those edges' source states, so the table is
enforced by the writes themselves and a test checks that both say the same.

Every function addresses its document through a :class:`Target`: the collection with
procstatus's write concern and primary reads (:func:`procstatus.connection.durable`), and
the document's key — its ``_id``, plus its shard key's values when its class declares one,
so that each filter goes to one shard, as mongoengine's own ``save()`` does.

An ambiguous write is settled, not guessed: a ``WriteConcernError`` (the write ran, its
replication is unconfirmed) or a connection error (it may or may not have run) makes the
write re-read the document from the primary and go on from what is there — won if the
document shows this very write, lost if a ``WriteConcernError`` says it ran and matched
nothing, and the error raised again otherwise (nothing is known to have been written).
What "shows this very write" means is each write's own ``landed`` test. One error is not
ambiguous: a server's refusal, ``NotPrimaryError`` ("not writable primary", "node is
recovering", interrupted by a state change), says the write was not applied, so it is
sent once more — the driver first waits for a primary, up to ``serverSelectionTimeoutMS``
— and what that second attempt meets is settled as above. That is what a retryable
write does at a failover, for a connection with ``retryWrites=false`` or a refusal the
server did not label retryable. A write cut by a dropped connection is not sent again:
it may still land after the re-read, and only the server's retryable writes can tell.

Every moment written here (``start_time``, ``status_changed_at``, ``complete_time``) is
the server's time of the write, ``$currentDate`` in the same command
(:func:`procstatus.clock.server_time`): the liveness checks compare these with heartbeats
written by other hosts, whose clocks may disagree with this one's.

Every text a write stores — a step, a status message, an error, a warning — is cut to
:data:`procstatus.text.MAX_TEXT_BYTES`, and ``errors`` and ``warnings`` keep their last
:data:`MAX_LIST_ENTRIES` entries (``$push`` with ``$each`` and ``$slice``, in the same
command), so nothing a process writes can push its document past MongoDB's 16 MB limit.
A ``landed`` test compares what was stored: the texts as cut.

This module knows collections and keys, not Documents, and imports no Celery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, NotPrimaryError, PyMongoError, WriteConcernError

from procstatus import connection
from procstatus.clock import server_time
from procstatus.status import (
    COMPLETED,
    LEGAL_TRANSITIONS,
    PROCESSING,
    SCHEDULABLE,
    ProcessStatus,
    values,
)
from procstatus.text import cut

MAX_LIST_ENTRIES = 100
"""The most entries ``errors`` and ``warnings`` keep: the last ones pushed."""

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


def _bounded(entries: Sequence[str]) -> list[str]:
    """``entries`` as a capped push stores them: the last :data:`MAX_LIST_ENTRIES`, each cut."""
    # Only the entries that can survive the $slice are sent, so the command stays small too.
    return [cut(entry) for entry in list(entries)[-MAX_LIST_ENTRIES:]]


def _capped_push(field: str, entries: Sequence[str]) -> dict[str, Any]:
    """The ``$push`` of ``entries`` to ``field`` (``errors``/``warnings``), each cut, the
    list keeping its last :data:`MAX_LIST_ENTRIES` entries."""
    return {field: {"$each": _bounded(entries), "$slice": -MAX_LIST_ENTRIES}}


_S = ProcessStatus
logger = logging.getLogger("procstatus")

R = TypeVar("R")

_AMBIGUOUS = (WriteConcernError, ConnectionFailure)
"""Errors after which a write may have been applied (see the module docstring)."""


@dataclass(frozen=True)
class Target:
    """One document as the state machine addresses it: ``collection`` (durable, see
    :func:`target`) and ``key``, ``{"_id": pk}`` plus any shard-key values."""

    collection: Collection
    key: Mapping[str, Any]

    @property
    def pk(self) -> Any:
        return self.key["_id"]

    def where(self, conditions: Mapping[str, Any]) -> dict[str, Any]:
        """The filter of a write: this document, and ``conditions``."""
        return {**self.key, **conditions}


def target(
    collection: Collection,
    pk: Any,
    shard_fields: Sequence[str] = (),
    known: Mapping[str, Any] | None = None,
) -> Target:
    """The :class:`Target` of document ``pk`` in ``collection``.

    ``shard_fields`` are the collection's shard-key fields (dotted database names). Their
    values come from ``known`` (the raw document, or part of it) when it has them all,
    else from one read by ``_id`` — which a sharded cluster sends to every shard, once,
    so that the writes after it go to one. A document that is gone gets ``_id`` alone:
    every write then matches nothing.
    """
    chosen = connection.durable(collection)
    if not shard_fields:
        return Target(chosen, {"_id": pk})
    values = _shard_values(known or {}, shard_fields)
    if values is None:
        stored = chosen.find_one({"_id": pk}, {name: 1 for name in shard_fields})
        values = _shard_values(stored or {}, shard_fields, missing_is_null=stored is not None)
    return Target(chosen, {"_id": pk, **(values or {})})


def _shard_values(
    document: Mapping[str, Any], fields: Sequence[str], *, missing_is_null: bool = False
) -> dict[str, Any] | None:
    """``fields``' values in ``document`` (dotted paths); ``None`` if one is not there."""
    values: dict[str, Any] = {}
    for name in fields:
        value: Any = document
        for part in name.split("."):
            if not isinstance(value, Mapping) or part not in value:
                if not missing_is_null:
                    return None
                value = None  # a missing shard-key field is stored as null
                break
            value = value[part]
        values[name] = value
    return values


def read_state(target: Target) -> dict | None:
    """The state fields as stored now (to explain a lost condition), or ``None`` if gone."""
    return target.collection.find_one(target.key, _PROJECTION)


def _update(
    target: Target,
    conditions: Mapping[str, Any],
    update: Mapping[str, Any],
    landed: Callable[[Mapping[str, Any]], bool],
    *,
    matched: bool = False,
) -> bool:
    """One conditional ``update_one``; whether it won (modified, or with ``matched``
    matched: an in-run write of a value already there still counts)."""

    def send() -> bool:
        result = target.collection.update_one(target.where(conditions), update)
        return (result.matched_count if matched else result.modified_count) == 1

    return _settled(target, send, landed, lambda state: state is not None)


def _find_and_update(
    target: Target,
    conditions: Mapping[str, Any],
    update: Mapping[str, Any],
    landed: Callable[[Mapping[str, Any]], bool],
    *,
    before: bool,
    projection: Mapping[str, Any] | None = None,
) -> dict | None:
    """One conditional ``find_one_and_update``, returning the document before or after.

    Settled after an ambiguous error, it returns the document as re-read: after the write,
    even where ``before`` was asked (the state before is then unknown; callers say what
    they do with that).
    """

    def send() -> dict | None:
        return target.collection.find_one_and_update(
            target.where(conditions), update, projection=projection,
            return_document=ReturnDocument.BEFORE if before else ReturnDocument.AFTER,
        )

    return _settled(target, send, landed, lambda state: state)


def _settled(
    target: Target,
    send: Callable[[], R],
    landed: Callable[[Mapping[str, Any]], bool],
    outcome: Callable[[dict | None], R],
) -> R:
    """``send()`` (one write command); after an ambiguous error, ``outcome`` of the state
    :func:`_settle` finds. A refusal (``NotPrimaryError``) wrote nothing: ``send()`` once more."""
    try:
        return send()
    except NotPrimaryError as exc:
        logger.warning("procstatus write to %s %r refused (%s); sending it again",
                       target.collection.name, target.pk, exc)
    except _AMBIGUOUS as exc:
        return outcome(_settle(target, exc, landed))
    try:
        return send()
    except _AMBIGUOUS as exc:
        return outcome(_settle(target, exc, landed))


def _settle(
    target: Target, error: PyMongoError, landed: Callable[[Mapping[str, Any]], bool]
) -> dict | None:
    """After an ambiguous ``error``: the document if it shows the write, ``None`` if the
    write is known to have matched nothing; else ``error`` again."""
    try:
        state = target.collection.find_one(target.key)
    except PyMongoError:
        raise error from None
    if state is not None and landed(state):
        logger.warning("procstatus write to %s %r applied despite %s: %s",
                       target.collection.name, target.pk, type(error).__name__, error)
        return state
    if isinstance(error, WriteConcernError):
        return None  # it ran and matched nothing: the condition was lost
    raise error


def _is(state: Mapping[str, Any], **fields: Any) -> bool:
    """Whether ``state`` has every one of ``fields``' values."""
    return all(state.get(name) == value for name, value in fields.items())
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

    def claimed(self, state: Mapping[str, Any], task_id: str | None) -> bool:
        """Whether ``state`` is RUNNING under ``task_id`` in this very worker process."""
        return self.instance is not None and _is(
            state, process_status=_S.RUNNING.value, celery_task_id=task_id,
            worker_instance=self.instance, worker_pid=self.pid,
        )


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


_ANY = (_S.READY, _S.PENDING, _S.RUNNING, _S.WAITING_FOR_RESULT, _S.SUCCESS, _S.FAILURE)


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
