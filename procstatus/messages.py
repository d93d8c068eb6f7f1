"""The messages procstatus sends, both sides: publishing them, and resolving them on a worker.

Two generic tasks carry every message (registered by :func:`procstatus.install`):

- ``procstatus.run``: ``[class name, document id, method, args, kwargs]``, a process call;
- ``procstatus.join``: ``[class name, document id]``, a parent's join.

:func:`publish` and :func:`publish_join` send them (the document is already written;
see :mod:`procstatus.dispatch`), :func:`revoke` asks the workers to drop one. On the
worker, :func:`resolve` and :func:`resolve_join` turn them back into calls: only
``@process`` methods of concrete ``Proc`` subclasses resolve, ids are validated by the
class's own id field and arguments are bounded, so a forged message reaches nothing else.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mongoengine.base import get_document
from mongoengine.errors import NotRegistered

from procstatus import runtime
from procstatus.document import ProcDocument
from procstatus.spec import MAX_ARGUMENT_BYTES, ProcessSpec, process_spec

REVOKE_WAIT = 5.0
"""Seconds a cancel waits for its revoke to reach the broker before it returns anyway."""


class MessageRejected(ValueError):
    """A task message does not name a ``@process`` method of a ``Proc`` subclass."""


@dataclass(frozen=True)
class ProcessCall:
    """A task message resolved to the class, id and method it names."""

    cls: type[ProcDocument]
    pk: Any
    spec: ProcessSpec
    args: list[Any]
    kwargs: dict[str, Any]

    def describe(self) -> str:
        return f"{self.cls.__name__}({self.pk}).{self.spec.name}"

    @classmethod
    def from_state(
        cls, proc_cls: type[ProcDocument], state: Mapping[str, Any]
    ) -> ProcessCall | None:
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

    cls: type[ProcDocument]
    pk: Any

    def describe(self) -> str:
        return f"{self.cls.__name__}({self.pk}).join"


# --- the caller's side ---------------------------------------------------------------


def publish(
    cls: type[ProcDocument],
    pk: Any,
    spec: ProcessSpec,
    args: list[Any],
    kwargs: dict[str, Any],
    task_id: str,
) -> bool:
    """Send the generic task for an already scheduled call.

    Returns whether the task already ran, inline, as Celery's ``task_always_eager`` does.
    """
    run_task = runtime.current.run(f"{cls.__name__}.{spec.name}()")
    run_task.apply_async(
        args=[cls._class_name, json_pk(pk), spec.name, args, kwargs],
        task_id=task_id,
        # What Celery's own tools show (logs, inspect, events, Flower): Upload.process_upload.
        shadow=f"{cls.__name__}.{spec.name}",
        queue=spec.queue,
        soft_time_limit=spec.soft_time_limit,
        time_limit=spec.time_limit,
        priority=spec.priority,
    )
    return bool(run_task.app.conf.task_always_eager)


def publish_join(cls: type[ProcDocument], pk: Any, spec: ProcessSpec | None) -> str:
    """Send a join task for the parent ``cls(pk)``, under its process's queue and limits.

    Whoever sends it, the conditional WAITING_FOR_RESULT → RUNNING write lets one join
    task per wait run ``join()``. Returns the join task's id.
    """
    join_task = runtime.current.join(f"the join of {cls.__name__}")
    task_id = new_task_id()
    join_task.apply_async(
        args=[cls._class_name, json_pk(pk)],
        task_id=task_id,
        shadow=f"{cls.__name__}.join",
        queue=spec.queue if spec else None,
        soft_time_limit=spec.soft_time_limit if spec else None,
        time_limit=spec.time_limit if spec else None,
    )
    return task_id


def revoke(task_id: str, *, terminate: bool) -> bool:
    """Tell the workers to drop (or, with ``terminate``, kill) the task ``task_id``.

    Celery's broadcast retries for as long as the broker is unreachable; the caller waits
    at most :data:`REVOKE_WAIT` seconds and returns ``False`` if it was not sent by then
    (it goes on trying in the background). The status is written before, so a worker
    that gets the message anyway cannot claim it.
    """
    control = runtime.current.app("revoking a task").control
    sender = threading.Thread(
        target=control.revoke, args=(task_id,),
        kwargs={"terminate": terminate, "signal": "SIGKILL"},
        name=f"procstatus-revoke-{task_id}", daemon=True,
    )
    sender.start()
    sender.join(REVOKE_WAIT)
    return not sender.is_alive()


def new_task_id() -> str:
    """A Celery task id (the same form Celery generates)."""
    return str(uuid.uuid4())


def json_pk(pk: Any) -> Any:
    """``pk`` as it travels in a message: ints and strings as they are, others as str."""
    return pk if isinstance(pk, (int, str)) and not isinstance(pk, bool) else str(pk)


# --- the worker's side ---------------------------------------------------------------


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


def _resolve_document(class_name: Any, raw_pk: Any) -> tuple[type[ProcDocument], Any]:
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
    if not (isinstance(cls, type) and issubclass(cls, ProcDocument)) or cls._meta.get("abstract"):
        raise MessageRejected(f"{class_name!r} is not a concrete Proc subclass")
    id_field = cls._fields[cls._meta["id_field"]]
    try:
        pk = id_field.to_python(raw_pk)
        id_field.validate(pk)
    except Exception as exc:
        raise MessageRejected(f"invalid document id {raw_pk!r} for {class_name}: {exc}") from None
    return cls, pk
