"""After the migration, documents load and query as a procstatus.Proc subclass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import mongoengine
import pytest
from bson import ObjectId
from pymongo.database import Database

import procstatus
from procstatus import ProcessStatus
from tests.datafix.conftest import CliInvoker

ALIAS = "datafix-proc-test"


class LegacyUpload(procstatus.Proc):
    """A typical application document: Proc fields plus its own domain fields."""

    meta = {"collection": "uploads", "db_alias": ALIAS}
    filename = mongoengine.StringField()
    size = mongoengine.IntField()


@pytest.fixture
def bound(db: Database, mongodb_uri: str) -> Iterator[None]:
    mongoengine.connect(db=db.name, host=mongodb_uri, alias=ALIAS)
    try:
        yield
    finally:
        mongoengine.disconnect(alias=ALIAS)
        LegacyUpload._collection = None  # the next test may bind another database


def test_migrated_documents_load_as_proc(db: Database, migrate: CliInvoker, bound: None) -> None:
    ids = [ObjectId() for _ in range(4)]
    common = {
        "current_process": "upload",
        "warnings": [],
        "create_time": datetime(2022, 1, 1),
        "worker_hostname": "w@h",
        "celery_task_id": "t",
        "size": 10,
    }
    db.uploads.insert_many(
        [
            {"_id": ids[0], "tasks_status": "CREATED", "filename": "a.csv", "tasks": [], **common},
            {
                "_id": ids[1],
                "task_status": "SUCCESS",
                "current_task": "store",
                "filename": "b.csv",
                "errors": [],
                "complete_time": datetime(2022, 1, 2),
                **common,
            },
            {
                "_id": ids[2],
                "tasks_status": "FAILURE",
                "errors": ["bad csv"],
                "filename": "c.csv",
                **common,
            },
            {
                "_id": ids[3],
                "tasks_status": "RUNNING",
                "current_task": "parse",
                "filename": "d.csv",
                **common,
            },
        ]
    )
    assert migrate("uploads", "--fail-in-flight").exit_code == 0

    loaded = {u.id: u for u in LegacyUpload.objects.order_by("id")}
    assert [loaded[i].process_status for i in ids] == [
        ProcessStatus.READY,
        ProcessStatus.SUCCESS,
        ProcessStatus.FAILURE,
        ProcessStatus.FAILURE,
    ]
    assert loaded[ids[1]].current_process_step == "store"
    assert loaded[ids[1]].last_status_message == "Process upload completed successfully"
    assert loaded[ids[2]].errors == ["bad csv"]
    assert loaded[ids[3]].current_process_step == "parse"
    assert loaded[ids[0]].filename == "a.csv" and loaded[ids[0]].size == 10
    assert not loaded[ids[3]].process_running
    assert {u.id for u in LegacyUpload.objects.failed()} == {ids[2], ids[3]}
    assert LegacyUpload.objects.with_status(ProcessStatus.READY).count() == 1
