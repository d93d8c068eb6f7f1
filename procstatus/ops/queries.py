"""The read-only status queries of the operator layer (``procstatus`` CLI and dashboard).

Pure functions over the collections of :class:`~procstatus.ops.sources.Source` that
return plain dataclasses and dicts and print nothing: counts by status (:func:`counts`),
lists of documents (:func:`list_documents`, :func:`count_matching`), where an id lives
(:func:`find_id`), one document's status fields (:func:`show`), and :func:`status_json`,
the shape of ``status --json``. Every query is answered through an index of the ``Proc``
base class — ``process_status`` and ``(process_status, status_changed_at)`` — or through
``_id``; ``tests/unit/test_queries.py`` runs ``explain`` on each command they send and
checks it (a parent's children: :mod:`procstatus.ops.family`).
Counts come from the server (an aggregation on ``process_status``, ``count_documents``);
no query here loads documents to count them.

Ages and time windows ("older than 10 m", "failed in the last hour") are measured
against the server's clock (:func:`now_of`, one ``hello``), the clock that wrote the
stored times, so an operator's host whose clock is off still sees true ages.

This module imports neither Celery nor mongoengine's documents, so a read-only tool
that knows only a database (no app module) can use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection

from procstatus.clock import aware, server_now, utcnow
from procstatus.ops.sources import Source
from procstatus.ops.values import (
    PROCESSING_STATUSES,
    STATUSES,
    jsonable,
    progress_fraction,
    rounded,
    seconds_since,
)
from procstatus.status import ProcessStatus

DEFAULT_LIMIT = 50
FAILURE_WINDOW = 3600.0
"""Seconds back that :func:`counts` counts failures over: the hour of ``status``'s
"failures in the last hour" (``ClassCounts.failures_last_hour``), in the CLI and the
dashboard alike."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def now_of(sources: Sequence[Source]) -> datetime:
    """The server's time (one ``hello``), to measure the stored times of ``sources``
    against; this host's clock when there is no source to ask."""
    return server_now(sources[0].collection.database) if sources else utcnow()
_INSTANCE_ID = re.compile(r"^[0-9a-f]{32}$")
"""A worker instance id (``uuid4().hex``), as opposed to a hostname."""

LIST_FIELDS: dict[str, int] = {  # what a :class:`Row` is made of
    name: 1
    for name in (
        "process_status", "current_process", "current_process_step", "errors", "warnings",
        "last_status_message", "progress_done", "progress_total", "worker_hostname",
        "worker_instance", "worker_pid", "celery_task_id", "create_time", "start_time",
        "complete_time", "status_changed_at",
    )
}
STATUS_FIELDS: tuple[str, ...] = (
    "process_status", "current_process", "current_process_step", "progress_done",
    "progress_total", "errors", "warnings", "last_status_message", "create_time",
    "start_time", "complete_time", "status_changed_at", "worker_hostname",
    "worker_instance", "worker_pid", "celery_task_id", "process_arguments", "joining",
    "call_queue",
)
"""The status fields :func:`show` returns, in this order: those the state machine writes
(:data:`procstatus.transitions.STATE_FIELDS`) less ``worker_redelivers`` (the worker's
own redelivery bookkeeping), plus ``create_time``."""


# --- counts ----------------------------------------------------------------------------


@dataclass
class ClassCounts:
    """How many documents of one class are in each status, and the oldest under way."""

    name: str
    collection: str
    counts: dict[str, int]
    oldest_pending: datetime | None = None
    """When the longest-waiting PENDING document became PENDING."""
    oldest_running: datetime | None = None
    """When the longest-running RUNNING document started."""
    failures_last_hour: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or utcnow()
        return {
            "class": self.name,
            "collection": self.collection,
            "counts": dict(self.counts),
            "total": self.total,
            "processing": sum(self.counts[s] for s in PROCESSING_STATUSES),
            "oldest_pending_at": jsonable(self.oldest_pending),
            "oldest_pending_age_s": rounded(seconds_since(self.oldest_pending, now)),
            "oldest_running_at": jsonable(self.oldest_running),
            "oldest_running_age_s": rounded(seconds_since(self.oldest_running, now)),
            "failures_last_hour": self.failures_last_hour,
        }


def count_pipeline() -> list[dict[str, Any]]:
    """Documents per status, grouped on the indexed ``process_status`` alone."""
    return [
        {"$match": {"process_status": {"$in": list(STATUSES)}}},
        {"$group": {"_id": "$process_status", "n": {"$sum": 1}}},
    ]


def _oldest(collection: Collection, status: str) -> datetime | None:
    # The (process_status, status_changed_at) index gives the first key directly (a range,
    # not $ne: null, which SecantusDB answers with a collection scan).
    first = collection.find_one(
        {"process_status": status, "status_changed_at": {"$gte": _EPOCH}},
        {"status_changed_at": 1, "_id": 0},
        sort=[("process_status", ASCENDING), ("status_changed_at", ASCENDING)],
    )
    return aware(first.get("status_changed_at")) if first else None


def counts(
    source: Source, *, now: datetime | None = None, failure_window: float = FAILURE_WINDOW
) -> ClassCounts:
    """Counts by status for one source, every status present (0 when none).

    Four commands, none of which returns a document: the per-status counts (one
    aggregation), the oldest PENDING and RUNNING change (one index key each) and the
    failures within ``failure_window`` seconds (``count_documents``).
    """
    now = now or now_of([source])
    collection = source.collection
    by_status = dict.fromkeys(STATUSES, 0)
    for row in collection.aggregate(count_pipeline()):
        if row["_id"] in by_status:
            by_status[row["_id"]] = int(row["n"])
    since = now - timedelta(seconds=failure_window)
    failures = collection.count_documents(
        {"process_status": ProcessStatus.FAILURE.value, "status_changed_at": {"$gte": since}}
    ) if by_status[ProcessStatus.FAILURE.value] else 0
    return ClassCounts(
        name=source.name,
        collection=source.collection_name,
        counts=by_status,
        oldest_pending=_oldest(collection, "PENDING") if by_status["PENDING"] else None,
        oldest_running=_oldest(collection, "RUNNING") if by_status["RUNNING"] else None,
        failures_last_hour=int(failures),
    )


# --- lists -----------------------------------------------------------------------------


@dataclass
class Row:
    """One document in a list: where it stands, and what went wrong last."""

    id: Any
    cls: str
    collection: str
    process_status: str | None
    current_process: str | None
    current_process_step: str | None
    errors: list[str]
    warnings: list[str]
    progress_done: int | None
    progress_total: int | None
    worker_hostname: str | None
    worker_instance: str | None
    status_changed_at: datetime | None
    create_time: datetime | None
    last_status_message: str | None
    age_s: float | None
    """Seconds since the status last changed (since creation for a document never run)."""

    @property
    def since(self) -> datetime | None:
        return self.status_changed_at or self.create_time

    @property
    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None

    @property
    def progress(self) -> float | None:
        return progress_fraction(self.progress_done, self.progress_total)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class"] = data.pop("cls")
        data["id"] = jsonable(self.id)
        data["status_changed_at"] = jsonable(self.status_changed_at)
        data["create_time"] = jsonable(self.create_time)
        data["last_error"] = self.last_error
        data["progress"] = self.progress
        data["age_s"] = rounded(self.age_s)
        return data


@dataclass(frozen=True)
class ListQuery:
    """The filters of :func:`list_documents`."""

    statuses: tuple[str, ...] = STATUSES
    process: str | None = None
    older_than: float | None = None
    """Seconds: only documents whose status has not changed for at least this long."""
    worker: str | None = None
    """A worker instance id, or the start of a worker hostname (``main`` → ``main@host``)."""
    limit: int = DEFAULT_LIMIT
    oldest_first: bool = False
    changed_within: float | None = None
    """Seconds: only documents whose status changed within this long (recent failures)."""

    def finds(self, now: datetime) -> list[dict[str, Any]]:
        """The find commands' arguments (filter, sort, limit) that answer this query.

        Each filter leads with ``process_status`` (one status by equality, several with
        ``$in``) so the status index answers it. With ``older_than``, documents never run
        (READY, no status change yet) are judged by their creation time in a second find,
        since one filter with ``$or`` could not use the index.
        """
        statuses = list(self.statuses)
        base: dict[str, Any] = {
            "process_status": statuses[0] if len(statuses) == 1 else {"$in": statuses}
        }
        if self.process is not None:
            base["current_process"] = self.process
        if self.worker is not None:
            if _INSTANCE_ID.match(self.worker):
                base["worker_instance"] = self.worker
            else:
                base["worker_hostname"] = {"$regex": "^" + re.escape(self.worker)}
        order = ASCENDING if self.oldest_first else DESCENDING
        # By the index's second key alone: mongod merges the statuses' ranges and stops
        # at the limit (a tie-breaker on _id would sort every match in memory).
        sort = [("status_changed_at", order)]
        changed: dict[str, datetime] = {}
        if self.changed_within is not None:
            changed["$gte"] = now - timedelta(seconds=self.changed_within)
        if self.older_than is not None:
            changed["$lt"] = now - timedelta(seconds=self.older_than)
        if not changed:
            return [{"filter": base, "sort": sort, "limit": self.limit}]
        finds = [{"filter": {**base, "status_changed_at": changed}, "sort": sort,
                  "limit": self.limit}]
        if (self.older_than is not None and self.changed_within is None
                and ProcessStatus.READY.value in self.statuses and self.worker is None):
            never_run = {**base, "process_status": ProcessStatus.READY.value,
                         "status_changed_at": None, "create_time": {"$lt": changed["$lt"]}}
            finds.append({"filter": never_run, "sort": [("create_time", order)],
                          "limit": self.limit})
        return finds


def needs_hint(filter: Mapping[str, Any]) -> bool:
    """Whether a find must name the status index as its hint to be answered through it.

    A filter on ``process_status`` alone, or on one status and a ``status_changed_at``
    range, is answered through a status index by any server's planner. A filter that
    adds other fields (process, worker, creation time), or a range under several
    statuses, needs the hint on a server whose planner only takes an index covering
    every filtered field (SecantusDB). The hint is not given where it is not needed:
    SecantusDB answers a hinted find by walking and decoding the whole index, every
    document of the collection (about 30 s at 200k documents), where the same find
    unhinted reads only the statuses' index ranges.
    """
    keys = set(filter)
    if keys == {"process_status"}:
        return False
    single = not isinstance(filter.get("process_status"), Mapping)
    return not (keys == {"process_status", "status_changed_at"} and single)


def row_of(source: Source, document: Mapping[str, Any], now: datetime) -> Row:
    changed = aware(document.get("status_changed_at"))
    created = aware(document.get("create_time"))
    return Row(
        id=document["_id"],
        cls=source.name,
        collection=source.collection_name,
        process_status=document.get("process_status"),
        current_process=document.get("current_process"),
        current_process_step=document.get("current_process_step"),
        errors=list(document.get("errors") or []),
        warnings=list(document.get("warnings") or []),
        progress_done=document.get("progress_done"),
        progress_total=document.get("progress_total"),
        worker_hostname=document.get("worker_hostname"),
        worker_instance=document.get("worker_instance"),
        status_changed_at=changed,
        create_time=created,
        last_status_message=document.get("last_status_message"),
        age_s=seconds_since(changed or created, now),
    )


def list_documents(
    sources: Iterable[Source], query: ListQuery | None = None, *, now: datetime | None = None
) -> list[Row]:
    """Documents of ``sources`` matching ``query``: newest status change first (or oldest),
    at most ``query.limit`` over all sources together."""
    query = query or ListQuery()
    sources = list(sources)
    now = now or now_of(sources)
    rows: list[Row] = []
    for source in sources:
        for find in query.finds(now):
            cursor = source.collection.find(find["filter"], LIST_FIELDS)
            cursor = cursor.sort(find["sort"]).limit(find["limit"])
            hint = source.status_hint() if needs_hint(find["filter"]) else None
            if hint is not None:
                cursor = cursor.hint(hint)
            rows.extend(row_of(source, document, now) for document in cursor)
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    rows.sort(key=lambda r: (r.since or epoch), reverse=not query.oldest_first)
    return rows[: query.limit]


def count_matching(source: Source, query: ListQuery, *, now: datetime | None = None) -> int:
    """How many documents of ``source`` match ``query``, regardless of its limit."""
    now = now or now_of([source])
    total = 0
    for find in query.finds(now):
        hint = source.status_hint() if needs_hint(find["filter"]) else None
        options: dict[str, Any] = {"hint": hint} if hint is not None else {}
        total += int(source.collection.count_documents(find["filter"], **options))
    return total


# --- one document ----------------------------------------------------------------------


def id_candidates(text: str) -> list[Any]:
    """The ``_id`` values an id typed by an operator may stand for (str, ObjectId, int)."""
    candidates: list[Any] = [text]
    try:
        candidates.append(ObjectId(text))
    except (InvalidId, TypeError):
        pass
    if re.fullmatch(r"-?\d+", text):
        candidates.append(int(text))
    return candidates


def find_id(sources: Iterable[Source], text: str) -> list[tuple[Source, Any]]:
    """Where the document with id ``text`` lives: (source, stored ``_id``) for each match."""
    found: list[tuple[Source, Any]] = []
    candidates = id_candidates(text)
    for source in sources:
        for document in source.collection.find({"_id": {"$in": candidates}}, {"_id": 1}):
            found.append((source, document["_id"]))
    return found


def show(source: Source, pk: Any, *, now: datetime | None = None) -> dict[str, Any] | None:
    """The status fields (:data:`STATUS_FIELDS`) of one document, with its progress and
    age (``None`` if it does not exist)."""
    now = now or now_of([source])
    document = source.collection.find_one({"_id": pk}, {name: 1 for name in STATUS_FIELDS})
    if document is None:
        return None
    fields = {name: document.get(name) for name in STATUS_FIELDS}
    for name in ("create_time", "start_time", "complete_time", "status_changed_at"):
        fields[name] = aware(fields[name])
    fields["errors"] = list(fields["errors"] or [])
    fields["warnings"] = list(fields["warnings"] or [])
    fields["call_queue"] = list(fields["call_queue"] or [])
    changed = fields["status_changed_at"] or fields["create_time"]
    return {
        "id": pk,
        "class": source.name,
        "collection": source.collection_name,
        **fields,
        "progress": progress_fraction(fields["progress_done"], fields["progress_total"]),
        "age_s": rounded(seconds_since(changed, now)),
    }


def status_json(
    database: str, rows: Sequence[ClassCounts], skipped: Sequence[str], now: datetime
) -> dict[str, Any]:
    """What ``procstatus status --json`` prints (and the dashboard's ``/api/status``)."""
    return {
        "database": database,
        "classes": [r.as_dict(now) for r in rows],
        "skipped": list(skipped),
    }
