"""The Celery app the test workers run (``celery -A tests.support.worker_app worker``).

Environment knobs let one module serve every worker the tests start: the queue, the
heartbeat timing, acks_late + reject_on_worker_lost, and a second MongoDB server for
the outage test (mongoengine alias ``outage``).
"""

from __future__ import annotations

import os

import mongoengine
from celery import Celery, signals

import procstatus
from tests.support import command_log

command_log.install_from_environment()

app = Celery("procstatus_tests", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests"),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    # How long billiard waits for a lost pool process's result before WorkerLostError.
    worker_lost_wait=float(os.environ.get("PROCSTATUS_TEST_LOST_WAIT", "1")),
)
if os.environ.get("PROCSTATUS_TEST_VISIBILITY_TIMEOUT"):
    # Redis redelivers a message taken but never acknowledged (a killed worker's
    # prefetched tasks) after this many seconds; Celery's default is an hour.
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["PROCSTATUS_TEST_VISIBILITY_TIMEOUT"]),
        # kombu looks for such messages every interval × throttle s (10 × 10 by default).
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
if os.environ.get("PROCSTATUS_TEST_ACKS_LATE"):
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)

procstatus.install(
    app,
    mongodb_uri=os.environ.get("MONGODB_URI"),
    mongodb_db=os.environ.get("PROCSTATUS_TEST_DB", "procstatus_tests"),
    heartbeat_interval=float(os.environ.get("PROCSTATUS_TEST_HEARTBEAT", "1")),
)


@signals.worker_process_init.connect(weak=False)
def connect_outage_alias(**_: object) -> None:
    uri = os.environ.get("PROCSTATUS_TEST_OUTAGE_URI")
    if uri:
        mongoengine.disconnect("outage")
        mongoengine.connect(
            db="outage", host=uri, alias="outage", connect=False, serverSelectionTimeoutMS=1500
        )


import tests.support.bounds_models  # noqa: E402,F401
import tests.support.models  # noqa: E402,F401  (the worker must know the Proc classes)

# --- injected faults (only in workers started with these knobs) -----------------------


def _break_writes(spec: str) -> None:
    """``write:collection:kind[:times]``, comma-separated: make a state-machine write fail.

    ``kind`` is ``permanent`` (OperationFailure) or ``transient`` (AutoReconnect);
    ``times`` limits the fault to the first N calls per document (counted in Redis).
    """
    from pymongo.errors import AutoReconnect, OperationFailure

    from procstatus import transitions
    from tests.support.models import redis_client

    for item in filter(None, spec.split(",")):
        write, collection, kind, *times = item.split(":")
        original = getattr(transitions, write)
        error = AutoReconnect if kind == "transient" else OperationFailure
        limit = int(times[0]) if times else None

        def broken(target, *args, _original=original, _write=write, _collection=collection,
                   _error=error, _limit=limit, **kwargs):  # type: ignore[no-untyped-def]
            if target.collection.name == _collection:
                count = redis_client().incr(f"procstatus-test:fault:{_write}:{target.pk}")
                if _limit is None or count <= _limit:
                    raise _error(f"injected fault: {_write}")
            return _original(target, *args, **kwargs)

        setattr(transitions, write, broken)


def _break_retry_publish() -> None:
    """Celery's retry publishes a new message; make that publish fail as a lost broker would."""
    from celery.canvas import Signature
    from kombu.exceptions import OperationalError

    original = Signature.apply_async

    def apply_async(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.options.get("retries") or kwargs.get("retries"):
            raise OperationalError("injected fault: broker refused the retry")
        return original(self, *args, **kwargs)

    Signature.apply_async = apply_async  # type: ignore[method-assign]


if os.environ.get("PROCSTATUS_TEST_BREAK"):
    _break_writes(os.environ["PROCSTATUS_TEST_BREAK"])
if os.environ.get("PROCSTATUS_TEST_BREAK_RETRY_PUBLISH"):
    _break_retry_publish()
if os.environ.get("PROCSTATUS_TEST_START_RETRY_LIMIT"):
    import procstatus.hooks

    procstatus.runner.START_RETRY_LIMIT = int(os.environ["PROCSTATUS_TEST_START_RETRY_LIMIT"])
