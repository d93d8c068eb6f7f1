"""How a failure is told: the error messages recorded for an exception.

The recorded text keeps the true exception type (``KeyError: 'path'``), names Celery's
time limits with their seconds, and says when a pool process was lost. A
:class:`~procstatus.errors.ProcessFailure` records exactly the messages it was raised
with. No Celery here: the limit and lost-worker exceptions are billiard's, Celery's pool.
"""

from __future__ import annotations

from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from procstatus.errors import ProcessFailure
from procstatus.spec import ProcessSpec


def failure_messages(exc: BaseException) -> list[str]:
    """The messages recorded for ``exc``: its own for a ``ProcessFailure``, else
    ``Type: text``."""
    if isinstance(exc, ProcessFailure):
        return list(exc.errors)
    text = str(exc)
    return [f"{type(exc).__name__}: {text}" if text else type(exc).__name__]


def describe(exc: BaseException) -> str:
    """``exc`` in one message (the last of :func:`failure_messages`)."""
    return failure_messages(exc)[-1]


def describe_failure(exc: BaseException, spec: ProcessSpec | None) -> list[str]:
    """The error messages recorded for ``exc``, naming limits and lost workers."""
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = _seconds(spec.soft_time_limit if spec else None)
        return [f"SoftTimeLimitExceeded: soft time limit{limit} exceeded"]
    if isinstance(exc, TimeLimitExceeded):
        limit = _seconds(exc.args[0] if exc.args else (spec.time_limit if spec else None))
        return [f"TimeLimitExceeded: hard time limit{limit} exceeded; the process was killed"]
    if isinstance(exc, WorkerLostError):
        return [f"WorkerLostError: worker lost: {exc}"]
    return failure_messages(exc)


def _seconds(limit: Any) -> str:
    # The limit may come from the app's settings rather than @process: then it is unknown.
    return f" ({limit:g}s)" if isinstance(limit, (int, float)) else ""
