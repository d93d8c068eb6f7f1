"""Calls into procstatus.transitions whose signatures are being reworked (worker liveness).

The committed API takes a hostname in ``start`` and has ``fail_unclaimed`` and
``begin_join(collection, pk)``; the liveness work in progress passes a ``WorkerRef``,
renames ``fail_unclaimed`` to ``fail_run`` and gives ``begin_join`` the joining task.
These helpers keep the unit tests about behaviour, valid for both.
"""

from __future__ import annotations

import inspect

from procstatus import transitions


def worker(hostname):
    ref = getattr(transitions, "WorkerRef", None)
    return ref(hostname=hostname) if ref is not None else hostname


def start(coll, pk, task_id, hostname):
    return transitions.start(coll, pk, task_id, worker(hostname))


def fail_unclaimed(coll, pk, task_id, error):
    function = getattr(transitions, "fail_unclaimed", None) or transitions.fail_run
    return function(coll, pk, task_id, error)


def begin_join(coll, pk, task_id=None, hostname=None):
    if len(inspect.signature(transitions.begin_join).parameters) > 2:
        return transitions.begin_join(coll, pk, task_id, worker(hostname))
    return transitions.begin_join(coll, pk)


def claim(call, task_id, hostname):
    from procstatus import runner

    parameters = list(inspect.signature(runner.claim).parameters)
    if len(parameters) >= 3 and parameters[2] == "hostname":
        return runner.claim(call, task_id, hostname)
    return runner.claim(call, task_id, worker(hostname))
