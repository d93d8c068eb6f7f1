"""One clock, the server's: workers and a sweeper whose clocks disagree still judge runs right.

Real prefork ``celery worker`` processes run under libfaketime (``tests/support/skew.py``):
one with its wall clock 120 s behind, one 120 s ahead, and the sweeper loops in a process
of its own whose clock is 60 s ahead (``tests/support/clock_sweeper.py``). MongoDB, Redis
and this test keep the true time. Heartbeats every 1 s, threshold 3 s, as in
``tests/test_reliability.py``; every skew is far past the threshold.

Expected, because every time that liveness compares is written and read on the server's
clock (``procstatus.clock``):

- runs held on both workers for four thresholds are never judged lost, and a duplicate
  delivery of each (what a redelivery is) is refused by the other worker: the body ran
  once;
- the worker ahead, SIGKILLed whole, has its runs ended by the sweeper within twice the
  threshold (on the workers' and the sweeper's own clocks it would have beaten 60 s into
  the sweeper's future); then the same for the worker behind.

The libfaketime setting that works for a Celery worker here (libfaketime 0.9.10, glibc
2.36, Python 3.11.7; measured by starting a real worker under each and counting the
heartbeats it wrote in 8 s, interval 1 s):

- default (``CLOCK_MONOTONIC`` faked too): 1 heartbeat in 8 s. libfaketime returns the
  faked wall-clock time (an epoch-sized value) as the monotonic clock, Python's timed lock
  waits pass it to ``sem_clockwait``, which libfaketime does not intercept, and the
  heartbeat thread's ``Event.wait(1)`` never returns;
- ``FAKETIME_DONT_FAKE_MONOTONIC=1``: 8 heartbeats, but every ``time.sleep`` raises
  ``OSError: [Errno 22]`` (libfaketime rewrites the absolute monotonic deadline of
  ``clock_nanosleep``); pymongo's monitor threads died of it in the worker's log;
- ``FAKETIME_DONT_FAKE_MONOTONIC=1`` with ``time.sleep`` done through ``select()``
  (``tests/support/faketime_site/sitecustomize.py``): 8 heartbeats, no error. This is
  what :func:`tests.support.skew.skewed_env` sets.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import services
from devtools.services import wait_for
from procstatus import ProcessStatus
from tests.support.models import (
    AHEAD_QUEUE,
    BEHIND_QUEUE,
    SkewJob,
    clock_key,
    gate_key,
    runs_key,
)
from tests.support.skew import libfaketime, skewed_env

pytestmark = pytest.mark.integration

THRESHOLD = 3.0
"""The sweeper's threshold; the workers beat every 1 s (3 × 1 s is theirs)."""
BEHIND, AHEAD, SWEEPER_AHEAD = -120, 120, 60
"""Clock offsets, in seconds, of the two workers and of the sweeper's process."""
WATCH = 4 * THRESHOLD
"""How long healthy runs are watched: longer than twice the threshold."""
SWEEP_EVERY = 0.25


def state(job: SkewJob) -> dict:
    return SkewJob._get_collection().find_one({"_id": job.pk}) or {}


def runs(redis_client, job: SkewJob) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.decode() for r in redis_client.lrange(runs_key(job.pk), 0, -1)]


def label(job: SkewJob) -> str:
    return f"SkewJob({job.pk})"


@pytest.fixture
def skewed_sweeper(worker_env: dict, service_log_dir: Path, redis_client):  # type: ignore[no-untyped-def]
    """Starts ``tests.support.clock_sweeper`` with its clock ``SWEEPER_AHEAD`` s ahead."""
    started: list[services.Service] = []

    def start(key: str) -> services.Service:
        redis_client.delete(key, f"{key}:failed", f"{key}:clock")
        log_path = service_log_dir / "clock-sweeper.log"
        log = open(log_path, "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.clock_sweeper", str(THRESHOLD),
             str(SWEEP_EVERY), key],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(services.REPO_ROOT),
            env={**os.environ, **worker_env, "PROCSTATUS_TEST_COMMAND_LOG": "",
                 **skewed_env(SWEEPER_AHEAD)},
        )
        service = services.Service("clock-sweeper", process, log_path, key, log)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def needs_libfaketime() -> Iterator[None]:
    if libfaketime() is None:
        pytest.fail("libfaketime is not installed: run ./scripts/bootstrap.sh (as root it "
                    "installs it with apt-get install faketime)")
    yield


def test_workers_and_a_sweeper_with_skewed_clocks_judge_runs_by_the_servers_clock(
    needs_libfaketime, start_worker, skewed_sweeper, celery_app_under_test,
    redis_client, record_figure,
):
    behind_worker = start_worker("behind", BEHIND_QUEUE, concurrency=4, **skewed_env(BEHIND))
    ahead_worker = start_worker("ahead", AHEAD_QUEUE, concurrency=3, **skewed_env(AHEAD))
    key = f"procstatus-test:clock-sweeps:{os.getpid()}:{time.monotonic_ns()}"
    sweeper = skewed_sweeper(key)

    behind = [SkewJob.create(name=f"behind {i}") for i in range(3)]
    ahead = [SkewJob.create(name=f"ahead {i}") for i in range(2)]
    for job in behind:
        job.hold_behind()
    for job in ahead:
        job.hold_ahead()
    first = {
        job.pk: wait_for(lambda job=job: (s := state(job)).get("process_status") == "RUNNING"
                         and s, timeout=60, what=f"{job.name} RUNNING")
        for job in behind + ahead
    }

    # The faults are real: each process's wall clock is off by its offset.
    def offset_of(job: SkewJob) -> float:
        told = wait_for(lambda: redis_client.hvals(clock_key(job.pk)), timeout=30,
                        what=f"{job.name} to tell its clock")
        return float(told[0]) - time.time()

    assert all(abs(offset_of(job) - BEHIND) < 10 for job in behind)
    assert all(abs(offset_of(job) - AHEAD) < 10 for job in ahead)
    sweeper_clock = wait_for(lambda: redis_client.get(f"{key}:clock"), timeout=60,
                             what="the sweeper to start")
    assert abs(float(sweeper_clock) - time.time() - SWEEPER_AHEAD) < 10

    # A redelivery of a live run, each way: the worker with the other clock must refuse it.
    for job, method, queue in ((behind[0], "hold_behind", AHEAD_QUEUE),
                               (ahead[0], "hold_ahead", BEHIND_QUEUE)):
        celery_app_under_test.send_task(
            "procstatus.run", args=["SkewJob", str(job.pk), method, [], {}],
            task_id=first[job.pk]["celery_task_id"], queue=queue,
        )

    def untouched(job: SkewJob) -> None:
        now, then = state(job), first[job.pk]
        mark = {k: now.get(k) for k in ("process_status", "celery_task_id", "worker_instance",
                                         "worker_pid", "errors")}
        expected = {**{k: then.get(k) for k in mark}, "errors": []}
        assert mark == expected, (
            f"{job.name} was judged lost or taken over: {now.get('last_status_message')!r}, "
            f"warnings {now.get('warnings')}"
        )
        assert len(runs(redis_client, job)) == 1, f"{job.name} ran {runs(redis_client, job)}"

    # Healthy runs on both clocks, watched for longer than twice the threshold.
    sweeps_before = int(redis_client.get(key) or 0)
    watch_until = time.monotonic() + WATCH
    while time.monotonic() < watch_until:
        for job in behind + ahead:
            untouched(job)
        time.sleep(0.2)  # the pace of the watch, not a wait for anything
    sweeps = int(redis_client.get(key) or 0) - sweeps_before
    assert sweeps >= WATCH / SWEEP_EVERY / 4, f"the sweeper made only {sweeps} passes"
    for refusing in (ahead_worker, behind_worker):
        wait_for(lambda w=refusing: "still running (duplicate delivery)" in w.log_text(),
                 timeout=30, what=f"{refusing.url} to refuse the duplicate")
    for job in behind + ahead:
        untouched(job)

    # The worker ahead dies whole: the sweeper, 60 s behind it, ends its runs in time.
    ahead_worker.kill_group()
    killed_at = time.monotonic()
    wait_for(lambda: all(state(j)["process_status"] != "RUNNING" for j in ahead),
             timeout=6 * THRESHOLD, interval=0.05, what="the sweeper to end the lost runs")
    ahead_took = time.monotonic() - killed_at
    for job in ahead:
        ended = state(job)
        assert ended["process_status"] == ProcessStatus.FAILURE.value
        assert ended["errors"][0].startswith("worker lost: no heartbeat from ahead-"), ended
    for job in behind:
        untouched(job)
    assert ahead_took <= 2 * THRESHOLD, f"resolved {ahead_took:.1f}s after the kill"

    # The runs behind finish normally; then that worker dies whole with one still running.
    for job in behind[:2]:
        redis_client.rpush(gate_key(job.pk), 1)
        assert job.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
    behind_worker.kill_group()
    killed_at = time.monotonic()
    wait_for(lambda: state(behind[2])["process_status"] != "RUNNING",
             timeout=6 * THRESHOLD, interval=0.05, what="the sweeper to end the lost run")
    behind_took = time.monotonic() - killed_at
    ended = state(behind[2])
    assert ended["process_status"] == ProcessStatus.FAILURE.value
    assert ended["errors"][0].startswith("worker lost: no heartbeat from behind-"), ended
    assert behind_took <= 2 * THRESHOLD, f"resolved {behind_took:.1f}s after the kill"

    # No body ran twice, and the sweeper ended exactly the three runs whose worker died.
    assert {job.name: len(runs(redis_client, job)) for job in behind + ahead} == {
        job.name: 1 for job in behind + ahead
    }
    swept = {r.decode() for r in redis_client.lrange(f"{key}:failed", 0, -1)}
    assert swept == {label(job) for job in [*ahead, behind[2]]}
    assert sweeper.process.poll() is None, sweeper.log_text()[-2000:]
    record_figure(
        f"CLOCK workers at {BEHIND:+d} s and {AHEAD:+d} s, sweeper at {SWEEPER_AHEAD:+d} s "
        f"(threshold {THRESHOLD:.0f}s): 5 runs untouched for {WATCH:.0f}s ({sweeps} sweeps), "
        f"2 duplicate deliveries refused; worker ahead killed: 2 runs ended "
        f"{ahead_took:.1f}s after; worker behind killed: 1 run ended {behind_took:.1f}s "
        f"after (bound 2 x threshold = {2 * THRESHOLD:.0f}s); every body ran once"
    )
