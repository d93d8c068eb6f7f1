"""Every query one sweep sends to a Proc collection scans an index, never the collection.

The sweeper runs on every pass over every class, so a query of its that scans the whole
collection costs seconds per pass at a few hundred thousand documents. Its commands are
recorded with pymongo command monitoring on a connection of their own and explained on
the MongoDB-protocol server, with documents in every state a sweep looks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import mongoengine
import pytest
from mongoengine import StringField

from procstatus import Proc, ProcessStatus, process, sweeper
from tests.unit.test_queries import INDEX_STAGES, Recorder, explain

ALIAS = "sweeper-explain"
LONG_AGO = datetime.now(timezone.utc) - timedelta(days=2)


class SweptJob(Proc):
    """A class with a non-blocking process, so the sweep also looks for stranded calls."""

    meta = {"collection": "swept_jobs", "db_alias": ALIAS}

    name = StringField()

    @process(is_blocking=False)
    def append(self, value: str) -> None:
        """Queued while the document is busy."""


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def swept(
    mongodb_uri: str, fresh_db_name: str, recorder: Recorder, publisher, test_db
) -> Iterator[None]:
    mongoengine.connect(db=fresh_db_name, host=mongodb_uri, alias=ALIAS,
                        event_listeners=[recorder])
    SweptJob._collection = None  # a new database each test: indexes are made again
    try:
        yield
    finally:
        mongoengine.disconnect(alias=ALIAS)
        SweptJob._collection = None


def _insert_one_of_each_kind() -> None:
    base = {"current_process": "append", "status_changed_at": LONG_AGO}
    documents = [
        {"process_status": ProcessStatus.RUNNING.value, "celery_task_id": "t-running",
         "worker_instance": "gone", "start_time": LONG_AGO, **base},
        {"process_status": ProcessStatus.WAITING_FOR_RESULT.value, **base},
        {"process_status": ProcessStatus.PENDING.value, "celery_task_id": "t-pending", **base},
        {"process_status": ProcessStatus.SUCCESS.value, "call_queue": [
            {"id": "q-1", "process": "append", "args": ["a"], "kwargs": {}, "queued_at": LONG_AGO}
        ], **base},
    ]
    # Many idle documents with no call waiting: a scan over them is what must not happen.
    documents += [{"process_status": ProcessStatus.SUCCESS.value, "call_queue": [], **base}
                  for _ in range(50)]
    SweptJob._get_collection().insert_many(documents)


def test_every_query_of_a_sweep_scans_an_index(swept, recorder: Recorder) -> None:
    _insert_one_of_each_kind()
    recorder.commands.clear()

    report = sweeper.sweep(threshold=3, pending_timeout=3600, classes=[SweptJob])

    assert report.queued_calls_sent and report.never_started
    assert report.failed  # the RUNNING run's worker never beat
    collection = SweptJob._get_collection()
    finds = [c for c in recorder.commands
             if c.get("find") == SweptJob._get_collection_name() and "_id" not in c["filter"]]
    assert len(finds) == 4, finds  # RUNNING, waiting parents, PENDING, stranded calls
    for command in finds:
        stages = explain(collection.database, command)
        assert "COLLSCAN" not in stages, f"collection scan for {command}: {stages}"
        assert INDEX_STAGES & set(stages), f"no index scan for {command}: {stages}"
