"""The ``Proc`` collections an operator looks at.

A :class:`Source` is one collection of ``Proc`` documents: with the app's classes known
(``-A``), named after its class; without, after the collection itself, found by
:func:`discover`. :func:`select` picks the ones a class name names. This module imports
no Celery; it reads a known class's shard key, nothing else of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database

from procstatus import transitions
from procstatus.document import shard_fields
from procstatus.liveness import WORKERS_COLLECTION

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

    def target(self, pk: Any) -> transitions.Target:
        """How the state machine addresses document ``pk`` here: durable writes, primary
        reads, and the class's shard key when the class is known."""
        fields = shard_fields(self.cls) if self.cls is not None else ()
        return transitions.target(self.collection, pk, fields)

    def status_hint(self) -> list[tuple[str, int]] | None:
        """The status index that list queries name as their hint when they need one
        (:func:`procstatus.ops.queries.needs_hint`); read once.

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
