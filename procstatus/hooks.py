"""All Celery wiring: ``install(app)``, the generic tasks, the receivers and the request class.

Nothing of the lifecycle lives here; each piece hands over to the module that owns it:

``procstatus.run``   :func:`procstatus.runner.perform` (claim → call → finish | fail |
                     retry); a :class:`~procstatus.runner.RetryLater` becomes Celery's
                     ``task.retry`` with the attempt counts in the message headers.
``procstatus.join``  :func:`procstatus.runner.perform_join`.
``procstatus.sweep`` :func:`procstatus.sweeper.sweep`.

Receivers remain only where Celery gives no other hook:

- ``task_failure`` in the worker's *main* process, for a pool process that was lost or
  killed at its hard time limit: the run is ended, or sent again, through
  :func:`procstatus.endings.end_run`; where Celery gives such a message back to the
  broker instead (``acks_late``), it sends no signal, and the tasks' request class,
  :class:`RunRequest`, moves the run back to PENDING (or a join's parent back to
  waiting) for the redelivery;
- ``worker_init`` / ``worker_ready`` / ``worker_shutdown``: the liveness heartbeat,
  written by the main process, and ``worker_process_init``: MongoDB connections.

pymongo is not fork-safe: with ``mongodb_uri`` every pool process connects after fork
and the main process gets a lazy connection of its own; a connection the app module
made itself is reopened after fork.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import mongoengine
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery, Task, signals
from celery.exceptions import Reject, Retry
from celery.worker import state as worker_state
from celery.worker.request import Request
from mongoengine import DEFAULT_CONNECTION_NAME
from mongoengine.connection import ConnectionFailure as NoConnectionDefined
from pymongo.write_concern import WriteConcern

from procstatus import (
    connection,
    endings,
    liveness,
    messages,
    runner,
    runtime,
    sweeper,
    transitions,
)
from procstatus.endings import RunRef
from procstatus.errors import ProcessFailure
from procstatus.failures import describe, describe_failure
from procstatus.liveness import Heartbeat, WorkerIdentity
from procstatus.messages import MessageRejected, ProcessCall
from procstatus.spec import check_loss_cap, process_spec
from procstatus.status import PENDING_OR_RUNNING, ProcessStatus
from procstatus.text import redact
from procstatus.transitions import WorkerRef

logger = logging.getLogger("procstatus")

TASK_NAME = "procstatus.run"
JOIN_TASK_NAME = "procstatus.join"
SWEEP_TASK_NAME = "procstatus.sweep"
_START_ATTEMPTS = "procstatus_start_attempts"
_BODY_RETRIES = "procstatus_body_retries"
_RUNNING = frozenset({ProcessStatus.RUNNING})


def worker_ref(hostname: str | None = None, task: Task | None = None) -> WorkerRef:
    return WorkerRef(
        hostname=hostname or WorkerIdentity.hostname,
        instance=WorkerIdentity.instance,
        pid=os.getpid(),
        # Unacknowledged until the run ends, and given back when the worker is lost.
        redelivers=bool(task is not None and task.acks_late and task.reject_on_worker_lost),
    )


class ProcessHooks:
    """The signal receivers, connected once per process by :func:`install`."""

    def __init__(self) -> None:
        self.mongodb_uri: str | None = None
        self.mongodb_db: str | None = None
        self.mongodb_alias: str = DEFAULT_CONNECTION_NAME
        self.heartbeat: Heartbeat | None = None
        self.misconfigured: str | None = None

    # --- the worker's processes ------------------------------------------------------

    def connect_mongodb(self) -> None:
        if self.mongodb_uri is None:
            _reopen_after_fork(self.mongodb_alias)
            return
        mongoengine.disconnect(self.mongodb_alias)
        mongoengine.connect(
            db=self.mongodb_db, host=self.mongodb_uri, alias=self.mongodb_alias, connect=False
        )
        logger.debug("procstatus: MongoDB connection to %s", redact(self.mongodb_uri))

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        WorkerIdentity.begin(getattr(sender, "hostname", None))
        if self.mongodb_uri is not None:
            self.connect_mongodb()
        self.heartbeat = Heartbeat(
            liveness.workers_collection, _active_task_ids, runtime.current.heartbeat_interval
        )
        # Before the pool starts: no run is ever recorded for an instance without a beat.
        try:
            self.heartbeat.beat_now(raise_missing_connection=True)
        except NoConnectionDefined as exc:
            self.misconfigured = (
                f"procstatus: the worker's main process has no MongoDB connection ({exc}), "
                "so it cannot write heartbeats and the sweeper would take its runs for lost. "
                "Pass mongodb_uri=... to procstatus.install(), or call mongoengine.connect("
                "..., connect=False) when the app module is imported (procstatus reopens it "
                "after fork); connecting only in worker_process_init is not enough. "
                "The worker stops now; its queued tasks stay on the broker."
            )
            logger.critical(self.misconfigured)

    def on_worker_ready(self, **_: Any) -> None:
        if self.misconfigured is not None:
            os.kill(os.getpid(), signal.SIGTERM)  # a warm shutdown: nothing is taken or lost
            return
        if self.heartbeat is not None:
            self.heartbeat.start()

    def on_worker_shutdown(self, **_: Any) -> None:
        if self.heartbeat is not None and self.misconfigured is None:
            self.heartbeat.stop()

    def on_worker_process_init(self, **_: Any) -> None:
        self.connect_mongodb()

    # --- the main process's view of a task ---------------------------------------------

    def on_task_failure(
        self,
        sender: Task,
        task_id: str,
        exception: BaseException,
        args: Any = None,
        kwargs: Any = None,
        **_: Any,
    ) -> None:
        """A failure the task body could not see: its pool process was lost or killed."""
        if getattr(sender, "name", None) not in (TASK_NAME, JOIN_TASK_NAME):
            return
        if not isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
            return  # raised in the task body, which has already ended (or left) the run
        try:
            if sender.name == JOIN_TASK_NAME:
                _end_lost_join(messages.resolve_join(args or (), kwargs or {}), task_id, exception)
            else:
                _end_lost_run(messages.resolve(args or (), kwargs or {}), task_id, exception)
        except MessageRejected:
            return
        except Exception:
            logger.exception("could not record the failure of task %s", task_id)


class RunRequest(Request):
    """The main process's request for the generic tasks: it sees a message given back.

    A pool process lost under ``acks_late`` + ``reject_on_worker_lost`` (or killed at its
    hard time limit when ``acks_on_timeout`` is off) makes Celery requeue the message and
    send no ``task_failure``: no receiver hears of it. Celery's own hook for this is the
    task's request class. Whenever Celery rejects with requeue for such a failure, the
    run goes back to PENDING first (:func:`procstatus.endings.await_redelivery`), or, for
    a join task, its parent waits again (:func:`procstatus.endings.await_join_redelivery`).
    A loss past the run's cap on lost workers ends the run there instead, and the message
    is not given back: it would only be refused.
    """

    _failure: BaseException | None = None

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> Any:
        failure = exc_info.exception
        self._failure = getattr(failure, "exc", failure)  # ExceptionWithTraceback wraps it
        try:
            return super().on_failure(exc_info, send_failed_event, return_ok)
        finally:
            self._failure = None

    def reject(self, requeue: bool = False) -> None:
        if requeue and not self.acknowledged and isinstance(
            self._failure, (WorkerLostError, TimeLimitExceeded)
        ):
            ended: endings.Ending | None = None
            try:
                ended = self._await_redelivery(self._failure)
            except MessageRejected:
                pass
            except Exception:  # the redelivery can still take the run over when it is lost
                logger.exception("could not record that task %s is delivered again", self.id)
            if ended is endings.Ending.FAILED:
                logger.warning("task %s: its run lost its worker more often than "
                               "max_worker_losses allows and ended; the message is not "
                               "given back to the broker", self.id)
                requeue = False
        super().reject(requeue=requeue)

    def _await_redelivery(self, failure: BaseException) -> endings.Ending | None:
        pool = f" (pool process {self.worker_pid})" if self.worker_pid else ""
        # The lost attempt, as its claim recorded it: this worker, that pool process.
        attempt = {"instance": WorkerIdentity.instance, "pid": self.worker_pid}
        if self.task.name == JOIN_TASK_NAME:
            join_call = messages.resolve_join(self.args or (), self.kwargs or {})
            error = describe_failure(failure, None)[-1] + pool
            return endings.await_join_redelivery(
                join_call.cls, join_call.pk, self.id, error, **attempt
            )
        call = messages.resolve(self.args or (), self.kwargs or {})
        error = describe_failure(failure, call.spec)[-1] + pool
        return endings.await_redelivery(
            RunRef(call.cls, call.pk, self.id, call.spec.name), error, **attempt
        )


def _end_lost_run(call: ProcessCall, task_id: str, exception: BaseException) -> None:
    error = describe_failure(exception, call.spec)[-1]
    lost = isinstance(exception, WorkerLostError)
    endings.end_run(
        RunRef(call.cls, call.pk, task_id, call.spec.name), error,
        statuses=PENDING_OR_RUNNING,  # a pool process may die before its claim
        send_again=call if lost and call.spec.retry_on_worker_lost else None,
    )


def _end_lost_join(call: messages.JoinCall, task_id: str, exception: BaseException) -> None:
    state = transitions.read_state(call.cls._state_target(call.pk))
    if state is None or state.get("celery_task_id") != task_id:
        return  # the join never began, so the parent still waits: nothing to end
    spec = process_spec(call.cls, state.get("current_process") or "")
    error = describe_failure(exception, spec)[-1]
    endings.end_run(
        RunRef(call.cls, call.pk, task_id, state.get("current_process")),
        f"join failed: {error}", statuses=_RUNNING,
    )


def _reopen_after_fork(alias: str) -> None:
    """Drop a MongoClient inherited through fork; mongoengine reconnects with its settings."""
    if connection.is_defined(alias):
        connection.drop_client(alias)


def _active_task_ids() -> list[str]:
    # ``type`` is the registered task's name; ``name`` is the shadow (Upload.process_upload).
    names = (TASK_NAME, JOIN_TASK_NAME)
    return [r.id for r in list(worker_state.active_requests) if r.type in names]


def _header(request: Any, name: str) -> int:
    headers = getattr(request, "headers", None) or {}
    value = headers.get(name, getattr(request, name, 0))
    return int(value) if isinstance(value, int) else 0


# --- the task bodies ---------------------------------------------------------------


def _run_task(self: Task, *message: Any) -> None:
    """``procstatus.run``: :func:`procstatus.runner.perform`, and Celery's retry."""
    request = self.request
    try:
        call = messages.resolve(message, {})
    except MessageRejected as exc:
        logger.error("rejected task %s: %s; nothing runs", request.id, exc)
        return
    attempts = runner.Attempts(_header(request, _START_ATTEMPTS), _header(request, _BODY_RETRIES))
    outcome = runner.perform(call, request.id, worker_ref(request.hostname, self), attempts)
    if isinstance(outcome, runner.RetryLater):
        _send_retry(self, outcome)
    elif outcome.error is not None:
        raise outcome.error  # Celery records the failure (the document already has it)


def _send_retry(task: Task, retry: runner.RetryLater) -> None:
    """Celery's retry, with the attempt counts in the headers; Retry is its "sent"."""
    headers = {_START_ATTEMPTS: retry.attempts.starts, _BODY_RETRIES: retry.attempts.retries}
    try:
        raise task.retry(exc=retry.error, countdown=retry.countdown, headers=headers)
    except Retry:
        raise
    except Reject as rejected:  # Celery could not publish the retry: no message is left
        runner.retry_not_sent(retry, str(rejected.reason))
    except Exception as exc:
        runner.retry_not_sent(retry, describe(exc))


def _join_task(self: Task, *message: Any) -> None:
    """``procstatus.join``: join a waiting parent, exactly once per wait."""
    request = self.request
    try:
        call = messages.resolve_join(message, {})
    except MessageRejected as exc:
        logger.error("rejected join task %s: %s; nothing runs", request.id, exc)
        return
    runner.perform_join(call, request.id, worker_ref(request.hostname))


def _sweep_task(self: Task, **options: Any) -> dict[str, Any]:
    """``procstatus.sweep``: one sweep; keyword options as :func:`procstatus.sweep` takes."""
    return sweeper.sweep(**options).as_dict()


_hooks = ProcessHooks()
_CONNECTIONS = (
    ("worker_init", "on_worker_init"),
    ("worker_ready", "on_worker_ready"),
    ("worker_shutdown", "on_worker_shutdown"),
    ("worker_process_init", "on_worker_process_init"),
    ("task_failure", "on_task_failure"),
)


def install(
    celery_app: Celery,
    *,
    mongodb_uri: str | None = None,
    mongodb_db: str | None = None,
    mongodb_alias: str = DEFAULT_CONNECTION_NAME,
    heartbeat_interval: float = runtime.DEFAULT_HEARTBEAT_INTERVAL,
    heartbeat_threshold: float | None = None,
    progress_interval: float = runtime.DEFAULT_PROGRESS_INTERVAL,
    max_worker_losses: int = runtime.DEFAULT_MAX_WORKER_LOSSES,
    write_concern: WriteConcern | None = None,
) -> Task:
    """Register the generic tasks on ``celery_app`` and connect the signal hooks.

    - ``mongodb_uri`` (with ``mongodb_db`` and a mongoengine ``mongodb_alias``): every
      worker process opens its own MongoDB connection after fork, and the calling process
      gets a lazy connection too, unless it already has one for that alias.
    - ``heartbeat_interval``: seconds between a worker's liveness writes;
      ``heartbeat_threshold`` (default 3 × interval): silence after which a worker is
      gone for the sweeper and for redelivered tasks.
    - ``progress_interval``: the fewest seconds between two ``set_progress()`` writes of
      one run; a value held back is written within one interval (with the next step or
      warning, else by a trailing write) and always with the run's end.
    - ``max_worker_losses``: how many times one run may lose its worker (pool process
      killed, out of memory, a crash; whole worker lost) and still be tried again, by
      ``retry_on_worker_lost`` or by the broker under ``task_acks_late`` +
      ``task_reject_on_worker_lost``; the loss after that ends the run FAILURE ``lost its
      worker N times, …``. ``@process(max_worker_losses=N)`` overrides it per process.
      Read where the loss is recorded (worker, sweeper): pass every process the same.
    - ``write_concern``: of every status write, whatever the URI says; by default
      ``w="majority"`` (with a 10 s ``wtimeout``), so that no acknowledged status is rolled
      back at a replica-set failover. Pass less only knowing that cost.

    It logs a warning when the connection has ``retryWrites=false``.

    Calling it again is harmless: hooks are connected once. Returns the generic task.
    """
    check_loss_cap(max_worker_losses)  # before anything is installed
    _hooks.mongodb_uri = mongodb_uri
    _hooks.mongodb_db = mongodb_db
    _hooks.mongodb_alias = mongodb_alias
    if mongodb_uri is not None:
        connection.configure(mongodb_alias, mongodb_uri, mongodb_db)
    # A marker on the app, not app.tasks: reading app.tasks would finalize the app early.
    task: Task | None = getattr(celery_app, "_procstatus_task", None)
    if task is None:
        options: dict[str, Any] = {
            "bind": True,
            "ignore_result": True,
            "serializer": "json",
            "typing": False,
            "max_retries": None,  # procstatus counts start attempts and retries itself
        }
        task = celery_app.task(
            name=TASK_NAME, throws=(ProcessFailure,), Request=RunRequest, **options
        )(_run_task)
        join_task = celery_app.task(name=JOIN_TASK_NAME, Request=RunRequest, **options)(_join_task)
        celery_app.task(name=SWEEP_TASK_NAME, bind=True, serializer="json")(_sweep_task)
        celery_app._procstatus_task = task  # type: ignore[attr-defined]
        celery_app._procstatus_join_task = join_task  # type: ignore[attr-defined]
    for signal_name, method_name in _CONNECTIONS:
        getattr(signals, signal_name).connect(
            getattr(_hooks, method_name), weak=False, dispatch_uid=f"procstatus.{method_name}"
        )
    runtime.current = runtime.Runtime(
        run_task=task,
        join_task=celery_app._procstatus_join_task,  # type: ignore[attr-defined]
        alias=mongodb_alias,
        heartbeat_interval=heartbeat_interval,
        heartbeat_threshold=heartbeat_threshold or 3 * heartbeat_interval,
        progress_interval=progress_interval,
        max_worker_losses=max_worker_losses,
        write_concern=write_concern or runtime.majority(),
    )
    connection.warn_if_writes_not_retried(mongodb_alias)
    return task
