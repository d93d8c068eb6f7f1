"""Small call helpers so the unit tests read as behaviour, not as argument plumbing."""

from __future__ import annotations

from procstatus import runner, transitions


def at(coll, pk):
    """The state machine's address of ``pk`` in ``coll``."""
    return transitions.target(coll, pk)


def worker(hostname):
    return transitions.WorkerRef(hostname=hostname)


def start(coll, pk, task_id, hostname):
    return transitions.start(at(coll, pk), task_id, worker(hostname))


def fail_unclaimed(coll, pk, task_id, error):
    process = (transitions.read_state(at(coll, pk)) or {}).get("current_process")
    return transitions.fail_run(at(coll, pk), task_id, process, error)


def begin_join(coll, pk, task_id=None, hostname=None):
    return transitions.begin_join(at(coll, pk), task_id, worker(hostname))


def claim(call, task_id, hostname):
    return runner.claim(call, task_id, worker(hostname))
