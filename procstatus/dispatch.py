"""The caller's side: ``@process``, argument checks, scheduling and publishing.

Calling a decorated method on a saved :class:`~procstatus.Proc` checks the arguments,
moves the document to PENDING in one conditional write and publishes the generic task
that :func:`procstatus.install` registered. The worker's side of the same messages,
turning them back into calls, is :mod:`procstatus.messages`.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from procstatus import transitions
from procstatus.errors import NotInstalled, ProcessAlreadyRunning
from procstatus.status import ProcessStatus

if TYPE_CHECKING:
    from celery import Task

    from procstatus.document import Proc

logger = logging.getLogger("procstatus")

F = TypeVar("F", bound=Callable[..., Any])

MAX_ARGUMENT_BYTES = 64 * 1024
"""Largest JSON encoding of a call's arguments; bigger data belongs in the document."""

_SPEC_ATTRIBUTE = "__procstatus_process__"
_STRICT_JSON = json.JSONEncoder(allow_nan=False)
"""``json.dumps(..., allow_nan=False)`` without building an encoder on every call."""


@dataclass(frozen=True)
class ProcessSpec:
    """What ``@process`` knows about one method."""

    name: str
    function: Callable[..., Any]
    is_child: bool = False
    queue: str | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    max_retries: int = 3
    retry_backoff: float = 1.0
    retry_backoff_max: float = 600.0
    retry_on_worker_lost: bool = False
    is_blocking: bool = True
    clear_queue_on_failure: bool = True
    priority: int | None = None

    def retry_countdown(self, retries_done: int) -> float:
        """Seconds before attempt ``retries_done + 2``: exponential, capped."""
        return float(min(self.retry_backoff * (2 ** retries_done), self.retry_backoff_max))


_children_sent = 0
"""How many ``is_child`` calls this process has published (see :func:`children_sent`)."""

_publisher: Task | None = None
_join_publisher: Task | None = None


def set_publisher(task: Task, join_task: Task | None = None) -> None:
    """Called by :func:`procstatus.install` with the generic run and join tasks."""
    global _publisher, _join_publisher
    _publisher = task
    _join_publisher = join_task


def process(
    function: F | None = None,
    *,
    is_child: bool = False,
    queue: str | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    autoretry_for: tuple[type[BaseException], ...] = (),
    max_retries: int = 3,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 600.0,
    retry_on_worker_lost: bool = False,
    is_blocking: bool = True,
    clear_queue_on_failure: bool = True,
    priority: int | None = None,
) -> Any:
    """Make a ``Proc`` method a process: calling it runs it on a Celery worker.

    Use as ``@process`` or ``@process(...)`` with:

    - ``is_child``: the method belongs to a child that reports to a parent waiting in
      WAITING_FOR_RESULT (the child implements ``parent()``).
    - ``queue``: the Celery queue to send it to.
    - ``soft_time_limit`` / ``time_limit``: Celery's limits in seconds; exceeding either
      ends the process in FAILURE naming the limit.
    - ``autoretry_for``, ``max_retries``, ``retry_backoff``, ``retry_backoff_max``: retry on
      these exceptions, waiting ``retry_backoff * 2**n`` seconds (capped); the document
      goes back to PENDING between attempts and each failed attempt is kept in
      ``warnings``.
    - ``retry_on_worker_lost``: the process is idempotent; when its worker is lost it is
      sent again instead of failing.
    - ``is_blocking=False``: a call while the document is busy waits in its
      ``call_queue`` instead of raising :class:`ProcessAlreadyRunning`, and runs after the
      current run ends (see :mod:`procstatus.callqueue`); ``clear_queue_on_failure``
      (default ``True``): when this process fails, the calls waiting are dropped.
    - ``priority``: Celery's message priority (0–9 on RabbitMQ with
      ``task_queue_max_priority`` set on the queue; Redis emulates a few levels).
    """
    if not isinstance(autoretry_for, tuple) or not all(
        isinstance(e, type) and issubclass(e, BaseException) for e in autoretry_for
    ):
        raise TypeError("autoretry_for must be a tuple of exception classes")
    if max_retries < 0 or retry_backoff < 0:
        raise ValueError("max_retries and retry_backoff must not be negative")
    if priority is not None and not (isinstance(priority, int) and 0 <= priority <= 255):
        raise ValueError(f"priority must be an int from 0 to 255 (Celery's), not {priority!r}")

    def decorate(fn: F) -> F:
        spec = ProcessSpec(
            fn.__name__, fn, is_child=is_child, queue=queue,
            soft_time_limit=soft_time_limit, time_limit=time_limit,
            autoretry_for=autoretry_for, max_retries=max_retries,
            retry_backoff=retry_backoff, retry_backoff_max=retry_backoff_max,
            retry_on_worker_lost=retry_on_worker_lost, is_blocking=is_blocking,
            clear_queue_on_failure=clear_queue_on_failure, priority=priority,
        )

        @functools.wraps(fn)
        def call(self: Proc, *args: Any, **kwargs: Any) -> None:
            dispatch(self, spec, args, kwargs)

        setattr(call, _SPEC_ATTRIBUTE, spec)
        return call  # type: ignore[return-value]

    if function is not None:
        return decorate(function)
    return decorate


def process_spec(cls: type, name: str) -> ProcessSpec | None:
    """The spec of ``cls.name`` if it is a ``@process`` method, else ``None``."""
    attribute = getattr(cls, name, None)
    spec = getattr(attribute, _SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, ProcessSpec) else None


def check_arguments(owner: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the first argument that JSON cannot carry."""
    try:
        # The common case in one pass: every argument is encoded once, for the size.
        for value in (*args, *kwargs.values()):
            _require_str_keys(value)
        size = len(_STRICT_JSON.encode([list(args), kwargs]))
    except (TypeError, ValueError):
        _name_bad_argument(owner, args, kwargs)
        raise  # not reached: one of the arguments is the one that failed
    if size > MAX_ARGUMENT_BYTES:
        raise ValueError(
            f"arguments of {owner}() are {size} bytes as JSON, over the "
            f"{MAX_ARGUMENT_BYTES}-byte limit; store large data on the document"
        )


def _name_bad_argument(owner: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the first argument that JSON cannot carry (if any)."""
    named = [(f"positional argument {i}", v) for i, v in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            _require_str_keys(value)
            _STRICT_JSON.encode(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{label} of {owner}() is not JSON-serializable ({exc}); process "
                "arguments travel as JSON: pass str, int, float, bool, None, or lists "
                "and dicts of them (store anything bigger on the document)"
            ) from None


def _require_str_keys(value: Any) -> None:
    # json.dumps would turn {1: "a"} into {"1": "a"}: the method would get other data.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict key {key!r} is not a string")
            _require_str_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _require_str_keys(item)


def dispatch(proc: Proc, spec: ProcessSpec, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Schedule ``spec`` on ``proc`` and publish its task; see :func:`process`."""
    owner = f"{type(proc).__name__}.{spec.name}"
    check_arguments(owner, args, kwargs)
    if proc.pk is None:
        raise ValueError(f"save() the {type(proc).__name__} before calling {spec.name}()")
    if _publisher is None:
        raise NotInstalled(
            f"{owner}() needs a Celery app: call procstatus.install(celery_app) at import "
            "time of your Celery app module"
        )
    collection = proc._get_collection()
    task_id = new_task_id()
    arguments = {"args": list(args), "kwargs": dict(kwargs)}
    previous = transitions.schedule(collection, proc.pk, spec.name, task_id, arguments)
    if previous is None and not spec.is_blocking:
        from procstatus import callqueue  # the queue of calls is the rarer path

        for _ in range(3):  # the document may go idle between the two writes: try again
            if callqueue.wait_in_queue(proc, spec, arguments) == callqueue.QUEUED:
                proc.reload_status()
                return
            previous = transitions.schedule(collection, proc.pk, spec.name, task_id, arguments)
            if previous is not None:
                break
    if previous is None:
        state = transitions.read_state(collection, proc.pk)
        if state is None:
            raise proc.DoesNotExist(f"{type(proc).__name__}({proc.pk}) does not exist")
        raise ProcessAlreadyRunning(
            proc, spec.name, state.get("process_status"), state.get("current_process"),
            waiting=len(state.get("call_queue") or ()),
        )
    try:
        ran_inline = publish(type(proc), proc.pk, spec, list(args), dict(kwargs), task_id)
    except BaseException:
        # The message is not on the broker: nothing will ever start this run.
        if not transitions.unschedule(collection, proc.pk, task_id, previous):
            logger.error("could not restore %s(%s) after a failed publish", owner, proc.pk)
        if not spec.is_blocking:
            from procstatus import callqueue

            # Calls queued while this one was PENDING must not wait for a run that never was.
            callqueue.after_end(type(proc), proc.pk, ProcessStatus.SUCCESS)
        raise
    if spec.is_child:
        global _children_sent
        _children_sent += 1
    if ran_inline:
        proc.reload_status()  # Celery's eager mode ran the whole process inside publish()
        return
    proc._set_state(
        {
            "process_status": ProcessStatus.PENDING,
            "current_process": spec.name,
            "current_process_step": None,
            "errors": [],
            "warnings": [],
            "last_status_message": f"Process {spec.name} pending",
            "start_time": None,
            "complete_time": None,
            "worker_hostname": None,
            "celery_task_id": task_id,
        }
    )


def publish(
    cls: type[Proc],
    pk: Any,
    spec: ProcessSpec,
    args: list[Any],
    kwargs: dict[str, Any],
    task_id: str,
) -> bool:
    """Send the generic task for an already scheduled call.

    Returns whether the task already ran, inline, as Celery's ``task_always_eager`` does.
    """
    if _publisher is None:
        raise NotInstalled("procstatus.install(celery_app) was not called in this process")
    _publisher.apply_async(
        args=[cls._class_name, json_pk(pk), spec.name, args, kwargs],
        task_id=task_id,
        # What Celery's own tools show (logs, inspect, events, Flower): Upload.process_upload.
        shadow=f"{cls.__name__}.{spec.name}",
        queue=spec.queue,
        soft_time_limit=spec.soft_time_limit,
        time_limit=spec.time_limit,
        priority=spec.priority,
    )
    return bool(_publisher.app.conf.task_always_eager)


def publish_join(cls: type[Proc], pk: Any, spec: ProcessSpec | None) -> str:
    """Send a join task for the parent ``cls(pk)``, under its process's queue and limits.

    Whoever sends it, the conditional WAITING_FOR_RESULT → RUNNING write lets one join
    task per wait run ``join()``. Returns the join task's id.
    """
    if _join_publisher is None:
        raise NotInstalled("procstatus.install(celery_app) was not called in this process")
    task_id = new_task_id()
    _join_publisher.apply_async(
        args=[cls._class_name, json_pk(pk)],
        task_id=task_id,
        shadow=f"{cls.__name__}.join",
        queue=spec.queue if spec else None,
        soft_time_limit=spec.soft_time_limit if spec else None,
        time_limit=spec.time_limit if spec else None,
    )
    return task_id


def children_sent() -> int:
    """A counter of child calls published by this process; a join compares two readings."""
    return _children_sent


REVOKE_WAIT = 5.0
"""Seconds a cancel waits for its revoke to reach the broker before it returns anyway."""


def revoke(task_id: str, *, terminate: bool) -> bool:
    """Tell the workers to drop (or, with ``terminate``, kill) the task ``task_id``.

    Celery's broadcast retries for as long as the broker is unreachable; the caller waits
    at most :data:`REVOKE_WAIT` seconds and returns ``False`` if it was not sent by then
    (it goes on trying in the background). The status is written before, so a worker
    that gets the message anyway cannot claim it.
    """
    if _publisher is None:
        raise NotInstalled("procstatus.install(celery_app) was not called in this process")
    control = _publisher.app.control
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
