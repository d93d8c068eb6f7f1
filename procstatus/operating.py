"""What the operator's tools share: the ``procstatus`` CLI and its dashboard.

- :class:`Session`: the app module (``-A``), the MongoDB connection and the ``Proc``
  collections to look at (:class:`procstatus.queries.Source`), resolved as the global
  options ``-A MODULE``, ``--mongodb-uri`` and ``--db`` say;
- parsing what an operator types (statuses, durations) and printing ages;
- a parent's children (:func:`children_of`);
- the writes an operator may make on one document — :func:`cancel_document`,
  :func:`reset_document`, :func:`plan_retry` — each returning an :class:`Outcome` with
  the sentence to show, and logged.

Nothing here imports typer, rich or a web framework, and the read-only path imports no
Celery: reads go through :mod:`procstatus.queries`, writes through
:mod:`procstatus.endings` (cancel), :mod:`procstatus.transitions` (reset) or a process
call (retry), imported when used.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI, OperationFailure, PyMongoError

from procstatus import queries
from procstatus.queries import Source
from procstatus.status import PROCESSING, ProcessStatus
from procstatus.text import redact

logger = logging.getLogger("procstatus")

DEFAULT_URI = "mongodb://127.0.0.1:27017"
START_SERVER_HINT = (
    "Start the server (`mongod --dbpath DIR`, or `docker compose up -d mongo` in a "
    "procstatus checkout) or point --mongodb-uri (or MONGODB_URI) at one that runs"
)


class OperatorError(Exception):
    """A problem the operator can fix: one line saying what was wrong and how to fix it."""


def first_line(exc: BaseException) -> str:
    """The part of an error's text that says it, on one line.

    pymongo's message ends with a long topology description; the first part says it.
    """
    return re.split(r" \(configured timeouts|, Timeout:|\n", str(exc))[0][:300]


# --- what an operator types, and ages ----------------------------------------------------


def fmt_age(seconds: float | None) -> str:
    """``12s``, ``4m05s``, ``2h05m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d`` → seconds; ``ValueError`` saying the form."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90, 30s, 10m, 2h or 1d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * unit


def parse_statuses(values: Sequence[str] | None) -> tuple[str, ...]:
    """Status names (any case, comma-separated too), or the groups ``processing`` /
    ``completed`` (and ``waiting``); in lifecycle order. ``ValueError`` names a bad one."""
    if not values:
        return queries.STATUSES
    chosen: list[str] = []
    for value in values:
        for word in value.split(","):
            name = word.strip().upper()
            if name == "PROCESSING":
                chosen.extend(queries.PROCESSING_STATUSES)
            elif name == "COMPLETED":
                chosen.extend(queries.COMPLETED_STATUSES)
            elif name == "WAITING":
                chosen.append(ProcessStatus.WAITING_FOR_RESULT.value)
            elif name in queries.STATUSES:
                chosen.append(name)
            else:
                raise ValueError(
                    f"{word!r} is not a status: use {', '.join(queries.STATUSES)}, "
                    "processing or completed"
                )
    return tuple(s for s in queries.STATUSES if s in chosen)


# --- the session: app module, connection, sources ----------------------------------------


@dataclass
class Session:
    """What the global options name, connected on first use."""

    app_module: str | None = None
    mongodb_uri: str | None = None
    uri_origin: str = "--mongodb-uri"
    db_name: str | None = None
    server_timeout: float = 3.0
    alias: str = "default"
    uri: str = DEFAULT_URI
    database: Database | None = None
    skipped: list[str] = field(default_factory=list)
    _sources: list[Source] | None = None

    # --- connecting ----------------------------------------------------------------------

    def connect(self) -> Database:
        if self.database is not None:
            return self.database
        if self.app_module:
            _import_app(self.app_module)
        uri, origin, db = self._resolve()
        self.uri = uri
        try:
            database = self._open(uri, db)
            database.client.admin.command("ping")
        except OperationFailure as exc:
            reason = (exc.details or {}).get("errmsg", str(exc))
            raise OperatorError(
                f"MongoDB at {redact(uri)} ({origin}) refused the connection: {reason}. "
                "Check the user, password and authSource in the URI."
            ) from None
        except (ConfigurationError, InvalidURI, ValueError, TypeError) as exc:
            raise OperatorError(
                f"{redact(uri)} ({origin}) is not a valid MongoDB URI ({exc}). Use the form "
                "mongodb://HOST:PORT or mongodb+srv://..."
            ) from None
        except PyMongoError as exc:
            raise OperatorError(
                f"cannot reach MongoDB at {redact(uri)} ({origin}) within "
                f"{self.server_timeout:g}s: {first_line(exc)}. {START_SERVER_HINT}."
            ) from None
        self.database = database
        return database

    def _resolve(self) -> tuple[str, str, str]:
        """The URI, where it came from, and the database name."""
        from mongoengine.connection import _connection_settings

        from procstatus import connection, runtime

        self.alias = runtime.current.alias
        # Without -A, what this process was told (by install() or mongoengine) is no default.
        configured = connection.configured(self.alias) if self.app_module else None
        defined = _connection_settings.get(self.alias) if self.app_module else None
        defined_host = _host_of(defined)
        module = f"-A {self.app_module}"
        if self.mongodb_uri and not self.mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
            raise OperatorError(
                f"{self.uri_origin} {redact(self.mongodb_uri)!r} is not a MongoDB URI: use the "
                "form mongodb://HOST:PORT or mongodb+srv://..."
            )
        if self.mongodb_uri:
            uri, origin = self.mongodb_uri, f"from {self.uri_origin}"
        elif configured is not None:
            uri, origin = configured.uri, f"from install() in {module}"
        elif defined_host is not None:
            uri, origin = defined_host, f"from the mongoengine connection of {module}"
        else:
            uri, origin = DEFAULT_URI, "the default; set --mongodb-uri or MONGODB_URI"
        db = (
            self.db_name
            or _database_in(uri)
            or (configured.db if configured is not None else None)
            or (defined.get("name") if defined else None)
        )
        if not db:
            raise OperatorError(
                "no database named: pass --db NAME (or a URI with the database, "
                "mongodb://HOST:PORT/NAME, or -A MODULE whose install() names mongodb_db)"
            )
        return uri, origin, db

    def _open(self, uri: str, db: str) -> Database:
        timeout_ms = int(self.server_timeout * 1000)
        if not self.app_module:
            client: MongoClient = MongoClient(
                uri, serverSelectionTimeoutMS=timeout_ms, connect=False
            )
            return client[db]
        # The app's classes read and write through mongoengine's connection for the alias
        # install() named: point it at the same server (made here, with a short timeout,
        # unless this process already has that very connection).
        import mongoengine
        from mongoengine.connection import _connection_settings, get_db

        from procstatus import connection

        defined = _connection_settings.get(self.alias)
        if defined is None or (_host_of(defined), defined.get("name")) != (uri, db):
            mongoengine.disconnect(self.alias)
            mongoengine.connect(
                db=db, host=uri, alias=self.alias, connect=False,
                serverSelectionTimeoutMS=timeout_ms,
            )
            connection.configure(self.alias, uri, db)
        database: Database = get_db(self.alias)
        return database

    # --- what to look at -------------------------------------------------------------------

    def sources(self, class_name: str | None = None) -> list[Source]:
        """The Proc collections (by class with -A, by collection without), maybe one."""
        if self._sources is None:
            self._sources = self._find_sources()
        chosen = queries.select(self._sources, class_name)
        if not chosen:
            known = ", ".join(s.name for s in self._sources)
            raise OperatorError(f"no class or collection {class_name!r}; known: {known}")
        return chosen

    def _find_sources(self) -> list[Source]:
        database = self.connect()
        if not self.app_module:
            found = queries.discover(database)
            if not found:
                listing = ", ".join(sorted(database.list_collection_names())[:15]) or "none"
                raise OperatorError(
                    f"database {database.name!r} at {redact(self.uri)} holds no collection of "
                    f"Proc documents (its collections: {listing}). Check --db, or pass "
                    "-A MODULE (the module your workers load with celery -A)"
                )
            return found
        from mongoengine import DEFAULT_CONNECTION_NAME
        from mongoengine.connection import get_db

        from procstatus import connection
        from procstatus.sweeper import proc_classes

        found = []
        for cls in sorted(proc_classes(), key=lambda c: c.__name__):
            alias = cls._meta.get("db_alias") or DEFAULT_CONNECTION_NAME
            if alias == self.alias:
                class_db = database
            else:
                connection.ensure(alias)
                if not connection.is_defined(alias):
                    self.skipped.append(f"{cls.__name__} (db_alias {alias!r})")
                    continue
                class_db = get_db(alias)
            found.append(Source(cls.__name__, class_db[cls._get_collection_name()], cls))
        if not found:
            raise OperatorError(
                f"-A {self.app_module} defines no Proc class: import the modules that define "
                "your Proc subclasses in it (your workers need them too)"
            )
        return found

    def require_classes(self, command: str) -> None:
        if not self.app_module:
            raise OperatorError(
                f"procstatus {command} needs your Proc classes: pass -A MODULE (the module "
                "your workers load with celery -A), e.g. procstatus -A myapp.tasks "
                f"{command} ..."
            )

    def locate(self, text: str, class_name: str | None) -> tuple[Source, Any]:
        """The one document with id ``text``; :class:`NotFound` if none or several."""
        matches = queries.find_id(self.sources(class_name), text)
        if not matches:
            where = class_name or "any class"
            raise NotFound(f"no document with id {text} in {where}")
        if len(matches) > 1:
            names = ", ".join(s.name for s, _ in matches)
            raise NotFound(f"id {text} names documents in {names}: pass --class")
        return matches[0]

    def workers_collection(self) -> Any:
        from procstatus.liveness import WORKERS_COLLECTION

        return self.connect()[WORKERS_COLLECTION]

    def threshold(self) -> float:
        from procstatus import runtime

        return runtime.current.heartbeat_threshold


class NotFound(Exception):
    """An id that names no document, or more than one."""


def _host_of(settings: dict[str, Any] | None) -> str | None:
    if not settings:
        return None
    host = settings.get("host")
    if isinstance(host, (list, tuple)):
        host = host[0] if host else None
    return str(host) if host else None


def _database_in(uri: str) -> str | None:
    """The database named in the URI's path (``mongodb://HOST/NAME``), if any."""
    match = re.match(r"^mongodb(?:\+srv)?://[^/?]*/([^?]+)", uri)
    return match.group(1) if match else None


def _import_app(module: str) -> None:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `celery -A` does
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise OperatorError(
                f"-A {module}: no module named {exc.name!r} here ({cwd}). Run procstatus from "
                "the directory your workers start in, or add that directory to PYTHONPATH"
            ) from None
        raise OperatorError(
            f"-A {module}: importing it failed: ModuleNotFoundError: {exc}"
        ) from None
    except Exception as exc:
        raise OperatorError(
            f"-A {module}: importing it failed: {type(exc).__name__}: {first_line(exc)}"
        ) from None


def status_json(
    database: str, rows: Sequence[queries.ClassCounts], skipped: Sequence[str], now: Any
) -> dict[str, Any]:
    """What ``procstatus status --json`` prints (and the dashboard's ``/api/status``)."""
    return {
        "database": database,
        "classes": [r.as_dict(now) for r in rows],
        "skipped": list(skipped),
    }


# --- a parent's children -----------------------------------------------------------------


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
            return dict.fromkeys(queries.STATUSES, 0)
        return queries.children_counts(self.collection, self.filter)

    def summary(self) -> dict[str, Any]:
        """``{"class", "counts"}``, or ``{"class": None, "error"}`` (as ``show --json``)."""
        if self.error is not None:
            return {"class": None, "error": self.error}
        return {"class": self.class_name, "counts": self.counts()}


def children_of(source: Source, pk: Any) -> Children | None:
    """The children of document ``pk``, when its class (known through -A) has
    ``children()``; ``None`` for a class without children, or a document gone."""
    from procstatus.document import ProcDocument

    cls = source.cls
    base = ProcDocument.children
    if cls is None or getattr(cls, "children", base) is base:
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


# --- the writes an operator may make on one document -------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What an operator's write did: ``ok`` or refused, and the sentence that says so."""

    ok: bool
    message: str


def label(source: Source, pk: Any) -> str:
    return f"{source.name}({pk})"


def cancel_document(source: Source, pk: Any, *, terminate: bool = False) -> Outcome:
    """``Proc.cancel()`` (:func:`procstatus.endings.cancel`): FAILURE "cancelled"."""
    from procstatus import endings, transitions

    if source.cls is None:
        raise OperatorError(f"cancel needs the class of {label(source, pk)}: pass -A MODULE")
    before = transitions.read_state(source.collection, pk) or {}
    proc = source.cls.objects(pk=pk).first()  # type: ignore[attr-defined]
    if proc is None or not endings.cancel(proc, terminate=terminate):
        now_status = proc.process_status if proc is not None else "deleted"
        return Outcome(False, f"{label(source, pk)} is {now_status}: nothing to cancel")
    return Outcome(
        True,
        f"cancelled {label(source, pk)}: was {before.get('process_status')} "
        f"({before.get('current_process')}), now FAILURE"
        + ("; its worker was told to kill the process running it" if terminate else ""),
    )


def reset_refusal(
    source: Source, pk: Any, state: Mapping[str, Any] | None, *, force: bool,
    hint: str = "Cancel it first",
) -> str | None:
    """Why a reset of this document is refused (``None``: it may go ahead)."""
    if state is None:
        return f"{label(source, pk)} no longer exists"
    current = state.get("process_status")
    if current == ProcessStatus.READY.value:
        return f"{label(source, pk)} is already READY"
    if current in {s.value for s in PROCESSING} and not force:
        return (
            f"{label(source, pk)} is {current} ({state.get('current_process')}): refused, a "
            f"worker may be running it. {hint}"
        )
    return None


def reset_document(source: Source, pk: Any, *, force: bool = False) -> Outcome:
    """The state machine's operator override (:func:`procstatus.transitions.reset`):
    back to READY; logged. Check :func:`reset_refusal` first."""
    from procstatus import transitions

    before = transitions.reset(source.collection, pk, force=force)
    if before is None:
        return Outcome(False, f"{label(source, pk)} changed meanwhile: not reset")
    was = before.get("process_status")
    logger.warning(
        "operator reset %s: %s (%s) → READY%s", label(source, pk), was,
        before.get("current_process"), " (forced)" if force else "",
    )
    return Outcome(True, f"reset {label(source, pk)}: {was} → READY")


@dataclass
class RetryPlan:
    """A failed process to call again on one document, with its stored arguments."""

    source: Source
    pk: Any
    proc: Any
    method: str
    args: list[Any]
    kwargs: dict[str, Any]

    @property
    def call_text(self) -> str:
        parts = [json.dumps(a) for a in self.args]
        parts += [f"{k}={json.dumps(v)}" for k, v in self.kwargs.items()]
        return f"{self.method}({', '.join(parts)})"

    def describe(self) -> str:
        return f"{self.source.name}({self.pk}).{self.call_text}"

    def call(self) -> Outcome:
        """Call it (a new run, PENDING at once); refused if the document is busy."""
        from procstatus.errors import ProcessAlreadyRunning

        where = f"{self.source.name}({self.pk}).{self.method}"
        try:
            getattr(self.proc, self.method)(*self.args, **self.kwargs)
        except ProcessAlreadyRunning:
            return Outcome(False, f"{where}: refused, it was called again meanwhile")
        except Exception as exc:
            return Outcome(
                False, f"{where}: the call failed: {type(exc).__name__}: {first_line(exc)}"
            )
        return Outcome(True, f"called {self.describe()}: {self.proc.process_status}")


def plan_retry(source: Source, pk: Any, process: str | None) -> RetryPlan | str:
    """How to call ``process`` again on document ``pk`` (its stored arguments), or why not."""
    from procstatus.spec import process_spec

    where = f"{source.name}({pk}).{process}"
    cls = source.cls
    if cls is None:
        return f"{where}: the class is not known: pass -A MODULE"
    spec = process_spec(cls, process or "")
    if spec is None:
        return f"{where}: not a @process method of {source.name}: skipped"
    proc = cls.objects(pk=pk).first()  # type: ignore[attr-defined]
    arguments = getattr(proc, "process_arguments", None)
    if proc is None or not isinstance(arguments, dict):
        return f"{where}: no stored arguments (it ran before they were stored): skipped"
    return RetryPlan(
        source, pk, proc, spec.name, list(arguments.get("args") or []),
        dict(arguments.get("kwargs") or {}),
    )


def process_names(cls: type | None) -> list[str]:
    """The ``@process`` methods of ``cls`` (none when the class is not known)."""
    if cls is None:
        return []
    from procstatus.spec import process_spec

    return sorted(name for name in dir(cls) if not name.startswith("_")
                  and process_spec(cls, name) is not None)
