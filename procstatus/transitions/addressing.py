"""How a write addresses one document (:class:`Target`), and how an ambiguous write is settled.

See :mod:`procstatus.transitions` for the rules; this module holds the one conditional
``update_one`` and ``find_one_and_update`` every write goes through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, NotPrimaryError, PyMongoError, WriteConcernError

from procstatus import connection
from procstatus.transitions.fields import (
    _PROJECTION,
)

logger = logging.getLogger("procstatus")


R = TypeVar("R")


_AMBIGUOUS = (WriteConcernError, ConnectionFailure)
"""Errors after which a write may have been applied (see the module docstring)."""


@dataclass(frozen=True)
class Target:
    """One document as the state machine addresses it: ``collection`` (durable, see
    :func:`target`) and ``key``, ``{"_id": pk}`` plus any shard-key values."""

    collection: Collection
    key: Mapping[str, Any]

    @property
    def pk(self) -> Any:
        return self.key["_id"]

    def where(self, conditions: Mapping[str, Any]) -> dict[str, Any]:
        """The filter of a write: this document, and ``conditions``."""
        return {**self.key, **conditions}


def target(
    collection: Collection,
    pk: Any,
    shard_fields: Sequence[str] = (),
    known: Mapping[str, Any] | None = None,
) -> Target:
    """The :class:`Target` of document ``pk`` in ``collection``.

    ``shard_fields`` are the collection's shard-key fields (dotted database names). Their
    values come from ``known`` (the raw document, or part of it) when it has them all,
    else from one read by ``_id`` — which a sharded cluster sends to every shard, once,
    so that the writes after it go to one. A document that is gone gets ``_id`` alone:
    every write then matches nothing.
    """
    chosen = connection.durable(collection)
    if not shard_fields:
        return Target(chosen, {"_id": pk})
    values = _shard_values(known or {}, shard_fields)
    if values is None:
        stored = chosen.find_one({"_id": pk}, {name: 1 for name in shard_fields})
        values = _shard_values(stored or {}, shard_fields, missing_is_null=stored is not None)
    return Target(chosen, {"_id": pk, **(values or {})})


def _shard_values(
    document: Mapping[str, Any], fields: Sequence[str], *, missing_is_null: bool = False
) -> dict[str, Any] | None:
    """``fields``' values in ``document`` (dotted paths); ``None`` if one is not there."""
    values: dict[str, Any] = {}
    for name in fields:
        value: Any = document
        for part in name.split("."):
            if not isinstance(value, Mapping) or part not in value:
                if not missing_is_null:
                    return None
                value = None  # a missing shard-key field is stored as null
                break
            value = value[part]
        values[name] = value
    return values


def read_state(target: Target) -> dict | None:
    """The state fields as stored now (to explain a lost condition), or ``None`` if gone."""
    return target.collection.find_one(target.key, _PROJECTION)


def _update(
    target: Target,
    conditions: Mapping[str, Any],
    update: Mapping[str, Any],
    landed: Callable[[Mapping[str, Any]], bool],
    *,
    matched: bool = False,
) -> bool:
    """One conditional ``update_one``; whether it won (modified, or with ``matched``
    matched: an in-run write of a value already there still counts)."""

    def send() -> bool:
        result = target.collection.update_one(target.where(conditions), update)
        return (result.matched_count if matched else result.modified_count) == 1

    return _settled(target, send, landed, lambda state: state is not None)


def _find_and_update(
    target: Target,
    conditions: Mapping[str, Any],
    update: Mapping[str, Any],
    landed: Callable[[Mapping[str, Any]], bool],
    *,
    before: bool,
    projection: Mapping[str, Any] | None = None,
) -> dict | None:
    """One conditional ``find_one_and_update``, returning the document before or after.

    Settled after an ambiguous error, it returns the document as re-read: after the write,
    even where ``before`` was asked (the state before is then unknown; callers say what
    they do with that).
    """

    def send() -> dict | None:
        return target.collection.find_one_and_update(
            target.where(conditions), update, projection=projection,
            return_document=ReturnDocument.BEFORE if before else ReturnDocument.AFTER,
        )

    return _settled(target, send, landed, lambda state: state)


def _settled(
    target: Target,
    send: Callable[[], R],
    landed: Callable[[Mapping[str, Any]], bool],
    outcome: Callable[[dict | None], R],
) -> R:
    """``send()`` (one write command); after an ambiguous error, ``outcome`` of the state
    :func:`_settle` finds. A refusal (``NotPrimaryError``) wrote nothing: ``send()`` once more."""
    try:
        return send()
    except NotPrimaryError as exc:
        logger.warning("procstatus write to %s %r refused (%s); sending it again",
                       target.collection.name, target.pk, exc)
    except _AMBIGUOUS as exc:
        return outcome(_settle(target, exc, landed))
    try:
        return send()
    except _AMBIGUOUS as exc:
        return outcome(_settle(target, exc, landed))


def _settle(
    target: Target, error: PyMongoError, landed: Callable[[Mapping[str, Any]], bool]
) -> dict | None:
    """After an ambiguous ``error``: the document if it shows the write, ``None`` if the
    write is known to have matched nothing; else ``error`` again."""
    try:
        state = target.collection.find_one(target.key)
    except PyMongoError:
        raise error from None
    if state is not None and landed(state):
        logger.warning("procstatus write to %s %r applied despite %s: %s",
                       target.collection.name, target.pk, type(error).__name__, error)
        return state
    if isinstance(error, WriteConcernError):
        return None  # it ran and matched nothing: the condition was lost
    raise error
