"""The exceptions procstatus raises and the one a process raises to fail on purpose."""

from __future__ import annotations

import logging
from typing import Any


class ProcStatusError(Exception):
    """Base class of every error procstatus raises."""


class ProcessAlreadyRunning(ProcStatusError):
    """A process method was called while the document is PENDING, RUNNING or WAITING_FOR_RESULT.

    Nothing was written and no task was sent.
    """

    def __init__(
        self, proc: Any, process: str, status: str | None, current: str | None, waiting: int = 0
    ):
        self.proc = proc
        self.process = process
        self.status = status
        self.current_process = current
        self.waiting = waiting
        queued = f", with {waiting} queued call(s) waiting" if waiting else ""
        super().__init__(
            f"cannot start {type(proc).__name__}({proc.pk}).{process}(): process "
            f"{current!r} is {status}{queued}. Wait for it to end (block_until_complete()) "
            "or check process_running before calling."
        )


class CallQueueFull(ProcStatusError):
    """A non-blocking process was called while its document's queue of calls is full.

    Nothing was written and no task was sent.
    """


class ProcessFailure(ProcStatusError):
    """Raise inside a process to end it as FAILURE with exactly these error messages.

    ``log_level`` is the level at which the failure is logged (default ERROR); no
    traceback is logged, since the failure was chosen, not unexpected.
    """

    def __init__(self, *errors: str, log_level: int = logging.ERROR):
        if not errors:
            errors = ("process failed",)
        self.errors: list[str] = [str(e) for e in errors]
        self.log_level = log_level
        super().__init__("; ".join(self.errors))

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery may pickle exceptions between processes; keep messages and level intact.
        return (_rebuild_process_failure, (tuple(self.errors), self.log_level))


def _rebuild_process_failure(errors: tuple[str, ...], log_level: int) -> ProcessFailure:
    return ProcessFailure(*errors, log_level=log_level)


class NotInstalled(ProcStatusError):
    """A process method was called before ``procstatus.install(celery_app)``."""


class NotRunning(ProcStatusError):
    """A running-only operation (``set_process_step``, ``warning``) was used outside a process."""


class StatusFieldWrite(ProcStatusError):
    """``save()`` was asked to write a field that only the state machine writes."""
