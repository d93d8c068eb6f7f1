"""The sweeper: ends the runs no hook could end, because their whole worker is gone.

A worker killed outright (SIGKILL, a lost machine) fires no signal. Its heartbeat in
``procstatus_workers`` stops instead, and :func:`sweep` fails every RUNNING document
whose worker has been silent for longer than the threshold — or sends it again when its
process is marked ``@process(retry_on_worker_lost=True)``. Runs on live workers are never
touched. Run it from Celery beat (the ``procstatus.sweep`` task), from cron, or call it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from mongoengine.base import _document_registry
from mongoengine.connection import ConnectionFailure as MongoEngineConnectionFailure

from procstatus import dispatch, join, liveness, transitions
from procstatus.document import Proc
from procstatus.status import ProcessStatus

logger = logging.getLogger("procstatus")

_RUN_FIELDS = {
    "current_process": 1, "celery_task_id": 1, "worker_instance": 1, "worker_hostname": 1,
    "start_time": 1, "process_arguments": 1, "joining": 1,
}


@dataclass
class SweepReport:
    """What one sweep did, by document (``Class(pk)``)."""

    checked: int = 0
    failed: list[str] = field(default_factory=list)
    sent_again: list[str] = field(default_factory=list)
    never_started: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def proc_classes() -> list[type[Proc]]:
    """Every concrete ``Proc`` subclass this process has imported, one per collection."""
    seen: dict[str, type[Proc]] = {}
    for cls in list(_document_registry.values()):
        if isinstance(cls, type) and issubclass(cls, Proc) and not cls._meta.get("abstract"):
            seen.setdefault(f"{cls._meta.get('db_alias')}/{cls._get_collection_name()}", cls)
    return list(seen.values())


def sweep(
    *,
    threshold: float | None = None,
    pending_timeout: float | None = None,
    classes: Iterable[type[Proc]] | None = None,
) -> SweepReport:
    """Fail (or send again) every RUNNING run whose worker has been silent past ``threshold``.

    ``pending_timeout`` (off by default; a queue may legitimately be long) also fails
    PENDING documents that no worker started within that many seconds.
    """
    threshold = threshold if threshold is not None else liveness.settings.threshold
    beats = liveness.read_beats(liveness.settings.collection())
    now = datetime.now(timezone.utc)
    report = SweepReport()
    for cls in classes if classes is not None else proc_classes():
        try:
            collection = cls._get_collection()
        except MongoEngineConnectionFailure as exc:
            # A class whose connection this process never opened: not ours to sweep.
            logger.debug("procstatus sweep skips %s: %s", cls.__name__, exc)
            continue
        running = collection.find({"process_status": ProcessStatus.RUNNING.value}, _RUN_FIELDS)
        for state in running:
            report.checked += 1
            reason = liveness.lost_reason(state, beats, threshold=threshold, now=now)
            if reason is not None:
                _resolve_lost(cls, state, reason, report)
        if pending_timeout is not None:
            _fail_never_started(cls, now - timedelta(seconds=pending_timeout), report)
    if report.failed or report.sent_again or report.never_started:
        logger.warning("procstatus sweep: %s", report.as_dict())
    return report


def _resolve_lost(cls: type[Proc], state: dict, reason: str, report: SweepReport) -> None:
    label = f"{cls.__name__}({state['_id']})"
    spec = dispatch.process_spec(cls, state.get("current_process") or "")
    arguments = state.get("process_arguments") or {}
    if spec is not None and spec.retry_on_worker_lost and not state.get("joining"):
        new_id = dispatch.new_task_id()
        if transitions.back_to_pending(
            cls._get_collection(), state["_id"], state["celery_task_id"], new_task_id=new_id,
            message=f"Process {spec.name} pending again: {reason}",
            warning=f"sent again after {reason}",
        ):
            try:
                dispatch.publish(
                    cls, state["_id"], spec, list(arguments.get("args") or []),
                    dict(arguments.get("kwargs") or {}), new_id,
                )
                report.sent_again.append(label)
            except Exception as exc:
                transitions.fail_run(
                    cls._get_collection(), state["_id"], new_id,
                    f"{reason}; could not send again: {exc}",
                )
                report.failed.append(label)
        return
    if transitions.fail_run(
        cls._get_collection(), state["_id"], state.get("celery_task_id"), reason,
        statuses=frozenset({ProcessStatus.RUNNING}),
    ):
        report.failed.append(label)
        if spec is not None and spec.is_child:
            child = cls.objects(pk=state["_id"]).first()
            if child is not None:
                join.after_finish(
                    child, None, is_child=True, task_id=None,
                    worker=transitions.WorkerRef(hostname=f"sweeper@{socket.gethostname()}"),
                )


def _fail_never_started(cls: type[Proc], before: datetime, report: SweepReport) -> None:
    stale = cls._get_collection().find(
        {"process_status": ProcessStatus.PENDING.value, "status_changed_at": {"$lt": before}},
        {"celery_task_id": 1},
    )
    for state in stale:
        if transitions.fail_run(
            cls._get_collection(), state["_id"], state.get("celery_task_id"),
            "never started: no worker took the task in time",
            statuses=frozenset({ProcessStatus.PENDING}),
        ):
            report.never_started.append(f"{cls.__name__}({state['_id']})")
