"""Time as procstatus reads and writes it: one clock, the MongoDB server's.

Every moment that liveness or the sweeper compares — ``heartbeat_at``, ``suspected_at``,
``gone_at``, and a run's ``start_time``, ``status_changed_at`` and ``complete_time`` — is
written by the server itself, with ``$currentDate`` (:func:`server_time`), and compared
with the server's "now" (:func:`server_now`, one ``hello`` command). The hosts that write
them (each worker, the caller, the process that sweeps) may then disagree about the time
by any amount: no two of their clocks are ever compared. Only durations are measured
locally, on the monotonic clock.

Limits: a replica set's members each answer ``hello`` with their own clock (keep the
members' clocks in sync, as MongoDB itself requires); :func:`server_now` is as old as one
round trip when it arrives; ``create_time`` (set by ``Proc.create``/``save``) and a queued
call's ``queued_at`` are still the writing host's clock, which nothing compares.

pymongo returns naive UTC datetimes unless its client is ``tz_aware``; :func:`aware`
turns what it returns into an aware one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pymongo.database import Database


def server_time(*fields: str) -> dict[str, dict[str, bool]]:
    """The update operator that sets each of ``fields`` to the server's time of the write.

    ``{"$currentDate": {field: True, ...}}``: merge it into an update document beside its
    ``$set`` (a field must not be in both). BSON dates keep milliseconds.
    """
    if not fields:
        raise ValueError("server_time() needs at least one field name")
    return {"$currentDate": dict.fromkeys(fields, True)}


def server_now(database: Database) -> datetime:
    """The server's clock now, as an aware UTC datetime (one ``hello`` command).

    Read it once per decision or per sweep pass, not per document. Raises
    ``RuntimeError`` when the server's answer carries no ``localTime`` (MongoDB and
    SecantusDB both send it).
    """
    answer = database.command("hello")
    moment = aware(answer.get("localTime"))
    if moment is None:
        raise RuntimeError(
            f"the MongoDB server's hello answer has no localTime (got {sorted(answer)}): "
            "procstatus reads the time from the server; use a server that reports it"
        )
    return moment


def utcnow() -> datetime:
    """This process's clock, as an aware UTC datetime: for what is shown, never compared."""
    return datetime.now(timezone.utc)


def aware(moment: Any) -> datetime | None:
    """``moment`` as an aware UTC datetime; ``None`` when it is not a datetime."""
    if not isinstance(moment, datetime):
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment
