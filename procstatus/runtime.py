"""What :func:`procstatus.install` gave this process, in one object.

``install()`` builds a :class:`Runtime` — the Celery tasks that carry procstatus's
messages and the settings the library reads at run time — and makes it
:data:`current`. Every module reads it from here; nothing else keeps a copy, so a test
or a second ``install()`` changes one object, and code running before ``install()``
sees the defaults (and :class:`~procstatus.errors.NotInstalled` where it needs Celery).

No Celery import: the tasks are held as opaque objects, so the modules that read the
settings stay Celery-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mongoengine import DEFAULT_CONNECTION_NAME
from pymongo.write_concern import WriteConcern

from procstatus.errors import NotInstalled

if TYPE_CHECKING:
    from celery import Celery, Task

DEFAULT_HEARTBEAT_INTERVAL = 10.0
"""Seconds between two heartbeats of a worker."""
DEFAULT_PROGRESS_INTERVAL = 0.5
"""The fewest seconds between two ``set_progress()`` writes of one run."""
DEFAULT_MAX_WORKER_LOSSES = 3
"""How many times one run may lose its worker and still be tried again."""
DEFAULT_WRITE_CONCERN_TIMEOUT_MS = 10_000
"""How long a status write waits for a majority of a replica set before it is reported as
applied but unconfirmed (a ``WriteConcernError``, which procstatus reads as applied)."""


def majority() -> WriteConcern:
    """procstatus's default write concern: acknowledged by a majority of the replica set,
    so that no acknowledged status is rolled back at a failover."""
    return WriteConcern(w="majority", wtimeout=DEFAULT_WRITE_CONCERN_TIMEOUT_MS)


@dataclass
class Runtime:
    """The tasks and settings of this process; see :func:`procstatus.install`."""

    run_task: Task | None = None
    """``procstatus.run``: the generic task that carries every process call."""
    join_task: Task | None = None
    """``procstatus.join``: a parent's join."""
    alias: str = DEFAULT_CONNECTION_NAME
    """The mongoengine connection whose database holds ``procstatus_workers``."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_threshold: float = 3 * DEFAULT_HEARTBEAT_INTERVAL
    """A worker silent for longer than this is suspected, then gone."""
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    max_worker_losses: int = DEFAULT_MAX_WORKER_LOSSES
    """The cap on lost workers per run, where ``@process(max_worker_losses=...)`` sets none."""
    write_concern: WriteConcern = field(default_factory=majority)
    """The write concern of every procstatus write, whatever the connection's URI says."""

    def run(self, needed_for: str) -> Task:
        """The run task; :class:`NotInstalled`, naming ``needed_for``, before ``install()``."""
        return _installed(self.run_task, needed_for)

    def join(self, needed_for: str) -> Task:
        """The join task; :class:`NotInstalled`, naming ``needed_for``, before ``install()``."""
        return _installed(self.join_task, needed_for)

    def app(self, needed_for: str) -> Celery:
        """The Celery app ``install()`` was given."""
        app: Any = self.run(needed_for).app
        return app


def _installed(task: Task | None, needed_for: str) -> Task:
    if task is None:
        raise NotInstalled(
            f"{needed_for} needs a Celery app: call procstatus.install(celery_app) at "
            "import time of your Celery app module"
        )
    return task


current = Runtime()
"""This process's runtime; :func:`procstatus.install` replaces it."""
