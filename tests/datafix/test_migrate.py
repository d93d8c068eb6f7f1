"""The migration command against the real server: results, reports, dry run, reruns, exit codes."""

from __future__ import annotations

import copy
import io
import json
from datetime import datetime
from typing import Any

import pytest
from bson import ObjectId, json_util
from pymongo.database import Database
from rich.console import Console

from devtools import services
from procstatus.datafix.migrate_task_status import _ProgressOutput
from procstatus.datafix.task_status_mapping import INTERRUPTED_ERROR, READY_MESSAGE
from procstatus.datafix.task_status_runner import CollectionResult, migrate_collection
from tests.datafix.conftest import CliInvoker, collection_hash, collection_state

CREATED_AT = datetime(2021, 3, 4, 5, 6, 7)
DOMAIN = {"customer": "acme", "payload": {"rows": [1, 2, 3], "nested": {"k": None}}, "score": 4.5}


def legacy(_id: Any, **fields: Any) -> dict[str, Any]:
    """A legacy document with the usual bookkeeping and domain fields."""
    base: dict[str, Any] = {
        "_id": _id,
        "current_process": "ingest",
        "errors": [],
        "warnings": ["slow disk"],
        "create_time": CREATED_AT,
        "worker_hostname": "w1@host",
        "celery_task_id": "c-1",
        **copy.deepcopy(DOMAIN),
    }
    base.update(fields)
    return base


def expected_after(before: dict[str, Any], status: str, message: str | None) -> dict[str, Any]:
    """The migrated form of ``before``: only the documented fields change."""
    after = {
        k: v
        for k, v in before.items()
        if k not in {"tasks_status", "task_status", "current_task", "tasks"}
    }
    after["process_status"] = status
    after["current_process_step"] = before.get("current_task")
    if message is not None:
        after["last_status_message"] = message
    return after


@pytest.mark.parametrize("spelling", ["tasks_status", "task_status", "both"])
def test_every_row_migrates_and_keeps_other_fields(
    db: Database, migrate: CliInvoker, spelling: str
) -> None:
    def status(value: str) -> dict[str, str]:
        if spelling == "both":
            return {"tasks_status": value, "task_status": value}
        return {spelling: value}

    docs = [
        legacy(1, **status("CREATED"), current_task=None, tasks=[], process_status=None),
        legacy(2, **status("PENDING"), current_task="queued"),
        legacy(
            3,
            **status("SUCCESS"),
            current_task="publish",
            tasks=[{"n": "a"}],
            process_status="COMPLETED",
            complete_time=CREATED_AT,
        ),
        legacy(
            4,
            **status("FAILURE"),
            current_task="parse",
            errors=["bad header", "bad row 7"],
            process_status="COMPLETED",
        ),
    ]
    db.jobs.insert_many(copy.deepcopy(docs))

    run = migrate("jobs")

    assert run.exit_code == 0, run.stdout + run.stderr
    after = {d["_id"]: d for d in db.jobs.find()}
    assert after[1] == expected_after(docs[0], "READY", READY_MESSAGE)
    assert after[2] == expected_after(docs[1], "READY", READY_MESSAGE)
    assert after[3] == expected_after(docs[2], "SUCCESS", "Process ingest completed successfully")
    assert after[4] == expected_after(docs[3], "FAILURE", "Process ingest failed: bad row 7")
    assert run.report is not None
    assert run.report["collections"]["jobs"]["migrated"] == {"READY": 2, "SUCCESS": 1, "FAILURE": 1}


def test_field_order_and_untouched_fields_survive(db: Database, migrate: CliInvoker) -> None:
    before = legacy(ObjectId(), tasks_status="SUCCESS", last_status_message="all 12 files done")
    db.jobs.insert_one(copy.deepcopy(before))
    assert migrate("jobs").exit_code == 0
    after = db.jobs.find_one()
    kept = [k for k in before if k not in {"tasks_status"}]
    # Existing fields keep their values and their order; new fields come after them.
    assert list(after)[: len(kept)] == kept
    assert all(after[k] == before[k] for k in kept)
    assert after["last_status_message"] == "all 12 files done"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"tasks_status": "SUCCESS", "last_status_message": ""},
            "Process ingest completed successfully",
        ),
        (
            {"tasks_status": "SUCCESS", "last_status_message": None},
            "Process ingest completed successfully",
        ),
        ({"tasks_status": "SUCCESS", "current_process": None}, "Process completed successfully"),
        ({"tasks_status": "SUCCESS", "current_process": 12}, "Process completed successfully"),
        ({"tasks_status": "FAILURE", "errors": None}, "Process ingest failed"),
        ({"tasks_status": "FAILURE", "errors": ["x", {"code": 3}]}, "Process ingest failed"),
        (
            {"task_status": "FAILURE", "errors": ["Timeout after 30s"]},
            "Process ingest failed: Timeout after 30s",
        ),
        (
            {"task_status": "CREATED", "last_status_message": "waiting for upload"},
            "waiting for upload",
        ),
    ],
)
def test_status_message_written_only_when_empty(
    db: Database, migrate: CliInvoker, fields: dict[str, Any], message: str
) -> None:
    db.jobs.insert_one(legacy(1, **fields))
    assert migrate("jobs").exit_code == 0
    assert db.jobs.find_one()["last_status_message"] == message


INVALID_DOCS = [
    legacy(10, tasks_status="DONE"),
    legacy(11, task_status=None),
    legacy(12, tasks_status=["SUCCESS"]),
    legacy(13, tasks_status="SUCCESS", task_status="FAILURE"),
    legacy(14, tasks_status="SUCCESS", process_status="FINISHED"),
    legacy(15, tasks_status="FAILURE", current_task={"name": "parse"}),
    legacy(16, tasks_status="FAILURE", errors="disk full"),
]


def test_invalid_documents_are_untouched_and_reported(db: Database, migrate: CliInvoker) -> None:
    db.jobs.insert_many(copy.deepcopy(INVALID_DOCS) + [legacy(1, tasks_status="SUCCESS")])
    invalid_before = collection_state(db.jobs)[1:]

    run = migrate("jobs")

    assert run.exit_code == 1
    assert collection_state(db.jobs)[1:] == invalid_before
    assert db.jobs.find_one({"_id": 1})["process_status"] == "SUCCESS"
    assert run.report is not None
    invalid = run.report["collections"]["jobs"]["invalid"]
    assert invalid["count"] == len(INVALID_DOCS)
    reasons = {d["_id"]: d["reason"] for d in invalid["documents"]}
    assert sorted(reasons) == [d["_id"] for d in INVALID_DOCS]
    assert "'DONE'" in reasons[10] and "null" in reasons[11] and "list" in reasons[12]
    assert "disagree" in reasons[13] and "FINISHED" in reasons[14]
    assert "current_task" in reasons[15] and "errors" in reasons[16]
    assert "13" in run.stdout and "disagree" in run.stdout  # shown to the operator too


IN_FLIGHT_DOCS = [
    legacy(20, tasks_status="RUNNING", current_task="download"),
    legacy(21, task_status="SUCCESS", process_status="CALLED"),
    legacy(22, tasks_status="PENDING", process_status="RUNNING", errors=None),
]


def test_in_flight_left_alone_by_default(db: Database, migrate: CliInvoker) -> None:
    db.jobs.insert_many(copy.deepcopy(IN_FLIGHT_DOCS) + [legacy(1, tasks_status="CREATED")])
    in_flight_before = collection_state(db.jobs)[1:]

    run = migrate("jobs")

    assert run.exit_code == 1
    assert collection_state(db.jobs)[1:] == in_flight_before
    assert run.report is not None
    in_flight = run.report["collections"]["jobs"]["in_flight"]
    assert in_flight["ids"] == [20, 21, 22]
    assert (in_flight["count"], in_flight["skipped"], in_flight["failed"]) == (3, 3, 0)
    assert "--fail-in-flight" in run.stdout


def test_fail_in_flight_marks_them_failure(db: Database, migrate: CliInvoker) -> None:
    db.jobs.insert_many(copy.deepcopy(IN_FLIGHT_DOCS))

    run = migrate("jobs", "--fail-in-flight")

    assert run.exit_code == 0, run.stdout
    after = {d["_id"]: d for d in db.jobs.find()}
    assert after[20]["process_status"] == "FAILURE"
    assert after[20]["errors"] == [INTERRUPTED_ERROR]
    assert after[20]["current_process_step"] == "download"
    assert after[20]["last_status_message"] == f"Process ingest failed: {INTERRUPTED_ERROR}"
    assert after[22]["errors"] == [INTERRUPTED_ERROR]  # null errors become a list
    for d in after.values():
        assert not {"tasks_status", "task_status", "current_task", "tasks"} & set(d)
        assert d["warnings"] == ["slow disk"] and d["payload"] == DOMAIN["payload"]
    assert run.report is not None
    in_flight = run.report["collections"]["jobs"]["in_flight"]
    assert (in_flight["count"], in_flight["failed"], in_flight["skipped"]) == (3, 3, 0)


def _mixed_collection(db: Database, name: str = "jobs") -> None:
    docs = [
        legacy(1000 + i, tasks_status=s)
        for i, s in enumerate(["CREATED", "PENDING", "SUCCESS", "FAILURE"] * 5)
    ]
    docs += copy.deepcopy(INVALID_DOCS) + copy.deepcopy(IN_FLIGHT_DOCS)
    docs += [
        {"_id": 100 + i, "process_status": "SUCCESS", "current_process_step": None}
        for i in range(3)
    ]
    db[name].insert_many(docs)


def test_dry_run_writes_nothing_and_predicts_the_run(db: Database, migrate: CliInvoker) -> None:
    _mixed_collection(db)
    before = collection_hash(db.jobs)

    dry = migrate("jobs", "--dry-run")

    assert collection_hash(db.jobs) == before
    assert dry.exit_code == 1
    assert "DRY RUN" in dry.stdout
    # Samples show the change the update would make, e.g. the removed legacy field.
    assert 'tasks_status: "CREATED" -> (removed)' in dry.stdout
    assert 'process_status: (absent) -> "READY"' in dry.stdout
    real = migrate("jobs")
    assert dry.report is not None and real.report is not None
    predicted = {k: v for k, v in dry.report["collections"]["jobs"].items() if k != "samples"}
    assert predicted == real.report["collections"]["jobs"]
    assert dry.report["dry_run"] is True and real.report["dry_run"] is False
    samples = dry.report["collections"]["jobs"]["samples"]
    assert {s["row"] for s in samples} == {"ready", "success", "failure"}
    for s in samples:
        written = db.jobs.find_one({"_id": s["before"]["_id"]})
        assert s["after"] == json.loads(
            json_util.dumps(written, json_options=json_util.RELAXED_JSON_OPTIONS)
        )


def test_second_run_changes_nothing(db: Database, migrate: CliInvoker) -> None:
    _mixed_collection(db)
    first = migrate("jobs", "--fail-in-flight")
    assert first.report is not None and first.report["collections"]["jobs"]["migrated_total"] == 23
    after_first = collection_hash(db.jobs)

    second = migrate("jobs", "--fail-in-flight")

    assert collection_hash(db.jobs) == after_first
    assert second.report is not None
    stats = second.report["collections"]["jobs"]
    assert stats["migrated_total"] == 0
    assert stats["already_migrated"] == 20 + len(IN_FLIGHT_DOCS) + 3
    assert stats["invalid"]["count"] == len(INVALID_DOCS)  # still reported, still exit 1
    assert second.exit_code == 1


def test_mode_and_batch_size_do_not_change_the_result(
    db: Database, migrate_cli: CliInvoker
) -> None:
    runs = {}
    for name, options in {
        "whole": (),
        "batch1": ("--batch-size", "1"),
        "batch1000": ("--batch-size", "1000"),
    }.items():
        _mixed_collection(db, name)
        runs[name] = migrate_cli(name, "--fail-in-flight", *options)
    assert collection_state(db.whole) == collection_state(db.batch1)
    assert collection_state(db.whole) == collection_state(db.batch1000)
    reports = {}
    for name, run in runs.items():
        assert run.exit_code == 1 and run.report is not None  # the invalid documents
        reports[name] = run.report["collections"][name]
    assert reports["whole"] == reports["batch1"] == reports["batch1000"]
    assert reports["whole"]["migrated_total"] == 23
    assert runs["whole"].report is not None and runs["batch1"].report is not None
    assert (runs["whole"].report["mode"], runs["whole"].report["batch_size"]) == (
        "whole-collection",
        None,
    )
    assert (runs["batch1"].report["mode"], runs["batch1"].report["batch_size"]) == ("batched", 1)


def test_mixed_id_types(db: Database, migrate: CliInvoker) -> None:
    ids: list[Any] = [
        3,
        2.5,
        "a",
        "b",
        ObjectId(),
        ObjectId(),
        datetime(2020, 1, 1),
        {"k": 1},
        True,
    ]
    db.jobs.insert_many([legacy(i, tasks_status="SUCCESS") for i in ids])
    run = migrate("jobs")
    assert run.exit_code == 0
    assert db.jobs.count_documents({"process_status": "SUCCESS"}) == len(ids)
    assert db.jobs.count_documents({"tasks_status": {"$exists": True}}) == 0


def test_several_collections(db: Database, migrate: CliInvoker) -> None:
    _mixed_collection(db, "uploads")
    db.reports.insert_many([legacy(i, task_status="SUCCESS") for i in range(5)])
    db.untouched.insert_one(legacy(1, tasks_status="SUCCESS"))

    run = migrate("uploads", "reports", "--fail-in-flight")

    assert run.report is not None
    stats = run.report["collections"]
    assert list(stats) == ["uploads", "reports"]
    assert stats["reports"]["migrated"]["SUCCESS"] == 5
    assert stats["uploads"]["migrated_total"] == 23
    assert db.untouched.find_one()["tasks_status"] == "SUCCESS"  # not named, not touched
    assert run.exit_code == 1  # uploads has invalid documents
    assert "uploads" in run.stdout and "reports" in run.stdout


def test_report_caps_id_lists(db: Database, migrate: CliInvoker) -> None:
    db.jobs.insert_many([legacy(i, tasks_status="NOPE") for i in range(30)])
    run = migrate("jobs", "--max-report-ids", "10")
    assert run.report is not None
    invalid = run.report["collections"]["jobs"]["invalid"]
    assert invalid["count"] == 30
    assert len(invalid["documents"]) == 10
    assert invalid["documents_not_listed"] == 20


def test_report_is_complete_json(db: Database, migrate: CliInvoker, mode: str) -> None:
    oid = ObjectId()
    db.jobs.insert_many(
        [
            legacy(oid, tasks_status="BAD"),
            legacy(1, tasks_status="RUNNING"),
            legacy(2, tasks_status="SUCCESS"),
        ]
    )
    run = migrate("jobs")
    assert run.report is not None
    assert run.report["exit_code"] == run.exit_code == 1
    assert run.report["database"] == db.name and run.report["error"] is None
    assert run.report["mode"] == mode
    stats = run.report["collections"]["jobs"]
    assert stats["scanned"] == 3 and stats["already_migrated"] == 0
    assert stats["invalid"]["documents"][0]["_id"] == {"$oid": str(oid)}
    assert stats["in_flight"]["ids"] == [1]
    assert stats["migrated"] == {"READY": 0, "SUCCESS": 1, "FAILURE": 0}


def test_plain_progress_lines_when_not_a_terminal(
    db: Database, migrate: CliInvoker, mode: str
) -> None:
    db.jobs.insert_many([legacy(i, tasks_status="SUCCESS") for i in range(5)])
    run = migrate("jobs")
    if mode == "batched":
        assert "jobs: scanned 5/5 (100%), migrated 5 - done" in run.stderr
    else:
        # One line as each server-side step starts (a step can take minutes), then done.
        assert "jobs: step 2/4: update success -> SUCCESS (migrated so far 0)" in run.stderr
        assert "jobs: step 4/4: list in-flight and invalid documents" in run.stderr
        assert "jobs: 5 documents, migrated 5 - done" in run.stderr
    assert "\x1b[" not in run.stderr  # no terminal control codes in logs


@pytest.mark.parametrize("batch_size", [None, 2])
def test_progress_bar_on_a_terminal(db: Database, batch_size: int | None) -> None:
    db.jobs.insert_many([legacy(i, tasks_status="SUCCESS") for i in range(5)])
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, color_system=None, width=120)
    with _ProgressOutput(console) as progress:
        progress.start("jobs")
        result = migrate_collection(
            db.jobs,
            dry_run=False,
            fail_in_flight=False,
            batch_size=batch_size,
            on_progress=progress.update,
        )
        progress.update(result, done=True)
    text = screen.getvalue()
    assert result.migrated_total == 5
    assert ("4/4 steps" if batch_size is None else "5/5 docs") in text
    assert "\x1b[" in text  # a live bar, not plain lines


def test_document_changed_during_a_whole_collection_run_is_unmatched(db: Database) -> None:
    """A legacy document appearing after its row's update (a worker still running) is reported."""
    db.jobs.insert_many([legacy(i, tasks_status="CREATED") for i in range(3)])
    late = legacy(99, tasks_status="PENDING")

    def worker_writes_after_the_ready_row(result: CollectionResult) -> None:
        if result.steps_done == 1 and db.jobs.find_one({"_id": 99}) is None:
            db.jobs.insert_one(copy.deepcopy(late))

    result = migrate_collection(
        db.jobs, dry_run=False, fail_in_flight=False, on_progress=worker_writes_after_the_ready_row
    )

    assert result.migrated["READY"] == 3
    assert (result.unmatched, result.unmatched_ids.items) == (1, [99])
    assert result.legacy_left == 1  # exit code 1: the operator is told to stop workers, rerun
    assert db.jobs.find_one({"_id": 99}) == late  # untouched


# --- exit code 2 ----------------------------------------------------------------------


def test_unreachable_server_is_a_short_clear_error(migrate_cli: CliInvoker) -> None:
    port = services.free_port()
    run = migrate_cli("jobs", "--server-timeout", "0.5", uri=f"mongodb://127.0.0.1:{port}")
    assert run.exit_code == 2
    assert f"cannot reach MongoDB at mongodb://127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr) < 600
    assert run.report is None  # nothing ran, nothing to report


def test_bad_uri_and_missing_collection_and_missing_option(
    db: Database, migrate: CliInvoker
) -> None:
    db.jobs.insert_one(legacy(1, tasks_status="SUCCESS"))
    bad_uri = migrate("jobs", uri="http://example")
    assert bad_uri.exit_code == 2 and "not a valid MongoDB URI" in bad_uri.stderr
    typo = migrate("jbos")
    assert typo.exit_code == 2 and "jbos not found" in typo.stderr and "jobs" in typo.stderr
    no_collection = migrate()
    assert no_collection.exit_code == 2 and "--collection" in no_collection.stderr
    zero_batch = migrate("jobs", "--batch-size", "0")
    assert zero_batch.exit_code == 2 and "--batch-size" in zero_batch.stderr
    assert db.jobs.find_one()["tasks_status"] == "SUCCESS"  # none of these wrote anything


def test_password_is_not_echoed(migrate_cli: CliInvoker) -> None:
    port = services.free_port()
    run = migrate_cli(
        "jobs", "--server-timeout", "0.3", uri=f"mongodb://ops:s3cret@127.0.0.1:{port}"
    )
    assert run.exit_code == 2
    assert "s3cret" not in run.stderr and "ops:***@" in run.stderr
