"""The judgement "is this run lost?", and the marking of silent workers, without a worker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from procstatus import liveness
from procstatus.clock import server_now
from procstatus.liveness import WorkerBeat

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
THRESHOLD = 3.0


def beat(ago: float, active=(), stopped=False, suspected_ago=None):  # type: ignore[no-untyped-def]
    suspected = None if suspected_ago is None else NOW - timedelta(seconds=suspected_ago)
    return {"w1": WorkerBeat("w1", "w1@host", NOW - timedelta(seconds=ago), frozenset(active),
                             stopped, suspected)}


def run(began_ago: float, task_id="t1"):  # type: ignore[no-untyped-def]
    return {"worker_instance": "w1", "worker_hostname": "w1@host", "celery_task_id": task_id,
            "status_changed_at": NOW - timedelta(seconds=began_ago)}


def judge(state, beats, **options):  # type: ignore[no-untyped-def]
    loss = liveness.judge(state, beats, threshold=THRESHOLD, now=NOW, **options)
    return None if loss is None else loss.text


def test_a_run_its_live_worker_lists_is_not_lost():
    assert judge(run(60), beat(0.5, active=["t1"]), orphan_after=THRESHOLD) is None


def test_a_silent_worker_loses_its_runs_only_after_its_grace(monkeypatch):
    # grace: half the 3 s threshold, 1.5 s
    assert judge(run(60), beat(4)) is None  # not suspected yet: MongoDB may have been down
    assert judge(run(60), beat(4, suspected_ago=1)) is None  # within the grace
    assert judge(run(60), beat(4, suspected_ago=2)) == (
        "worker lost: no heartbeat from w1@host for 4 s"
    )


def test_suspicion_is_marked_once_and_a_beat_clears_it(coll, monkeypatch):
    monkeypatch.setattr(liveness.WorkerIdentity, "instance", "w1")
    liveness.beat(coll, [])
    server = server_now(coll.database)
    coll.update_one({"_id": "w1"}, {"$set": {"heartbeat_at": server - timedelta(seconds=10)}})
    first = liveness.suspect_silent(coll, threshold=THRESHOLD)["w1"].suspected_at
    assert first is not None and abs(first - server) < timedelta(seconds=5)  # the server's time
    later = server + timedelta(seconds=5)
    assert liveness.suspect_silent(coll, threshold=THRESHOLD, now=later)["w1"].suspected_at \
        == first
    liveness.beat(coll, [])  # alive after all: MongoDB was only down
    assert liveness.read_beats(coll)["w1"].suspected_at is None


def test_a_worker_that_stopped_while_running_loses_its_runs():
    assert judge(run(60), beat(0.5, stopped=True)) == (
        "worker lost: w1@host stopped while the process ran"
    )


def test_an_unknown_instance_gets_a_threshold_of_grace():
    assert judge(run(1), {}) is None
    assert judge(run(4), {}) == "worker lost: no heartbeat from w1@host"


def test_a_run_a_live_worker_no_longer_lists_is_orphaned_only_past_the_threshold():
    # The latest beat was taken 2 s after the claim: it may predate the pool's report.
    assert judge(run(2.5), beat(0.5), orphan_after=THRESHOLD) is None
    # Taken 3.5 s after the claim and still not listing the task: orphaned.
    assert judge(run(4), beat(0.5), orphan_after=THRESHOLD) == (
        "orphaned: w1@host is alive but no longer runs task t1"
    )
    assert judge(run(4), beat(0.5)) is None  # without orphan_after, never


def test_mark_gone_marks_silent_workers_then_prunes_them(coll):
    coll.insert_many([
        {"_id": "live", "heartbeat_at": NOW - timedelta(seconds=1), "stopped": False},
        {"_id": "silent", "heartbeat_at": NOW - timedelta(seconds=10), "stopped": False,
         "suspected_at": NOW - timedelta(seconds=60)},
        {"_id": "just suspected", "heartbeat_at": NOW - timedelta(seconds=10), "stopped": False,
         "suspected_at": NOW},
        {"_id": "long gone", "heartbeat_at": NOW - timedelta(days=2), "stopped": True},
    ])
    assert liveness.mark_gone(coll, threshold=THRESHOLD, prune_after=86400, now=NOW) == 1
    assert {d["_id"]: d["stopped"] for d in coll.find()} == {
        "live": False, "silent": True, "just suspected": False
    }
    assert liveness.mark_gone(coll, threshold=THRESHOLD, prune_after=86400, now=NOW) == 0
