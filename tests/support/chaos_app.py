"""The Celery app of the chaos soak's workers: the test app, plus a fast Redis redelivery sweep.

``celery -A tests.support.chaos_app worker`` runs exactly :mod:`tests.support.worker_app`
(its environment knobs: queue, database, heartbeat, visibility timeout, acks_late) with
the soak's models imported, and one change to the Redis transport: kombu looks for
messages taken but never acknowledged (a killed worker's prefetched tasks, a late ack
lost to a broker restart) only every ``unacked_restore_interval *
unacked_restore_throttle`` seconds — 100 s by default — however short the visibility
timeout, and only under a Redis lock that a consumer SIGKILLed while holding it leaves
locked for ``unacked_mutex_expire`` seconds (300 by default). The soak sets the first two
to 1 and the lock's expiry to 5 s, so such messages come back within seconds of their
visibility timeout, as a deployment tuned for a short visibility timeout would.

Every MongoDB client of the process records the faults it meets (fail points, a
step-down's refusals, dropped connections) in Redis under the ``appName`` its
``MONGODB_URI`` names (:class:`tests.support.failpoints.FaultRecorder`), for the soak's
table of fail points.
"""

from __future__ import annotations

import os

from pymongo import monitoring
from pymongo.uri_parser import parse_uri

from devtools import services
from tests.support import chaos_models  # noqa: F401  (the workers must know the Proc classes)
from tests.support.failpoints import FaultRecorder
from tests.support.worker_app import app

_app_name = parse_uri(os.environ.get("MONGODB_URI") or "mongodb://127.0.0.1")["options"].get(
    "appname"
)
if _app_name:  # before any client exists: the listener applies to every client made later
    monitoring.register(FaultRecorder(_app_name, services.gate_redis_url()))

app.conf.broker_transport_options = {
    **(app.conf.broker_transport_options or {}),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
    "unacked_mutex_expire": 5,
}

__all__ = ["app"]
