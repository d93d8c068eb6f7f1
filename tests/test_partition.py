"""A real network partition: a worker cut off mid-run is swept, and its late writes change nothing.

Mechanism. One ``celery worker`` runs in a network namespace of its own
(:mod:`tests.support.netns`): a veth pair on a /30 from 10.213.0.0/16 is its only link,
and through it alone it reaches a private redis-server and a private SecantusDB, both
bound to the host end of the pair. The caller and the sweeper run in a subprocess
(:mod:`tests.support.partition_caller`) configured like a deployment's process — one
Celery app on the private broker, procstatus installed once, mongoengine on the private
server — instead of rebinding this pytest process's session app and connection. A second
worker, outside the namespace, serves the same queue through the same host address.

Two processes are held on the partitioned worker at a gate file (their bodies poll the
file system, which a partition leaves alone): a plain one, and a
``retry_on_worker_lost`` one. Setting the host end of the pair down cuts the worker off
from both servers at once: its packets are dropped, no connection is reset, its processes
live on and keep running the bodies — to everyone else it has gone silent. The sweeper,
called in a polling loop, must then end the plain run FAILURE "worker lost: no heartbeat
…" and send the other one again under a new task id, which the second worker runs to
SUCCESS while the cut lasts. The link is healed and the first runs released: their late
writes (the plain body's ``set_process_step`` and the FAILURE that follows it, the other
body's SUCCESS) must match nothing and be logged by the partitioned worker; no document
may change afterwards, under more sweeping, once the healed worker beats again. A side
channel (a file, see :mod:`tests.support.partition_models`) records which body ran where.

Limits. The cut is clean and symmetric (the link has no carrier): no loss, delay or
one-way partition. It starts after both runs are claimed and while their bodies hold at
the gate, so a partition during a claim, or a MongoDB write hanging in flight at the cut,
is not covered. The cut lasts seconds, far less than TCP's retransmission timeout, so
the partitioned worker's connections survive it and resume after a retransmission
backoff. One machine, one clock: the sweeper's judgement assumes the worker's clock and
its own agree within the threshold. User fields a stale body saves are not protected by
procstatus (only status writes are conditional); the bodies here write none. Skipped
when not root or ``ip netns`` is unavailable.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from devtools import services
from devtools.services import Service, wait_for
from tests.support import netns
from tests.support.partition_caller import CallerProcess
from tests.support.partition_models import open_gate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.partition]

HEARTBEAT = 1.0
THRESHOLD = 3 * HEARTBEAT
MIN_CUT = THRESHOLD + 2 * HEARTBEAT
"""The link stays cut at least this long, whatever else is done sooner."""
WATCH = 3 * HEARTBEAT
"""After the late writes, documents are watched (and swept) at least this long."""
APP = "tests.support.worker_app"
INCLUDE = ("--include", "tests.support.partition_models")
STATE = ("process_status", "errors", "warnings", "current_process_step",
         "last_status_message", "celery_task_id", "worker_hostname", "complete_time",
         "status_changed_at")
ACTIONS = ("failed", "sent_again", "never_started", "joins_sent")


def acted(report: dict[str, Any]) -> bool:
    return any(report[key] for key in ACTIONS)


def wait_for_log(service: Service, lines: dict[str, str], timeout: float) -> None:
    """Wait until every one of ``lines`` is in the service's log; name those missing if not."""
    try:
        wait_for(lambda: all(t in service.log_text() for t in lines.values()),
                 timeout=timeout, interval=0.1, what="the late writes to be logged")
    except TimeoutError:
        missing = [name for name, text in lines.items() if text not in service.log_text()]
        raise AssertionError(
            f"not in {service.log_path}: {missing}\n--- log tail ---\n{service.log_text()[-4000:]}"
        ) from None


def test_a_partitioned_worker_is_swept_and_its_late_writes_change_nothing(
    tmp_path: Path, record_figure
):
    try:
        partition = netns.Partition.create()
    except netns.NetnsUnavailable as exc:
        pytest.skip(f"needs a network namespace: {exc}")
    services_started: list[Service] = []
    caller: CallerProcess | None = None
    client: pymongo.MongoClient | None = None
    try:
        logs, side = tmp_path / "logs", tmp_path / "side-channel"
        logs.mkdir()
        side.mkdir()
        redis = netns.start_redis(partition.host_address, logs)
        services_started.append(redis)
        mongo = netns.start_secantus(partition.host_address, logs)
        services_started.append(mongo)
        tag = uuid.uuid4().hex[:6]
        env = {
            "CELERY_BROKER_URL": redis.url,
            "MONGODB_URI": mongo.url,
            "PROCSTATUS_TEST_DB": f"partition_{tag}",
            "PROCSTATUS_TEST_QUEUE": f"partition-{tag}",
            "PROCSTATUS_TEST_HEARTBEAT": f"{HEARTBEAT:g}",
            "PROCSTATUS_TEST_COMMAND_LOG": "",
        }
        partitioned = netns.start_worker(
            partition, APP, logs, hostname=f"partitioned-{tag}@%h", env=env, concurrency=2,
            extra_args=INCLUDE,
        )
        services_started.append(partitioned)
        caller = CallerProcess(env, logs / "caller.log")
        client = pymongo.MongoClient(mongo.url, serverSelectionTimeoutMS=5000)
        database = client[env["PROCSTATUS_TEST_DB"]]

        def state(pk: str) -> dict[str, Any]:
            document = database["partition_jobs"].find_one({"_id": ObjectId(pk)}) or {}
            return {name: document.get(name) for name in STATE}

        plain, plain_first = caller.call("hold", "plain", side)
        idem, idem_first = caller.call("hold_idempotent", "idempotent", side)
        labels = {plain: f"PartitionJob({plain})", idem: f"PartitionJob({idem})"}

        def both_held() -> bool:
            held = {(e["pk"], e["task_id"]) for e in read_events(side) if e["event"] == "started"}
            return {(plain, plain_first), (idem, idem_first)} <= held

        wait_for(both_held, timeout=30, what="both runs to hold on the partitioned worker")
        cut_off_name = state(plain)["worker_hostname"]
        assert cut_off_name.startswith(f"partitioned-{tag}@")
        for pk in (plain, idem):
            held = state(pk)
            assert held["process_status"] == "RUNNING" and held["current_process_step"] == "holding"
            assert held["worker_hostname"] == cut_off_name
        # Idle on the same queue, outside the namespace, until something is sent again.
        healthy = services.start_worker(
            APP, logs, hostname=f"healthy-{tag}@%h", env=env, concurrency=1, extra_args=INCLUDE
        )
        services_started.append(healthy)
        assert not acted(caller.sweep(THRESHOLD)), "the sweeper touched runs of a live worker"

        # --- the cut ----------------------------------------------------------------
        partition.cut()
        cut_at = time.monotonic()
        reports: list[dict[str, Any]] = []
        resolved: dict[str, float] = {}

        def swept() -> bool:
            report = caller.sweep(THRESHOLD)
            reports.append(report)
            if labels[plain] in report["failed"]:
                resolved.setdefault("failed", time.monotonic() - cut_at)
            if labels[idem] in report["sent_again"]:
                resolved.setdefault("sent again", time.monotonic() - cut_at)
            return len(resolved) == 2

        wait_for(swept, timeout=4 * THRESHOLD, interval=0.1, what="the sweeper to resolve both")
        second = state(idem)["celery_task_id"]
        assert second and second != idem_first
        open_gate(side, second)
        wait_for(lambda: state(idem)["process_status"] == "SUCCESS", timeout=30,
                 what="the re-sent run to succeed on the healthy worker")
        succeeded_after = time.monotonic() - cut_at

        def cut_long_enough() -> bool:  # sweeping all the while: nothing more may happen
            reports.append(caller.sweep(THRESHOLD))
            return time.monotonic() - cut_at >= MIN_CUT

        wait_for(cut_long_enough, timeout=MIN_CUT + 10, interval=0.2, what="the cut to last")
        partition.heal()
        healed_at, healed_wall = time.monotonic(), datetime.now(timezone.utc)
        cut_for = healed_at - cut_at

        actions = sorted((key, label) for r in reports for key in ACTIONS for label in r[key])
        assert actions == [("failed", labels[plain]), ("sent_again", labels[idem])], actions
        assert sum(r["workers_gone"] for r in reports) == 1  # the partitioned worker, once
        assert max(resolved.values()) <= 2 * THRESHOLD, resolved

        # --- healed: the first runs go on, and their late writes must change nothing ----
        healthy_name = state(idem)["worker_hostname"]
        assert healthy_name.startswith(f"healthy-{tag}@")
        open_gate(side, plain_first)
        open_gate(side, idem_first)
        wait_for_log(partitioned, {
            "plain: stopped at its set_process_step": (
                f"PartitionJob({plain}).hold stopped: its run was ended from outside"
            ),
            "idempotent: SUCCESS not written": (
                f"PartitionJob({idem}): SUCCESS not written, the document is SUCCESS "
                f"for task {second}"
            ),
            "idempotent: ended elsewhere": f"PartitionJob({idem}).hold_idempotent ended elsewhere",
        }, timeout=30)
        late_after = time.monotonic() - healed_at

        final = {pk: state(pk) for pk in (plain, idem)}
        failed, succeeded = final[plain], final[idem]
        assert failed["process_status"] == "FAILURE"
        assert failed["celery_task_id"] == plain_first and failed["worker_hostname"] == cut_off_name
        assert len(failed["errors"]) == 1
        assert failed["errors"][0].startswith(f"worker lost: no heartbeat from {cut_off_name}")
        assert failed["current_process_step"] == "holding"  # the late step did not land
        assert failed["last_status_message"] == f"Process hold failed: {failed['errors'][0]}"
        assert succeeded["process_status"] == "SUCCESS" and succeeded["errors"] == []
        assert succeeded["celery_task_id"] == second
        assert succeeded["worker_hostname"] == healthy_name
        assert succeeded["last_status_message"] == "Process hold_idempotent completed successfully"
        assert len(succeeded["warnings"]) == 1
        assert succeeded["warnings"][0].startswith(
            f"sent again after worker lost: no heartbeat from {cut_off_name}"
        )

        # The side channel: which body ran where, and how far.
        events = read_events(side)

        def runs(event: str, pk: str) -> list[tuple[str, str, str | None]]:
            return sorted(
                (e["task_id"], e["worker"], e.get("label"))
                for e in events if e["event"] == event and e["pk"] == pk
            )

        assert runs("started", plain) == [(plain_first, cut_off_name, "plain")]
        assert runs("completed", plain) == []  # stopped at its late set_process_step
        both = sorted([
            (idem_first, cut_off_name, "idempotent"), (second, healthy_name, "idempotent")
        ])
        assert runs("started", idem) == both  # the arguments travelled with the resend
        assert runs("completed", idem) == both  # idempotent: both bodies finish, one is written
        # A body stopped by its refused step runs no hook. A stale body that runs to its end
        # unaware still runs on_success before its (refused) write: a documented limit.
        hooks = {
            (event, "plain" if e["pk"] == plain else "idempotent", e["worker"] == cut_off_name)
            for e in events if (event := e["event"]).startswith("on_")
        }
        assert ("on_fail", "plain", True) not in hooks

        # Nothing flips: sweep and re-read until WATCH has passed and the healed worker beats.
        changes: list[Any] = []
        watch_until = time.monotonic() + WATCH
        beat_again: dict[str, float] = {}

        def beats_again() -> bool:
            beat = database["procstatus_workers"].find_one({"hostname": cut_off_name}) or {}
            moment = beat.get("heartbeat_at")
            if moment and moment.replace(tzinfo=timezone.utc) > healed_wall:
                beat_again.setdefault("after", time.monotonic() - healed_at)
                return not beat.get("stopped")
            return False

        def settled() -> bool:
            report = caller.sweep(THRESHOLD)
            now = {pk: state(pk) for pk in (plain, idem)}
            if acted(report) or now != final:
                changes.append({"report": report, "documents": now})
                return True
            return beats_again() and time.monotonic() >= watch_until

        wait_for(settled, timeout=WATCH + 30, interval=0.2, what="the healed worker to beat again")
        watched = time.monotonic() - watch_until + WATCH
        assert changes == [], changes

        record_figure(
            f"PARTITION cut: {partition.host_interface} down for {cut_for:.1f} s "
            f"(heartbeat {HEARTBEAT:g} s, threshold {THRESHOLD:g} s) with 2 runs held on "
            f"{cut_off_name}"
            f"\nPARTITION sweeper: plain run FAILURE {resolved['failed']:.1f} s after the cut, "
            f"retry_on_worker_lost run sent again {resolved['sent again']:.1f} s after the cut "
            f"(bound {2 * THRESHOLD:g} s); re-sent run SUCCESS on {healthy_name} "
            f"{succeeded_after:.1f} s after the cut"
            f"\nPARTITION late writes: logged {late_after:.1f} s after healing, none written: "
            f"plain run's set_process_step refused (body stopped, no hook, no write); "
            f"retry run's SUCCESS not written (document SUCCESS for task {second}); "
            f"documents unchanged through {watched:.1f} s of sweeping; healed worker beat "
            f"again {beat_again['after']:.1f} s after healing"
            f"\nPARTITION side channel: bodies started plain 1 / idempotent 2, completed "
            f"plain 0 / idempotent 2 (one written); hooks (event, doc, on partitioned worker): "
            f"{sorted(hooks)}"
        )
    finally:
        if client is not None:
            client.close()
        if caller is not None:
            caller.close()
        try:
            for service in reversed(services_started):
                if service.name == "worker":
                    service.kill_group()
                else:
                    service.stop()
        finally:
            partition.delete()
