"""A document's family: the children its class's ``children()`` names, the parent its
``parent()`` names (both need the classes, through ``-A``).

:func:`children_of` turns ``children()``'s QuerySet into a collection and a filter;
:func:`children_counts` and :func:`children_rows` read the children through the index
that filter uses (the parent reference, typically), never loading the documents to
count them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.collection import Collection

from procstatus.document import ProcDocument
from procstatus.ops.queries import DEFAULT_LIMIT, LIST_FIELDS, Row, now_of, row_of
from procstatus.ops.sources import Source
from procstatus.ops.values import STATUSES


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
    now = now or now_of([source])
    wanted = None if statuses is None else set(statuses)
    rows: list[Row] = []
    cursor = source.collection.find(dict(children_filter), LIST_FIELDS)
    if wanted is None:
        cursor = cursor.limit(limit)
    for document in cursor:
        if wanted is None or document.get("process_status") in wanted:
            rows.append(row_of(source, document, now))
            if len(rows) >= limit:
                break
    cursor.close()
    return rows


@dataclass
class Children:
    """A parent's children, as its ``children()`` QuerySet names them: the children's
    collection and filter (answered through the index on the parent reference)."""

    cls: type | None
    collection: Collection | None
    filter: dict[str, Any] | None
    error: str | None = None

    @property
    def class_name(self) -> str | None:
        return getattr(self.cls, "__name__", None)

    def counts(self) -> dict[str, int]:
        """Children per status (one aggregation), every status present."""
        if self.collection is None or self.filter is None:
            return dict.fromkeys(STATUSES, 0)
        return children_counts(self.collection, self.filter)

    def summary(self) -> dict[str, Any]:
        """``{"class", "counts"}``, or ``{"class": None, "error"}`` (as ``show --json``)."""
        if self.error is not None:
            return {"class": None, "error": self.error}
        return {"class": self.class_name, "counts": self.counts()}


def children_of(source: Source, pk: Any) -> Children | None:
    """The children of document ``pk``, when its class (known through -A) has
    ``children()``; ``None`` for a class without children, or a document gone."""
    cls = source.cls
    if cls is None or getattr(cls, "children", ProcDocument.children) is ProcDocument.children:
        return None
    parent = cls.objects(pk=pk).first()  # type: ignore[attr-defined]
    if parent is None:
        return None
    try:
        children = parent.children()
    except NotImplementedError:
        return None
    except Exception as exc:
        return Children(None, None, None, f"children() raised {type(exc).__name__}: {exc}")
    collection = getattr(children, "_collection", None)
    query = getattr(children, "_query", None)
    if collection is None or not isinstance(query, dict):
        return Children(None, None, None, "children() did not return a mongoengine QuerySet")
    return Children(getattr(children, "_document", None), collection, query)


def children_summary(source: Source, pk: Any) -> dict[str, Any] | None:
    """The children's counts by status (``show``'s ``children``), or ``None``."""
    children = children_of(source, pk)
    return None if children is None else children.summary()


def parent_of(source: Source, pk: Any) -> tuple[str, Any] | None:
    """(class, id) of the parent a child reports to, when its class has ``parent()``."""
    cls = source.cls
    if cls is None or getattr(cls, "parent", ProcDocument.parent) is ProcDocument.parent:
        return None
    child = cls.objects(pk=pk).first()  # type: ignore[attr-defined]
    try:
        parent = child.parent() if child is not None else None
    except Exception:
        return None
    return None if parent is None else (type(parent).__name__, parent.pk)
