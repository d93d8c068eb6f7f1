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

from procstatus.transitions.addressing import (
    Target,
    read_state,
    target,
)
from procstatus.transitions.fields import (
    EDGES_BY_WRITE,
    MAX_LIST_ENTRIES,
    STATE_FIELDS,
    WorkerLoss,
    WorkerRef,
    performs,
)
from procstatus.transitions.joins import (
    abandon_join,
    begin_join,
)
from procstatus.transitions.queue import (
    enqueue_call,
    schedule_next,
)
from procstatus.transitions.runs import (
    back_to_pending,
    complete,
    fail_run,
    reclaim,
    reset,
    schedule,
    start,
    unschedule,
)
from procstatus.transitions.steps import (
    add_warnings,
    set_progress,
    set_step,
)

__all__ = [
    "EDGES_BY_WRITE",
    "MAX_LIST_ENTRIES",
    "STATE_FIELDS",
    "Target",
    "WorkerLoss",
    "WorkerRef",
    "abandon_join",
    "add_warnings",
    "back_to_pending",
    "begin_join",
    "complete",
    "enqueue_call",
    "fail_run",
    "performs",
    "read_state",
    "reclaim",
    "reset",
    "schedule",
    "schedule_next",
    "set_progress",
    "set_step",
    "start",
    "target",
    "unschedule",
]
