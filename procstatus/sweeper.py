"""The sweeper: the backstop that ends, resends or joins every run no other path could.

Run it from Celery beat (the ``procstatus.sweep`` task), from cron, or call
:func:`sweep`. Each pass, by indexed queries on ``process_status`` (and, for waiting
calls, on the sparse ``call_queue.id`` index, which holds only documents with a call
waiting):

- **RUNNING** runs whose worker is gone (no heartbeat past the threshold, or stopped)
  are failed — or sent again when the process is ``retry_on_worker_lost``, or moved
  back to PENDING when the worker ran with ``acks_late`` + ``reject_on_worker_lost``
  (the broker delivers the unacknowledged message again); either only within the run's
  cap on lost workers, past which the run is failed saying how often it lost its worker;
- **RUNNING** runs whose worker still beats but has not listed the task for longer than
  the threshold (the pool process died and no ``task_failure`` came, the end could not
  be written) are failed as *orphaned*;
- **WAITING_FOR_RESULT** parents with no processing child get their join task sent
  (a notification lost to a crash is made up for);
- **PENDING** runs no worker started within ``pending_timeout`` (their message is gone)
  are failed;
- idle documents with queued calls waiting get their next call started (the run that
  ended died before it could; see :mod:`procstatus.callqueue`);
- heartbeats silent past the threshold are marked stopped, and pruned after a day.

Every ending goes through :func:`procstatus.endings.end_run`, which also tells the
parent, and every queued call through :func:`procstatus.endings.start_next_call`; every
action is logged and counted in :class:`SweepReport`. The sweeper never runs ``join()``
itself, so a slow join cannot block the process that sweeps.

Each document is acted on apart: one whose write raises (say a document a user's own
fields hold at MongoDB's size limit, which the sweeper's FAILURE would push past) is
logged with its traceback, counted in ``write_failed`` and left as it was, and the pass
goes on with the next document and the next class; the next pass tries it again. A lost
connection to MongoDB is not a document's fault: it ends the pass, raised.

Each pass reads the server's clock once (``hello``) and judges every stored time against
it: heartbeats and runs' times are written with the server's time too
(:mod:`procstatus.clock`), so the clocks of the workers, of the callers and of the host
that sweeps need not agree with each other.

Limits: heartbeats and the ``Proc`` collections are expected on one server (or servers
whose clocks agree); a PENDING run waits ``pending_timeout`` before it is judged, since a
queue may be long.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mongoengine.base import _document_registry
from mongoengine.connection import ConnectionFailure as MongoEngineConnectionFailure
from pymongo import ReadPreference
from pymongo.errors import ConnectionFailure

from procstatus import connection, endings, join, liveness, runtime
from procstatus.callqueue import NextCallOutcome
from procstatus.clock import server_now
from procstatus.document import ProcDocument
from procstatus.endings import Ending, RunRef
from procstatus.liveness import Loss, LossKind
from procstatus.messages import ProcessCall
from procstatus.spec import has_non_blocking
from procstatus.status import SCHEDULABLE, ProcessStatus, values

logger = logging.getLogger("procstatus")

DEFAULT_PENDING_TIMEOUT = 6 * 3600.0
"""Seconds a run may stay PENDING before the sweeper takes its message for lost."""

_RUN_FIELDS = {
    "current_process": 1, "celery_task_id": 1, "worker_instance": 1, "worker_hostname": 1,
    "start_time": 1, "status_changed_at": 1, "process_arguments": 1, "joining": 1,
    "worker_redelivers": 1, "worker_pid": 1,
}
WITH_QUEUED_CALLS = {"call_queue.id": {"$exists": True}}
"""Documents with calls waiting, as the sparse ``call_queue.id`` index holds them."""
_RUNNING = frozenset({ProcessStatus.RUNNING})
_PENDING = frozenset({ProcessStatus.PENDING})


@dataclass
class SweepReport:
    """What one sweep did, by document (``Class(pk)``)."""

    checked: int = 0
    """RUNNING runs looked at."""
    failed: list[str] = field(default_factory=list)
    """Runs failed because their worker is gone or no longer runs them."""
    orphaned: list[str] = field(default_factory=list)
    """Of ``failed``, those whose worker is alive but had dropped the task."""
    sent_again: list[str] = field(default_factory=list)
    """``retry_on_worker_lost`` runs sent again under a new task id."""
    awaiting_redelivery: list[str] = field(default_factory=list)
    """Runs of a lost worker whose message the broker gives back (``acks_late``): PENDING."""
    never_started: list[str] = field(default_factory=list)
    """PENDING runs failed after ``pending_timeout``."""
    joins_sent: list[str] = field(default_factory=list)
    """Waiting parents with no processing child whose join task was sent."""
    queued_calls_sent: list[str] = field(default_factory=list)
    """Idle documents whose next queued call had not been started, and now is."""
    workers_gone: int = 0
    """Heartbeats newly marked stopped."""
    write_failed: list[str] = field(default_factory=list)
    """Documents the pass could not act on because acting on them raised (a write MongoDB
    refused, say); left as they were (the error is logged), tried again by the next pass."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def acted(self) -> bool:
        return bool(
            self.failed or self.sent_again or self.awaiting_redelivery or self.never_started
            or self.joins_sent or self.queued_calls_sent or self.write_failed
        )


def proc_classes() -> list[type[ProcDocument]]:
    """Every concrete ``Proc`` subclass this process has imported, one per collection."""
    seen: dict[str, type[ProcDocument]] = {}
    for cls in list(_document_registry.values()):
        if (isinstance(cls, type) and issubclass(cls, ProcDocument)
                and not cls._meta.get("abstract")):
            seen.setdefault(f"{cls._meta.get('db_alias')}/{cls._get_collection_name()}", cls)
    return list(seen.values())


def sweep(
    *,
    threshold: float | None = None,
    pending_timeout: float | None = DEFAULT_PENDING_TIMEOUT,
    classes: Iterable[type[ProcDocument]] | None = None,
    dry_run: bool = False,
) -> SweepReport:
    """One pass of the backstop; see the module's docstring for what it finds.

    ``threshold`` defaults to the heartbeat threshold given to ``install()``;
    ``pending_timeout=None`` leaves PENDING runs alone; ``dry_run`` reports what the pass
    would do and writes nothing. ``classes`` defaults to every ``Proc`` subclass imported
    in this process: import your app's models first (``procstatus -A MODULE sweep``).
    """
    threshold = threshold if threshold is not None else runtime.current.heartbeat_threshold
    workers = liveness.workers_collection()
    now = server_now(workers.database)  # one clock for the whole pass: the server's
    beats = (
        liveness.read_beats(workers) if dry_run
        else liveness.suspect_silent(workers, threshold=threshold, now=now)
    )
    report = SweepReport()
    classes = list(classes) if classes is not None else proc_classes()
    if not classes:
        logger.warning(
            "procstatus sweep checks nothing: no Proc class is imported in this process. "
            "Import your app's models first, or run `procstatus -A MODULE sweep`."
        )
    for cls in classes:
        try:
            collection = connection.durable(cls._get_collection())
        except MongoEngineConnectionFailure as exc:
            # A class whose connection this process never opened: not ours to sweep.
            logger.debug("procstatus sweep skips %s: %s", cls.__name__, exc)
            continue
        for state in collection.find({"process_status": ProcessStatus.RUNNING.value}, _RUN_FIELDS):
            report.checked += 1
            loss = liveness.judge(
                state, beats, threshold=threshold, now=now, orphan_after=threshold
            )
            if loss is not None:
                _isolated(cls, state["_id"], report, functools.partial(
                    _end_lost, cls, state, loss, report, dry_run))
        settled = now - timedelta(seconds=threshold)  # a fresh wait sends its own join
        for state in collection.find(
            {
                "process_status": ProcessStatus.WAITING_FOR_RESULT.value,
                "status_changed_at": {"$lt": settled},
            },
            {"_id": 1},
        ):
            _isolated(cls, state["_id"], report, functools.partial(
                _join_if_ready, cls, state["_id"], report, dry_run))
        if pending_timeout is not None:
            _fail_never_started(cls, now - timedelta(seconds=pending_timeout), report, dry_run)
        if has_non_blocking(cls):
            _start_stranded_calls(cls, report, dry_run)
    report.workers_gone = liveness.mark_gone(
        workers, threshold=threshold, prune_after=liveness.PRUNE_HEARTBEATS_AFTER, now=now,
        dry_run=dry_run,
    )
    if report.acted():
        logger.warning("procstatus sweep: %s", report.as_dict())
    return report


def _isolated(cls: type[ProcDocument], pk: Any, report: SweepReport,
              act: Callable[[], None]) -> None:
    """Act on one document; if that raises, log it, count it and let the pass go on."""
    try:
        act()
    except ConnectionFailure:
        raise  # MongoDB is out of reach for every document: end the pass, loudly
    except Exception:
        logger.exception(
            "procstatus sweep could not act on %s(%s); it is left as it was and the pass "
            "goes on", cls.__name__, pk,
        )
        report.write_failed.append(f"{cls.__name__}({pk})")


def _end_lost(
    cls: type[ProcDocument], state: dict, loss: Loss, report: SweepReport, dry_run: bool
) -> None:
    label = f"{cls.__name__}({state['_id']})"
    call = ProcessCall.from_state(cls, state)
    resend = call is not None and call.spec.retry_on_worker_lost and not state.get("joining")
    run = RunRef(cls, state["_id"], state.get("celery_task_id"), state.get("current_process"))
    reason = loss.text
    if state.get("joining"):
        reason = f"join lost: {reason}"
    elif not resend and state.get("worker_redelivers") and loss.kind is LossKind.WORKER_LOST:
        # The lost worker never acknowledged the message: the broker gives it back (at
        # once on RabbitMQ, after the visibility timeout on Redis). An orphaned run is
        # not among these: its live worker may have acknowledged it already.
        redelivery = Ending.REDELIVERY if dry_run else endings.await_redelivery(
            run, reason, instance=state.get("worker_instance"), pid=state.get("worker_pid")
        )
        if redelivery is Ending.REDELIVERY:
            report.awaiting_redelivery.append(label)
        elif redelivery is Ending.FAILED:  # past the cap on lost workers
            report.failed.append(label)
        return
    if dry_run:
        ended: Ending | None = Ending.SENT_AGAIN if resend else Ending.FAILED
    else:
        ended = endings.end_run(
            run, reason, statuses=_RUNNING, send_again=call if resend else None
        )
    if ended is Ending.SENT_AGAIN:
        report.sent_again.append(label)
    elif ended is Ending.FAILED:
        report.failed.append(label)
        if loss.kind is LossKind.ORPHANED:
            report.orphaned.append(label)


def _join_if_ready(cls: type[ProcDocument], pk: Any, report: SweepReport, dry_run: bool) -> None:
    parent = cls.objects(pk=pk).read_preference(ReadPreference.PRIMARY).first()
    if parent is None:  # (a secondary may not have it yet: the primary does)
        return
    try:
        if join.join_if_ready(parent, dry_run=dry_run):
            report.joins_sent.append(f"{cls.__name__}({pk})")
    except Exception:
        logger.exception("procstatus sweep could not send the join of %s(%s)", cls.__name__, pk)


def _start_stranded_calls(cls: type[ProcDocument], report: SweepReport, dry_run: bool) -> None:
    """Idle documents with calls waiting: the run that ended died before starting the next."""
    # Only the sparse call_queue index answers this: documents with a call waiting, few and
    # mostly busy. Asking for the idle status too would make a server plan the status
    # index (nearly every document is idle) or a collection scan, so that is checked here.
    collection = connection.durable(cls._get_collection())
    with_calls = collection.find(WITH_QUEUED_CALLS, {"process_status": 1})
    idle = set(values(SCHEDULABLE))
    for state in with_calls:
        if state.get("process_status") not in idle:
            continue
        _isolated(cls, state["_id"], report, functools.partial(
            _start_next_call, cls, state["_id"], report, dry_run))


def _start_next_call(cls: type[ProcDocument], pk: Any, report: SweepReport,
                     dry_run: bool) -> None:
    if dry_run or endings.start_next_call(cls, pk).outcome is NextCallOutcome.SENT:
        report.queued_calls_sent.append(f"{cls.__name__}({pk})")


def _fail_never_started(
    cls: type[ProcDocument], before: datetime, report: SweepReport, dry_run: bool
) -> None:
    stale = connection.durable(cls._get_collection()).find(
        {"process_status": ProcessStatus.PENDING.value, "status_changed_at": {"$lt": before}},
        {"celery_task_id": 1, "current_process": 1},
    )
    for state in stale:
        _isolated(cls, state["_id"], report, functools.partial(
            _fail_pending, cls, state, report, dry_run))


def _fail_pending(cls: type[ProcDocument], state: dict, report: SweepReport,
                  dry_run: bool) -> None:
    run = RunRef(cls, state["_id"], state.get("celery_task_id"), state.get("current_process"))
    error = "never started: no worker took the task in time"
    if dry_run or endings.end_run(run, error, statuses=_PENDING) is Ending.FAILED:
        report.never_started.append(f"{cls.__name__}({state['_id']})")
