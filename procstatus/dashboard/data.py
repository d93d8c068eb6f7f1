"""What the dashboard shows, as plain data: built on :mod:`procstatus.queries` and
:mod:`procstatus.operating`, the CLI's own reads, so both say the same thing.

Nothing here imports the web framework: the routes (:mod:`procstatus.dashboard.app`)
validate what the URL says with :func:`parse_filters` and friends, call these functions
and render the result as HTML or JSON.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import ObjectId

from procstatus import operating, queries
from procstatus.operating import fmt_age
from procstatus.queries import ClassCounts, ListQuery, Row, Source

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
FAILURE_WINDOW = 24 * 3600.0
"""Seconds back that "recent failures" reach (``?window=`` changes it)."""
FAILURE_SCAN = 1000
"""How many of the latest failures are grouped by error (``?scan=`` changes it)."""
MAX_FAILURE_SCAN = 10_000
CHILDREN_LIMIT = 100

_PROCESS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_WORKER = re.compile(r"^[\w.@:+-]{1,200}$")
_ID_MAX = 256


class BadRequest(ValueError):
    """What the URL says is malformed: 400, with this message."""


class NotFound(LookupError):
    """The URL names nothing that exists: 404, with this message."""


# --- what the URL says -------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The processing list's filters, as the URL gives them."""

    class_name: str | None = None
    statuses: tuple[str, ...] = queries.PROCESSING_STATUSES
    status_text: str = "processing"
    process: str | None = None
    worker: str | None = None
    limit: int = DEFAULT_LIMIT
    oldest_first: bool = True

    def query(self) -> ListQuery:
        return ListQuery(
            statuses=self.statuses, process=self.process, worker=self.worker,
            limit=self.limit, oldest_first=self.oldest_first,
        )

    def as_params(self) -> dict[str, str]:
        """The non-default filters, as URL parameters."""
        params: dict[str, str] = {}
        if self.class_name:
            params["class"] = self.class_name
        if self.status_text != "processing":
            params["status"] = self.status_text
        if self.process:
            params["process"] = self.process
        if self.worker:
            params["worker"] = self.worker
        if self.limit != DEFAULT_LIMIT:
            params["limit"] = str(self.limit)
        if not self.oldest_first:
            params["order"] = "newest"
        return params


def one(params: Mapping[str, Any], name: str) -> str | None:
    """The parameter's one value (``None`` when absent or empty)."""
    getlist = getattr(params, "getlist", None)
    values = list(getlist(name)) if getlist is not None else (
        [params[name]] if name in params else []
    )
    values = [v for v in values if v != ""]
    if len(values) > 1:
        raise BadRequest(f"{name} is given {len(values)} times: give it once")
    return values[0] if values else None


def parse_class(sources: Sequence[Source], text: str | None) -> list[Source]:
    """The sources a ``class`` parameter names (all when ``None``)."""
    if text is None:
        return list(sources)
    chosen = queries.select(sources, text)
    if not chosen:
        known = ", ".join(s.name for s in sources) or "none"
        raise BadRequest(f"no class or collection {text!r}; known: {known}")
    return chosen


def parse_limit(text: str | None, default: int, maximum: int = MAX_LIMIT) -> int:
    if text is None:
        return default
    if not re.fullmatch(r"\d{1,7}", text) or not 1 <= int(text) <= maximum:
        raise BadRequest(f"limit {text!r} is not a number from 1 to {maximum}")
    return int(text)


def parse_process(text: str | None) -> str | None:
    if text is not None and not _PROCESS.match(text):
        raise BadRequest(f"process {text[:120]!r} is not a method name")
    return text


def parse_worker(text: str | None) -> str | None:
    if text is not None and not _WORKER.match(text):
        raise BadRequest(
            f"worker {text[:120]!r} is neither a worker instance id nor a hostname prefix"
        )
    return text


def parse_statuses(text: str | None, default: str = "processing") -> tuple[tuple[str, ...], str]:
    """The statuses a ``status`` parameter names (``all`` for every one), and its text."""
    text = (text or default).strip()
    if text.lower() == "all":
        return queries.STATUSES, "all"
    try:
        return operating.parse_statuses([text]), text
    except ValueError as exc:
        raise BadRequest(f"{str(exc)[:200]}, or all") from None


def parse_duration(text: str | None, name: str, default: float, maximum: float) -> float:
    if text is None:
        return default
    try:
        seconds = operating.parse_duration(text[:40])
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None
    if not 0 < seconds <= maximum:
        raise BadRequest(f"{name} {text!r} must be above 0 and at most {fmt_age(maximum)}")
    return seconds


def parse_bool(text: str | None, name: str) -> bool:
    if text is None:
        return False
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise BadRequest(f"{name} {text[:40]!r} is not true or false")


def parse_filters(sources: Sequence[Source], params: Mapping[str, Any]) -> Filters:
    """The processing list's filters from the URL; :class:`BadRequest` names a bad one."""
    class_name = one(params, "class")
    parse_class(sources, class_name)
    statuses, status_text = parse_statuses(one(params, "status"))
    order = (one(params, "order") or "oldest").lower()
    if order not in {"oldest", "newest"}:
        raise BadRequest(f"order {order[:40]!r} is neither oldest nor newest")
    return Filters(
        class_name=class_name,
        statuses=statuses,
        status_text=status_text,
        process=parse_process(one(params, "process")),
        worker=parse_worker(one(params, "worker")),
        limit=parse_limit(one(params, "limit"), DEFAULT_LIMIT),
        oldest_first=order == "oldest",
    )


def check_id(source: Source, text: str) -> None:
    """:class:`BadRequest` when ``text`` cannot be an id of ``source``'s documents: empty,
    too long, control characters, or not of the class's primary key type (with -A)."""
    if not text or len(text) > _ID_MAX:
        raise BadRequest(f"an id is 1 to {_ID_MAX} characters, not {len(text)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadRequest("an id has no control characters")
    kind = _pk_kind(source.cls)
    if kind == "objectid" and not ObjectId.is_valid(text):
        raise BadRequest(f"{text[:80]!r} is not an id of {source.name}: its ids are "
                         "ObjectIds, 24 hexadecimal digits")
    if kind == "int" and not re.fullmatch(r"-?\d{1,19}", text):
        raise BadRequest(f"{text[:80]!r} is not an id of {source.name}: its ids are integers")


def _pk_kind(cls: type | None) -> str | None:
    if cls is None:
        return None
    from mongoengine import IntField, ObjectIdField, SequenceField

    meta = getattr(cls, "_meta", {})
    pk_field = getattr(cls, "_fields", {}).get(meta.get("id_field") or "id")
    if isinstance(pk_field, ObjectIdField):
        return "objectid"
    if isinstance(pk_field, (IntField, SequenceField)):
        return "int"
    return None


def locate(sources: Sequence[Source], class_name: str, text: str) -> tuple[Source, Any]:
    """The document ``text`` of class ``class_name``: validated, then found by ``_id``."""
    chosen = [s for s in sources if s.name == class_name] or queries.select(sources, class_name)
    if len(chosen) != 1:
        known = ", ".join(s.name for s in sources) or "none"
        raise NotFound(f"no class or collection {class_name!r}; known: {known}")
    source = chosen[0]
    check_id(source, text)
    found = queries.find_id([source], text)
    if not found:
        raise NotFound(f"no document with id {text} in {source.name}")
    if len(found) > 1:  # "7" and 7 both stored: prefer the string, as typed
        found = [f for f in found if f[1] == text] or found[:1]
    return found[0]


# --- the counts: a bar chart per class ---------------------------------------------------


@dataclass
class Snapshot:
    """The counts of every class at one moment, and what they cost to read."""

    rows: list[ClassCounts]
    at: datetime
    took_s: float
    error: str | None = None


class CountsCache:
    """The counts, shared by every page that shows them: recounted when a page asks and
    the last count is older than ``interval`` seconds — or ``cost_factor`` times what
    that count took, so a large collection on a slow server is never counted back to
    back — one count at a time, in a background thread; the page gets the last count
    meanwhile, with its age. Nothing is counted while no page asks."""

    def __init__(
        self, compute: Callable[[], list[ClassCounts]], *, interval: float = 2.0,
        cost_factor: float = 4.0,
    ) -> None:
        self._compute = compute
        self.interval = interval
        self.cost_factor = cost_factor
        self._snapshot: Snapshot | None = None
        self._running = False
        self._changed = threading.Condition()

    def due(self, snapshot: Snapshot | None) -> bool:
        if snapshot is None:
            return True
        age = (queries.utcnow() - snapshot.at).total_seconds()
        return age >= max(self.interval, self.cost_factor * snapshot.took_s)

    def get(self, wait: float = 10.0) -> Snapshot | None:
        """The latest counts (started anew if due); waits up to ``wait`` s for a first."""
        with self._changed:
            if self.due(self._snapshot) and not self._running:
                self._running = True
                threading.Thread(target=self._count, name="procstatus-counts",
                                 daemon=True).start()
            if self._snapshot is None:
                self._changed.wait_for(lambda: self._snapshot is not None, timeout=wait)
            return self._snapshot

    def _count(self) -> None:
        began = time.perf_counter()
        at = queries.utcnow()
        try:
            snapshot = Snapshot(self._compute(), at, time.perf_counter() - began)
        except Exception as exc:
            previous = self._snapshot
            snapshot = Snapshot(previous.rows if previous else [], at,
                                time.perf_counter() - began,
                                error=f"{type(exc).__name__}: {operating.first_line(exc)}")
        with self._changed:
            self._snapshot = snapshot
            self._running = False
            self._changed.notify_all()


def chart(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Per class: each status's count and its bar's length (percent of the class's
    largest count; a count above zero gets a visible sliver)."""
    classes = []
    for row in snapshot.rows:
        largest = max(row.counts.values()) or 1
        bars = []
        for status in queries.STATUSES:
            n = row.counts[status]
            length = 0.0 if n == 0 else max(1.5, 100.0 * n / largest)
            bars.append({"status": status, "count": n, "length": round(length, 2)})
        classes.append({
            **row.as_dict(snapshot.at),
            "bars": bars,
            "oldest_pending_age": fmt_age(queries.seconds_since(row.oldest_pending, snapshot.at)),
            "oldest_running_age": fmt_age(queries.seconds_since(row.oldest_running, snapshot.at)),
        })
    return classes


# --- lists -------------------------------------------------------------------------------


def rows_json(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [queries.jsonable(row.as_dict()) for row in rows]


@dataclass
class FailureGroup:
    """Failures that ended with the same errors."""

    errors: list[str]
    count: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    last_at: datetime | None = None
    first_at: datetime | None = None
    latest: list[tuple[str, Any]] = field(default_factory=list)
    """(class, id) of the latest few, newest first."""
    last_age_s: float | None = None
    first_age_s: float | None = None

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "errors": self.errors,
            "count": self.count,
            "classes": self.classes,
            "processes": self.processes,
            "last_at": queries.jsonable(self.last_at),
            "last_age_s": _rounded(queries.seconds_since(self.last_at, now)),
            "first_age_s": _rounded(queries.seconds_since(self.first_at, now)),
            "first_at": queries.jsonable(self.first_at),
            "latest": [{"class": c, "id": queries.jsonable(pk)} for c, pk in self.latest],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class Failures:
    """Recent failures grouped by their errors, largest group first."""

    groups: list[FailureGroup]
    scanned: int
    total: int
    window_s: float
    scan: int

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "total": self.total,
            "scanned": self.scanned,
            "scan_limit": self.scan,
            "groups": [g.as_dict(now) for g in self.groups],
        }


def failures(
    sources: Sequence[Source], *, process: str | None = None, window: float = FAILURE_WINDOW,
    scan: int = FAILURE_SCAN, examples: int = 5, now: datetime | None = None,
) -> Failures:
    """The failures of the last ``window`` seconds, the latest ``scan`` of them grouped by
    their errors (the whole list, in full): one group per cause, with its count.

    Through the (process_status, status_changed_at) index: one find per class for the
    rows and one count per class for the total, both bounded to FAILURE in the window.
    """
    now = now or queries.utcnow()
    query = ListQuery(statuses=("FAILURE",), process=process, limit=scan,
                      changed_within=window)
    rows = queries.list_documents(sources, query, now=now)
    total = sum(queries.count_matching(s, query, now=now) for s in sources)
    groups: dict[tuple[str, ...], FailureGroup] = {}
    for row in rows:  # newest first
        key = tuple(row.errors) or ("(no error recorded)",)
        group = groups.get(key)
        if group is None:
            group = groups[key] = FailureGroup(errors=list(key), last_at=row.since)
        group.count += 1
        group.classes[row.cls] = group.classes.get(row.cls, 0) + 1
        process_name = row.current_process or "-"
        group.processes[process_name] = group.processes.get(process_name, 0) + 1
        group.first_at = row.since
        if len(group.latest) < examples:
            group.latest.append((row.cls, row.id))
    for group in groups.values():
        group.last_age_s = queries.seconds_since(group.last_at, now)
        group.first_age_s = queries.seconds_since(group.first_at, now)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, -(g.last_at.timestamp()
                                                              if g.last_at else 0)))
    return Failures(ordered, len(rows), total, window, scan)


# --- one document ------------------------------------------------------------------------


def timeline(detail: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The latest run as events: created, called, started, the last status change,
    completed — from the times the document keeps (it keeps no history of earlier runs)."""
    status = detail.get("process_status")
    process = detail.get("current_process")
    created, started = detail.get("create_time"), detail.get("start_time")
    completed, changed = detail.get("complete_time"), detail.get("status_changed_at")
    events: list[dict[str, Any]] = []
    if created is not None:
        events.append({"at": created, "event": "created", "status": "READY",
                       "text": "the document was created"})
    if status == "PENDING" and changed is not None:
        events.append({"at": changed, "event": "called", "status": "PENDING",
                       "text": detail.get("last_status_message") or f"{process} called"})
    if started is not None:
        worker = detail.get("worker_hostname")
        events.append({"at": started, "event": "started", "status": "RUNNING",
                       "text": f"{process} started" + (f" on {worker}" if worker else "")})
    if changed is not None and changed not in (created, started, completed) \
            and status != "PENDING":
        events.append({"at": changed, "event": "status changed", "status": status,
                       "text": detail.get("last_status_message") or f"now {status}"})
    if completed is not None:
        took = (completed - started).total_seconds() if started is not None else None
        events.append({"at": completed, "event": "completed", "status": status,
                       "text": (detail.get("last_status_message") or str(status))
                       + (f" (ran {fmt_age(took)})" if took is not None else "")})
    events.sort(key=lambda e: e["at"])
    return events


def parent_of(source: Source, pk: Any) -> tuple[str, Any] | None:
    """(class, id) of the parent a child reports to, when its class has ``parent()``."""
    from procstatus.document import ProcDocument

    cls = source.cls
    base = ProcDocument.parent
    if cls is None or getattr(cls, "parent", base) is base:
        return None
    child = cls.objects(pk=pk).first()  # type: ignore[attr-defined]
    try:
        parent = child.parent() if child is not None else None
    except Exception:
        return None
    return None if parent is None else (type(parent).__name__, parent.pk)


def children_view(
    sources: Sequence[Source], source: Source, pk: Any, *, statuses: tuple[str, ...] | None,
    limit: int = CHILDREN_LIMIT, now: datetime | None = None,
) -> dict[str, Any] | None:
    """A parent's children: counts by status, done of total, and the first ``limit`` of
    them (those in ``statuses`` when given), through the index on the parent reference."""
    children = operating.children_of(source, pk)
    if children is None:
        return None
    if children.error is not None or children.collection is None or children.filter is None:
        return {"class": None, "error": children.error}
    counts = children.counts()
    total = sum(counts.values())
    done = sum(counts[s] for s in queries.COMPLETED_STATUSES)
    name = children.class_name or children.collection.name
    child_source = next((s for s in sources if s.collection.full_name
                         == children.collection.full_name), None)
    child_source = child_source or Source(name, children.collection, children.cls)
    rows = queries.children_rows(child_source, children.filter, statuses=statuses, limit=limit,
                                 now=now)
    return {
        "class": child_source.name,
        "counts": counts,
        "total": total,
        "done": done,
        "failed": counts["FAILURE"],
        "processing": sum(counts[s] for s in queries.PROCESSING_STATUSES),
        "progress": (done / total) if total else None,
        "rows": rows,
        "shown": len(rows),
        "limit": limit,
    }


def document(
    sources: Sequence[Source], source: Source, pk: Any, *,
    child_statuses: tuple[str, ...] | None = None, child_limit: int = CHILDREN_LIMIT,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the document page shows: ``show``'s fields, the timeline, the parent,
    the children (summary and rows)."""
    now = now or queries.utcnow()
    detail = queries.show(source, pk, now=now)
    if detail is None:
        raise NotFound(f"{source.name}({pk}) no longer exists")
    detail["timeline"] = timeline(detail)
    detail["parent"] = parent_of(source, pk)
    detail["children"] = children_view(sources, source, pk, statuses=child_statuses,
                                       limit=child_limit, now=now)
    detail["processes"] = operating.process_names(source.cls)
    return detail


def document_json(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The document page's data as JSON: ``show --json``'s fields (its ``children`` with
    the counts, plus done/total and the rows), the timeline and the parent."""
    data = dict(detail)
    children = data.get("children")
    if children is not None and "rows" in children:
        children = {**children, "rows": rows_json(children["rows"])}
    data["children"] = children
    parent = data.get("parent")
    data["parent"] = None if parent is None else {"class": parent[0], "id": parent[1]}
    return queries.jsonable(data)  # type: ignore[no-any-return]
