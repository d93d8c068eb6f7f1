"""The reads of procstatus.ops against the MongoDB-protocol server: answers, and the index
behind each.

Every command the query functions send is recorded with pymongo command monitoring and
explained on the server; each must scan an index, never the collection.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pymongo
import pytest
from bson import ObjectId
from pymongo import monitoring
from pymongo.database import Database

from procstatus.liveness import WORKERS_COLLECTION
from procstatus.ops import family, queries, sources, values
from procstatus.ops import workers as ops_workers
from procstatus.ops.errors import AmbiguousId, NotFound, OperatorError
from procstatus.ops.queries import ListQuery
from procstatus.ops.session import Session
from procstatus.ops.sources import Source
from tests.unit.models import UnitJob

NOW = datetime.now(timezone.utc).replace(microsecond=0)
INSTANCE = "a" * 32
QUERY_COMMANDS = {"find", "aggregate", "count", "distinct"}
INDEX_STAGES = {"IXSCAN", "COUNT_SCAN", "DISTINCT_SCAN", "IDHACK", "EXPRESS_IXSCAN",
                "EXPRESS_IDHACK"}
_NOT_PART_OF_THE_QUERY = {"lsid", "$db", "$clusterTime", "$readPreference", "txnNumber",
                          "startTransaction", "autocommit", "readConcern", "writeConcern"}


class Recorder(monitoring.CommandListener):
    """The query commands a client sends."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in QUERY_COMMANDS:
            command = {k: v for k, v in event.command.items() if k not in _NOT_PART_OF_THE_QUERY}
            self.commands.append(command)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def db(mongodb_uri: str, fresh_db_name: str, recorder: Recorder) -> Iterator[Database]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongodb_uri, event_listeners=[recorder])
    try:
        yield client[fresh_db_name]
    finally:
        client.close()


def proc_collection(db: Database, name: str) -> Source:
    """A collection with exactly the indexes the Proc base class declares."""
    collection = db[name]
    for spec in UnitJob._meta["index_specs"]:
        collection.create_index(spec["fields"])
    return Source(name.capitalize(), collection)


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def doc(status: str, changed: datetime | None, **fields: Any) -> dict[str, Any]:
    return {
        "process_status": status, "status_changed_at": changed, "create_time": ago(hours=5),
        "errors": [], "warnings": [], **fields,
    }


@pytest.fixture
def jobs(db: Database) -> Source:
    source = proc_collection(db, "jobs")
    source.collection.insert_many([
        doc("READY", None, _id="never-run", create_time=ago(hours=4), name="domain"),
        doc("PENDING", ago(minutes=5), _id="p5", current_process="ingest"),
        doc("PENDING", ago(minutes=30), _id="p30", current_process="ingest"),
        doc("RUNNING", ago(minutes=20), _id=7, current_process="parse",
            current_process_step="parsing", progress_done=3, progress_total=4,
            worker_hostname="alpha@host", worker_instance=INSTANCE),
        doc("WAITING_FOR_RESULT", ago(minutes=2), _id="w", current_process="spawn"),
        doc("SUCCESS", ago(minutes=1), _id="s1", current_process="ingest"),
        doc("SUCCESS", ago(hours=3), _id="s3h", current_process="ingest"),
        doc("FAILURE", ago(minutes=10), _id=ObjectId(), current_process="ingest",
            errors=["KeyError: 'a'", "ValueError: last one"]),
        doc("FAILURE", ago(hours=2), _id="f2h", current_process="parse", errors=["old"]),
    ])
    return source


def ids(rows: list[queries.Row]) -> list[Any]:
    return [r.id for r in rows]


# --- answers ---------------------------------------------------------------------------


def test_counts_have_every_status_the_oldest_under_way_and_the_last_hours_failures(jobs):
    counted = queries.counts(jobs, now=NOW)
    assert counted.counts == {"READY": 1, "PENDING": 2, "RUNNING": 1, "WAITING_FOR_RESULT": 1,
                              "SUCCESS": 2, "FAILURE": 2}
    assert counted.oldest_pending == ago(minutes=30)
    assert counted.oldest_running == ago(minutes=20)
    assert counted.failures_last_hour == 1
    data = counted.as_dict(NOW)
    assert data["class"] == "Jobs" and data["collection"] == "jobs"
    assert data["oldest_pending_age_s"] == 1800.0 and data["processing"] == 4


def test_counts_of_an_empty_or_missing_collection_are_all_zero(db):
    counted = queries.counts(Source("Nothing", db["nothing"]), now=NOW)
    assert counted.counts == dict.fromkeys(values.STATUSES, 0)
    assert counted.oldest_pending is None and counted.failures_last_hour == 0


def test_list_is_newest_first_and_filters_by_status_process_age_and_worker(jobs):
    everything = queries.list_documents([jobs], now=NOW)
    failure = everything[3].id
    assert ids(everything) == ["s1", "w", "p5", failure, 7, "p30", "f2h", "s3h", "never-run"]
    pending = queries.list_documents([jobs], ListQuery(statuses=("PENDING",)), now=NOW)
    assert ids(pending) == ["p5", "p30"]
    oldest = queries.list_documents(
        [jobs], ListQuery(statuses=("PENDING",), oldest_first=True), now=NOW)
    assert ids(oldest) == ["p30", "p5"]
    ingest_failures = queries.list_documents(
        [jobs], ListQuery(statuses=("FAILURE",), process="ingest"), now=NOW)
    assert len(ingest_failures) == 1 and ingest_failures[0].last_error == "ValueError: last one"
    stale = queries.list_documents([jobs], ListQuery(older_than=15 * 60), now=NOW)
    assert set(ids(stale)) == {"p30", 7, "s3h", "f2h", "never-run"}
    by_host = queries.list_documents([jobs], ListQuery(worker="alpha"), now=NOW)
    by_instance = queries.list_documents([jobs], ListQuery(worker=INSTANCE), now=NOW)
    assert ids(by_host) == ids(by_instance) == [7]
    assert queries.list_documents([jobs], ListQuery(worker="alph.", limit=5), now=NOW) == []
    assert len(queries.list_documents([jobs], ListQuery(limit=3), now=NOW)) == 3
    assert queries.count_matching(jobs, ListQuery(statuses=("PENDING", "FAILURE"))) == 4


def test_a_row_carries_progress_age_and_the_last_error_as_plain_data(jobs):
    (running,) = queries.list_documents([jobs], ListQuery(statuses=("RUNNING",)), now=NOW)
    assert running.progress == 0.75 and running.age_s == 1200.0
    data = running.as_dict()
    assert data["class"] == "Jobs" and data["id"] == 7
    assert {k: data[k] for k in ("process_status", "current_process", "current_process_step",
                                 "progress_done", "progress_total", "errors", "warnings")} == {
        "process_status": "RUNNING", "current_process": "parse",
        "current_process_step": "parsing", "progress_done": 3, "progress_total": 4,
        "errors": [], "warnings": []}
    assert data["status_changed_at"].endswith("Z")


def test_locate_has_one_rule_for_an_id(db, jobs):
    """The CLI and the dashboard locate through Session.locate: within one collection the
    _id stored as typed wins; documents in several collections are ambiguous."""
    other = proc_collection(db, "others")
    other.collection.insert_many([doc("READY", None, _id="p5"), doc("READY", None, _id="8")])
    jobs.collection.insert_one(doc("READY", None, _id="7"))  # beside the integer 7
    session = Session(database=db)
    assert session.locate("7") == (session.sources("jobs")[0], "7")
    assert session.locate("8")[1] == "8" and session.locate("s1")[1] == "s1"
    with pytest.raises(AmbiguousId, match="names documents in jobs, others: pass --class"):
        session.locate("p5")
    assert session.locate("p5", "others")[0].name == "others"
    with pytest.raises(NotFound, match="no document with id nope in any class"):
        session.locate("nope")
    with pytest.raises(OperatorError, match="no class or collection 'nothing'"):
        session.locate("p5", "nothing")


def test_list_merges_several_sources_under_one_limit(db, jobs):
    other = proc_collection(db, "others")
    other.collection.insert_one(doc("SUCCESS", ago(seconds=1), _id="newest"))
    rows = queries.list_documents([jobs, other], ListQuery(limit=2), now=NOW)
    assert [(r.cls, r.id) for r in rows] == [("Others", "newest"), ("Jobs", "s1")]


def test_find_id_accepts_strings_object_ids_and_integers_and_show_gives_every_field(jobs):
    failure = jobs.collection.find_one({"process_status": "FAILURE", "errors": {"$size": 2}})
    for text, stored in (("p5", "p5"), ("7", 7), (str(failure["_id"]), failure["_id"])):
        assert queries.find_id([jobs], text) == [(jobs, stored)]
    assert queries.find_id([jobs], "missing") == []
    shown = queries.show(jobs, failure["_id"], now=NOW)
    assert shown is not None
    assert set(queries.STATUS_FIELDS) <= set(shown)
    assert shown["errors"] == ["KeyError: 'a'", "ValueError: last one"]
    assert shown["status_changed_at"] == ago(minutes=10) and shown["age_s"] == 600.0
    assert queries.show(jobs, "missing") is None


def test_children_are_counted_by_status(db):
    children = proc_collection(db, "children")
    children.collection.create_index("parent")
    children.collection.insert_many(
        [doc(status, NOW, parent="P") for status in ("SUCCESS", "SUCCESS", "FAILURE", "RUNNING")]
        + [doc("SUCCESS", NOW, parent="other")]
    )
    assert family.children_counts(children.collection, {"parent": "P"}) == {
        "READY": 0, "PENDING": 0, "RUNNING": 1, "WAITING_FOR_RESULT": 0, "SUCCESS": 2,
        "FAILURE": 1}


def test_workers_are_alive_stopped_or_silent(db):
    db[WORKERS_COLLECTION].insert_many([
        {"_id": "i1", "hostname": "b@h", "pid": 1, "heartbeat_at": ago(seconds=2),
         "active": ["t1"], "stopped": False},
        {"_id": "i2", "hostname": "a@h", "pid": 2, "heartbeat_at": ago(minutes=5),
         "active": [], "stopped": True, "gone_at": ago(minutes=4)},
        {"_id": "i3", "hostname": "a@h", "pid": 3, "heartbeat_at": ago(minutes=1),
         "active": ["t2"], "stopped": False},
        {"_id": "i4", "hostname": "c@h", "pid": 4, "heartbeat_at": ago(seconds=1),
         "active": [], "stopped": True},
    ])
    found = ops_workers.workers(db[WORKERS_COLLECTION], threshold=30, now=NOW)
    assert [(w.instance, w.state) for w in found] == [
        ("i1", "alive"), ("i3", "silent"), ("i2", "stopped"), ("i4", "stopped")]
    assert found[0].active == ["t1"] and found[0].silent_s == 2.0
    assert found[1].as_dict()["state"] == "silent"


def test_discover_finds_proc_collections_by_their_index_or_first_document(db, jobs):
    db["legacy"].insert_one({"process_status": "SUCCESS"})  # no index: its first document
    db["plain"].insert_one({"name": "not a proc"})
    db[WORKERS_COLLECTION].insert_one({"_id": "i", "heartbeat_at": NOW})
    db["empty_proc"].create_index("process_status")
    found = sources.discover(db)
    assert [s.name for s in found] == ["empty_proc", "jobs", "legacy"]
    legacy = found[2]
    assert legacy.status_hint() is None and jobs.status_hint() == sources.STATUS_CHANGED_INDEX
    assert [r.process_status for r in queries.list_documents([legacy])] == ["SUCCESS"]
    assert [s.name for s in sources.select(sources.discover(db), "JOBS")] == ["jobs"]


def test_jsonable_makes_ids_and_times_plain():
    oid = ObjectId()
    assert values.jsonable({"id": oid, "at": datetime(2025, 1, 2, 3, 4, 5), "n": [1, None]}) == {
        "id": str(oid), "at": "2025-01-02T03:04:05Z", "n": [1, None]}


# --- every query uses an index -----------------------------------------------------------


def plan_stages(explained: Any) -> list[str]:
    """Every ``stage`` of the winning plans in an explain answer (mongod or SecantusDB)."""
    found: list[str] = []
    if isinstance(explained, dict):
        for key, value in explained.items():
            if key == "rejectedPlans":
                continue
            if key == "stage" and isinstance(value, str):
                found.append(value)
            found.extend(plan_stages(value))
    elif isinstance(explained, list):
        for item in explained:
            found.extend(plan_stages(item))
    return found


def explain(db: Database, command: dict[str, Any]) -> list[str]:
    return plan_stages(db.command({"explain": command, "verbosity": "queryPlanner"}))


def test_the_explain_check_tells_a_collection_scan_from_an_index_scan(db, jobs):
    assert "COLLSCAN" in explain(db, {"find": "jobs", "filter": {"current_process": "ingest"}})
    assert "IXSCAN" in explain(db, {"find": "jobs", "filter": {"process_status": "READY"}})


def test_every_query_scans_an_index_never_the_collection(db, jobs, recorder):
    children = proc_collection(db, "children")
    children.collection.create_index("parent")
    db[WORKERS_COLLECTION].insert_one({"_id": "i", "heartbeat_at": NOW, "active": []})
    recorder.commands.clear()

    queries.counts(jobs, now=NOW)
    queries.list_documents([jobs], now=NOW)
    queries.list_documents([jobs], ListQuery(statuses=values.PROCESSING_STATUSES,
                                             oldest_first=True), now=NOW)
    queries.list_documents([jobs], ListQuery(statuses=("FAILURE",), process="ingest",
                                             worker="alpha", older_than=60), now=NOW)
    queries.list_documents([jobs], ListQuery(worker=INSTANCE), now=NOW)
    queries.list_documents([jobs], ListQuery(older_than=600), now=NOW)  # two finds
    queries.count_matching(jobs, ListQuery(statuses=("FAILURE",), process="ingest"))
    queries.find_id([jobs], str(ObjectId()))
    queries.show(jobs, 7)
    family.children_counts(children.collection, {"parent": "P"})
    ops_workers.workers(db[WORKERS_COLLECTION], threshold=30)

    assert len(recorder.commands) == 15
    for command in recorder.commands:
        stages = explain(db, command)
        assert "COLLSCAN" not in stages, f"collection scan for {command}: {stages}"
        assert INDEX_STAGES & set(stages), f"no index scan for {command}: {stages}"


def test_counts_send_no_command_that_returns_documents(jobs, recorder):
    recorder.commands.clear()
    queries.counts(jobs, now=NOW)
    kinds = [next(iter(c)) for c in recorder.commands]
    assert kinds.count("aggregate") == 2  # the counts, and count_documents for the last hour
    finds = [c for c in recorder.commands if "find" in c]
    assert len(finds) == 2  # the oldest PENDING and RUNNING: one index key each
    for find in finds:
        assert find["limit"] == 1 and set(find["projection"]) == {"status_changed_at", "_id"}
        assert find["projection"]["_id"] == 0
