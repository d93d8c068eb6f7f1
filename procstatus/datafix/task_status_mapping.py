"""The legacy tasks_status -> process_status mapping: row filters, update pipelines, classifier.

Pure: no I/O. Everything the migration decides about a document is decided here, in two
forms that must agree:

* :func:`row_filter` — the MongoDB query selecting exactly one mapping row's documents.
  Counting (dry run) and updating both use it, so the server is the final judge of every
  write: a document is only ever changed by an update whose filter it matches.
* :func:`classify` — the same decision in Python, for a projected document. The runner uses
  it to group a batch's ids by row (so each document is read by exactly one update) and to
  give every skipped document a reason. Tests check both forms agree on a matrix of shapes.

Validity rules (a legacy document is migrated only if all hold; otherwise it is *invalid*):

* ``tasks_status`` / ``task_status``: a string in :data:`LEGACY_TASK_STATUSES`. When both
  spellings are present they must be equal (a disagreement, including null vs a value, is
  invalid: we cannot tell which one is true).
* legacy ``process_status``: missing, null, or a string in :data:`LEGACY_PROCESS_STATUSES`.
* ``current_task``: missing, null or a string (it becomes ``current_process_step``).
* ``errors``: missing, null or a list (FAILURE messages read its last entry and
  ``--fail-in-flight`` appends to it).

Arrays are excluded explicitly in every filter because a MongoDB query on a scalar value
also matches an array *containing* that value (``{f: "SUCCESS"}`` matches ``["SUCCESS"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from procstatus.status import ProcessStatus

TASKS_STATUS = "tasks_status"
TASK_STATUS = "task_status"  # the spelling some databases use
STATUS_FIELDS: tuple[str, str] = (TASKS_STATUS, TASK_STATUS)

LEGACY_TASK_STATUSES: tuple[str, ...] = ("CREATED", "PENDING", "RUNNING", "SUCCESS", "FAILURE")
LEGACY_PROCESS_STATUSES: tuple[str, ...] = ("CALLED", "RUNNING", "COMPLETED")  # or null/missing
IN_FLIGHT_PROCESS_STATUSES: tuple[str, ...] = ("CALLED", "RUNNING")
IN_FLIGHT_TASK_STATUS = "RUNNING"

REMOVED_FIELDS: tuple[str, ...] = (TASKS_STATUS, TASK_STATUS, "current_task", "tasks")

READY_MESSAGE = "Ready (migrated)"
INTERRUPTED_ERROR = (
    "Interrupted by the task_status data migration: the process was still in flight "
    "when workers were stopped"
)

_NOT_ARRAY: dict[str, Any] = {"$not": {"$type": "array"}}


class Outcome(str, Enum):
    """What the migration does with one document."""

    MIGRATE = "migrate"
    IN_FLIGHT = "in_flight"
    INVALID = "invalid"
    NOT_LEGACY = "not_legacy"  # counted as already migrated


@dataclass(frozen=True)
class Row:
    """One row of the mapping table: which legacy documents, and what they become."""

    name: str
    target: ProcessStatus
    legacy_task_statuses: tuple[str, ...]
    in_flight: bool = False


READY_ROW = Row("ready", ProcessStatus.READY, ("CREATED", "PENDING"))
SUCCESS_ROW = Row("success", ProcessStatus.SUCCESS, ("SUCCESS",))
FAILURE_ROW = Row("failure", ProcessStatus.FAILURE, ("FAILURE",))
# Only written with --fail-in-flight; otherwise its documents are counted and left alone.
IN_FLIGHT_ROW = Row("in_flight", ProcessStatus.FAILURE, LEGACY_TASK_STATUSES, in_flight=True)

MIGRATION_ROWS: tuple[Row, ...] = (READY_ROW, SUCCESS_ROW, FAILURE_ROW)
ALL_ROWS: tuple[Row, ...] = MIGRATION_ROWS + (IN_FLIGHT_ROW,)


@dataclass(frozen=True)
class Classification:
    outcome: Outcome
    row: Row | None = None
    reason: str | None = None  # set for INVALID


# --- filters --------------------------------------------------------------------------


def legacy_filter() -> dict[str, Any]:
    """Documents still in the legacy scheme: they carry either status spelling."""
    return {"$or": [{f: {"$exists": True}} for f in STATUS_FIELDS]}


def _status_in(statuses: tuple[str, ...]) -> dict[str, Any]:
    """The effective legacy task status is one of ``statuses``, under either spelling.

    Both spellings present only counts when they hold the same value. Each clause tests
    the status value first, so a document of another row is rejected after one or two
    field lookups: SecantusDB evaluates filters in Python, and whole-collection updates
    evaluate every row's filter on every document.
    """
    values = list(statuses)
    return {
        "$or": [
            {TASKS_STATUS: {"$in": values, **_NOT_ARRAY}, TASK_STATUS: {"$exists": False}},
            {TASK_STATUS: {"$in": values, **_NOT_ARRAY}, TASKS_STATUS: {"$exists": False}},
            # Both present: equal (strict BSON equality, so task_status is then in
            # `statuses` and not an array too).
            {
                TASKS_STATUS: {"$in": values, **_NOT_ARRAY},
                "$expr": {"$eq": [f"${TASKS_STATUS}", f"${TASK_STATUS}"]},
            },
        ]
    }


def _process_status_in(statuses: tuple[str | None, ...]) -> dict[str, Any]:
    # {$in: [null]} also matches a missing field, which is what we want.
    return {"process_status": {"$in": list(statuses), **_NOT_ARRAY}}


def _string_or_null(field: str) -> dict[str, Any]:
    # The common case (a value of the right type) first: $or stops at the first match.
    return {
        "$or": [{field: {"$type": ["string", "null"], **_NOT_ARRAY}}, {field: {"$exists": False}}]
    }


def _list_or_null(field: str) -> dict[str, Any]:
    return {"$or": [{field: {"$type": ["array", "null"]}}, {field: {"$exists": False}}]}


def _well_typed() -> list[dict[str, Any]]:
    """The validity rules that do not depend on the row."""
    return [_string_or_null("current_task"), _list_or_null("errors")]


def row_filter(row: Row) -> dict[str, Any]:
    """The query selecting exactly ``row``'s documents (the single source for count and update)."""
    not_in_flight_ps: tuple[str | None, ...] = (None, "COMPLETED")
    if row.in_flight:
        # In flight: a valid legacy document whose process was called/running, or whose task
        # was running (with an otherwise valid, not-in-flight process_status).
        state: dict[str, Any] = {
            "$or": [
                {
                    "$and": [
                        _status_in(LEGACY_TASK_STATUSES),
                        _process_status_in(IN_FLIGHT_PROCESS_STATUSES),
                    ]
                },
                {
                    "$and": [
                        _status_in((IN_FLIGHT_TASK_STATUS,)),
                        _process_status_in(not_in_flight_ps),
                    ]
                },
            ]
        }
    else:
        state = {
            "$and": [_status_in(row.legacy_task_statuses), _process_status_in(not_in_flight_ps)]
        }
    return {"$and": [state, *_well_typed()]}


def row_filter_for_ids(row: Row, ids: list[Any]) -> dict[str, Any]:
    """``row_filter`` narrowed to one batch's ids (a point lookup on every server)."""
    return {"_id": {"$in": ids}, **row_filter(row)}


# --- update pipelines -----------------------------------------------------------------


def _process_name_part() -> dict[str, Any]:
    """``" <current_process>"`` when it is a non-empty string, else ``""``."""
    return {
        "$cond": [
            {
                "$and": [
                    {"$eq": [{"$type": "$current_process"}, "string"]},
                    {"$ne": ["$current_process", ""]},
                ]
            },
            {"$concat": [" ", "$current_process"]},
            "",
        ]
    }


def _last_error_part() -> dict[str, Any]:
    """``": <last error>"`` when the last entry of ``errors`` is a string, else ``""``."""
    return {
        "$let": {
            "vars": {"last": {"$arrayElemAt": [{"$ifNull": ["$errors", []]}, -1]}},
            "in": {
                "$cond": [
                    {"$eq": [{"$type": "$$last"}, "string"]},
                    {"$concat": [": ", "$$last"]},
                    "",
                ]
            },
        }
    }


def _default_message(target: ProcessStatus) -> Any:
    if target is ProcessStatus.SUCCESS:
        return {"$concat": ["Process", _process_name_part(), " completed successfully"]}
    if target is ProcessStatus.FAILURE:
        return {"$concat": ["Process", _process_name_part(), " failed", _last_error_part()]}
    return {"$literal": READY_MESSAGE}


def row_pipeline(row: Row) -> list[dict[str, Any]]:
    """The aggregation-pipeline update turning one of ``row``'s documents into the new scheme.

    Also valid as aggregation stages, which is how the dry run shows "after" samples.
    """
    stages: list[dict[str, Any]] = []
    if row.in_flight:
        # Appended before the message is computed, so "failed: <last error>" names it.
        stages.append(
            {
                "$set": {
                    "errors": {"$concatArrays": [{"$ifNull": ["$errors", []]}, [INTERRUPTED_ERROR]]}
                }
            }
        )
    stages.append(
        {
            "$set": {
                "process_status": {"$literal": row.target.value},
                # $ifNull turns a missing current_task into an explicit null step.
                "current_process_step": {"$ifNull": ["$current_task", None]},
                "last_status_message": {
                    "$cond": [
                        {"$eq": [{"$ifNull": ["$last_status_message", ""]}, ""]},
                        _default_message(row.target),
                        "$last_status_message",
                    ]
                },
            }
        }
    )
    stages.append({"$unset": list(REMOVED_FIELDS)})
    return stages


# --- classification (the same rules, in Python) ---------------------------------------

CLASSIFY_PROJECTION: dict[str, Any] = {
    TASKS_STATUS: 1,
    TASK_STATUS: 1,
    "process_status": 1,
    "current_task": 1,
    # Only the type of errors matters here; never ship a long error list to the client.
    "errors": {"$slice": -1},
}

_MISSING = object()


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return f"a {type(value).__name__} ({value!r:.60})"


def classify(doc: Mapping[str, Any]) -> Classification:
    """Decide what happens to ``doc`` (a document, or its :data:`CLASSIFY_PROJECTION`)."""
    present = {f: doc[f] for f in STATUS_FIELDS if f in doc}
    if not present:
        return Classification(Outcome.NOT_LEGACY)

    for field, value in present.items():
        if not isinstance(value, str) or value not in LEGACY_TASK_STATUSES:
            return Classification(
                Outcome.INVALID,
                reason=f"{field} is {_describe(value)}, expected one of "
                + ", ".join(LEGACY_TASK_STATUSES),
            )
    if len(present) == 2 and present[TASKS_STATUS] != present[TASK_STATUS]:
        return Classification(
            Outcome.INVALID,
            reason=f"tasks_status {present[TASKS_STATUS]!r} and task_status "
            f"{present[TASK_STATUS]!r} disagree",
        )
    task_status: str = next(iter(present.values()))

    process_status = doc.get("process_status")
    if process_status is not None and (
        not isinstance(process_status, str) or process_status not in LEGACY_PROCESS_STATUSES
    ):
        return Classification(
            Outcome.INVALID,
            reason=f"legacy process_status is {_describe(process_status)}, expected null, "
            + ", ".join(LEGACY_PROCESS_STATUSES),
        )
    current_task = doc.get("current_task")
    if current_task is not None and not isinstance(current_task, str):
        return Classification(
            Outcome.INVALID, reason=f"current_task is {_describe(current_task)}, expected a string"
        )
    errors = doc.get("errors")
    if errors is not None and not isinstance(errors, list):
        return Classification(
            Outcome.INVALID, reason=f"errors is {_describe(errors)}, expected a list"
        )

    if process_status in IN_FLIGHT_PROCESS_STATUSES or task_status == IN_FLIGHT_TASK_STATUS:
        return Classification(Outcome.IN_FLIGHT, row=IN_FLIGHT_ROW)
    for row in MIGRATION_ROWS:
        if task_status in row.legacy_task_statuses:
            return Classification(Outcome.MIGRATE, row=row)
    raise AssertionError(f"unreachable: {task_status!r} has no row")  # pragma: no cover
