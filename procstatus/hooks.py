"""All Celery wiring: ``install(app)``, the generic tasks, and every signal hook.

The path of one task through a worker pool process:

``task_prerun``   resolve the message and claim the document (PENDING → RUNNING);
                  a rejected message or a lost claim leaves no claim behind.
task body         runs the method only when a claim exists, so a failed transition
                  (which Celery would swallow if a hook raised) never runs user code.
                  A retryable error moves the document back to PENDING and retries.
``task_success``  write SUCCESS or WAITING_FOR_RESULT, then start any join.
``task_failure``  write FAILURE with the error, then start any join. In the worker's
                  main process (a pool process lost, a hard time limit) there is no
                  claim: the document is failed — or sent again — by its task id.

The worker's main process also beats for liveness (``procstatus_workers``), so a
sweeper can tell runs whose whole worker is gone. pymongo is not fork-safe: with
``mongodb_uri`` every pool process connects after fork and the main process gets a
lazy connection of its own.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import mongoengine
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery import Celery, Task, signals
from celery.worker import state as worker_state
from mongoengine import DEFAULT_CONNECTION_NAME
from pymongo.errors import ConnectionFailure

from procstatus import dispatch, join, liveness, runner, sweeper, transitions
from procstatus.dispatch import MessageRejected, ProcessCall
from procstatus.errors import ProcessFailure
from procstatus.liveness import Heartbeat, WorkerIdentity
from procstatus.status import ProcessStatus
from procstatus.transitions import WorkerRef

logger = logging.getLogger("procstatus")

TASK_NAME = "procstatus.run"
SWEEP_TASK_NAME = "procstatus.sweep"
_RUN = "procstatus_run"
_START_ERROR = "procstatus_start_error"
START_RETRY_LIMIT = 10


def redact(uri: str | None) -> str:
    """``uri`` with any password replaced by ``***``, safe to log."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", uri or "")


def worker_ref(hostname: str | None = None) -> WorkerRef:
    return WorkerRef(
        hostname=hostname or WorkerIdentity.hostname,
        instance=WorkerIdentity.instance,
        pid=os.getpid(),
    )


class ProcessHooks:
    """The signal handlers, connected once per process by :func:`install`."""

    def __init__(self) -> None:
        self.mongodb_uri: str | None = None
        self.mongodb_db: str | None = None
        self.mongodb_alias: str = DEFAULT_CONNECTION_NAME
        self.heartbeat: Heartbeat | None = None

    # --- the worker's processes ------------------------------------------------------

    def connect_mongodb(self) -> None:
        if self.mongodb_uri is None:
            return
        mongoengine.disconnect(self.mongodb_alias)
        mongoengine.connect(
            db=self.mongodb_db, host=self.mongodb_uri, alias=self.mongodb_alias, connect=False
        )
        logger.debug("procstatus: MongoDB connection to %s", redact(self.mongodb_uri))

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        WorkerIdentity.begin(getattr(sender, "hostname", None))
        self.connect_mongodb()
        self.heartbeat = Heartbeat(
            liveness.settings.collection, _active_task_ids, liveness.settings.interval
        )
        # Before the pool starts: no run is ever recorded for an instance without a beat.
        self.heartbeat.beat_now()

    def on_worker_ready(self, **_: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.start()

    def on_worker_shutdown(self, **_: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def on_worker_process_init(self, **_: Any) -> None:
        self.connect_mongodb()

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
            run = runner.claim(call, task_id, worker_ref(request.hostname))
        except (ConnectionFailure, runner.ClaimUndecided) as exc:
            logger.warning("cannot start %s yet: %s", call.describe(), exc)
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
        join.after_finish(
            run.proc, written, is_child=run.call.spec.is_child, task_id=run.task_id,
            worker=worker_ref(sender.request.hostname),
        )

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
            errors = describe_failure(exception, run.call)
            written = runner.fail(run.proc, exception, errors=errors)
            if written is None:
                # Moved meanwhile (e.g. back to PENDING for a retry that never got sent).
                transitions.fail_run(run.proc._get_collection(), run.proc.pk, task_id, errors[-1])
            join.after_finish(
                run.proc, written, is_child=run.call.spec.is_child, task_id=task_id,
                worker=worker_ref(sender.request.hostname),
            )
            return
        # No claim in this process: the main process reporting a lost pool process or a
        # hard time limit, or a start that never succeeded.
        try:
            call = dispatch.resolve(args or (), kwargs or {})
        except MessageRejected:
            return
        if isinstance(exception, WorkerLostError) and call.spec.retry_on_worker_lost:
            if _send_again(call, task_id, describe_failure(exception, call)[-1]):
                return
        self._fail_by_task_id(call, task_id, describe_failure(exception, call)[-1])

    def _fail_by_task_id(self, call: ProcessCall, task_id: str, error: str) -> None:
        try:
            failed = transitions.fail_run(call.cls._get_collection(), call.pk, task_id, error)
        except Exception:
            logger.exception("could not record failure of %s", call.describe())
            return
        if failed:
            logger.error("%s failed: %s", call.describe(), error)
        if call.spec.is_child:
            _after_lost_child(call, task_id, error)

    @staticmethod
    def _run_of(task: Task) -> runner.Run | None:
        if getattr(task, "name", None) != TASK_NAME:
            return None
        return getattr(task.request, _RUN, None)


def describe_failure(exc: BaseException, call: ProcessCall) -> list[str]:
    """The error messages recorded for ``exc``, naming limits and lost workers."""
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = _seconds(call.spec.soft_time_limit)
        return [f"SoftTimeLimitExceeded: soft time limit{limit} exceeded"]
    if isinstance(exc, TimeLimitExceeded):
        limit = _seconds(exc.args[0] if exc.args else call.spec.time_limit)
        return [f"TimeLimitExceeded: hard time limit{limit} exceeded; the process was killed"]
    if isinstance(exc, WorkerLostError):
        return [f"WorkerLostError: worker lost: {exc}"]
    return runner.failure_messages(exc)


def _seconds(limit: Any) -> str:
    # The limit may come from the app's settings rather than @process: then it is unknown.
    return f" ({limit:g}s)" if isinstance(limit, (int, float)) else ""


def _send_again(call: ProcessCall, task_id: str, reason: str) -> bool:
    """Re-dispatch an idempotent process whose pool process was lost."""
    new_id = dispatch.new_task_id()
    moved = transitions.back_to_pending(
        call.cls._get_collection(), call.pk, task_id, new_task_id=new_id,
        message=f"Process {call.spec.name} pending again: {reason}",
        warning=f"sent again after {reason}",
    )
    if not moved:
        return False
    try:
        dispatch.publish(call.cls, call.pk, call.spec, call.args, call.kwargs, new_id)
    except Exception as exc:
        transitions.fail_run(
            call.cls._get_collection(), call.pk, new_id, f"{reason}; could not send again: {exc}"
        )
    logger.warning("%s: %s; sent again as task %s", call.describe(), reason, new_id)
    return True


def _after_lost_child(call: ProcessCall, task_id: str, error: str) -> None:
    """A child lost outside its process may have been running its parent's join."""
    child = call.cls.objects(pk=call.pk).first()
    if child is None:
        return
    try:
        parent = child.parent()
    except Exception:
        logger.exception("parent() of %s failed", call.describe())
        return
    if parent is None:
        return
    transitions.fail_run(
        parent._get_collection(), parent.pk, task_id, f"join lost: {error}",
        statuses=frozenset({ProcessStatus.RUNNING}),
    )
    join.after_finish(child, None, is_child=True, task_id=task_id, worker=worker_ref())


def _active_task_ids() -> list[str]:
    return [r.id for r in list(worker_state.active_requests) if r.name == TASK_NAME]


def _run_task(self: Task, *message: Any, **options: Any) -> ProcessStatus | None:
    """The generic task's body: run the claimed method, if ``task_prerun`` claimed one."""
    request = self.request
    run: runner.Run | None = getattr(request, _RUN, None)
    if run is None:
        start_error = getattr(request, _START_ERROR, None)
        if start_error is not None:
            countdown = getattr(start_error, "countdown", min(2 ** request.retries, 30))
            raise self.retry(exc=start_error, countdown=countdown, max_retries=START_RETRY_LIMIT)
        return None
    try:
        return runner.execute(run)
    except Exception as exc:
        spec = run.call.spec
        if spec.autoretry_for and isinstance(exc, spec.autoretry_for):
            if request.retries < spec.max_retries:
                countdown = spec.retry_countdown(request.retries)
                if runner.retry_later(run, exc, request.retries + 1, countdown):
                    setattr(request, _RUN, None)  # the status is PENDING again, not ours
                    raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
        raise


def _sweep_task(self: Task, threshold: float | None = None,
                pending_timeout: float | None = None) -> dict[str, Any]:
    return sweeper.sweep(threshold=threshold, pending_timeout=pending_timeout).as_dict()


_hooks = ProcessHooks()
_CONNECTIONS = (
    ("worker_init", "on_worker_init"),
    ("worker_ready", "on_worker_ready"),
    ("worker_shutdown", "on_worker_shutdown"),
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
    heartbeat_interval: float = liveness.DEFAULT_INTERVAL,
    heartbeat_threshold: float | None = None,
) -> Task:
    """Register the generic tasks on ``celery_app`` and connect the signal hooks.

    - ``mongodb_uri`` (with ``mongodb_db`` and a mongoengine ``mongodb_alias``): every
      worker process opens its own MongoDB connection after fork.
    - ``heartbeat_interval``: seconds between a worker's liveness writes;
      ``heartbeat_threshold`` (default 3 × interval): silence after which a worker is
      gone for the sweeper and for redelivered tasks.

    Calling it again is harmless: hooks are connected once. Returns the generic task.
    """
    _hooks.mongodb_uri = mongodb_uri
    _hooks.mongodb_db = mongodb_db
    _hooks.mongodb_alias = mongodb_alias
    liveness.settings.interval = heartbeat_interval
    liveness.settings.threshold = heartbeat_threshold or 3 * heartbeat_interval
    liveness.settings.alias = mongodb_alias
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
        celery_app.task(name=SWEEP_TASK_NAME, bind=True, serializer="json")(_sweep_task)
        celery_app._procstatus_task = task  # type: ignore[attr-defined]
    for signal_name, method_name in _CONNECTIONS:
        getattr(signals, signal_name).connect(
            getattr(_hooks, method_name), weak=False, dispatch_uid=f"procstatus.{method_name}"
        )
    dispatch.set_publisher(task)
    return task
