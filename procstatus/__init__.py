"""procstatus: one persistent, queryable process status for mongoengine documents.

Subclass :class:`Proc`, decorate methods with :func:`process`, call
:func:`install` on your Celery app, and every document says where its process stands.

Names load on first use, so ``procstatus.status`` (what the datafix needs) imports
neither Celery nor the rest of the library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procstatus.dispatch import process
    from procstatus.document import ProcQuerySet
    from procstatus.errors import (
        CallQueueFull,
        NotInstalled,
        NotRunning,
        ProcessAlreadyRunning,
        ProcessFailure,
        ProcStatusError,
        StatusFieldWrite,
    )
    from procstatus.hooks import install
    from procstatus.proc import Proc
    from procstatus.status import ProcessStatus
    from procstatus.sweeper import SweepReport, sweep

_WHERE = {
    "CallQueueFull": "procstatus.errors",
    "NotInstalled": "procstatus.errors",
    "NotRunning": "procstatus.errors",
    "Proc": "procstatus.proc",
    "ProcQuerySet": "procstatus.document",
    "ProcStatusError": "procstatus.errors",
    "ProcessAlreadyRunning": "procstatus.errors",
    "ProcessFailure": "procstatus.errors",
    "ProcessStatus": "procstatus.status",
    "StatusFieldWrite": "procstatus.errors",
    "SweepReport": "procstatus.sweeper",
    "install": "procstatus.hooks",
    "process": "procstatus.dispatch",
    "sweep": "procstatus.sweeper",
}

__all__ = [
    "CallQueueFull",
    "NotInstalled",
    "NotRunning",
    "Proc",
    "ProcQuerySet",
    "ProcStatusError",
    "ProcessAlreadyRunning",
    "ProcessFailure",
    "ProcessStatus",
    "StatusFieldWrite",
    "SweepReport",
    "install",
    "process",
    "sweep",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'procstatus' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
