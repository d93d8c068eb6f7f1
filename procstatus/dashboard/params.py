"""What a dashboard URL says: its parameters and path, validated.

Each parser turns one parameter into what the operator layer (:mod:`procstatus.ops`)
takes, or raises :class:`BadRequest` with a sentence (the routes answer 400 with it);
a class named in a path that names none is :class:`~procstatus.ops.errors.NotFound`
(404). The values' own parsing (statuses, durations) is :mod:`procstatus.ops.values`'s.
Nothing here imports the web framework.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from mongoengine import IntField, ObjectIdField, SequenceField

from procstatus.ops import values
from procstatus.ops.errors import NotFound
from procstatus.ops.queries import ListQuery
from procstatus.ops.sources import Source, select
from procstatus.ops.values import PROCESSING_STATUSES, STATUSES, fmt_age

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
RECENT_FAILURES_WINDOW = 24 * 3600.0
"""Seconds back the failures panel reaches by default (``?window=`` changes it): a day,
where ``status``'s "failed in the last hour" counts over
:data:`procstatus.ops.queries.FAILURE_WINDOW`."""
FAILURE_SCAN = 1000
"""How many of the latest failures are grouped by error (``?scan=`` changes it)."""
MAX_FAILURE_SCAN = 10_000
CHILDREN_LIMIT = 100

_PROCESS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_WORKER = re.compile(r"^[\w.@:+-]{1,200}$")
_ID_MAX = 256


class BadRequest(ValueError):
    """What the URL says is malformed: 400, with this message."""


@dataclass(frozen=True)
class Filters:
    """The processing list's filters, as the URL gives them."""

    class_name: str | None = None
    statuses: tuple[str, ...] = PROCESSING_STATUSES
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
    chosen = select(sources, text)
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
        return STATUSES, "all"
    try:
        return values.parse_statuses([text]), text
    except ValueError as exc:
        raise BadRequest(f"{str(exc)[:200]}, or all") from None


def parse_duration(text: str | None, name: str, default: float, maximum: float) -> float:
    if text is None:
        return default
    try:
        seconds = values.parse_duration(text[:40])
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
    meta = getattr(cls, "_meta", {})
    pk_field = getattr(cls, "_fields", {}).get(meta.get("id_field") or "id")
    if isinstance(pk_field, ObjectIdField):
        return "objectid"
    if isinstance(pk_field, (IntField, SequenceField)):
        return "int"
    return None


def source_named(sources: Sequence[Source], class_name: str) -> Source:
    """The one source a path's class names (its class name first, then as
    :func:`~procstatus.ops.sources.select` says); :class:`NotFound` if not exactly one."""
    chosen = [s for s in sources if s.name == class_name] or select(sources, class_name)
    if len(chosen) != 1:
        known = ", ".join(s.name for s in sources) or "none"
        raise NotFound(f"no class or collection {class_name!r}; known: {known}")
    return chosen[0]


def parse_list_query(params: Mapping[str, Any]) -> ListQuery:
    """``/api/list``'s filters: ``procstatus list``'s options as parameters (every status
    unless ``status`` says otherwise, newest first unless ``order=oldest``)."""
    statuses, _ = parse_statuses(one(params, "status"), default="all")
    older = one(params, "older_than")
    order = (one(params, "order") or "newest").lower()
    if order not in {"oldest", "newest"}:
        raise BadRequest(f"order {order[:40]!r} is neither oldest nor newest")
    return ListQuery(
        statuses=statuses,
        process=parse_process(one(params, "process")),
        older_than=None if older is None else parse_duration(
            older, "older_than", 0, 3650 * 86400.0),
        worker=parse_worker(one(params, "worker")),
        limit=parse_limit(one(params, "limit"), DEFAULT_LIMIT),
        oldest_first=order == "oldest",
    )
