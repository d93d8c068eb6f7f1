"""All Celery wiring: ``install(app)``, the one generic task, and every signal hook.

The path of one task through a worker pool process:

``task_prerun``   resolve the message and claim the document (PENDING → RUNNING);
                  a rejected message or a lost claim leaves no claim behind.
task body         runs the method only when a claim exists, so a failed transition
                  (which Celery would swallow if a hook raised) never runs user code.
``task_success``  write SUCCESS or WAITING_FOR_RESULT, then start any join.
``task_failure``  write FAILURE with the error, then start any join. In the worker's
                  main process (a pool process lost) there is no claim: the document
                  is failed by its task id.

MongoDB connections: pymongo is not fork-safe, so with ``mongodb_uri`` every pool
process connects after fork and the main process gets a lazy connection of its own.
"""

from __future__ import annotations

import logging
from typing import Any

import mongoengine
from celery import Celery, Task, signals
from mongoengine import DEFAULT_CONNECTION_NAME
from pymongo.errors import ConnectionFailure

from procstatus import dispatch, join, runner, transitions
from procstatus.dispatch import MessageRejected, ProcessCall
from procstatus.errors import ProcessFailure
from procstatus.status import ProcessStatus

logger = logging.getLogger("procstatus")

TASK_NAME = "procstatus.run"
_RUN = "procstatus_run"
_START_ERROR = "procstatus_start_error"
START_RETRY_LIMIT = 10


class ProcessHooks:
    """The signal handlers, connected once per process by :func:`install`."""

    def __init__(self) -> None:
        self.mongodb_uri: str | None = None
        self.mongodb_db: str | None = None
        self.mongodb_alias: str = DEFAULT_CONNECTION_NAME

    # --- connections ---------------------------------------------------------------

    def connect_mongodb(self, *, lazy: bool) -> None:
        if self.mongodb_uri is None:
            return
        mongoengine.disconnect(self.mongodb_alias)
        mongoengine.connect(
            db=self.mongodb_db, host=self.mongodb_uri, alias=self.mongodb_alias, connect=not lazy
        )

    def on_worker_init(self, **_: Any) -> None:
        self.connect_mongodb(lazy=True)

    def on_worker_process_init(self, **_: Any) -> None:
        self.connect_mongodb(lazy=True)

    # --- one task --------------------------------------------------------------------

    def on_task_prerun(self, task: Task, task_id: str, args: Any, kwargs: Any, **_: Any) -> None:
        if task.name != TASK_NAME:
            return
        request = task.request
        setattr(request, _RUN, None)
        setattr(request, _START_ERROR, None)
        try:
            call = dispatch.resolve(args or (), kwargs or {})
        except MessageRejected as exc:
            logger.error("rejected task %s: %s; nothing runs", task_id, exc)
            return
        try:
            run = runner.claim(call, task_id, request.hostname)
        except ConnectionFailure as exc:
            logger.warning("cannot start %s: MongoDB unreachable (%s)", call.describe(), exc)
            setattr(request, _START_ERROR, exc)
            return
        except Exception:
            logger.exception("cannot start %s (task %s)", call.describe(), task_id)
            return
        setattr(request, _RUN, run)

    def on_task_success(self, sender: Task, result: Any = None, **_: Any) -> None:
        run = self._run_of(sender)
        if run is None:
            return
        written = runner.finish(run.proc, result)
        join.after_finish(run.proc, written, is_child=run.call.spec.is_child)

    def on_task_failure(
        self,
        sender: Task,
        task_id: str,
        exception: BaseException,
        args: Any = None,
        kwargs: Any = None,
        **_: Any,
    ) -> None:
        if getattr(sender, "name", None) != TASK_NAME:
            return
        run = self._run_of(sender)
        if run is not None and run.task_id == task_id:
            written = runner.fail(run.proc, exception)
            join.after_finish(run.proc, written, is_child=run.call.spec.is_child)
            return
        # No claim in this process: the main process reporting a lost pool process or a
        # hard time limit, or a start that never succeeded.
        self.fail_unclaimed(task_id, args or (), kwargs or {}, exception)

    def fail_unclaimed(
        self, task_id: str, args: Any, kwargs: Any, exception: BaseException
    ) -> None:
        try:
            call = dispatch.resolve(args, kwargs)
        except MessageRejected:
            return
        error = runner.failure_messages(exception)[-1]
        try:
            failed = transitions.fail_unclaimed(
                call.cls._get_collection(), call.pk, task_id, error
            )
        except Exception:
            logger.exception("could not record failure of %s", call.describe())
            return
        if failed:
            logger.error("%s failed outside its process: %s", call.describe(), error)
            if call.spec.is_child:
                _rejoin_parent(call)

    @staticmethod
    def _run_of(task: Task) -> runner.Run | None:
        if getattr(task, "name", None) != TASK_NAME:
            return None
        return getattr(task.request, _RUN, None)


def _rejoin_parent(call: ProcessCall) -> None:
    child = call.cls.objects(pk=call.pk).first()
    if child is not None:
        join.after_finish(child, None, is_child=True)


def _run_task(self: Task, *message: Any, **options: Any) -> ProcessStatus | None:
    """The generic task's body: run the claimed method, if ``task_prerun`` claimed one."""
    run = getattr(self.request, _RUN, None)
    if run is None:
        start_error = getattr(self.request, _START_ERROR, None)
        if start_error is not None:
            countdown = min(2 ** self.request.retries, 30)
            raise self.retry(exc=start_error, countdown=countdown, max_retries=START_RETRY_LIMIT)
        return None
    return runner.execute(run)


_hooks = ProcessHooks()
_CONNECTIONS = (
    ("worker_init", "on_worker_init"),
    ("worker_process_init", "on_worker_process_init"),
    ("task_prerun", "on_task_prerun"),
    ("task_success", "on_task_success"),
    ("task_failure", "on_task_failure"),
)


def install(
    celery_app: Celery,
    *,
    mongodb_uri: str | None = None,
    mongodb_db: str | None = None,
    mongodb_alias: str = DEFAULT_CONNECTION_NAME,
) -> Task:
    """Register the generic task on ``celery_app`` and connect the signal hooks.

    With ``mongodb_uri`` (and optionally ``mongodb_db`` and a mongoengine
    ``mongodb_alias``) every worker process opens its own MongoDB connection after fork.
    Calling it again is harmless: hooks are connected once. Returns the generic task.
    """
    _hooks.mongodb_uri = mongodb_uri
    _hooks.mongodb_db = mongodb_db
    _hooks.mongodb_alias = mongodb_alias
    # A marker on the app, not app.tasks: reading app.tasks would finalize the app early.
    task: Task | None = getattr(celery_app, "_procstatus_task", None)
    if task is None:
        task = celery_app.task(
            name=TASK_NAME,
            bind=True,
            ignore_result=True,
            serializer="json",
            throws=(ProcessFailure,),
            typing=False,
        )(_run_task)
        celery_app._procstatus_task = task  # type: ignore[attr-defined]
    for signal_name, method_name in _CONNECTIONS:
        getattr(signals, signal_name).connect(
            getattr(_hooks, method_name), weak=False, dispatch_uid=f"procstatus.{method_name}"
        )
    dispatch.set_publisher(task)
    return task
