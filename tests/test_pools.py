"""Joins on a worker whose runs share one process: ``celery worker -P threads`` and ``-P gevent``.

Under these pools several runs execute in the same OS process at once. A join must still
judge only its own ``join()``: a parent whose ``join()`` returns WAITING_FOR_RESULT
without starting a child ends FAILURE with :data:`procstatus.join.NOTHING_TO_WAIT_FOR`,
whatever other runs of the same process publish meanwhile; and a parent that does start
children is joined exactly once per wait.

The overlap is made, not hoped for (see :mod:`tests.support.pool_models`): parent A's
first ``join()`` records that it began and then blocks until one of the spawners B, run
by the same worker process, has published a child; only then does it return
WAITING_FOR_RESULT. The test starts the spawners only once A's ``join()`` has begun.
Every step is a condition in MongoDB; nothing waits on a sleep.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import services
from devtools.services import wait_for
from procstatus import ProcessStatus
from procstatus.join import NOTHING_TO_WAIT_FOR
from tests.support.pool_models import POOL_CLASSES, began_key, count, joins_key, waits_key

pytestmark = pytest.mark.integration

SPAWNERS = 3
PER_ROUND = 3
ROUNDS = 3
ENDED = (ProcessStatus.SUCCESS, ProcessStatus.FAILURE)


def fresh(doc):  # type: ignore[no-untyped-def]
    return type(doc).objects.get(pk=doc.pk)


def with_pool(argv: list[str], pool: str) -> list[str]:
    """``start_worker``'s argv with ``--pool POOL`` in place of its ``--pool prefork``.

    Replaced, not appended: click would take the last ``--pool``, but Celery's gevent
    monkey-patching (``maybe_patch_concurrency``) reads the first, and a gevent pool that
    is not patched blocks in the worker's event loop and never runs a task.
    """
    at = argv.index("--pool") + 1
    return [*argv[:at], pool, *argv[at + 1:]]


@pytest.fixture
def pool_worker(worker_env: dict, service_log_dir: Path) -> Iterator:
    """Starts ``celery worker -P POOL -c 4`` on one queue; killed after the test."""
    started: list[services.Service] = []

    def start(pool: str, queue: str, concurrency: int = 4) -> services.Service:
        service = services.start_worker(
            "tests.support.pools_app",
            service_log_dir,
            hostname=f"pool-{pool}-{uuid.uuid4().hex[:6]}@%h",
            env={**worker_env, "PROCSTATUS_TEST_COMMAND_LOG": ""},
            concurrency=concurrency,
            queues=queue,
            wrap=lambda argv: with_pool(argv, pool),
        )
        started.append(service)
        return service

    yield start
    for service in started:
        service.kill_group()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_a_join_that_waits_for_nothing_fails_while_other_runs_of_its_process_spawn_children(
    pool: str, pool_worker, celery_app_under_test  # type: ignore[no-untyped-def]
) -> None:
    queue, Waiter, Spawner, Child = POOL_CLASSES[pool]
    service = pool_worker(pool, queue)
    banner = {"threads": "(thread)", "gevent": "(gevent)"}[pool]
    assert f"concurrency: 4 {banner}" in service.log_text()

    waiter = Waiter.create()
    waiter.wait()  # no child: its join is sent at once
    wait_for(lambda: count(began_key(waiter.pk)) == 1, timeout=30,
             what=f"A's join() to begin on the -P {pool} worker")

    spawners = [Spawner.create(per_round=PER_ROUND, rounds=ROUNDS) for _ in range(SPAWNERS)]
    for spawner in spawners:
        spawner.spawn()
    spawner_ids = [s.pk for s in spawners]

    def settled() -> bool:
        docs = [fresh(waiter), *(fresh(s) for s in spawners)]
        return (
            all(d.process_status in ENDED for d in docs)
            and Child.objects(parent_id__in=spawner_ids).processing().count() == 0
        )

    try:
        wait_for(settled, timeout=150, what="A, every B and every child to end")
    except TimeoutError:
        pass  # the comparison below says what did not end

    a = fresh(waiter)
    bs = [fresh(s) for s in spawners]
    children = list(Child.objects(parent_id__in=spawner_ids))

    # The scenario is the one meant: one worker process ran A, every B and every child.
    pids = {d.worker_pid for d in [a, *bs, *children]}
    assert len(pids) == 1, f"runs were spread over processes {pids}"

    observed = {
        "A": {
            "status": a.process_status.value,
            "errors": a.errors,
            "WAITING_FOR_RESULT written": count(waits_key(a.pk)),
            "join() runs": count(joins_key(a.pk, 0)),
        },
        **{
            f"B{i}": {
                "status": b.process_status.value,
                "errors": b.errors,
                "join() runs per wait": [count(joins_key(b.pk, w)) for w in range(ROUNDS + 1)],
                "children": sorted(
                    c.process_status.value for c in children if c.parent_id == b.pk
                ),
            }
            for i, b in enumerate(bs)
        },
        "still processing": sorted(
            f"{type(d).__name__}:{d.process_status.value}"
            for d in [a, *bs, *children]
            if d.process_status not in ENDED
        ),
    }
    expected = {
        "A": {
            "status": "FAILURE",
            "errors": [NOTHING_TO_WAIT_FOR],
            "WAITING_FOR_RESULT written": 1,  # by wait() only, never after its join()
            "join() runs": 1,
        },
        **{
            f"B{i}": {
                "status": "SUCCESS",
                "errors": [],
                "join() runs per wait": [1] * ROUNDS + [0],
                "children": ["SUCCESS"] * (PER_ROUND * ROUNDS),
            }
            for i in range(SPAWNERS)
        },
        "still processing": [],
    }
    assert observed == expected
