"""The MongoDB connection given to ``install()``, opened lazily wherever a process has none.

``procstatus.install(app, mongodb_uri=...)`` records the URI here. Worker processes open
their own connections from it (see :mod:`procstatus.hooks`). Any other process — a web
app, a shell, a test — gets it the first time a ``Proc`` class needs its database and no
mongoengine connection is defined for that alias: nothing is opened at import, so a
connection the user makes, before or after ``install()``, is always the one used.
"""

from __future__ import annotations

from dataclasses import dataclass

import mongoengine
from mongoengine import connection


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
