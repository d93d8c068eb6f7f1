"""A misconfigured app, as README once advised: mongoengine connected only in worker_process_init.

Its worker's main process has no MongoDB connection, so it could write no heartbeat;
procstatus stops such a worker at start-up with an error that says how to fix it.
"""

from __future__ import annotations

import os

import mongoengine
from celery import Celery, signals

import procstatus

app = Celery("procstatus_process_init", broker=os.environ.get("CELERY_BROKER_URL"))
app.conf.update(task_default_queue=os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests"))
procstatus.install(app, heartbeat_interval=1.0)


@signals.worker_process_init.connect(weak=False)
def connect_in_the_pool_only(**_: object) -> None:
    mongoengine.connect(db=os.environ["PROCSTATUS_TEST_DB"], host=os.environ["MONGODB_URI"])


import tests.support.models  # noqa: E402,F401
