"""The process status vocabulary: the six states, their groups, and which moves are legal.

This module is the single source of the words stored in ``process_status``. It imports
nothing from Celery or MongoDB, so the datafix and any reporting tool can use it alone.
"""

from __future__ import annotations

from enum import Enum


class ProcessStatus(str, Enum):
    """Where a :class:`procstatus.Proc` stands. Stored in MongoDB as the member's name."""

    READY = "READY"
    """Never run, or ready to run again."""
    PENDING = "PENDING"
    """Called; the task is queued and no worker has started it yet."""
    RUNNING = "RUNNING"
    """A worker is running the process method (or its ``join()``)."""
    WAITING_FOR_RESULT = "WAITING_FOR_RESULT"
    """The process returned and waits for child processes before its ``join()``."""
    SUCCESS = "SUCCESS"
    """The last process completed successfully."""
    FAILURE = "FAILURE"
    """The last process completed with a fatal failure; ``errors`` says why."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def processing(cls) -> frozenset[ProcessStatus]:
        """States in which a process is under way: a new call is refused."""
        return PROCESSING

    @classmethod
    def completed(cls) -> frozenset[ProcessStatus]:
        """States in which the last process has ended."""
        return COMPLETED

    @property
    def is_processing(self) -> bool:
        return self in PROCESSING

    @property
    def is_completed(self) -> bool:
        return self in COMPLETED


PROCESSING: frozenset[ProcessStatus] = frozenset(
    {ProcessStatus.PENDING, ProcessStatus.RUNNING, ProcessStatus.WAITING_FOR_RESULT}
)
COMPLETED: frozenset[ProcessStatus] = frozenset({ProcessStatus.SUCCESS, ProcessStatus.FAILURE})
PENDING_OR_RUNNING: frozenset[ProcessStatus] = frozenset(
    {ProcessStatus.PENDING, ProcessStatus.RUNNING}
)
"""A run that has a message and no end yet: before its claim, or under way."""
SCHEDULABLE: frozenset[ProcessStatus] = frozenset({ProcessStatus.READY}) | COMPLETED
"""States from which a process method may be called."""

_S = ProcessStatus

LEGAL_TRANSITIONS: dict[ProcessStatus, frozenset[ProcessStatus]] = {
    # schedule: a call. Every state also goes to READY by reset: the operator's override.
    _S.READY: frozenset({_S.PENDING}),
    _S.PENDING: frozenset(
        {
            _S.RUNNING,  # start: a worker claims the run
            _S.FAILURE,  # endings.end_run: cancel, never started, could not start or resend
            # unschedule: the publish failed and the state before the call is restored;
            # or reset --force.
            *SCHEDULABLE,
        }
    ),
    _S.RUNNING: frozenset(
        {
            _S.SUCCESS,  # complete
            _S.FAILURE,  # complete, or endings.end_run (lost worker, orphaned, cancel)
            # complete: the process waits for its children; abandon_join: a lost join
            # task's message comes back (acks_late), so the parent waits for it again.
            _S.WAITING_FOR_RESULT,
            # back_to_pending: a retry, sent again after a lost worker, or waiting for the
            # broker's redelivery (acks_late).
            _S.PENDING,
            _S.RUNNING,  # reclaim: a redelivered task takes over a run known to be lost
            _S.READY,  # reset --force
        }
    ),
    _S.WAITING_FOR_RESULT: frozenset(
        {
            _S.RUNNING,  # begin_join: exactly one join task wins
            _S.FAILURE,  # endings.end_run: cancel
            _S.READY,  # reset --force
        }
    ),
    # schedule: a new call after the last one ended; reset.
    _S.SUCCESS: frozenset({_S.PENDING, _S.READY}),
    _S.FAILURE: frozenset({_S.PENDING, _S.READY}),
}
"""Every move the state machine makes, and no other: each write in
:mod:`procstatus.transitions` declares its edges, and a test checks that the declared
edges are exactly these."""


def is_legal(current: ProcessStatus, new: ProcessStatus) -> bool:
    """Whether the state machine ever moves a document from ``current`` to ``new``."""
    return new in LEGAL_TRANSITIONS[current]


def values(states: frozenset[ProcessStatus] | set[ProcessStatus]) -> list[str]:
    """The stored strings of ``states``, sorted, ready for a ``$in`` query."""
    return sorted(s.value for s in states)
