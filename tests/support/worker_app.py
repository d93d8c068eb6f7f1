"""The Celery app the test workers run (``celery -A tests.support.worker_app worker``)."""

from __future__ import annotations

import os

from celery import Celery

import procstatus
from tests.support import command_log

command_log.install_from_environment()

app = Celery("procstatus_tests", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests"),
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
)
procstatus.install(
    app,
    mongodb_uri=os.environ.get("MONGODB_URI"),
    mongodb_db=os.environ.get("PROCSTATUS_TEST_DB", "procstatus_tests"),
)

import tests.support.models  # noqa: E402,F401  (the worker must know the Proc classes)
