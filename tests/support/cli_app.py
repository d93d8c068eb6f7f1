"""The app of the CLI tests' workers and of ``procstatus -A tests.support.cli_app``:
the tests' app (``tests.support.worker_app``) plus :class:`tests.support.cli_models.CliJob`."""

from __future__ import annotations

import tests.support.cli_models  # noqa: F401  (the worker must know CliJob)
from tests.support.worker_app import app

__all__ = ["app"]
