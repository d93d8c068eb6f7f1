"""The worker's side of messages: turning a task's arguments back into a call, or rejecting it.

Two generic tasks carry every message (see :mod:`procstatus.hooks`):

- ``procstatus.run``: ``[class name, document id, method, args, kwargs]``, a process call;
- ``procstatus.join``: ``[class name, document id]``, a parent's join.

Only ``@process`` methods of concrete ``Proc`` subclasses resolve, ids are validated by
the class's own id field and arguments are bounded, so a forged message reaches nothing
else. The caller's side of the same messages is :mod:`procstatus.dispatch`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mongoengine.base import get_document
from mongoengine.errors import NotRegistered

from procstatus.dispatch import MAX_ARGUMENT_BYTES, ProcessSpec, process_spec
from procstatus.document import Proc


class MessageRejected(ValueError):
    """A task message does not name a ``@process`` method of a ``Proc`` subclass."""


@dataclass(frozen=True)
class ProcessCall:
    """A task message resolved to the class, id and method it names."""

    cls: type[Proc]
    pk: Any
    spec: ProcessSpec
    args: list[Any]
    kwargs: dict[str, Any]

    def describe(self) -> str:
        return f"{self.cls.__name__}({self.pk}).{self.spec.name}"

    @classmethod
    def from_state(cls, proc_cls: type[Proc], state: Mapping[str, Any]) -> ProcessCall | None:
        """The call a stored run was made with (to send it again); ``None`` if not a process."""
        spec = process_spec(proc_cls, state.get("current_process") or "")
        if spec is None:
            return None
        arguments = state.get("process_arguments") or {}
        return cls(
            proc_cls, state["_id"], spec,
            list(arguments.get("args") or []), dict(arguments.get("kwargs") or {}),
        )


@dataclass(frozen=True)
class JoinCall:
    """A join message resolved to the parent's class and id."""

    cls: type[Proc]
    pk: Any

    def describe(self) -> str:
        return f"{self.cls.__name__}({self.pk}).join"


def resolve(args: Sequence[Any], kwargs: Mapping[str, Any]) -> ProcessCall:
    """Turn ``procstatus.run``'s arguments back into a :class:`ProcessCall`, or reject them."""
    if kwargs or len(args) != 5:
        raise MessageRejected(f"expected 5 positional arguments, got {len(args)} and {kwargs!r}")
    class_name, raw_pk, method, call_args, call_kwargs = args
    if not isinstance(method, str):
        raise MessageRejected("class and method names must be strings")
    cls, pk = _resolve_document(class_name, raw_pk)
    spec = process_spec(cls, method)
    if spec is None:
        raise MessageRejected(f"{class_name}.{method} is not a @process method")
    if not isinstance(call_args, list) or not isinstance(call_kwargs, dict):
        raise MessageRejected("process arguments must be a list and a dict")
    size = len(json.dumps([call_args, call_kwargs], default=str))
    if size > MAX_ARGUMENT_BYTES:
        raise MessageRejected(
            f"arguments are {size} bytes as JSON, over the {MAX_ARGUMENT_BYTES}-byte limit"
        )
    return ProcessCall(cls, pk, spec, call_args, call_kwargs)


def resolve_join(args: Sequence[Any], kwargs: Mapping[str, Any]) -> JoinCall:
    """Turn ``procstatus.join``'s arguments back into a :class:`JoinCall`, or reject them."""
    if kwargs or len(args) != 2:
        raise MessageRejected(f"expected 2 positional arguments, got {len(args)} and {kwargs!r}")
    cls, pk = _resolve_document(*args)
    return JoinCall(cls, pk)


def _resolve_document(class_name: Any, raw_pk: Any) -> tuple[type[Proc], Any]:
    if not isinstance(class_name, str):
        raise MessageRejected("class and method names must be strings")
    if raw_pk is None:
        raise MessageRejected(f"missing document id for {class_name}")
    try:
        cls = get_document(class_name)
    except NotRegistered:
        raise MessageRejected(
            f"unknown document class {class_name!r}: the worker must import the module "
            "that defines it (Celery 'imports' or 'include')"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Proc)) or cls._meta.get("abstract"):
        raise MessageRejected(f"{class_name!r} is not a concrete Proc subclass")
    id_field = cls._fields[cls._meta["id_field"]]
    try:
        pk = id_field.to_python(raw_pk)
        id_field.validate(pk)
    except Exception as exc:
        raise MessageRejected(f"invalid document id {raw_pk!r} for {class_name}: {exc}") from None
    return cls, pk
