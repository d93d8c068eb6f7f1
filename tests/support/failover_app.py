"""The Celery app of the failover tests' workers: the test app, plus the failover models on
a replica set, with an ``appName`` that names the pool processes alone.

``celery -A tests.support.failover_app worker`` runs :mod:`tests.support.worker_app`
(``MONGODB_URI`` is then the replica set too, and its ``appName`` names the worker's main
process: heartbeats) and connects the alias ``failover`` from
``PROCSTATUS_TEST_FAILOVER_URI`` in the main process and from
``PROCSTATUS_TEST_FAILOVER_POOL_URI`` in each pool process, after fork. A fail point
aimed at the pool's ``appName`` therefore meets the runs' own writes (claim, step,
progress, warning, end, join) and never a heartbeat. Every fault a pool process meets is
recorded (:class:`tests.support.failpoints.FaultRecorder`).
"""

from __future__ import annotations

import os

import mongoengine
from celery import signals
from pymongo.uri_parser import parse_uri

from devtools import services
from tests.support import failover_models
from tests.support.failpoints import FaultRecorder
from tests.support.worker_app import app


def connect_failover_alias(uri: str) -> None:
    app_name = parse_uri(uri)["options"].get("appname", "")
    mongoengine.disconnect(failover_models.ALIAS)
    mongoengine.connect(
        db=os.environ["PROCSTATUS_TEST_DB"], host=uri, alias=failover_models.ALIAS,
        connect=False, event_listeners=[FaultRecorder(app_name, services.gate_redis_url())],
    )


connect_failover_alias(os.environ["PROCSTATUS_TEST_FAILOVER_URI"])


@signals.worker_process_init.connect(weak=False)
def connect_pool_process(**_: object) -> None:
    connect_failover_alias(os.environ["PROCSTATUS_TEST_FAILOVER_POOL_URI"])


__all__ = ["app"]
