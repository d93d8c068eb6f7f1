"""The writes an operator may make on one document, and the policy that refuses them.

- :func:`cancel_document`: ``Proc.cancel()`` — FAILURE "cancelled";
- :func:`reset_refusal` and :func:`reset_document`: the state machine's operator
  override (:func:`procstatus.transitions.reset`), back to READY;
- :func:`plan_retry` and :class:`RetryPlan`: a failed process called again with its
  stored arguments;
- :func:`perform`: one of these by name, as the dashboard's buttons ask for it;
- :class:`Tally`: the outcomes of one command over several ids, said one at a time.

Each returns an :class:`Outcome`: done or refused, and the sentence that says so. A
reset is logged (logger ``procstatus``). A write needs the document's class (``-A``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from procstatus import transitions
from procstatus.errors import ProcessAlreadyRunning
from procstatus.ops import queries
from procstatus.ops.errors import NotFound, OperatorError, first_line
from procstatus.ops.session import Session
from procstatus.ops.sources import Source
from procstatus.spec import process_spec
from procstatus.status import PROCESSING, ProcessStatus

logger = logging.getLogger("procstatus")

ACTIONS = ("cancel", "retry", "reset")
"""What :func:`perform` does by name."""


@dataclass(frozen=True)
class Outcome:
    """What an operator's write did: ``ok`` or refused, and the sentence that says so."""

    ok: bool
    message: str


def label(source: Source, pk: Any) -> str:
    return f"{source.name}({pk})"


def cancel_document(source: Source, pk: Any, *, terminate: bool = False) -> Outcome:
    """``Proc.cancel()`` on the document: FAILURE "cancelled"."""
    if source.cls is None:
        raise OperatorError(f"cancel needs the class of {label(source, pk)}: pass -A MODULE")
    before = transitions.read_state(source.target(pk)) or {}
    proc = source.cls.objects(pk=pk).first()  # type: ignore[attr-defined]
    if proc is None or not proc.cancel(terminate=terminate):
        now_status = proc.process_status if proc is not None else "deleted"
        return Outcome(False, f"{label(source, pk)} is {now_status}: nothing to cancel")
    return Outcome(
        True,
        f"cancelled {label(source, pk)}: was {before.get('process_status')} "
        f"({before.get('current_process')}), now FAILURE"
        + ("; its worker was told to kill the process running it" if terminate else ""),
    )


def reset_refusal(
    source: Source, pk: Any, state: Mapping[str, Any] | None, *, force: bool,
    hint: str = "Cancel it first",
) -> str | None:
    """Why a reset of this document is refused (``None``: it may go ahead)."""
    if state is None:
        return f"{label(source, pk)} no longer exists"
    current = state.get("process_status")
    if current == ProcessStatus.READY.value:
        return f"{label(source, pk)} is already READY"
    if current in {s.value for s in PROCESSING} and not force:
        return (
            f"{label(source, pk)} is {current} ({state.get('current_process')}): refused, a "
            f"worker may be running it. {hint}"
        )
    return None


def reset_document(source: Source, pk: Any, *, force: bool = False) -> Outcome:
    """The state machine's operator override (:func:`procstatus.transitions.reset`):
    back to READY; logged. Check :func:`reset_refusal` first."""
    before = transitions.reset(source.target(pk), force=force)
    if before is None:
        return Outcome(False, f"{label(source, pk)} changed meanwhile: not reset")
    was = before.get("process_status")
    logger.warning(
        "operator reset %s: %s (%s) → READY%s", label(source, pk), was,
        before.get("current_process"), " (forced)" if force else "",
    )
    return Outcome(True, f"reset {label(source, pk)}: {was} → READY")


@dataclass
class RetryPlan:
    """A failed process to call again on one document, with its stored arguments."""

    source: Source
    pk: Any
    proc: Any
    method: str
    args: list[Any]
    kwargs: dict[str, Any]

    @property
    def call_text(self) -> str:
        parts = [json.dumps(a) for a in self.args]
        parts += [f"{k}={json.dumps(v)}" for k, v in self.kwargs.items()]
        return f"{self.method}({', '.join(parts)})"

    def describe(self) -> str:
        return f"{self.source.name}({self.pk}).{self.call_text}"

    def call(self) -> Outcome:
        """Call it (a new run, PENDING at once); refused if the document is busy."""
        where = f"{self.source.name}({self.pk}).{self.method}"
        try:
            getattr(self.proc, self.method)(*self.args, **self.kwargs)
        except ProcessAlreadyRunning:
            return Outcome(False, f"{where}: refused, it was called again meanwhile")
        except Exception as exc:
            return Outcome(
                False, f"{where}: the call failed: {type(exc).__name__}: {first_line(exc)}"
            )
        return Outcome(True, f"called {self.describe()}: {self.proc.process_status}")


def plan_retry(source: Source, pk: Any, process: str | None) -> RetryPlan | str:
    """How to call ``process`` again on document ``pk`` (its stored arguments), or why not."""
    where = f"{source.name}({pk}).{process}"
    cls = source.cls
    if cls is None:
        return f"{where}: the class is not known: pass -A MODULE"
    spec = process_spec(cls, process or "")
    if spec is None:
        return f"{where}: not a @process method of {source.name}: skipped"
    proc = cls.objects(pk=pk).first()  # type: ignore[attr-defined]
    arguments = getattr(proc, "process_arguments", None)
    if proc is None or not isinstance(arguments, dict):
        return f"{where}: no stored arguments (it ran before they were stored): skipped"
    return RetryPlan(
        source, pk, proc, spec.name, list(arguments.get("args") or []),
        dict(arguments.get("kwargs") or {}),
    )


def process_names(cls: type | None) -> list[str]:
    """The ``@process`` methods of ``cls`` (none when the class is not known)."""
    if cls is None:
        return []
    return sorted(name for name in dir(cls) if not name.startswith("_")
                  and process_spec(cls, name) is not None)


def perform(action: str, source: Source, pk: Any, *, terminate: bool = False) -> Outcome:
    """One of :data:`ACTIONS` on one document: ``cancel``; ``reset``, refused while the
    document is under way; ``retry``, of a FAILURE only."""
    if action == "cancel":
        return cancel_document(source, pk, terminate=terminate)
    if action == "reset":
        refusal = reset_refusal(
            source, pk, transitions.read_state(source.target(pk)), force=False,
            hint="Cancel it first",
        )
        if refusal is not None:
            return Outcome(False, refusal)
        return reset_document(source, pk)
    if action != "retry":
        raise ValueError(f"no action {action!r}: use {', '.join(ACTIONS)}")
    state = queries.show(source, pk) or {}
    if state.get("process_status") != ProcessStatus.FAILURE.value:
        return Outcome(
            False, f"{label(source, pk)} is {state.get('process_status')}: only a FAILURE is "
                   "retried")
    plan = plan_retry(source, pk, state.get("current_process"))
    if isinstance(plan, str):
        return Outcome(False, plan)
    return plan.call()


class Tally:
    """The outcomes of one command that writes on several documents, said one at a time
    (each line follows its own id): a done write through ``say``, a refusal (or an id not
    found) through ``warn``, counted in :attr:`refused`."""

    def __init__(self, say: Callable[[str], None], warn: Callable[[str], None]) -> None:
        self._say = say
        self._warn = warn
        self.refused = 0

    def refuse(self, message: str) -> None:
        self._warn(message)
        self.refused += 1

    def report(self, outcome: Outcome) -> None:
        if outcome.ok:
            self._say(outcome.message)
        else:
            self.refuse(outcome.message)

    def located(
        self, session: Session, ids: Sequence[str], class_name: str | None
    ) -> Iterator[tuple[Source, Any]]:
        """The document each id names (:meth:`Session.locate`), one at a time; an id that
        names none, or several, is refused and skipped."""
        for text in ids:
            try:
                yield session.locate(text, class_name)
            except NotFound as exc:
                self.refuse(str(exc))
