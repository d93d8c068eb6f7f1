"""The operator's session: what the global options ``-A MODULE``, ``--mongodb-uri`` and
``--db`` name, connected on first use, and the one rule that turns an id an operator
typed into a document.

:class:`Session` imports the app module, resolves the MongoDB URI and database (the
option, else ``install()``'s settings, else mongoengine's connection of the app, else
the default), connects with a short timeout, finds the ``Proc`` collections to look at
(:class:`~procstatus.ops.sources.Source`: the app's classes with ``-A``, else the
database's collections that hold ``process_status``) and locates a document by id
(:meth:`Session.locate`). Both the CLI and the dashboard hold one; what goes wrong is an
:class:`~procstatus.ops.errors.OperatorError` saying how to fix it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import mongoengine
from mongoengine import DEFAULT_CONNECTION_NAME
from mongoengine.connection import _connection_settings, get_db
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI, OperationFailure, PyMongoError

from procstatus import connection, liveness, runtime
from procstatus.ops import queries
from procstatus.ops.errors import AmbiguousId, NotFound, OperatorError, first_line
from procstatus.ops.sources import Source, discover, select
from procstatus.sweeper import proc_classes  # imports no Celery (see procstatus.ops)
from procstatus.text import redact

DEFAULT_URI = "mongodb://127.0.0.1:27017"
START_SERVER_HINT = (
    "Start the server (`mongod --dbpath DIR`, or `docker compose up -d mongo` in a "
    "procstatus checkout) or point --mongodb-uri (or MONGODB_URI) at one that runs"
)


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
        chosen = select(self._sources, class_name)
        if not chosen:
            known = ", ".join(s.name for s in self._sources)
            raise OperatorError(f"no class or collection {class_name!r}; known: {known}")
        return chosen

    def _find_sources(self) -> list[Source]:
        database = self.connect()
        if not self.app_module:
            found = discover(database)
            if not found:
                listing = ", ".join(sorted(database.list_collection_names())[:15]) or "none"
                raise OperatorError(
                    f"database {database.name!r} at {redact(self.uri)} holds no collection of "
                    f"Proc documents (its collections: {listing}). Check --db, or pass "
                    "-A MODULE (the module your workers load with celery -A)"
                )
            return found
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

    def locate(
        self, text: str, class_name: str | None = None, *, hint: str = "pass --class"
    ) -> tuple[Source, Any]:
        """The one document an id names: (its source, its stored ``_id``).

        The one rule for an id, in the CLI and the dashboard alike: ``text`` may stand
        for a string, an ObjectId or an integer ``_id``
        (:func:`~procstatus.ops.queries.id_candidates`), looked up in the sources
        ``class_name`` names (all when ``None``). Where one collection holds several of
        these (``"7"`` and ``7``), the one stored as typed, the string, is the document.
        Documents in several collections are :class:`AmbiguousId`, whose message ends
        with ``hint`` (how to name the class); none is :class:`NotFound`. An unknown
        ``class_name`` is an :class:`OperatorError` (:meth:`sources`).
        """
        matches = queries.find_id(self.sources(class_name), text)
        if not matches:
            where = class_name or "any class"
            raise NotFound(f"no document with id {text} in {where}")
        by_source: dict[int, tuple[Source, Any]] = {}
        for source, pk in matches:
            kept = by_source.setdefault(id(source), (source, pk))
            if pk == text and kept[1] != text:
                by_source[id(source)] = (source, pk)
        found = list(by_source.values())
        if len(found) > 1:
            names = ", ".join(s.name for s, _ in found)
            raise AmbiguousId(f"id {text} names documents in {names}: {hint}")
        return found[0]

    def workers_collection(self) -> Any:
        return self.connect()[liveness.WORKERS_COLLECTION]

    def threshold(self) -> float:
        return runtime.current.heartbeat_threshold


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
