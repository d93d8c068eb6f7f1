"""The MongoDB connection given to ``install()``, opened lazily wherever a process has none;
and the options every deciding read and every status write use, whatever the URI says.

``procstatus.install(app, mongodb_uri=...)`` records the URI here. Worker processes open
their own connections from it (see :mod:`procstatus.hooks`). Any other process — a web
app, a shell, a test — gets it the first time a ``Proc`` class needs its database and no
mongoengine connection is defined for that alias: nothing is opened at import, so a
connection the user makes, before or after ``install()``, is always the one used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mongoengine
from mongoengine import connection
from pymongo import ReadPreference
from pymongo.collection import Collection
from pymongo.uri_parser import parse_uri

from procstatus import runtime

logger = logging.getLogger("procstatus")


@dataclass(frozen=True)
class ConnectionSettings:
    """What ``install()`` was given for one alias: the URI, and the database name (``None``:
    the one the URI names)."""

    uri: str
    db: str | None


_configured: dict[str, ConnectionSettings] = {}


def configure(alias: str, uri: str, db: str | None) -> None:
    """Remember the connection ``install()`` was given for ``alias``."""
    _configured[alias] = ConnectionSettings(uri, db)


def configured(alias: str) -> ConnectionSettings | None:
    """The connection ``install()`` was given for ``alias`` in this process, if any."""
    return _configured.get(alias)


def is_defined(alias: str) -> bool:
    """Whether mongoengine has a connection registered under ``alias`` in this process."""
    return alias in connection._connection_settings


def ensure(alias: str) -> None:
    """Register the configured connection for ``alias`` if this process has none (lazy)."""
    settings = _configured.get(alias)
    if settings is not None and not is_defined(alias):
        mongoengine.connect(db=settings.db, host=settings.uri, alias=alias, connect=False)


def drop_client(alias: str) -> None:
    """Forget this process's MongoClient (and database) for ``alias`` but keep its settings,
    so that mongoengine opens a new client on next use.

    For a process forked from one that had connected: pymongo is not fork-safe, so the
    client it inherited must not be used. mongoengine has no public call for this
    (``disconnect`` also forgets the settings); its private state is touched here only.
    """
    connection._connections.pop(alias, None)
    connection._dbs.pop(alias, None)


_durable: dict[int, tuple[Collection, object, Collection]] = {}


def durable(collection: Collection) -> Collection:
    """``collection`` as procstatus writes and decides with it, whatever the URI says.

    Writes use ``runtime.current.write_concern`` (``w="majority"`` by default), so that a
    status acknowledged to procstatus survives a replica-set failover: a write the
    primary alone acknowledged may be rolled back, turning SUCCESS back into RUNNING or
    PENDING back into READY. Reads use the primary: the claim's re-read, liveness, the
    sweeper, joins, cancel and the call queue decide from what they read, and a lagging
    secondary would show them an old state. Plain listings may follow the URI.
    """
    write_concern = runtime.current.write_concern
    cached = _durable.get(id(collection))
    if cached is not None and cached[0] is collection and cached[1] is write_concern:
        return cached[2]
    chosen = collection.with_options(
        write_concern=write_concern, read_preference=ReadPreference.PRIMARY
    )
    _durable[id(collection)] = (collection, write_concern, chosen)
    return chosen


def warn_if_writes_not_retried(alias: str) -> bool:
    """Log a warning when the connection for ``alias`` has ``retryWrites=false``.

    Without retryable writes, a failover or a dropped connection in the middle of a status
    write surfaces as an error whose write may or may not have been applied; procstatus
    then re-reads the document from the primary to find out (see
    :mod:`procstatus.transitions`), and if that read fails too the error goes to the caller
    (the run is then left to the sweeper). Returns whether it warned.
    """
    if _retry_writes(alias) is not False:
        return False
    logger.warning(
        "procstatus: the MongoDB connection %r has retryWrites=false. A status write cut by "
        "a failover is then not retried by the driver; procstatus re-reads the document to "
        "tell whether it was applied. Remove retryWrites=false from the URI unless your "
        "server cannot retry writes.", alias,
    )
    return True


def _retry_writes(alias: str) -> bool | None:
    """``retryWrites`` as the connection for ``alias`` sets it; ``None`` (the driver's
    default, true) when nothing sets it."""
    uris: list[object] = []
    settings = _configured.get(alias)
    if settings is not None:
        uris.append(settings.uri)
    if is_defined(alias):
        options = connection._connection_settings[alias]
        if options.get("retryWrites") is not None:
            return bool(options["retryWrites"])
        host = options.get("host")
        uris.extend(host if isinstance(host, list) else [host])
    for uri in uris:
        # mongodb+srv:// would need a DNS lookup to parse: its options stay unread here.
        if isinstance(uri, str) and uri.startswith("mongodb://"):
            value = parse_uri(uri).get("options", {}).get("retrywrites")
            if value is not None:
                return bool(value)
    return None
