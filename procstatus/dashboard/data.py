"""What the dashboard shows, as plain data: the counts' chart (and the cache that keeps
them), recent failures grouped by cause, a document with its timeline, parent and
children — built on the operator layer (:mod:`procstatus.ops`), the CLI's own reads, so
both say the same thing.

Nothing here imports the web framework: the routes (:mod:`procstatus.dashboard.app`)
validate the URL (:mod:`procstatus.dashboard.params`), call these functions and render
the result as HTML or JSON.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from procstatus.clock import utcnow
from procstatus.dashboard.params import CHILDREN_LIMIT, FAILURE_SCAN, RECENT_FAILURES_WINDOW
from procstatus.ops import family, queries
from procstatus.ops.actions import process_names
from procstatus.ops.errors import NotFound, first_line
from procstatus.ops.queries import ClassCounts, ListQuery, Row
from procstatus.ops.sources import Source
from procstatus.ops.values import (
    COMPLETED_STATUSES,
    PROCESSING_STATUSES,
    STATUSES,
    fmt_age,
    jsonable,
    rounded,
    seconds_since,
)

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
        age = (utcnow() - snapshot.at).total_seconds()
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
        at = utcnow()
        try:
            snapshot = Snapshot(self._compute(), at, time.perf_counter() - began)
        except Exception as exc:
            previous = self._snapshot
            snapshot = Snapshot(previous.rows if previous else [], at,
                                time.perf_counter() - began,
                                error=f"{type(exc).__name__}: {first_line(exc)}")
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
        for status in STATUSES:
            n = row.counts[status]
            length = 0.0 if n == 0 else max(1.5, 100.0 * n / largest)
            bars.append({"status": status, "count": n, "length": round(length, 2)})
        classes.append({
            **row.as_dict(snapshot.at),
            "bars": bars,
            "oldest_pending_age": fmt_age(seconds_since(row.oldest_pending, snapshot.at)),
            "oldest_running_age": fmt_age(seconds_since(row.oldest_running, snapshot.at)),
        })
    return classes


# --- lists -------------------------------------------------------------------------------


def rows_json(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [jsonable(row.as_dict()) for row in rows]


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
            "last_at": jsonable(self.last_at),
            "last_age_s": rounded(seconds_since(self.last_at, now)),
            "first_age_s": rounded(seconds_since(self.first_at, now)),
            "first_at": jsonable(self.first_at),
            "latest": [{"class": c, "id": jsonable(pk)} for c, pk in self.latest],
        }


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
    sources: Sequence[Source], *, process: str | None = None,
    window: float = RECENT_FAILURES_WINDOW, scan: int = FAILURE_SCAN, examples: int = 5,
    now: datetime | None = None,
) -> Failures:
    """The failures of the last ``window`` seconds, the latest ``scan`` of them grouped by
    their errors (the whole list, in full): one group per cause, with its count.

    Through the (process_status, status_changed_at) index: one find per class for the
    rows and one count per class for the total, both bounded to FAILURE in the window.
    """
    now = now or queries.now_of(list(sources))
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
        group.last_age_s = seconds_since(group.last_at, now)
        group.first_age_s = seconds_since(group.first_at, now)
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


def children_view(
    sources: Sequence[Source], source: Source, pk: Any, *, statuses: tuple[str, ...] | None,
    limit: int = CHILDREN_LIMIT, now: datetime | None = None,
) -> dict[str, Any] | None:
    """A parent's children: counts by status, done of total, and the first ``limit`` of
    them (those in ``statuses`` when given), through the index on the parent reference."""
    children = family.children_of(source, pk)
    if children is None:
        return None
    if children.error is not None or children.collection is None or children.filter is None:
        return {"class": None, "error": children.error}
    counts = children.counts()
    total = sum(counts.values())
    done = sum(counts[s] for s in COMPLETED_STATUSES)
    name = children.class_name or children.collection.name
    child_source = next((s for s in sources if s.collection.full_name
                         == children.collection.full_name), None)
    child_source = child_source or Source(name, children.collection, children.cls)
    rows = family.children_rows(child_source, children.filter, statuses=statuses, limit=limit,
                                 now=now)
    return {
        "class": child_source.name,
        "counts": counts,
        "total": total,
        "done": done,
        "failed": counts["FAILURE"],
        "processing": sum(counts[s] for s in PROCESSING_STATUSES),
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
    now = now or queries.now_of([source])
    detail = queries.show(source, pk, now=now)
    if detail is None:
        raise NotFound(f"{source.name}({pk}) no longer exists")
    detail["timeline"] = timeline(detail)
    detail["parent"] = family.parent_of(source, pk)
    detail["children"] = children_view(sources, source, pk, statuses=child_statuses,
                                       limit=child_limit, now=now)
    detail["processes"] = process_names(source.cls)
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
    return jsonable(data)  # type: ignore[no-any-return]
