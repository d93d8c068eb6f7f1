"""The status fields of a ``Proc`` document: fields, indexes, queries, reads, in-run writes.

:class:`ProcDocument` is the abstract mongoengine Document under
:class:`procstatus.Proc`: everything a document knows of its own status, and what the
running process may write to it (step, warnings, progress). The machinery that runs,
ends and joins processes works on it; :class:`procstatus.Proc` adds the operations
that need that machinery (``cancel()``). Subclass ``Proc``, never this class.

Status fields are written only by :mod:`procstatus.transitions`; ``save()`` refuses to
write them on an existing document, so a stale in-memory copy can never overwrite a
newer status.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from mongoengine import (
    DEFAULT_CONNECTION_NAME,
    BooleanField,
    DateTimeField,
    DictField,
    Document,
    EnumField,
    IntField,
    ListField,
    StringField,
)
from mongoengine.errors import SaveConditionError
from mongoengine.queryset import QuerySet

from procstatus import connection, runtime, transitions
from procstatus.clock import utcnow
from procstatus.errors import NotRunning, StatusFieldWrite
from procstatus.status import COMPLETED, PROCESSING, ProcessStatus
from procstatus.text import cut

if TYPE_CHECKING:
    from mongoengine.queryset import QuerySet as _QuerySet

P = TypeVar("P", bound="ProcDocument")

logger = logging.getLogger("procstatus")

class ProcQuerySet(QuerySet):
    """Queries by status: ``Upload.objects.processing()``, ``.failed()``, ``.with_status(...)``."""

    def with_status(self, *statuses: ProcessStatus | str) -> ProcQuerySet:
        return self.filter(process_status__in=[ProcessStatus(s) for s in statuses])

    def processing(self) -> ProcQuerySet:
        """Documents with a process under way (PENDING, RUNNING, WAITING_FOR_RESULT)."""
        return self.with_status(*PROCESSING)

    def completed(self) -> ProcQuerySet:
        return self.with_status(*COMPLETED)

    def failed(self) -> ProcQuerySet:
        return self.with_status(ProcessStatus.FAILURE)


class ProcDocument(Document):
    """The status of a document whose processes run on Celery workers (see ``Proc``)."""

    meta = {
        "abstract": True,
        "queryset_class": ProcQuerySet,
        # Counts and lists by status, oldest first: the sweeper, the CLI, the dashboard.
        # The sparse index holds only documents with calls waiting (see callqueue), so the
        # sweeper finds stranded calls without reading the idle majority.
        "indexes": [
            "process_status",
            ("process_status", "status_changed_at"),
            {"fields": ["call_queue.id"], "sparse": True},
        ],
    }

    process_status = EnumField(ProcessStatus, default=ProcessStatus.READY, required=True)
    current_process = StringField(default=None)
    current_process_step = StringField(default=None)
    errors = ListField(StringField())
    warnings = ListField(StringField())
    last_status_message = StringField(default=None)
    create_time = DateTimeField(default=utcnow)
    start_time = DateTimeField(default=None)
    complete_time = DateTimeField(default=None)
    status_changed_at = DateTimeField(default=None)
    worker_hostname = StringField(default=None)
    worker_instance = StringField(default=None)
    worker_pid = IntField(default=None)
    worker_redelivers = BooleanField(default=False)
    """Whether the broker gives this run's message back if its worker is lost (acks_late)."""
    worker_losses = IntField(default=0)
    """How many times this run lost its worker and was tried again (see ``max_worker_losses``)."""
    celery_task_id = StringField(default=None)
    process_arguments = DictField(default=None)
    joining = BooleanField(default=False)
    call_queue = ListField(DictField())
    """Calls of non-blocking processes waiting for the current run to end, first first."""
    progress_done = IntField(default=None)
    progress_total = IntField(default=None)

    _run_task_id: str | None = None
    """Set on the claimed copy inside its run (see ``procstatus.runner.attach``)."""
    _progress_written_at: float = float("-inf")
    _progress_unwritten: bool = False
    _progress_lock: threading.Lock | None = None
    """Made by the first ``set_progress()``; orders the held value's writes with the timer's."""
    _progress_timer: threading.Timer | None = None
    """The trailing write of a held progress value, when one is scheduled."""

    @classmethod
    def _get_db(cls) -> Any:
        # The connection given to procstatus.install(), where this process defined none.
        connection.ensure(cls._meta.get("db_alias", DEFAULT_CONNECTION_NAME))
        return super()._get_db()

    @classmethod
    def _state_target(cls, pk: Any, known: Mapping[str, Any] | None = None) -> transitions.Target:
        """How the state machine addresses ``cls(pk)``: durable, and with the shard key's
        values (from ``known``, the raw document, else read once) when ``meta`` has one."""
        return transitions.target(cls._get_collection(), pk, shard_fields(cls), known)

    def _target(self) -> transitions.Target:
        """How the state machine addresses this document (shard values from this copy)."""
        fields = shard_fields(type(self))
        known = self.to_mongo().to_dict() if fields else None
        return transitions.target(self._get_collection(), self.pk, fields, known)

    # --- creation --------------------------------------------------------------------

    @classmethod
    def create(cls: type[P], **fields: Any) -> P:
        """Insert a new document (READY unless told otherwise) and return it."""
        proc = cls(**fields)
        proc.save(force_insert=True)
        return proc

    def save(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Save your own fields; never the status fields, never by upsert.

        A new document is inserted (an existing ``_id`` raises ``NotUniqueError`` rather
        than replacing a document and its status). A loaded document is updated field by
        field; if it was deleted meanwhile, ``DoesNotExist`` is raised instead of
        recreating it without a status.
        """
        if self._created:
            kwargs.setdefault("force_insert", True)
            return super().save(*args, **kwargs)
        changed = {name.split(".", 1)[0] for name in self._get_changed_fields()}
        owned = sorted(changed & _STATE_FIELD_SET)
        if owned:
            raise StatusFieldWrite(
                f"save() would overwrite {', '.join(owned)} of {type(self).__name__}"
                f"({self.pk}); these fields are written only by procstatus's state "
                "machine. Reload the document (reload()) or leave them unchanged."
            )
        if kwargs.get("save_condition") is not None:
            return super().save(*args, **kwargs)
        try:
            return super().save(*args, save_condition={}, **kwargs)
        except SaveConditionError:
            raise self.DoesNotExist(
                f"{type(self).__name__}({self.pk}) was deleted; save() does not recreate it"
            ) from None

    # --- reading ---------------------------------------------------------------------

    @property
    def process_running(self) -> bool:
        """Whether the last known status is PENDING, RUNNING or WAITING_FOR_RESULT."""
        return self.process_status in PROCESSING

    def reload_status(self) -> ProcessStatus:
        """Re-read only the status fields from the database; returns the status."""
        state = transitions.read_state(self._target())
        if state is None:
            raise self.DoesNotExist(f"{type(self).__name__}({self.pk}) no longer exists")
        self._set_state(state)
        return self.process_status

    def block_until_complete(self, timeout: float = 60.0, interval: float = 0.1) -> ProcessStatus:
        """Poll until no process is under way; returns the final status.

        Raises ``TimeoutError`` (naming the status it was stuck in) after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while self.reload_status() in PROCESSING:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{type(self).__name__}({self.pk}) still {self.process_status} "
                    f"({self.current_process}: {self.current_process_step!r}) after {timeout}s"
                )
            time.sleep(interval)
        return self.process_status

    # --- inside a running process ----------------------------------------------------

    def set_process_step(self, step: str | None) -> None:
        """Record what the process is doing now; others see it at once.

        Only the running process's own copy of the document may do this; any other
        copy, in any process, raises :class:`NotRunning` and writes nothing. A step over
        :data:`~procstatus.text.MAX_TEXT_BYTES` of UTF-8 is stored cut.
        """
        if step is not None and not isinstance(step, str):
            raise TypeError(f"process step must be str or None, not {type(step).__name__}")
        task_id = self._owned_run("set_process_step")
        with self._progress_guard():
            held = self._held_progress()
            won = transitions.set_step(self._target(), task_id, step, progress=held)
            if won and held is not None:
                self._progress_sent(time.monotonic())
        if not won:
            self._raise_not_running("set_process_step")
        self._set_state({"current_process_step": None if step is None else cut(step)})

    def warning(self, *messages: str) -> None:
        """Append warnings to this process's record (the process goes on).

        Like :meth:`set_process_step`, only from the running process's own copy. Each
        warning is stored cut to :data:`~procstatus.text.MAX_TEXT_BYTES`, and only the last
        :data:`~procstatus.transitions.MAX_LIST_ENTRIES` warnings are kept.
        """
        texts = [cut(str(m)) for m in messages]
        if not texts:
            return
        task_id = self._owned_run("warning")
        with self._progress_guard():
            held = self._held_progress()
            won = transitions.add_warnings(self._target(), task_id, texts, progress=held)
            if won and held is not None:
                self._progress_sent(time.monotonic())
        if not won:
            self._raise_not_running("warning")
        kept = [*(self.warnings or []), *texts][-transitions.MAX_LIST_ENTRIES:]
        self._set_state({"warnings": kept})

    def set_progress(self, done: int, total: int | None = None) -> None:
        """Record numeric progress: ``done`` of ``total`` (unknown when ``None``).

        One single-field-group update, at most one every ``progress_interval`` seconds
        (0.5 by default, set in ``install()``). A value set sooner is held back and still
        stored within one interval: with the next :meth:`set_process_step` or
        :meth:`warning`, in that same command; else by one trailing write once the
        interval has passed (from a timer thread, which logs a failure and never raises
        into the process); else with the run's end, in the same command. Like
        :meth:`set_process_step`, only from the running process's own copy.
        """
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise ValueError(f"progress done must be an int >= 0, not {done!r}")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int)
                                  or total < 1):
            raise ValueError(f"progress total must be an int >= 1 or None, not {total!r}")
        task_id = self._owned_run("set_progress")
        if self._progress_lock is None:
            self._progress_lock = threading.Lock()  # before any timer thread can exist
        with self._progress_lock:
            self._set_state({"progress_done": done, "progress_total": total})
            moment = time.monotonic()
            wait = self._progress_written_at + runtime.current.progress_interval - moment
            if wait > 0:
                self._progress_unwritten = True
                if self._progress_timer is None:
                    self._schedule_progress_write(task_id, wait)
                return
            won = transitions.set_progress(self._target(), task_id, done, total)
            if won:
                self._progress_sent(moment)
        if not won:
            self._raise_not_running("set_progress")

    def _unwritten_progress(self) -> dict[str, Any] | None:
        """The progress this run set but did not write yet (throttled), else ``None``.

        Called for the run's end, which writes it: a trailing write still scheduled is
        cancelled.
        """
        with self._progress_guard():
            self._cancel_progress_write()
            return self._held_progress()

    def _held_progress(self) -> dict[str, Any] | None:
        """The held progress value (call under :meth:`_progress_guard`)."""
        if not self._progress_unwritten:
            return None
        return {"progress_done": self.progress_done, "progress_total": self.progress_total}

    def _progress_guard(self) -> contextlib.AbstractContextManager[Any]:
        """The progress lock, or nothing to guard when no progress was ever set."""
        return self._progress_lock or contextlib.nullcontext()

    def _progress_sent(self, moment: float) -> None:
        """The held value was written at ``moment``: no trailing write is needed."""
        self._progress_written_at = moment
        self._progress_unwritten = False
        self._cancel_progress_write()

    def _cancel_progress_write(self) -> None:
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None

    def _schedule_progress_write(self, task_id: str, wait: float) -> None:
        """Write the held value in ``wait`` seconds, unless something writes it first."""
        timer: threading.Timer

        def fire() -> None:
            self._write_held_progress(task_id, timer)

        timer = threading.Timer(wait, fire)
        timer.name = f"procstatus-progress-{type(self).__name__}({self.pk})"
        timer.daemon = True
        self._progress_timer = timer
        timer.start()

    def _write_held_progress(self, task_id: str, timer: threading.Timer) -> None:
        """The trailing write, on the timer's thread: the latest held value, conditional on
        the run still RUNNING under ``task_id``; it never raises."""
        lock = self._progress_lock
        if lock is None:
            return
        try:
            with lock:
                if self._progress_timer is not timer:
                    return  # cancelled: the value went with a step, a warning or the end
                self._progress_timer = None
                held = self._held_progress()
                if held is None:
                    return
                moment = time.monotonic()
                if transitions.set_progress(
                    self._target(), task_id, held["progress_done"], held["progress_total"]
                ):
                    self._progress_written_at = moment
                    self._progress_unwritten = False
                else:
                    logger.debug(
                        "%s(%s): held progress not written, the run %s has ended",
                        type(self).__name__, self.pk, task_id,
                    )
        except Exception as exc:
            logger.warning(
                "%s(%s): held progress not written (%s: %s); the next step, warning or the "
                "run's end writes it", type(self).__name__, self.pk, type(exc).__name__, exc,
            )

    # --- hooks a subclass may override -------------------------------------------------

    def on_success(self) -> None:
        """Runs on the worker after the process returned, before SUCCESS is written.

        Hooks run in the process's own run only. A run ended from outside (cancel, the
        sweeper) runs none when its process is gone; if that process lives on unaware (a
        network partition, say), it may still run its hook, whose status write is then
        refused. Keep hooks idempotent.
        """

    def on_fail(self) -> None:
        """Runs on the worker after the process failed, before FAILURE is written.

        See :meth:`on_success` for when a run ended from outside runs its hook.
        """

    def on_waiting_for_result(self) -> None:
        """Runs on the worker before WAITING_FOR_RESULT is written."""

    # --- parents and children ----------------------------------------------------------

    def parent(self) -> ProcDocument | None:
        """A child returns the parent it reports to (``@process(is_child=True)`` methods)."""
        raise NotImplementedError(
            f"{type(self).__name__} has child processes but does not implement parent()"
        )

    def children(self) -> _QuerySet:
        """A parent returns a QuerySet of the children it waits for."""
        raise NotImplementedError(
            f"{type(self).__name__} returned WAITING_FOR_RESULT but does not implement children()"
        )

    def join(self) -> ProcessStatus | None:
        """Runs once, on a worker, when every child has completed.

        Return ``None`` for SUCCESS or ``ProcessStatus.WAITING_FOR_RESULT`` to wait again;
        raise to fail.
        """
        return None

    # --- internal --------------------------------------------------------------------

    def _set_state(self, state: Mapping[str, Any]) -> None:
        """Mirror state-machine writes into this object without marking fields changed."""
        for name, value in state.items():
            if name in _STATE_FIELD_SET:
                field = self._fields[name]
                self._data[name] = field.to_python(value) if value is not None else None

    def _owned_run(self, operation: str) -> str:
        task_id: str | None = getattr(self, "_run_task_id", None)
        if task_id is None:
            raise NotRunning(
                f"{operation}() is only allowed inside the running process, on the copy of "
                f"{type(self).__name__}({self.pk}) the process method was called on; this "
                "copy was loaded elsewhere. Nothing was written."
            )
        return task_id

    def _raise_not_running(self, operation: str) -> None:
        state = transitions.read_state(self._target()) or {}
        other_task = state.get("celery_task_id") not in (None, self._run_task_id)
        raise NotRunning(
            f"{operation}() is only allowed inside this object's running process; "
            f"{type(self).__name__}({self.pk}) is "
            f"{state.get('process_status', 'deleted')}"
            f"{' for another task' if other_task else ''}."
        )


_STATE_FIELD_SET = frozenset(transitions.STATE_FIELDS)


def shard_fields(cls: type[Document]) -> tuple[str, ...]:
    """The database names of the fields in ``cls``'s ``meta["shard_key"]`` (dotted for an
    embedded field), as mongoengine's ``save()`` reads them; ``()`` when not sharded."""
    declared = cls._meta.get("shard_key") or ()
    names = (declared,) if isinstance(declared, str) else tuple(declared)
    found: list[str] = []
    for name in names:
        first, *rest = name.replace("__", ".").split(".")
        field = cls._fields.get(first)
        found.append(".".join([field.db_field if field is not None else first, *rest]))
    return tuple(found)

