"""The mapping table: Python classification, and that the server filters select the same rows."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pymongo.database import Database

from procstatus.datafix.task_status_mapping import (
    ALL_ROWS,
    CLASSIFY_PROJECTION,
    FAILURE_ROW,
    IN_FLIGHT_ROW,
    READY_ROW,
    SUCCESS_ROW,
    Outcome,
    classify,
    legacy_filter,
    row_filter,
)

MISSING: Any = object()


def doc(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not MISSING}


@pytest.mark.parametrize("spelling", ["tasks_status", "task_status"])
@pytest.mark.parametrize(
    ("legacy", "row"),
    [
        ("CREATED", READY_ROW),
        ("PENDING", READY_ROW),
        ("SUCCESS", SUCCESS_ROW),
        ("FAILURE", FAILURE_ROW),
    ],
)
@pytest.mark.parametrize("process_status", [MISSING, None, "COMPLETED"])
def test_rows_not_in_flight(spelling: str, legacy: str, row: Any, process_status: Any) -> None:
    verdict = classify(doc(**{spelling: legacy}, process_status=process_status, current_task="t"))
    assert verdict.outcome is Outcome.MIGRATE
    assert verdict.row is row


def test_both_spellings_agreeing_migrate() -> None:
    verdict = classify({"tasks_status": "SUCCESS", "task_status": "SUCCESS"})
    assert (verdict.outcome, verdict.row) == (Outcome.MIGRATE, SUCCESS_ROW)


@pytest.mark.parametrize(
    "fields",
    [
        {"tasks_status": "RUNNING"},
        {"task_status": "RUNNING", "process_status": "COMPLETED"},
        {"tasks_status": "SUCCESS", "process_status": "CALLED"},
        {"task_status": "CREATED", "process_status": "RUNNING"},
        {"tasks_status": "RUNNING", "process_status": "RUNNING"},
    ],
)
def test_in_flight(fields: dict[str, Any]) -> None:
    verdict = classify(fields)
    assert (verdict.outcome, verdict.row) == (Outcome.IN_FLIGHT, IN_FLIGHT_ROW)


@pytest.mark.parametrize(
    ("fields", "reason_part"),
    [
        ({"tasks_status": "DONE"}, "tasks_status is 'DONE'"),
        ({"task_status": "success"}, "task_status is 'success'"),  # case matters
        ({"tasks_status": None}, "tasks_status is null"),
        ({"tasks_status": 3}, "tasks_status is a int"),
        ({"tasks_status": ["SUCCESS"]}, "tasks_status is a list"),
        ({"tasks_status": "SUCCESS", "task_status": "FAILURE"}, "disagree"),
        ({"tasks_status": "SUCCESS", "task_status": None}, "task_status is null"),
        (
            {"tasks_status": "SUCCESS", "process_status": "SUCCESS"},
            "legacy process_status is 'SUCCESS'",
        ),
        (
            {"tasks_status": "SUCCESS", "process_status": ["RUNNING"]},
            "legacy process_status is a list",
        ),
        ({"tasks_status": "SUCCESS", "current_task": 7}, "current_task is a int"),
        ({"tasks_status": "SUCCESS", "current_task": ["a"]}, "current_task is a list"),
        ({"tasks_status": "FAILURE", "errors": "boom"}, "errors is 'boom'"),
        (
            {"tasks_status": "RUNNING", "process_status": "WEIRD"},
            "legacy process_status",
        ),  # invalid beats in flight
    ],
)
def test_invalid(fields: dict[str, Any], reason_part: str) -> None:
    verdict = classify(fields)
    assert verdict.outcome is Outcome.INVALID
    assert verdict.reason is not None and reason_part in verdict.reason


def test_without_status_field_is_not_legacy() -> None:
    assert classify({"process_status": "SUCCESS", "current_process_step": "x"}).outcome is (
        Outcome.NOT_LEGACY
    )
    assert classify({}).outcome is Outcome.NOT_LEGACY


# Values chosen to hit every branch of the filters: valid words, unknown words, null, other
# scalar types, and arrays (which MongoDB queries would otherwise match element-wise).
STATUS_VALUES = [
    MISSING,
    None,
    "CREATED",
    "PENDING",
    "RUNNING",
    "SUCCESS",
    "FAILURE",
    "BOGUS",
    ["SUCCESS"],
    5,
]
PROCESS_STATUS_VALUES = [
    MISSING,
    None,
    "CALLED",
    "RUNNING",
    "COMPLETED",
    "DONE",
    ["RUNNING"],
    [None],
]
CURRENT_TASK_VALUES = [MISSING, None, "step", 3, ["step"], [None]]
ERRORS_VALUES = [MISSING, None, [], ["e1", "e2"], "e", [None], {"e": 1}]


def _matrix() -> list[dict[str, Any]]:
    docs = []
    pairs = list(itertools.product(CURRENT_TASK_VALUES, ERRORS_VALUES))
    combos = itertools.product(STATUS_VALUES, STATUS_VALUES, PROCESS_STATUS_VALUES)
    for i, (tasks_status, task_status, ps) in enumerate(combos):
        for rotation in (0, 13, 29):  # three different (current_task, errors) pairs per combo
            current_task, errors = pairs[(i + rotation) % len(pairs)]
            docs.append(
                doc(
                    _id=len(docs),
                    tasks_status=tasks_status,
                    task_status=task_status,
                    process_status=ps,
                    current_task=current_task,
                    errors=errors,
                    domain="kept",
                )
            )
    # Every valid status spelling with every (current_task, errors) pair, so each row is
    # exercised against each type rule.
    valid = [s for s in STATUS_VALUES if isinstance(s, str) and s != "BOGUS"]
    spellings = (
        [(s, MISSING) for s in valid] + [(MISSING, s) for s in valid] + [(s, s) for s in valid]
    )
    for (tasks_status, task_status), ps, (current_task, errors) in itertools.product(
        spellings, [MISSING, None, "CALLED", "RUNNING", "COMPLETED"], pairs
    ):
        docs.append(
            doc(
                _id=len(docs),
                tasks_status=tasks_status,
                task_status=task_status,
                process_status=ps,
                current_task=current_task,
                errors=errors,
            )
        )
    return docs


def test_server_filters_select_exactly_the_classified_rows(db: Database) -> None:
    """The filters (which decide every write) and the classifier (which decides reports) agree."""
    docs = _matrix()
    db.matrix.insert_many(docs)

    expected: dict[str, set[int]] = {row.name: set() for row in ALL_ROWS}
    expected_invalid: set[int] = set()
    for d in docs:
        verdict = classify(d)
        if verdict.row is not None:
            expected[verdict.row.name].add(d["_id"])
        elif verdict.outcome is Outcome.INVALID:
            expected_invalid.add(d["_id"])
    # The matrix must exercise every outcome, or this test proves little.
    assert all(len(ids) >= 100 for ids in expected.values()), {
        k: len(v) for k, v in expected.items()
    }
    assert len(expected_invalid) > 1000

    selected: dict[str, set[int]] = {
        row.name: {d["_id"] for d in db.matrix.find(row_filter(row), {"_id": 1})}
        for row in ALL_ROWS
    }
    for row in ALL_ROWS:
        assert selected[row.name] == expected[row.name], row.name

    # Rows are disjoint and, with the invalid documents, cover every legacy document.
    legacy = {d["_id"] for d in db.matrix.find(legacy_filter(), {"_id": 1})}
    union: set[int] = set()
    for ids in selected.values():
        assert not union & ids
        union |= ids
    assert legacy - union == expected_invalid
    assert union <= legacy


def test_classify_needs_only_the_projection(db: Database) -> None:
    """The runner classifies projected documents; the projection must not change verdicts."""
    docs = _matrix()[::7]
    db.matrix.insert_many(docs)
    for projected in db.matrix.find({}, CLASSIFY_PROJECTION):
        original = docs[projected["_id"] // 7]
        assert classify(projected) == classify(original), original
