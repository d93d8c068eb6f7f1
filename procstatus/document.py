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

if TYPE_CHECKING:
    from mongoengine.queryset import QuerySet as _QuerySet

P = TypeVar("P", bound="ProcDocument")

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

    @classmethod
    def _get_db(cls) -> Any:
        # The connection given to procstatus.install(), where this process defined none.
        connection.ensure(cls._meta.get("db_alias", DEFAULT_CONNECTION_NAME))
        return super()._get_db()

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
        state = transitions.read_state(self._get_collection(), self.pk)
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
        copy, in any process, raises :class:`NotRunning` and writes nothing.
        """
        if step is not None and not isinstance(step, str):
            raise TypeError(f"process step must be str or None, not {type(step).__name__}")
        task_id = self._owned_run("set_process_step")
        if not transitions.set_step(self._get_collection(), self.pk, task_id, step):
            self._raise_not_running("set_process_step")
        self._set_state({"current_process_step": step})

    def warning(self, *messages: str) -> None:
        """Append warnings to this process's record (the process goes on).

        Like :meth:`set_process_step`, only from the running process's own copy.
        """
        texts = [str(m) for m in messages]
        if not texts:
            return
        task_id = self._owned_run("warning")
        if not transitions.add_warnings(self._get_collection(), self.pk, task_id, texts):
            self._raise_not_running("warning")
        self._set_state({"warnings": [*(self.warnings or []), *texts]})

    def set_progress(self, done: int, total: int | None = None) -> None:
        """Record numeric progress: ``done`` of ``total`` (unknown when ``None``).

        One single-field-group update, at most one every ``progress_interval`` seconds
        (0.5 by default, set in ``install()``); a value not written yet is written with
        the run's end, in the same command. Like :meth:`set_process_step`, only from the
        running process's own copy.
        """
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise ValueError(f"progress done must be an int >= 0, not {done!r}")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int)
                                  or total < 1):
            raise ValueError(f"progress total must be an int >= 1 or None, not {total!r}")
        task_id = self._owned_run("set_progress")
        self._set_state({"progress_done": done, "progress_total": total})
        moment = time.monotonic()
        if moment - self._progress_written_at < runtime.current.progress_interval:
            self._progress_unwritten = True
            return
        if not transitions.set_progress(self._get_collection(), self.pk, task_id, done, total):
            self._raise_not_running("set_progress")
        self._progress_written_at = moment
        self._progress_unwritten = False

    def _unwritten_progress(self) -> dict[str, Any] | None:
        """The progress this run set but did not write yet (throttled), else ``None``."""
        if not self._progress_unwritten:
            return None
        return {"progress_done": self.progress_done, "progress_total": self.progress_total}

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
        state = transitions.read_state(self._get_collection(), self.pk) or {}
        other_task = state.get("celery_task_id") not in (None, self._run_task_id)
        raise NotRunning(
            f"{operation}() is only allowed inside this object's running process; "
            f"{type(self).__name__}({self.pk}) is "
            f"{state.get('process_status', 'deleted')}"
            f"{' for another task' if other_task else ''}."
        )


_STATE_FIELD_SET = frozenset(transitions.STATE_FIELDS)

