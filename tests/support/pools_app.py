"""The Celery app of the pool tests' workers (``-P threads``, ``-P gevent``).

``celery -A tests.support.pools_app worker`` runs exactly :mod:`tests.support.worker_app`
(its environment knobs: database, heartbeat, ...) with the classes of
:mod:`tests.support.pool_models` imported, so the worker knows them.
"""

from __future__ import annotations

from tests.support import pool_models  # noqa: F401  (the workers must know the Proc classes)
from tests.support.worker_app import app

__all__ = ["app"]
