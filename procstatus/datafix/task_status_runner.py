"""Running the task_status migration over one collection: the two run modes, counting, the report.

No terminal output here (the CLI in :mod:`procstatus.datafix.migrate_task_status` owns
that); progress goes to a callback. Every write is an ``update_many`` whose filter is one
mapping row's :func:`~procstatus.datafix.task_status_mapping.row_filter` and whose update is
that row's pipeline, so the server decides every write; each document update is atomic and
removes the legacy status field, so an interrupted run is finished by simply running again.

* **Whole-collection mode** (the default, ``batch_size=None``): one ``update_many`` per
  mapping row over the whole collection; the counts come from the updates. Then one
  streamed ``find`` of the legacy documents that are left (in flight, invalid, or changed
  concurrently), classified in Python to give each a reason. With ``fail_in_flight`` the
  in-flight ids are listed (``find`` with ``{_id: 1}`` on the row's filter) before their
  update. A dry run counts each row instead of updating it and lists the legacy documents
  no row selects. Fewest commands and scans; an update already sent runs to its end on
  the server even if this process dies.
* **Batched mode** (``batch_size=N``): the collection is walked once with a projected
  cursor sorted by ``_id``, ``N`` documents at a time; every document is classified and
  each row gets one ``update_many`` narrowed to its ids. Many more commands, but work
  stops within one batch of an interrupt.

Memory stays flat with collection size in both modes: cursors are streamed, and the only
per-document data kept are the report's id lists, capped at ``max_report_ids``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.collection import Collection

from procstatus.datafix.task_status_mapping import (
    ALL_ROWS,
    CLASSIFY_PROJECTION,
    IN_FLIGHT_ROW,
    MIGRATION_ROWS,
    Classification,
    Outcome,
    Row,
    classify,
    legacy_filter,
    row_filter,
    row_filter_for_ids,
    row_pipeline,
)
from procstatus.status import ProcessStatus

# For batched mode (--batch-size). Small batches suit both servers: mongod serves the
# `_id: {$in}` narrowing from the _id index at any size, while SecantusDB matches `$in`
# linearly per document, so its cost per batch grows with the square of the batch size
# (see benchmarks/datafix_bench.py).
SUGGESTED_BATCH_SIZE = 100
# Documents per reply of the streamed cursors (report listing) in whole-collection mode.
CURSOR_BATCH_SIZE = 1_000
WHOLE_COLLECTION = "whole-collection"
BATCHED = "batched"
DEFAULT_MAX_REPORT_IDS = 10_000
SAMPLES_PER_ROW = 2

ProgressCallback = Callable[["CollectionResult"], None]


@dataclass
class CappedList:
    """A list that keeps the first ``limit`` items and counts the rest."""

    limit: int
    items: list[Any] = field(default_factory=list)
    dropped: int = 0

    def append(self, item: Any) -> None:
        if len(self.items) < self.limit:
            self.items.append(item)
        else:
            self.dropped += 1


@dataclass
class CollectionResult:
    """What one run did (or, in a dry run, would do) to one collection."""

    name: str
    total_estimate: int
    max_report_ids: int
    mode: str = BATCHED
    scanned: int = 0
    already_migrated: int = 0
    migrated: dict[str, int] = field(
        default_factory=lambda: {
            s.value: 0 for s in (ProcessStatus.READY, ProcessStatus.SUCCESS, ProcessStatus.FAILURE)
        }
    )
    in_flight: int = 0
    in_flight_failed: int = 0  # in-flight documents set to FAILURE (--fail-in-flight)
    invalid: int = 0
    unmatched: int = 0  # classified as migratable but their row's filter did not match them
    in_flight_ids: CappedList = field(init=False)
    invalid_docs: CappedList = field(init=False)
    unmatched_ids: CappedList = field(init=False)
    samples: list[dict[str, Any]] = field(default_factory=list)
    # Whole-collection mode reports progress per step (one per row, then the listing).
    steps_total: int = 0
    steps_done: int = 0
    step: str = ""

    def __post_init__(self) -> None:
        self.in_flight_ids = CappedList(self.max_report_ids)
        self.invalid_docs = CappedList(self.max_report_ids)
        self.unmatched_ids = CappedList(self.max_report_ids)

    @property
    def migrated_total(self) -> int:
        return sum(self.migrated.values()) + self.in_flight_failed

    @property
    def legacy_left(self) -> int:
        """Legacy documents this run did not (or would not) migrate."""
        return (self.in_flight - self.in_flight_failed) + self.invalid + self.unmatched

    def to_report(self) -> dict[str, Any]:
        def ids(capped: CappedList) -> dict[str, Any]:
            out: dict[str, Any] = {"ids": capped.items}
            if capped.dropped:
                out["ids_truncated"] = True
                out["ids_not_listed"] = capped.dropped
            return out

        report: dict[str, Any] = {
            "scanned": self.scanned,
            "already_migrated": self.already_migrated,
            "migrated": dict(self.migrated),
            "migrated_total": self.migrated_total,
            "in_flight": {
                "count": self.in_flight,
                "failed": self.in_flight_failed,
                "skipped": self.in_flight - self.in_flight_failed,
                **ids(self.in_flight_ids),
            },
            "invalid": {"count": self.invalid, "documents": self.invalid_docs.items},
            "unmatched": {"count": self.unmatched, **ids(self.unmatched_ids)},
        }
        if self.invalid_docs.dropped:
            report["invalid"]["documents_truncated"] = True
            report["invalid"]["documents_not_listed"] = self.invalid_docs.dropped
        if self.samples:
            report["samples"] = self.samples
        return report


def migrate_collection(
    coll: Collection,
    *,
    dry_run: bool,
    fail_in_flight: bool,
    batch_size: int | None = None,
    max_report_ids: int = DEFAULT_MAX_REPORT_IDS,
    on_progress: ProgressCallback | None = None,
) -> CollectionResult:
    """Migrate (or with ``dry_run``, only count) every legacy document of ``coll``.

    ``batch_size=None`` runs in whole-collection mode, an int in batched mode.
    """
    if batch_size is None:
        return _migrate_whole(
            coll,
            dry_run=dry_run,
            fail_in_flight=fail_in_flight,
            max_report_ids=max_report_ids,
            on_progress=on_progress,
        )
    return _migrate_batched(
        coll,
        dry_run=dry_run,
        fail_in_flight=fail_in_flight,
        batch_size=batch_size,
        max_report_ids=max_report_ids,
        on_progress=on_progress,
    )


# --- whole-collection mode ------------------------------------------------------------


def _migrate_whole(
    coll: Collection,
    *,
    dry_run: bool,
    fail_in_flight: bool,
    max_report_ids: int,
    on_progress: ProgressCallback | None,
) -> CollectionResult:
    # The count command without a query: collection metadata on mongod, no document read.
    # Only `scanned` and `already_migrated` depend on it; nothing written does.
    result = CollectionResult(
        coll.name, coll.estimated_document_count(), max_report_ids, mode=WHOLE_COLLECTION
    )
    rows = MIGRATION_ROWS + ((IN_FLIGHT_ROW,) if fail_in_flight else ())
    result.steps_total = len(rows) + 1

    def step(description: str | None = None) -> None:
        if description is None:
            result.steps_done += 1
        else:
            result.step = description
        if on_progress:
            on_progress(result)

    for row in rows:
        verb = "count" if dry_run else "update"
        step(f"{verb} {row.name} -> {row.target.value}")
        if row is IN_FLIGHT_ROW:
            # List them before they stop being in flight: the report names what was failed.
            listed = 0
            with coll.find(
                row_filter(row), {"_id": 1}, sort=[("_id", 1)], batch_size=CURSOR_BATCH_SIZE
            ) as cursor:
                for doc in cursor:
                    listed += 1
                    result.in_flight_ids.append(doc["_id"])
            if dry_run:
                written = listed
                if listed:
                    _take_samples(coll, row, None, result)
            else:
                written = _update_row(coll, row)
            result.in_flight += written
            result.in_flight_failed += written
        else:
            if dry_run:
                written = coll.count_documents(row_filter(row))
                if written:
                    _take_samples(coll, row, None, result)
            else:
                written = _update_row(coll, row)
            result.migrated[row.target.value] += written
        step()

    # Whatever is still legacy now (in a dry run: what no row selects) is left behind.
    left = legacy_filter()
    if dry_run:
        left = {"$and": [left, {"$nor": [row_filter(row) for row in rows]}]}
    step("list in-flight and invalid documents")
    with coll.find(
        left, CLASSIFY_PROJECTION, sort=[("_id", 1)], batch_size=CURSOR_BATCH_SIZE
    ) as cursor:
        for doc in cursor:
            _record_left_behind(doc, result)
    legacy = result.migrated_total + result.legacy_left
    result.scanned = max(result.total_estimate, legacy)
    result.already_migrated = result.scanned - legacy
    step()
    return result


def _update_row(coll: Collection, row: Row) -> int:
    return coll.update_many(row_filter(row), row_pipeline(row)).modified_count


def _record_skipped(
    doc: dict[str, Any], verdict: Classification, result: CollectionResult
) -> bool:
    """Count and list an invalid or in-flight document; ``False`` for any other verdict."""
    if verdict.outcome is Outcome.INVALID:
        result.invalid += 1
        result.invalid_docs.append({"_id": doc["_id"], "reason": verdict.reason})
        return True
    if verdict.outcome is Outcome.IN_FLIGHT:
        result.in_flight += 1
        result.in_flight_ids.append(doc["_id"])
        return True
    return False


def _record_left_behind(doc: dict[str, Any], result: CollectionResult) -> None:
    """Count and list one legacy document that no update wrote."""
    verdict = classify(doc)
    if _record_skipped(doc, verdict, result):
        # In flight: skipped (without --fail-in-flight; with it, only if it changed
        # under the update).
        return
    if verdict.outcome is Outcome.MIGRATE:
        # Its row's update ran but did not match it: it changed (or appeared) meanwhile.
        result.unmatched += 1
        result.unmatched_ids.append(doc["_id"])


# --- batched mode ---------------------------------------------------------------------


def _migrate_batched(
    coll: Collection,
    *,
    dry_run: bool,
    fail_in_flight: bool,
    batch_size: int,
    max_report_ids: int,
    on_progress: ProgressCallback | None,
) -> CollectionResult:
    result = CollectionResult(coll.name, coll.estimated_document_count(), max_report_ids)
    # One cursor for the whole walk: keyset queries (`_id > last`) would be bracketed by
    # BSON type and miss documents when a collection mixes _id types.
    cursor = coll.find({}, CLASSIFY_PROJECTION, sort=[("_id", 1)], batch_size=batch_size)
    batch: list[dict[str, Any]] = []
    with cursor:
        for doc in cursor:
            batch.append(doc)
            if len(batch) >= batch_size:
                _run_batch(coll, batch, result, dry_run=dry_run, fail_in_flight=fail_in_flight)
                batch = []
                if on_progress:
                    on_progress(result)
        if batch:
            _run_batch(coll, batch, result, dry_run=dry_run, fail_in_flight=fail_in_flight)
    if on_progress:
        on_progress(result)
    return result


def _run_batch(
    coll: Collection,
    docs: list[dict[str, Any]],
    result: CollectionResult,
    *,
    dry_run: bool,
    fail_in_flight: bool,
) -> None:
    groups: dict[Row, list[Any]] = {}
    for doc in docs:
        result.scanned += 1
        verdict = classify(doc)
        if verdict.outcome is Outcome.NOT_LEGACY:
            result.already_migrated += 1
        elif _record_skipped(doc, verdict, result):
            if fail_in_flight and verdict.outcome is Outcome.IN_FLIGHT:
                groups.setdefault(IN_FLIGHT_ROW, []).append(doc["_id"])
        else:
            assert verdict.row is not None
            groups.setdefault(verdict.row, []).append(doc["_id"])

    for row in ALL_ROWS:  # fixed order: runs are reproducible
        ids = groups.get(row)
        if not ids:
            continue
        flt = row_filter_for_ids(row, ids)
        if dry_run:
            matched = coll.count_documents(flt)
            if len(result.samples) < SAMPLES_PER_ROW * len(ALL_ROWS):
                _take_samples(coll, row, ids, result)
        else:
            matched = coll.update_many(flt, row_pipeline(row)).matched_count
        if row is IN_FLIGHT_ROW:
            result.in_flight_failed += matched
        else:
            result.migrated[row.target.value] += matched
        if matched != len(ids):
            _record_unmatched(coll, row, ids, result, dry_run=dry_run)


def _record_unmatched(
    coll: Collection, row: Row, ids: list[Any], result: CollectionResult, *, dry_run: bool
) -> None:
    """Find the documents the classifier gave to ``row`` but ``row``'s filter did not match.

    Only reached when a document changed between the read and the write (workers must be
    stopped), or if classifier and filter ever disagreed: either way the document was not
    written, and it is reported so the operator can look and rerun.
    """
    if dry_run:
        matched = {repr(d["_id"]) for d in coll.find(row_filter_for_ids(row, ids), {"_id": 1})}
        left = [i for i in ids if repr(i) not in matched]
    else:
        # Migrated documents are no longer legacy; whatever still is was not written.
        left = [d["_id"] for d in coll.find({"_id": {"$in": ids}, **legacy_filter()}, {"_id": 1})]
    if row is IN_FLIGHT_ROW:
        # Still counted in `in_flight`; they stay skipped rather than failed.
        return
    result.unmatched += len(left)
    for i in left:
        result.unmatched_ids.append(i)


def _take_samples(
    coll: Collection, row: Row, ids: list[Any] | None, result: CollectionResult
) -> None:
    """Add up to SAMPLES_PER_ROW before/after pairs for ``row`` (from ``ids``, or any of its).

    The update pipeline is also a valid aggregation: "after" is exactly what the update
    would write, computed by the server, without writing. One aggregation gives both.
    """
    taken = sum(1 for s in result.samples if s["row"] == row.name)
    wanted = max(0, SAMPLES_PER_ROW - taken)
    if not wanted:
        return
    flt = row_filter(row) if ids is None else row_filter_for_ids(row, ids[:wanted])
    pipeline: list[dict[str, Any]] = [
        {"$match": flt},
        {"$limit": wanted},
        {"$set": {_BEFORE: "$$ROOT"}},
        *row_pipeline(row),
    ]
    for after in coll.aggregate(pipeline):
        before = after.pop(_BEFORE)
        result.samples.append(
            {"row": row.name, "target": row.target.value, "before": before, "after": after}
        )


_BEFORE = "__datafix_sample_before"
