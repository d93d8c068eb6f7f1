"""Running the task_status migration over one collection: batching, server-side updates, counting.

No terminal output here (the CLI in :mod:`datafix.migrate_task_status` owns that); progress
goes to a callback. Memory stays flat with collection size: the collection is walked once
with a projected cursor sorted by ``_id`` and handled ``batch_size`` documents at a time;
the only per-document data kept across batches are the report's id lists, capped at
``max_report_ids``.

Per batch, every document is classified (in Python, from a small projection) and each
mapping row gets one ``update_many`` whose filter is that row's :func:`row_filter` narrowed
to the row's ids. The filter, not the Python classification, decides every write, so a
disagreement can only leave a document untouched (it is then reported as *unmatched*),
never write it wrongly. Each document update is atomic and removes the legacy status
field, so an interrupted run is finished by simply running again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.collection import Collection

from datafix.task_status_mapping import (
    ALL_ROWS,
    CLASSIFY_PROJECTION,
    IN_FLIGHT_ROW,
    Outcome,
    Row,
    classify,
    legacy_filter,
    row_filter_for_ids,
    row_pipeline,
)
from procstatus.status import ProcessStatus

# Small batches suit both servers: mongod serves the `_id: {$in}` narrowing from the _id
# index at any size, while SecantusDB matches `$in` linearly per document, so its cost per
# batch grows with the square of the batch size (see benchmarks/datafix_bench.py).
DEFAULT_BATCH_SIZE = 100
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
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_report_ids: int = DEFAULT_MAX_REPORT_IDS,
    on_progress: ProgressCallback | None = None,
) -> CollectionResult:
    """Migrate (or with ``dry_run``, only count) every legacy document of ``coll``."""
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
        elif verdict.outcome is Outcome.INVALID:
            result.invalid += 1
            result.invalid_docs.append({"_id": doc["_id"], "reason": verdict.reason})
        elif verdict.outcome is Outcome.IN_FLIGHT:
            result.in_flight += 1
            result.in_flight_ids.append(doc["_id"])
            if fail_in_flight:
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


def _take_samples(coll: Collection, row: Row, ids: list[Any], result: CollectionResult) -> None:
    taken = sum(1 for s in result.samples if s["row"] == row.name)
    for doc_id in ids[: max(0, SAMPLES_PER_ROW - taken)]:
        flt = row_filter_for_ids(row, [doc_id])
        before = coll.find_one(flt)
        # The update pipeline is also a valid aggregation: "after" is exactly what the
        # update would write, computed by the server, without writing.
        after = next(iter(coll.aggregate([{"$match": flt}, *row_pipeline(row)])), None)
        if before is None or after is None:
            continue
        result.samples.append(
            {"row": row.name, "target": row.target.value, "before": before, "after": after}
        )
