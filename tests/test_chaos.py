"""The chaos soak: 300+ processes on real workers under a seeded random schedule of 30+ faults.

Owns one promise end to end: whatever is killed, cancelled, restarted, delivered twice
or cut by a failover (a fail point on one write, a step-down),
no document is left PENDING, RUNNING or WAITING_FOR_RESULT once the queue has drained
and the sweeper has run, every parent ends, ``join()`` runs at most once per wait, every
FAILURE names the fault that caused it (and no "worker lost" names a worker that was
alive), and a body runs twice only where that is documented (an acks_late redelivery,
a ``retry_on_worker_lost`` resend, a retry) and never while its earlier run still runs.

Mechanism. The soak restarts its own broker and MongoDB server, so it cannot share the
session's: the caller side runs in a subprocess, :mod:`tests.support.chaos_driver`,
which starts a private Redis (append-only file, fsync always) and a private SecantusDB
(on disk, a single-node replica set with test commands, for ``failCommand`` fail points
and ``replSetStepDown``), each on a fixed loopback port its restarts reuse, two prefork workers of
concurrency 2 on their own queue (one with acks_late), dispatches the plan, injects
the faults, sweeps every second as beat would, then waits for the drain and measures
the settle. It writes its findings to ``chaos.json``; this test asserts on them. The
models (:mod:`tests.support.chaos_models`) record every body start and end, wait and
join in a MongoDB collection, which survives the Redis restarts. The driver's docstring lists
what each verdict compares and the honest limits (a seed replays the schedule, not the
victims; timing decides which document is RUNNING when a fault fires).

Knobs: ``PROCSTATUS_CHAOS_SEED`` replays a schedule (the seed is printed first and
last, on ``CHAOS`` lines); ``PROCSTATUS_CHAOS_SIZE`` multiplies processes, faults and
the fault window (default 1, the CI size: about a minute on a 2-core machine), e.g.
``PROCSTATUS_CHAOS_SIZE=5 pytest tests/test_chaos.py -s`` for a heavier soak by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.services import REPO_ROOT

SIZE = float(os.environ.get("PROCSTATUS_CHAOS_SIZE") or 1)
THRESHOLD = 3.0  # the driver's heartbeat threshold: 3 × a 1 s heartbeat
RUN_TIMEOUT = 270 * max(SIZE, 1.0)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def kill_leftovers(pids_file: Path) -> None:
    """Kill what the driver left running (it was killed, or crashed): only processes whose
    command line still names this soak's port or worker hostname, so a reused pid is spared."""
    if not pids_file.exists():
        return
    for line in pids_file.read_text().splitlines():
        kind, pid_text, marker = line.split(maxsplit=2)
        pid = int(pid_text)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone already
        if marker not in cmdline:
            continue
        try:
            if kind == "group":
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_driver(work_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MONGODB_URI", "CELERY_BROKER_URL")}  # the soak's servers are its own
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.support.chaos_driver", "--work-dir", str(work_dir)],
        cwd=str(REPO_ROOT), env=env, start_new_session=True,
    )
    try:
        returncode = driver.wait(timeout=RUN_TIMEOUT)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        kill_leftovers(work_dir / "pids")
    result_path = work_dir / "chaos.json"
    assert returncode == 0 and result_path.exists(), (
        f"the chaos driver failed (exit {returncode}); logs in {work_dir / 'logs'}"
    )
    return json.loads(result_path.read_text())


@pytest.mark.timeout(int(RUN_TIMEOUT + 30))
def test_chaos_soak_leaves_nothing_stuck_and_every_failure_names_its_fault(
    tmp_path, record_figure
):
    result = run_driver(tmp_path)
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(result["faults_by_kind"].items()))
    armed = result["failpoints_armed"]
    failpoint_counts = ", ".join(
        f"{aim} {n}/{result['failpoints_met'].get(aim, 0)}" for aim, n in sorted(armed.items())
    )
    record_figure(
        f"CHAOS seed={result['seed']} processes={result['planned']['processes']} "
        f"faults={sum(result['faults_by_kind'].values())} ({faults})\n"
        f"CHAOS fail points armed/met: {failpoint_counts}\n"
        f"CHAOS final {result['final']} failures by fault {result['attributed']}\n"
        f"CHAOS settle: {result['timing']['settle_after_drain']} s after the drain "
        f"(bound {2 * THRESHOLD:g} s), {result['timing']['settle_after_last_fault']} s after "
        f"the last fault; stuck={len(result['stuck_at_end'])}"
    )

    assert result["planned"]["processes"] >= 300 * SIZE
    assert all(5 <= n <= 20 for n in result["planned"]["children_per_batch"])
    assert sum(result["faults_by_kind"].values()) >= 30 * SIZE
    assert result["faults_by_kind"].get("failpoint", 0) >= 1
    assert result["faults_by_kind"].get("step-down", 0) >= 1
    timing = result["timing"]
    problems = {
        name: result[name]
        for name in (
            "stuck_at_deadline",  # still processing 2 × threshold after the drain
            "stuck_at_end",
            "parents_not_ended",
            "join_violations",
            "double_runs",  # a body ran more often than documented restarts allow
            "overlapping_runs",  # a body ran again while its earlier run was alive
            "unexplained",  # a FAILURE whose errors name no injected fault
            "untrue",  # a FAILURE naming a fault the evidence contradicts
            "unexpected_ready",
        )
        if result[name]
    }
    assert not problems, (
        f"seed {result['seed']} (rerun with PROCSTATUS_CHAOS_SEED={result['seed']}): "
        + json.dumps(problems, indent=1, default=str)[:20000]
        + "\nworker log lines: "
        + json.dumps(
            {**result["stuck_log_lines"], **result["unexplained_log_lines"]}, indent=1
        )[:8000]
    )
    assert timing["settle_after_drain"] is not None
    assert timing["settle_after_drain"] <= 2 * THRESHOLD
