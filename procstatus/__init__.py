"""procstatus: one persistent, queryable process status for mongoengine documents.

Subclass :class:`Proc`, decorate methods with :func:`process`, call
:func:`install` on your Celery app, and every document says where its process stands.
"""

from procstatus.dispatch import process
from procstatus.document import Proc, ProcQuerySet
from procstatus.errors import (
    NotInstalled,
    NotRunning,
    ProcessAlreadyRunning,
    ProcessFailure,
    ProcStatusError,
    StatusFieldWrite,
)
from procstatus.hooks import install
from procstatus.status import ProcessStatus
from procstatus.sweeper import SweepReport, sweep

__all__ = [
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
