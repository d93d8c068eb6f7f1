"""The caller's side: ``@process``, and what calling a decorated method does.

Calling a decorated method on a saved :class:`~procstatus.Proc` checks the arguments
(:mod:`procstatus.spec`), moves the document to PENDING in one conditional write
(:func:`procstatus.transitions.schedule`) and publishes the generic task
(:func:`procstatus.messages.publish`). A non-blocking process called on a busy document
waits in its queue instead (:mod:`procstatus.callqueue`). If the message cannot be sent,
the document is put back as it was, and :func:`procstatus.endings.after_end` runs as
after any run that did not happen: the parent is told, waiting calls may start.

``@process`` keeps the method's signature for type checkers: ``upload.process(1)`` on a
``def process(self, path: str)`` is a type error, and the call returns ``None``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from procstatus import callqueue, endings, messages, runtime, transitions
from procstatus.callqueue import Queueing
from procstatus.document import ProcDocument
from procstatus.errors import ProcessAlreadyRunning
from procstatus.spec import SPEC_ATTRIBUTE, ProcessSpec, check_arguments, check_loss_cap
from procstatus.status import ProcessStatus

logger = logging.getLogger("procstatus")

P = ParamSpec("P")
D = TypeVar("D", bound=ProcDocument)
ProcessMethod = Callable[Concatenate[D, P], None]
"""A decorated method: the method's own parameters; calling it returns ``None``."""


@dataclass
class ChildrenStarted:
    """How many child calls were published inside :func:`counting_children`."""

    count: int = 0


_children_started: ContextVar[ChildrenStarted | None] = ContextVar(
    "procstatus_children_started", default=None
)


@contextmanager
def counting_children() -> Iterator[ChildrenStarted]:
    """Count the ``is_child`` calls published in this context (thread, greenlet) only.

    A join asks whether its ``join()`` started a child. Several runs share one process
    under Celery's threads and gevent pools, so a count for the whole process would see
    other runs' children; a context variable sees this run's alone. Limit: children
    started from a thread that ``join()`` itself spawns are not counted.
    """
    counter = ChildrenStarted()
    token = _children_started.set(counter)
    try:
        yield counter
    finally:
        _children_started.reset(token)


@overload
def process(function: Callable[Concatenate[D, P], Any]) -> ProcessMethod[D, P]: ...


@overload
def process(
    function: None = None,
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
    max_worker_losses: int | None = None,
    is_blocking: bool = True,
    clear_queue_on_failure: bool = True,
    priority: int | None = None,
) -> Callable[[Callable[Concatenate[D, P], Any]], ProcessMethod[D, P]]: ...


def process(
    function: Callable[..., Any] | None = None,
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
    max_worker_losses: int | None = None,
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
    - ``max_worker_losses``: how many times one run may lose its worker (its pool process
      killed, out of memory, a crash; its whole worker lost) and still be tried again —
      by ``retry_on_worker_lost`` or by the broker under ``task_acks_late`` +
      ``task_reject_on_worker_lost``. The loss after that ends the run FAILURE. Default:
      ``install()``'s ``max_worker_losses`` (3).
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
    if max_worker_losses is not None:
        check_loss_cap(max_worker_losses)
    if priority is not None and not (isinstance(priority, int) and 0 <= priority <= 255):
        raise ValueError(f"priority must be an int from 0 to 255 (Celery's), not {priority!r}")

    def decorate(fn: Callable[Concatenate[D, P], Any]) -> ProcessMethod[D, P]:
        spec = ProcessSpec(
            fn.__name__, fn, is_child=is_child, queue=queue,
            soft_time_limit=soft_time_limit, time_limit=time_limit,
            autoretry_for=autoretry_for, max_retries=max_retries,
            retry_backoff=retry_backoff, retry_backoff_max=retry_backoff_max,
            retry_on_worker_lost=retry_on_worker_lost, max_worker_losses=max_worker_losses,
            is_blocking=is_blocking,
            clear_queue_on_failure=clear_queue_on_failure, priority=priority,
        )

        @functools.wraps(fn)
        def call(self: D, /, *args: P.args, **kwargs: P.kwargs) -> None:
            dispatch(self, spec, args, kwargs)

        setattr(call, SPEC_ATTRIBUTE, spec)
        return call

    if function is not None:
        return decorate(function)
    return decorate


def dispatch(
    proc: ProcDocument, spec: ProcessSpec, args: Sequence[Any], kwargs: dict[str, Any]
) -> None:
    """Schedule ``spec`` on ``proc`` and publish its task; see :func:`process`."""
    owner = f"{type(proc).__name__}.{spec.name}"
    check_arguments(owner, args, kwargs)
    if proc.pk is None:
        raise ValueError(f"save() the {type(proc).__name__} before calling {spec.name}()")
    runtime.current.run(f"{owner}()")  # NotInstalled before anything is written
    target = proc._target()
    task_id = messages.new_task_id()
    arguments = {"args": list(args), "kwargs": dict(kwargs)}
    previous = transitions.schedule(target, spec.name, task_id, arguments)
    if previous is None and not spec.is_blocking:
        for _ in range(3):  # the document may go idle between the two writes: try again
            if callqueue.wait_in_queue(proc, spec, arguments) is Queueing.QUEUED:
                endings.start_next_call(type(proc), proc.pk)  # in case it went idle meanwhile
                proc.reload_status()
                return
            previous = transitions.schedule(target, spec.name, task_id, arguments)
            if previous is not None:
                break
    if previous is None:
        state = transitions.read_state(target)
        if state is None:
            raise proc.DoesNotExist(f"{type(proc).__name__}({proc.pk}) does not exist")
        raise ProcessAlreadyRunning(
            proc, spec.name, state.get("process_status"), state.get("current_process"),
            waiting=len(state.get("call_queue") or ()),
        )
    try:
        ran_inline = messages.publish(type(proc), proc.pk, spec, list(args), dict(kwargs), task_id)
    except BaseException:
        # The message is not on the broker: nothing will ever start this run.
        if transitions.unschedule(target, task_id, previous):
            # As after any run: calls queued while it was PENDING must not wait for it.
            restored = ProcessStatus(previous.get("process_status") or ProcessStatus.READY)
            endings.after_end(type(proc), proc.pk, spec.name, restored)
        else:
            logger.error("could not restore %s(%s) after a failed publish", owner, proc.pk)
        raise
    if spec.is_child:
        counter = _children_started.get()
        if counter is not None:
            counter.count += 1
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
