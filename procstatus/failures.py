"""How a failure is told: the error messages recorded for an exception.

The recorded text keeps the true exception type (``KeyError: 'path'``), names Celery's
time limits with their seconds, and says when a pool process was lost. A
:class:`~procstatus.errors.ProcessFailure` records exactly the messages it was raised
with. No Celery here: the limit and lost-worker exceptions are billiard's, Celery's pool.

An exception's text is cut to :data:`procstatus.text.MAX_TEXT_BYTES` here, type first, so
the type and the beginning of the message's first line are always what is recorded,
however long the message (a 17 MB one would not fit in a MongoDB document); an exception
whose ``str()`` itself raises is recorded by its type. Every text is cut again where it is
written (:mod:`procstatus.transitions`), whatever its source.
"""

from __future__ import annotations

from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from procstatus.errors import ProcessFailure
from procstatus.spec import ProcessSpec
from procstatus.text import cut


def failure_messages(exc: BaseException) -> list[str]:
    """The messages recorded for ``exc``: its own for a ``ProcessFailure``, else
    ``Type: text``."""
    if isinstance(exc, ProcessFailure):
        return list(exc.errors)
    return [exception_text(exc)]


def exception_text(exc: BaseException) -> str:
    """``Type: message``, cut to :data:`~procstatus.text.MAX_TEXT_BYTES` after the type."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception as str_exc:  # a broken __str__ must not hide what was raised
        text = f"<str() failed: {type(str_exc).__name__}>"
    return cut(f"{name}: {text}") if text else name


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
