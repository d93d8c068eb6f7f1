"""The app of the dashboard tests' worker and of ``procstatus -A tests.support.dashboard_app
dashboard``: a Celery app that knows :mod:`tests.support.dashboard_models` only (not the
session's models), on the session's broker, database and queue names."""

from __future__ import annotations

import os

from celery import Celery

import procstatus

app = Celery(
    "procstatus_dashboard_tests",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_default_queue=os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-dashboard",
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
procstatus.install(
    app,
    mongodb_uri=os.environ.get("MONGODB_URI"),
    mongodb_db=os.environ.get("PROCSTATUS_TEST_DB", "procstatus_tests"),
    heartbeat_interval=float(os.environ.get("PROCSTATUS_TEST_HEARTBEAT", "1")),
)

import tests.support.dashboard_models  # noqa: E402,F401  (the worker must know the classes)

__all__ = ["app"]
