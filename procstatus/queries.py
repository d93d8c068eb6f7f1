"""Read-only status queries shared by the ``procstatus`` CLI and any dashboard.

Pure functions over pymongo collections that return plain dataclasses and dicts and
print nothing. Every query is answered through an index of the ``Proc`` base class —
``process_status`` and ``(process_status, status_changed_at)`` — or through ``_id``;
``tests/unit/test_queries.py`` runs ``explain`` on each command they send and checks it.
Counts come from the server (an aggregation on ``process_status``, ``count_documents``);
no query here loads documents to count them.

This module imports neither Celery nor mongoengine's documents, so a read-only tool
that knows only a database (no app module) can use it. A :class:`Source` is one
``Proc`` collection: with the app's classes known, named after its class; without,
after the collection itself (:func:`discover`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from procstatus.clock import aware, utcnow
from procstatus.liveness import WORKERS_COLLECTION
from procstatus.status import COMPLETED, PROCESSING, ProcessStatus

STATUSES: tuple[str, ...] = tuple(s.value for s in ProcessStatus)
"""The six stored status strings, in lifecycle order."""
PROCESSING_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if ProcessStatus(s) in PROCESSING)
COMPLETED_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if ProcessStatus(s) in COMPLETED)

DEFAULT_LIMIT = 50
FAILURE_WINDOW = 3600.0
"""Seconds back that :func:`counts` counts failures over ("failures in the last hour")."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INSTANCE_ID = re.compile(r"^[0-9a-f]{32}$")
"""A worker instance id (``uuid4().hex``), as opposed to a hostname."""

_LIST_FIELDS: dict[str, int] = {
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
"""Every status field of a ``Proc`` document, in the order :func:`show` returns them."""


def seconds_since(moment: Any, now: datetime) -> float | None:
    when = aware(moment)
    return None if when is None else max(0.0, (now - when).total_seconds())


def progress_fraction(done: Any, total: Any) -> float | None:
    """``done / total`` in [0, 1], or ``None`` when the total is unknown."""
    if not isinstance(done, int) or not isinstance(total, int) or total < 1:
        return None
    return min(1.0, max(0.0, done / total))


def jsonable(value: Any) -> Any:
    """``value`` with ObjectIds as strings and datetimes as ISO 8601 UTC, for ``json.dumps``."""
    if isinstance(value, datetime):
        return (aware(value) or value).isoformat().replace("+00:00", "Z")
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --- sources ---------------------------------------------------------------------------


STATUS_CHANGED_INDEX: list[tuple[str, int]] = [("process_status", 1), ("status_changed_at", 1)]
STATUS_INDEX: list[tuple[str, int]] = [("process_status", 1)]
"""The two indexes every ``Proc`` class declares (``procstatus.document.Proc.meta``)."""


@dataclass
class Source:
    """One collection of ``Proc`` documents.

    ``name`` is the class name when the app's classes are known (``cls`` is then the
    class), else the collection's name.
    """

    name: str
    collection: Collection
    cls: type | None = None
    _hint: list[tuple[str, int]] | None | bool = field(
        default=False, compare=False, repr=False
    )

    @property
    def collection_name(self) -> str:
        return str(self.collection.name)

    def status_hint(self) -> list[tuple[str, int]] | None:
        """The status index that list queries name as their hint when they need one
        (:func:`needs_hint`); read once.

        Filters that add fields the index lacks (process, worker) are answered through
        it anyway: the index bounds the statuses and times, the rest is checked on the
        documents it yields. Without the hint, a server whose planner only takes an
        index covering every filtered field (SecantusDB) scans the collection. ``None``
        when the collection has neither Proc index (a legacy collection).
        """
        if self._hint is False:
            present = [
                [(str(k), int(v)) for k, v in index["key"].items()]
                for index in self.collection.list_indexes()
            ]
            self._hint = next(
                (wanted for wanted in (STATUS_CHANGED_INDEX, STATUS_INDEX) if wanted in present),
                None,
            )
        return self._hint if isinstance(self._hint, list) else None


def has_status_index(collection: Collection) -> bool:
    """Whether the collection has an index led by ``process_status`` (every Proc has one)."""
    return any(
        next(iter(index["key"]), None) == "process_status" for index in collection.list_indexes()
    )


def discover(database: Database) -> list[Source]:
    """The collections of ``database`` that hold ``Proc`` documents, by collection name.

    A collection counts when it has an index led by ``process_status`` (every ``Proc``
    class creates one) or when its first document has a ``process_status`` field: the
    probe reads the index list and at most one document per collection, never a scan.
    """
    found: list[Source] = []
    for name in sorted(database.list_collection_names()):
        if name.startswith("system.") or name == WORKERS_COLLECTION:
            continue
        collection = database[name]
        if has_status_index(collection):
            found.append(Source(name, collection))
            continue
        first = collection.find_one({}, {"process_status": 1})
        if first is not None and "process_status" in first:
            found.append(Source(name, collection))
    return found


def select(sources: Sequence[Source], name: str | None) -> list[Source]:
    """The sources named ``name`` (class or collection name, any case); all if ``None``."""
    if name is None:
        return list(sources)
    wanted = name.lower()
    exact = [s for s in sources if s.name == name or s.collection_name == name]
    return exact or [
        s for s in sources if s.name.lower() == wanted or s.collection_name.lower() == wanted
    ]


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
            "oldest_pending_age_s": _rounded(seconds_since(self.oldest_pending, now)),
            "oldest_running_at": jsonable(self.oldest_running),
            "oldest_running_age_s": _rounded(seconds_since(self.oldest_running, now)),
            "failures_last_hour": self.failures_last_hour,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


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
    now = now or utcnow()
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
        data["age_s"] = _rounded(self.age_s)
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


def _row(source: Source, document: Mapping[str, Any], now: datetime) -> Row:
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
    now = now or utcnow()
    rows: list[Row] = []
    for source in sources:
        for find in query.finds(now):
            cursor = source.collection.find(find["filter"], _LIST_FIELDS)
            cursor = cursor.sort(find["sort"]).limit(find["limit"])
            hint = source.status_hint() if needs_hint(find["filter"]) else None
            if hint is not None:
                cursor = cursor.hint(hint)
            rows.extend(_row(source, document, now) for document in cursor)
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    rows.sort(key=lambda r: (r.since or epoch), reverse=not query.oldest_first)
    return rows[: query.limit]


def count_matching(source: Source, query: ListQuery, *, now: datetime | None = None) -> int:
    """How many documents of ``source`` match ``query``, regardless of its limit."""
    now = now or utcnow()
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
    """Every status field of one document (``None`` if it does not exist)."""
    now = now or utcnow()
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
        "age_s": _rounded(seconds_since(changed, now)),
    }


def children_counts(collection: Collection, children_filter: Mapping[str, Any]) -> dict[str, int]:
    """Children (the documents of ``collection`` matching ``children_filter``) per status.

    Uses whatever index the children's filter has (the parent reference, typically);
    every status is present, 0 when none.
    """
    by_status = dict.fromkeys(STATUSES, 0)
    pipeline = [
        {"$match": dict(children_filter)},
        {"$group": {"_id": "$process_status", "n": {"$sum": 1}}},
    ]
    for row in collection.aggregate(pipeline):
        if row["_id"] in by_status:
            by_status[row["_id"]] = int(row["n"])
    return by_status


def children_rows(
    source: Source, children_filter: Mapping[str, Any], *,
    statuses: Sequence[str] | None = None, limit: int = DEFAULT_LIMIT,
    now: datetime | None = None,
) -> list[Row]:
    """The first ``limit`` children (documents of ``source`` matching ``children_filter``,
    in ``statuses`` when given), in the order of the index the filter uses (the parent
    reference, typically).

    One find on the children's filter alone: the statuses are checked on the documents
    it yields, so the query stays on that index (a filter adding ``process_status``
    would need an index on both on a server like SecantusDB), and it reads at most the
    parent's own children.
    """
    now = now or utcnow()
    wanted = None if statuses is None else set(statuses)
    rows: list[Row] = []
    cursor = source.collection.find(dict(children_filter), _LIST_FIELDS)
    if wanted is None:
        cursor = cursor.limit(limit)
    for document in cursor:
        if wanted is None or document.get("process_status") in wanted:
            rows.append(_row(source, document, now))
            if len(rows) >= limit:
                break
    cursor.close()
    return rows


# --- workers ---------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker start's heartbeat, and whether it still counts as alive."""

    instance: str
    hostname: str | None
    pid: int | None
    heartbeat_at: datetime | None
    active: list[str] = field(default_factory=list)
    stopped: bool = False
    gone_at: datetime | None = None
    alive: bool = False
    silent_s: float | None = None
    """Seconds since the last heartbeat."""

    @property
    def state(self) -> str:
        """``alive``, ``stopped`` (shut down or marked gone) or ``silent`` (past the
        threshold, not yet marked: killed, or cut off)."""
        if self.alive:
            return "alive"
        return "stopped" if self.stopped else "silent"

    def as_dict(self) -> dict[str, Any]:
        data = {k: jsonable(v) for k, v in asdict(self).items()}
        data["state"] = self.state
        data["silent_s"] = _rounded(self.silent_s)
        return data


def workers(
    collection: Collection, *, threshold: float, now: datetime | None = None
) -> list[Worker]:
    """Every heartbeat in ``procstatus_workers``, by hostname; alive = beat within
    ``threshold`` seconds and not stopped.

    The collection holds one small document per worker start and stopped ones are
    deleted a day later (:func:`procstatus.liveness.mark_gone`), so it is read whole,
    in ``_id`` index order.
    """
    now = now or utcnow()
    found: list[Worker] = []
    for document in collection.find({}).hint([("_id", ASCENDING)]):
        beat = aware(document.get("heartbeat_at"))
        silent = seconds_since(beat, now)
        stopped = bool(document.get("stopped"))
        found.append(
            Worker(
                instance=str(document["_id"]),
                hostname=document.get("hostname"),
                pid=document.get("pid"),
                heartbeat_at=beat,
                active=list(document.get("active") or []),
                stopped=stopped,
                gone_at=aware(document.get("gone_at")),
                alive=not stopped and silent is not None and silent <= threshold,
                silent_s=silent,
            )
        )
    found.sort(key=lambda w: (not w.alive, w.hostname or "", w.silent_s or 0.0))
    return found
