"""Owns the model-based test of the state machine: random interleavings of every write, ending,
join and sweep, run against the real MongoDB-protocol server and checked against a Python model.

One parent (P), three children that report to it (C0-C2) and one standalone document (S)
are driven by a hypothesis ``RuleBasedStateMachine`` through the functions of
:mod:`procstatus.transitions`, :func:`procstatus.endings.end_run`,
:func:`procstatus.runner.perform_join` / ``endings.after_end`` and :func:`procstatus.sweeper.sweep`,
with current, stale, duplicate and never-seen task ids. The publishers are fakes (no broker);
every write function is wrapped by a spy that checks each single write as it happens.

Invariants (each one names what it would catch):

1. every status change is an edge of ``LEGAL_TRANSITIONS`` and of the write's own
   ``EDGES_BY_WRITE`` entry, and no status changes outside those writes;
2. a write carrying a task id other than the stored ``celery_task_id`` changes nothing and
   says it lost; a SUCCESS/FAILURE is changed by nothing but a new ``schedule`` (or the
   operator's ``reset``);
3. of competing ``begin_join`` calls for one WAITING_FOR_RESULT period exactly one wins;
4. no dead ends: every processing document can be failed by ``fail_run`` with its stored task
   id and process, and at teardown the sweeper alone (plus the joins it sends) brings every
   document to SUCCESS or FAILURE;
5. ``errors`` and ``warnings`` only grow within one run (from a ``schedule`` to the next
   ``schedule``, winning ``unschedule`` or ``reset``);
6. a run is tried again after a lost worker (sent again, given back to the broker, taken
   over by a redelivery, its join given back) at most its cap of times: every such write
   counts the loss in ``worker_losses``, and a document past its cap is FAILURE.

Replay: the test prints ``model seed: N`` (pytest shows it for a failed test) and every
failure gets a note with the command; run
``.venv/bin/python -m pytest tests/unit/test_model.py --hypothesis-seed=N`` or set
``PROCSTATUS_MODEL_SEED=N``. Hypothesis also prints the minimal failing program of steps and
a ``@reproduce_failure(...)`` blob (put it on ``_machine_factory``). ``PROCSTATUS_MODEL_EXAMPLES``
and ``PROCSTATUS_MODEL_STEPS`` raise the budget for a longer local hunt;
``PROCSTATUS_MODEL_SHRINK=0`` skips shrinking. ``-s`` prints what the examples reached.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from mongoengine import ObjectIdField, StringField

from procstatus import (
    Proc,
    ProcessStatus,
    endings,
    liveness,
    runner,
    runtime,
    sweeper,
    transitions,
)
from procstatus.dispatch import process
from procstatus.messages import JoinCall, ProcessCall, json_pk
from procstatus.spec import process_spec
from procstatus.status import COMPLETED, LEGAL_TRANSITIONS, PROCESSING, SCHEDULABLE
from procstatus.transitions import EDGES_BY_WRITE, WorkerRef
from tests.unit.compat import at
from tests.unit.fakes import FakePublisher

S = ProcessStatus

pytestmark = pytest.mark.usefixtures("test_db")


# --- the documents ---------------------------------------------------------------------------


class StateModelParent(Proc):
    """P: waits for the StateModelChild documents that name it as owner."""

    meta = {"collection": "state_model_parents"}

    name = StringField()

    @process
    def gather(self, *args, **kwargs):
        return ProcessStatus.WAITING_FOR_RESULT

    @process(retry_on_worker_lost=True)
    def gather_again(self, *args, **kwargs):
        return ProcessStatus.WAITING_FOR_RESULT

    def children(self):
        return StateModelChild.objects(owner=self.pk)


class StateModelChild(Proc):
    """C0-C2: child processes that report to their owner; they have no children themselves."""

    meta = {"collection": "state_model_children", "indexes": ["owner"]}

    owner = ObjectIdField()

    @process(is_child=True)
    def work(self, *args, **kwargs):
        pass

    @process(is_child=True, retry_on_worker_lost=True)
    def work_again(self, *args, **kwargs):
        pass

    def parent(self):
        return StateModelParent.objects.get(pk=self.owner)

    def children(self):
        return StateModelChild.objects(owner=self.pk)


class StateModelSolo(Proc):
    """S: no parent, no children (a WAITING_FOR_RESULT of it is joined at once)."""

    meta = {"collection": "state_model_solos"}

    @process
    def crunch(self, *args, **kwargs):
        pass

    @process(retry_on_worker_lost=True, max_worker_losses=2)
    def resendable(self, *args, **kwargs):
        pass

    def children(self):
        return StateModelChild.objects(owner=self.pk)


CLASSES = [StateModelParent, StateModelChild, StateModelSolo]  # the sweeper's order, too
OUR_COLLECTIONS = frozenset(cls._meta["collection"] for cls in CLASSES)
KEYS = ("P", "C0", "C1", "C2", "S")
PROCESSES = {
    StateModelParent: ("gather", "gather_again"),
    StateModelChild: ("work", "work_again"),
    StateModelSolo: ("crunch", "resendable"),
}
THRESHOLD = 3600.0
"""Heartbeat threshold and pending timeout of every sweep: real time never reaches it."""
AGE = timedelta(seconds=2 * THRESHOLD)
"""How far ``time_passes`` moves every stored moment into the past."""
TIME_FIELDS = ("status_changed_at", "start_time", "complete_time", "create_time")
TAG = f"model{random.Random().getrandbits(24):06x}"
NEVER_STARTED = "never started: no worker took the task in time"
MODEL_LOSS_CAP = 1
"""``install()``'s cap on lost workers in this test (``resendable`` has its own, 2): low, so
that the examples reach it."""
RESTORED = ("status", "task", "process", "errors", "warnings", "worker", "joining", "aged",
            "losses")
"""What a winning ``unschedule`` gives back: the model as it was before the schedule."""
NOT_RUN_OWNED = frozenset({"schedule", "schedule_next", "begin_join", "reset"})
"""Writes whose filter does not name the run's task id: they start a run (the id they carry
is the new one), claim a wait whoever sent the join, or are the operator's override. Every
other write carrying a ``task_id`` is held to invariant 2."""
RUN_BOUNDARIES = frozenset({"schedule", "schedule_next", "unschedule", "reset"})
"""Writes that start, undo or reset a run: invariant 5 holds between them."""
WON_BY_TRUTH = frozenset(
    {"unschedule", "back_to_pending", "complete", "fail_run", "schedule_next", "abandon_join"}
)
"""Writes that return a bool; the others return a document or ``None``."""


class RevokeRecordingPublisher(FakePublisher):
    """The fake run publisher, whose app also records ``control.revoke`` (cancel sends one)."""

    def __init__(self):
        super().__init__()
        self.revoked = []
        self.app = SimpleNamespace(
            conf=SimpleNamespace(task_always_eager=False),
            control=SimpleNamespace(revoke=lambda task_id, **_: self.revoked.append(task_id)),
        )


class _Anything:
    """An error or warning whose exact text the model does not predict (a sweeper's reason)."""

    def __eq__(self, other):
        return isinstance(other, str)

    def __hash__(self):
        return 0

    def __repr__(self):
        return "<any text>"


ANY = _Anything()


@dataclass
class Doc:
    """What the model expects one stored document to be."""

    key: str
    cls: type
    pk: Any
    status: ProcessStatus = S.READY
    task: str | None = None
    process: str | None = None
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    worker: WorkerRef | None = None
    joining: bool = False
    aged: bool = False  # status_changed_at is older than THRESHOLD
    losses: int = 0  # worker_losses: lost workers this run was tried again after
    run: int = 0  # bumped by schedule, a winning unschedule, reset: invariant 5's boundary
    history: list = field(default_factory=list)  # every task id it ever had
    undo: tuple | None = None  # (schedule's before-image, the model before that schedule)

    @property
    def coll(self):
        return self.cls._get_collection()

    @property
    def label(self):
        return f"{self.cls.__name__}({self.pk})"

    def spec(self):
        return process_spec(self.cls, self.process or "")

    def cap(self):
        """The run's cap on lost workers: its process's own, else install()'s."""
        spec = self.spec()
        own = spec.max_worker_losses if spec is not None else None
        return MODEL_LOSS_CAP if own is None else own


def past_cap_error(cap, reason, context=""):
    """The error of a run ended by its cap on lost workers (invariant 6)."""
    losses = cap + 1
    times = "once" if losses == 1 else f"{losses} times"
    return (f"{context}lost its worker {times}, more than max_worker_losses={cap} allows; "
            f"last: {reason}")


# --- the spies: every single write checked as it happens (invariants 1, 2, 3, 5) --------------

_ORIGINAL = {name: getattr(transitions, name) for name in EDGES_BY_WRITE}
_SIGNATURES = {name: inspect.signature(fn) for name, fn in _ORIGINAL.items()}
_CURRENT: dict[str, Any] = {"machine": None}
STATS: Counter = Counter()
"""What the examples reached, printed at the end (``-s`` shows it): a rule that never wins
checks nothing."""


def _spy(name):
    original = _ORIGINAL[name]

    @functools.wraps(original)
    def spied(*args, **kwargs):
        machine = _CURRENT["machine"]
        if machine is None:
            return original(*args, **kwargs)
        return machine.observe(name, original, args, kwargs)

    return spied


def _guarded(function):
    """Remember that a step failed, so teardown does not pile a second error on it."""

    @functools.wraps(function)
    def wrapper(self, *args, **kwargs):
        try:
            return function(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise

    return wrapper


def _prefix(before, after):
    before, after = list(before or []), list(after or [])
    return after[: len(before)] == before


keys = st.sampled_from(KEYS)
which_ids = st.sampled_from(("current", "current", "current", "stale", "ghost"))
worker_numbers = st.integers(0, 2)
fail_statuses = st.sampled_from(
    (PROCESSING, PROCESSING, frozenset({S.PENDING}), frozenset({S.RUNNING}),
     frozenset({S.WAITING_FOR_RESULT}))
)
mostly_right = st.sampled_from((True, True, True, False))
attempts = st.sampled_from(("none", "own", "own", "other"))
"""Which attempt a lost worker names: none (not known), the run's own, another one."""


class StateModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.failed = False
        self.counter = 0
        for cls in CLASSES:  # a clean collection for every example
            cls._get_collection().delete_many({})
        parent = StateModelParent.create(name="p")
        self.docs = {"P": Doc("P", StateModelParent, parent.pk)}
        for key in ("C0", "C1", "C2"):
            self.docs[key] = Doc(key, StateModelChild, StateModelChild.create(owner=parent.pk).pk)
        self.docs["S"] = Doc("S", StateModelSolo, StateModelSolo.create().pk)
        self.by_pk = {d.pk: d for d in self.docs.values()}
        self.parent = self.docs["P"]
        self.children = [self.docs[k] for k in ("C0", "C1", "C2")]
        self.publisher = RevokeRecordingPublisher()
        self.join_publisher = FakePublisher()
        runtime.current.run_task = self.publisher
        runtime.current.join_task = self.join_publisher
        self.sent_joins = {key: [] for key in KEYS}
        self.workers = [
            WorkerRef(hostname=f"{TAG}-{c}@host", instance=f"{TAG}-{c}", pid=4000 + i)
            for i, c in enumerate("abc")
        ]
        self.heartbeats().delete_many({"_id": {"$in": [w.instance for w in self.workers]}})
        self.worker_state = {w.instance: "absent" for w in self.workers}
        self.drops = {w.instance: False for w in self.workers}
        self.suspected = {w.instance: None for w in self.workers}  # None, "fresh" or "aged"
        self.set_worker_state(self.workers[0], "alive")
        self.set_worker_state(self.workers[1], "alive")
        # Filled by the spies: the status every spied write left, the waits, their joins.
        self.spied_status = {d.pk: S.READY for d in self.docs.values()}
        self.waits = {d.pk: 0 for d in self.docs.values()}
        self.join_winners: dict[tuple, list] = {}
        self.seen = {d.pk: (0, [], []) for d in self.docs.values()}
        _CURRENT["machine"] = self

    # --- helpers ---------------------------------------------------------------------------

    def fresh(self, kind):
        self.counter += 1
        return f"{kind}-{self.counter}"

    def heartbeats(self):
        return liveness.workers_collection()

    def any_in(self, statuses):
        return any(d.status in statuses for d in self.docs.values())

    def pick(self, data, statuses):
        """A document in one of ``statuses`` mostly, any document sometimes (to see it lose)."""
        fitting = [k for k in KEYS if self.docs[k].status in statuses]
        anywhere = data.draw(st.integers(0, 4), label="anywhere") == 0
        key = data.draw(st.sampled_from(fitting if fitting and not anywhere else KEYS), label="key")
        return self.docs[key]

    def task_for(self, d, which, data):
        if which == "current":
            return d.task
        stale = [t for t in d.history if t != d.task]
        if which == "stale" and stale:
            return data.draw(st.sampled_from(stale), label="stale task id")
        return self.fresh("ghost")

    def snapshot(self):
        docs = {}
        for cls in CLASSES:
            for doc in cls._get_collection().find():
                docs[doc["_id"]] = doc
        return docs

    def children_processing(self, d):
        return d is self.parent and any(c.status in PROCESSING for c in self.children)

    def join_if_ready(self, d):
        """The joins ``join.join_if_ready(d)`` sends, by the model."""
        if d.status is S.WAITING_FOR_RESULT and not self.children_processing(d):
            return [d]
        return []

    def after_run(self, d, written):
        """The joins ``endings.after_end`` sends after ``d``'s run wrote ``written``."""
        if written is S.WAITING_FOR_RESULT:
            return self.join_if_ready(d)
        spec = d.spec()
        if spec is not None and spec.is_child:
            return self.join_if_ready(self.parent)
        return []

    def check_joins(self, since, expected):
        """The join tasks sent since ``since`` are exactly ``expected`` (a list of Docs)."""
        calls = self.join_publisher.calls[since:]
        sent = sorted(tuple(c["args"]) for c in calls)
        assert sent == sorted((d.cls._class_name, json_pk(d.pk)) for d in expected), (
            f"joins sent {sent}, expected {[d.key for d in expected]}"
        )
        for call in calls:
            self.sent_joins[self.by_pk[_pk(call["args"][1])].key].append(call["task_id"])
        STATS["join tasks sent"] += len(calls)

    def observe(self, name, original, args, kwargs):
        """Run one write of ``transitions`` and check it (invariants 1, 2, 3 and 5)."""
        arguments = _SIGNATURES[name].bind(*args, **kwargs).arguments
        collection, pk = arguments["target"].collection, arguments["target"].pk
        if collection.name not in OUR_COLLECTIONS or pk not in self.by_pk:
            return original(*args, **kwargs)
        before = collection.find_one({"_id": pk})
        result = original(*args, **kwargs)
        after = collection.find_one({"_id": pk})
        won = bool(result) if name in WON_BY_TRUTH else result is not None
        self.check_write(name, arguments, before, after, won)
        return result

    def check_write(self, name, arguments, before, after, won):
        """One write, seen from its document (the others are compared with the model after
        every step)."""
        pk = arguments["target"].pk
        old, new = S(before["process_status"]), S(after["process_status"])
        STATS[f"{name} {'won' if won else 'lost'} in {old}"] += 1
        if won:
            assert after != before, f"{name} says it won but changed nothing"
            # Invariant 1: catches a write whose filter lets it perform an undeclared edge,
            # or a declared edge the table forbids.
            assert new in LEGAL_TRANSITIONS[old], f"{name}: {old}→{new} is not legal"
            assert (old, new) in EDGES_BY_WRITE[name], f"{name} performed undeclared {old}→{new}"
            if name not in RUN_BOUNDARIES:
                # Invariant 5: catches a write inside a run that replaces errors/warnings.
                for list_field in ("errors", "warnings"):
                    assert _prefix(before.get(list_field), after.get(list_field)), (
                        f"{name} shrank {list_field}: {before.get(list_field)} → "
                        f"{after.get(list_field)}"
                    )
            if name == "begin_join":
                self.record_join(pk, arguments["task_id"])
            if new is S.WAITING_FOR_RESULT and old is not S.WAITING_FOR_RESULT:
                self.waits[pk] += 1
        else:
            # Invariant 2: catches a losing write that still changed something.
            assert after == before, f"{name} lost but changed the document"
        if name not in NOT_RUN_OWNED and "task_id" in arguments:
            # Invariant 2: catches a stale, duplicate or foreign task id that wins.
            if arguments["task_id"] != before.get("celery_task_id"):
                assert not won, (
                    f"{name} won with task {arguments['task_id']!r}, "
                    f"stored {before.get('celery_task_id')!r}"
                )
        if old in COMPLETED and name not in NOT_RUN_OWNED:
            assert not won, f"{name} overwrote {old}"
        self.spied_status[pk] = new

    def record_join(self, pk, task_id):
        # Invariant 3: catches a second join of the same wait (join() run twice).
        winners = self.join_winners.setdefault((pk, self.waits[pk]), [])
        winners.append(task_id)
        assert len(winners) == 1, f"wait {self.waits[pk]} of {pk} joined by {winners}"

    # --- actions (the model's expectation next to each real call) ------------------------

    def do_schedule(self, d, process_name):
        task = self.fresh("task")
        arguments = {"args": [d.key], "kwargs": {"n": self.counter}}
        before = transitions.schedule(at(d.coll, d.pk), process_name, task, arguments)
        if d.status in SCHEDULABLE:
            assert before is not None, f"schedule of {d.key} in {d.status} lost"
            assert (before["process_status"], before.get("celery_task_id")) == (
                d.status.value, d.task,
            )
            d.undo = (before, copy.deepcopy(replace(d, undo=None)))
            d.status, d.task, d.process = S.PENDING, task, process_name
            d.errors, d.warnings, d.worker, d.joining, d.aged = [], [], None, False, False
            d.losses = 0
            d.run += 1
            d.history.append(task)
        else:
            assert before is None, f"schedule of {d.key} won while {d.status}"

    def do_start(self, d, task, worker):
        document = transitions.start(at(d.coll, d.pk), task, worker)
        if d.status is S.PENDING and task == d.task:
            assert document is not None and document["process_status"] == "RUNNING"
            d.status, d.worker, d.aged = S.RUNNING, worker, False
        else:
            assert document is None, f"start of {d.key} with {task} won in {d.status}"

    def do_complete(self, d, task, status, errors, notify):
        joins_before = len(self.join_publisher.calls)
        won = transitions.complete(at(d.coll, d.pk), task, status, message="done", errors=errors)
        expected = d.status is S.RUNNING and task == d.task
        assert won == expected, f"complete({d.key}, {task}, {status}) → {won}"
        if won:
            d.status, d.aged = status, False
            d.errors.extend(errors)
        if notify:  # what the runner does after writing its end, won or lost
            written = status if won else None
            proc = d.cls.objects.get(pk=d.pk)
            endings.after_end(d.cls, d.pk, proc.current_process, written, proc=proc)
            self.check_joins(joins_before, self.after_run(d, written))

    def do_run_join(self, d, task, worker):
        """A join task delivered: ``perform_join`` claims the wait, joins, writes SUCCESS."""
        joins_before = len(self.join_publisher.calls)
        written = runner.perform_join(JoinCall(d.cls, d.pk), task, worker)
        if d.status is S.WAITING_FOR_RESULT and not self.children_processing(d):
            assert written is S.SUCCESS, f"join of {d.key} by {task} → {written}"
            STATS[f"perform_join of {d.key[0]} won"] += 1
            d.status, d.task, d.joining, d.worker, d.aged = S.SUCCESS, task, True, worker, False
            d.history.append(task)
            expected = self.after_run(d, S.SUCCESS)
        else:
            assert written is None, f"join of {d.key} by {task} ran in {d.status}"
            expected = []
        self.check_joins(joins_before, expected)

    def beat(self, w, active=(), stopped=False):
        """``w``'s worker writes its heartbeat now (which also clears a suspicion)."""
        saved = (liveness.WorkerIdentity.instance, liveness.WorkerIdentity.hostname)
        liveness.WorkerIdentity.instance, liveness.WorkerIdentity.hostname = w.instance, w.hostname
        try:
            liveness.beat(self.heartbeats(), active, stopped=stopped)
        finally:
            liveness.WorkerIdentity.instance, liveness.WorkerIdentity.hostname = saved
        self.suspected[w.instance] = None

    def set_worker_state(self, w, state, drops=False, suspected=False):
        """Alive, stopped (said so), dead (silent for long: AGE) or absent (never beat).

        A dead worker may already have been suspected by an earlier sweep, long ago.
        """
        if state == "dead" and self.worker_state[w.instance] != "dead":
            self.beat(w)
            past = datetime.now(timezone.utc) - AGE
            moved = {"heartbeat_at": past, **({"suspected_at": past} if suspected else {})}
            self.heartbeats().update_one({"_id": w.instance}, {"$set": moved})
            self.suspected[w.instance] = "aged" if suspected else None
        elif state == "absent":
            self.heartbeats().delete_one({"_id": w.instance})
            self.suspected[w.instance] = None
        self.worker_state[w.instance] = state
        self.drops[w.instance] = drops and state == "alive"

    def write_beats(self):
        """Just before a sweep: live and stopping workers have just beaten, listing their runs."""
        for w in self.workers:
            state = self.worker_state[w.instance]
            if state not in ("alive", "stopped"):
                continue  # a dead worker keeps its old beat (and any suspicion)
            active = [
                d.task for d in self.docs.values()
                if d.status is S.RUNNING and d.worker and d.worker.instance == w.instance
            ]
            if self.drops[w.instance]:
                active = []  # its pool processes died without telling anyone
            self.beat(w, active, stopped=state == "stopped")

    def lost(self, d):
        """The sweeper's verdict on a RUNNING ``d``: None, "lost" or "orphaned"."""
        instance = d.worker.instance if d.worker else None
        state = self.worker_state.get(instance, "absent")
        if state == "absent":
            return "lost" if d.aged else None
        if state == "stopped":
            return "lost"
        if state == "dead":  # silence condemns only once suspected for longer than the grace
            return "lost" if self.suspected[instance] == "aged" else None
        if self.drops[instance] and d.aged:
            return "orphaned"
        return None

    def do_sweep(self, pending_timeout, publish_fails):
        self.write_beats()
        for w in self.workers:  # the sweep first suspects the silent ones
            if self.worker_state[w.instance] == "dead" and self.suspected[w.instance] is None:
                self.suspected[w.instance] = "fresh"
        calls_before = len(self.publisher.calls)
        joins_before = len(self.join_publisher.calls)
        expected = {k: [] for k in ("failed", "orphaned", "sent_again", "never_started")}
        expected["joins_sent"], expected["checked"] = [], 0
        joins, resent = [], []

        def fail(d, error, verdict=None):
            d.status, d.aged = S.FAILURE, False
            d.errors.append(error)
            joins.extend(self.after_run(d, S.FAILURE))  # end_run notifies a child's parent

        for cls in CLASSES:
            docs = [d for d in self.docs.values() if d.cls is cls]
            for d in docs:
                if d.status is not S.RUNNING:
                    continue
                expected["checked"] += 1
                verdict = self.lost(d)
                if verdict is None:
                    continue
                if d.spec().retry_on_worker_lost and not d.joining and d.losses < d.cap():
                    resent.append(d)
                    d.status, d.aged = S.PENDING, False
                    d.warnings.append(ANY)
                    d.losses += 1
                    if not publish_fails:
                        expected["sent_again"].append(d.label)
                        continue
                elif d.spec().retry_on_worker_lost and not d.joining:
                    d.losses += 1  # past the cap: failed saying so (the reason is the sweeper's)
                    STATS["sweep past the cap"] += 1
                fail(d, ANY)
                expected["failed"].append(d.label)
                if verdict == "orphaned":
                    expected["orphaned"].append(d.label)
            for d in docs:
                if d.status is S.WAITING_FOR_RESULT and d.aged:
                    ready = self.join_if_ready(d)
                    joins.extend(ready)
                    expected["joins_sent"].extend(r.label for r in ready)
            if pending_timeout is not None:
                for d in docs:
                    if d.status is S.PENDING and d.aged:
                        fail(d, NEVER_STARTED)
                        expected["never_started"].append(d.label)

        self.publisher.error = RuntimeError("broker down") if publish_fails else None
        try:
            report = sweeper.sweep(
                threshold=THRESHOLD, pending_timeout=pending_timeout, classes=CLASSES
            )
        finally:
            self.publisher.error = None
        for name, value in expected.items():
            if value and name != "checked":
                STATS[f"sweep {name}"] += 1
            got = getattr(report, name)
            got = sorted(got) if isinstance(got, list) else got
            value = sorted(value) if isinstance(value, list) else value
            assert got == value, f"sweep report {name}: {got}, expected {value}"
        # A resend goes out under a new task id, the one the document now names.
        calls = self.publisher.calls[calls_before:]
        assert sorted(c["args"][1] for c in calls) == sorted(json_pk(d.pk) for d in resent)
        for call in calls:
            d = self.by_pk[_pk(call["args"][1])]
            arguments = d.coll.find_one({"_id": d.pk})["process_arguments"]
            assert call["args"] == [
                d.cls._class_name, json_pk(d.pk), d.process,
                arguments["args"], arguments["kwargs"],
            ]
            d.task = call["task_id"]
            d.history.append(d.task)
        self.check_joins(joins_before, joins)
        return report

    def do_time_passes(self):
        for cls in CLASSES:
            collection = cls._get_collection()
            for doc in collection.find({}, {name: 1 for name in TIME_FIELDS}):
                moved = {name: doc[name] - AGE for name in TIME_FIELDS if doc.get(name)}
                if moved:
                    collection.update_one({"_id": doc["_id"]}, {"$set": moved})
        for d in self.docs.values():
            d.aged = True
        beats, past = self.heartbeats(), datetime.now(timezone.utc) - AGE
        for w in self.workers:
            if self.worker_state[w.instance] != "dead":
                continue
            moved = {"heartbeat_at": past}  # still silent since long, never pruned
            suspected_at = (beats.find_one({"_id": w.instance}) or {}).get("suspected_at")
            if suspected_at is not None:
                moved["suspected_at"] = suspected_at - AGE
                self.suspected[w.instance] = "aged"
            beats.update_one({"_id": w.instance}, {"$set": moved})

    # --- rules -----------------------------------------------------------------------------

    @rule(moves=st.lists(keys, min_size=1, max_size=6), data=st.data())
    @_guarded
    def advance(self, moves, data):
        """The happy path with current ids, so deep states (joins, sweeps of waits) are reached."""
        for key in moves:
            d = self.docs[key]
            if d.status in SCHEDULABLE:
                self.do_schedule(d, data.draw(st.sampled_from(PROCESSES[d.cls])))
            elif d.status is S.PENDING:
                self.do_start(d, d.task, self.workers[data.draw(worker_numbers)])
            elif d.status is S.RUNNING:
                status = S.WAITING_FOR_RESULT if d is self.parent and not d.joining else None
                status = status or data.draw(
                    st.sampled_from((S.SUCCESS, S.FAILURE, S.WAITING_FOR_RESULT))
                )
                self.do_complete(d, d.task, status, [], notify=True)
            else:
                self.do_run_join(d, self.fresh("join"), self.workers[data.draw(worker_numbers)])

    @precondition(lambda self: self.any_in(SCHEDULABLE))
    @rule(data=st.data())
    @_guarded
    def schedule(self, data):
        d = self.pick(data, SCHEDULABLE)
        self.do_schedule(d, data.draw(st.sampled_from(PROCESSES[d.cls])))

    @precondition(lambda self: self.any_in({S.PENDING}))
    @rule(which=which_ids, data=st.data())
    @_guarded
    def unschedule(self, which, data):
        """The publish after the last schedule failed: restore the before-image."""
        d = self.pick(data, {S.PENDING})
        if d.undo is None:
            return
        task = self.task_for(d, which, data)
        before_image, saved = d.undo
        won = transitions.unschedule(at(d.coll, d.pk), task, before_image)
        expected = d.status is S.PENDING and task == d.task
        assert won == expected, f"unschedule({d.key}, {task}) → {won} in {d.status}"
        if won:
            for name in RESTORED:
                setattr(d, name, copy.deepcopy(getattr(saved, name)))
            d.run += 1
            d.undo = None

    @precondition(lambda self: self.any_in({S.PENDING}))
    @rule(which=which_ids, worker=worker_numbers, duplicate=st.booleans(),
          matching=st.booleans(), data=st.data())
    @_guarded
    def start(self, which, worker, duplicate, matching, data):
        d = self.pick(data, {S.PENDING})
        task = self.task_for(d, which, data)
        self.do_start(d, task, self.workers[worker])
        if duplicate:  # the same message delivered again, to another worker: it cannot start
            again = (worker + 1) % 3
            assert transitions.start(at(d.coll, d.pk), task, self.workers[again]) is None
            # ... and takes over only a run lost on the worker it names (the runner's claim).
            self.do_reclaim(d, task, again, matching)

    @precondition(lambda self: self.any_in({S.RUNNING}))
    @rule(which=which_ids, worker=worker_numbers, matching=st.booleans(),
          data=st.data())
    @_guarded
    def reclaim(self, which, worker, matching, data):
        d = self.pick(data, {S.RUNNING})
        self.do_reclaim(d, self.task_for(d, which, data), worker, matching)

    def do_reclaim(self, d, task, worker, matching):
        """Reclaim for ``task``, naming as lost the run's own worker or another one; past
        the cap, the claim's ending instead (as :mod:`procstatus.claims` does)."""
        lost_run = d.worker if matching and d.worker else self.workers[(worker + 1) % 3]
        lost = {"worker_instance": lost_run.instance, "worker_pid": lost_run.pid}
        new = self.workers[worker]
        cap = d.cap()
        joins_before = len(self.join_publisher.calls)
        document = transitions.reclaim(
            at(d.coll, d.pk), task, lost, new, "a test", loss_cap=cap
        )
        lost_here = (
            d.status is S.RUNNING and task == d.task and d.worker is not None
            and (d.worker.instance, d.worker.pid) == (lost_run.instance, lost_run.pid)
        )
        expected = lost_here and d.losses < cap
        assert (document is not None) == expected, (
            f"reclaim({d.key}, {task}) won={document is not None} in {d.status}, "
            f"{d.losses} of {cap} losses"
        )
        joins = []
        if expected:
            d.worker, d.aged = new, False
            d.warnings.append("restarted after a test")
            d.losses += 1
        else:
            run = endings.RunRef(d.cls, d.pk, task, d.process)
            loss = transitions.WorkerLoss(cap, lost_run.instance, lost_run.pid)
            ended = endings.end_past_cap(run, loss, "a test")
            assert (ended is endings.Ending.FAILED) == lost_here, f"claim ending → {ended}"
            if lost_here:
                STATS["reclaim past the cap ended"] += 1
                d.status, d.aged = S.FAILURE, False
                d.errors.append(past_cap_error(cap, "a test"))
                d.losses += 1
                joins = self.after_run(d, S.FAILURE)
        self.check_joins(joins_before, joins)

    @precondition(lambda self: self.any_in({S.RUNNING}))
    @rule(which=which_ids, new_id=st.booleans(), lost=st.booleans(), named=attempts,
          data=st.data())
    @_guarded
    def back_to_pending(self, which, new_id, lost, named, data):
        """A retry (the body raised) or, ``lost``, a lost worker's run tried again."""
        d = self.pick(data, {S.RUNNING})
        task = self.task_for(d, which, data)
        new_task = self.fresh("task") if new_id else None
        loss, on_attempt = self.loss_of(d, named) if lost else (None, True)
        won = transitions.back_to_pending(
            at(d.coll, d.pk), task, message="again", warning=f"retry {self.counter}",
            new_task_id=new_task, loss=loss,
        )
        expected = d.status is S.RUNNING and task == d.task and on_attempt and (
            loss is None or d.losses < loss.cap
        )
        assert won == expected, f"back_to_pending({d.key}, {task}) → {won} in {d.status}"
        if won:
            d.status, d.aged = S.PENDING, False
            d.warnings.append(f"retry {self.counter}")
            d.losses += loss is not None
            if new_task:
                d.task = new_task
                d.history.append(new_task)

    def loss_of(self, d, named):
        """A lost worker of ``d``'s run with its cap, naming no attempt, its own or another;
        and whether it names the attempt the document records."""
        if named == "none" or d.worker is None:
            return transitions.WorkerLoss(d.cap()), True
        if named == "own":
            return transitions.WorkerLoss(d.cap(), d.worker.instance, d.worker.pid), True
        other = next(w for w in self.workers if w.instance != d.worker.instance)
        return transitions.WorkerLoss(d.cap(), other.instance, other.pid), False

    @precondition(lambda self: self.any_in({S.RUNNING}))
    @rule(which=which_ids, named=attempts, data=st.data())
    @_guarded
    def await_redelivery(self, which, named, data):
        """A lost pool process whose message the broker gives back: PENDING, nobody told;
        past the run's cap on lost workers, FAILURE through the one ending path."""
        d = self.pick(data, {S.RUNNING})
        task = self.task_for(d, which, data)
        error = f"lost {self.counter}"
        joins_before = len(self.join_publisher.calls)
        calls_before = len(self.publisher.calls)
        loss, on_attempt = self.loss_of(d, named)
        ended = endings.await_redelivery(
            endings.RunRef(d.cls, d.pk, task, d.process), error,
            instance=loss.instance, pid=loss.pid,
        )
        joins = []
        expected = None
        if d.status is S.RUNNING and task == d.task and on_attempt:
            d.losses += 1
            d.aged = False
            if d.losses <= loss.cap:
                expected = endings.Ending.REDELIVERY
                d.status = S.PENDING
                d.warnings.append(f"restarted after {error}")
            else:
                expected = endings.Ending.FAILED
                d.status = S.FAILURE
                d.errors.append(past_cap_error(loss.cap, error))
                joins = self.after_run(d, S.FAILURE)
        assert ended == expected, f"await_redelivery({d.key}, {task}) → {ended} in {d.status}"
        assert self.publisher.calls[calls_before:] == []  # the broker has the message
        STATS[f"await_redelivery {expected}"] += 1
        self.check_joins(joins_before, joins)

    @precondition(lambda self: any(d.joining and d.status is S.RUNNING
                                   for d in self.docs.values()))
    @rule(which=which_ids, data=st.data())
    @_guarded
    def await_join_redelivery(self, which, data):
        """A lost join task whose message the broker gives back: the parent waits again."""
        joining = [k for k in KEYS if self.docs[k].joining and self.docs[k].status is S.RUNNING]
        d = self.docs[data.draw(st.sampled_from(joining), label="key")]
        task = self.task_for(d, which, data)
        error = f"lost {self.counter}"
        joins_before = len(self.join_publisher.calls)
        ended = endings.await_join_redelivery(d.cls, d.pk, task, error)
        joins = []
        expected = None
        if d.status is S.RUNNING and task == d.task and d.joining:
            d.losses += 1
            d.aged = False
            if d.losses <= d.cap():
                expected = endings.Ending.REDELIVERY
                d.status, d.joining = S.WAITING_FOR_RESULT, False
                d.warnings.append(f"join restarted after {error}")
            else:
                expected = endings.Ending.FAILED
                d.status = S.FAILURE
                d.errors.append(past_cap_error(d.cap(), error, "join failed: "))
                joins = self.after_run(d, S.FAILURE)
        assert ended == expected, f"await_join_redelivery({d.key}, {task}) → {ended}"
        STATS[f"await_join_redelivery {expected}"] += 1
        self.check_joins(joins_before, joins)

    @precondition(lambda self: self.any_in({S.RUNNING}))
    @rule(which=which_ids,
          status=st.sampled_from((S.SUCCESS, S.FAILURE, S.WAITING_FOR_RESULT)),
          errors=st.lists(st.sampled_from(("e1", "e2")), max_size=2), notify=st.booleans(),
          data=st.data())
    @_guarded
    def complete(self, which, status, errors, notify, data):
        d = self.pick(data, {S.RUNNING})
        self.do_complete(d, self.task_for(d, which, data), status, errors, notify)

    @precondition(lambda self: self.any_in(PROCESSING))
    @rule(which=which_ids, right_process=mostly_right, statuses=fail_statuses,
          data=st.data())
    @_guarded
    def fail_run(self, which, right_process, statuses, data):
        d = self.pick(data, PROCESSING)
        task = self.task_for(d, which, data)
        process_name = d.process if right_process else "not_this_one"
        error = f"cancelled {self.counter}"
        won = transitions.fail_run(at(d.coll, d.pk), task, process_name, error, statuses)
        expected = d.status in statuses and task == d.task and process_name == d.process
        assert won == expected, f"fail_run({d.key}, {task}) → {won} in {d.status}"
        if won:
            d.status, d.aged = S.FAILURE, False
            d.errors.append(error)

    @precondition(lambda self: self.any_in(PROCESSING))
    @rule(which=which_ids, right_process=mostly_right, statuses=fail_statuses,
          send_again=st.booleans(), publish_fails=st.booleans(), data=st.data())
    @_guarded
    def end_run(self, which, right_process, statuses, send_again, publish_fails, data):
        """An ending from outside: cancel, a lost pool process, a start that could not happen."""
        d = self.pick(data, PROCESSING)
        task = self.task_for(d, which, data)
        # Callers resend only the run's own process, from a RUNNING state (see the sweeper).
        send_again = send_again and S.RUNNING in statuses
        process_name = d.process if right_process or send_again else "not_this_one"
        call = None
        if send_again:
            call = ProcessCall.from_state(d.cls, transitions.read_state(at(d.coll, d.pk)))
            if call is None:
                send_again = False
        error = f"ended {self.counter}"
        calls_before = len(self.publisher.calls)
        joins_before = len(self.join_publisher.calls)
        self.publisher.error = RuntimeError("broker down") if publish_fails else None
        try:
            result = endings.end_run(
                endings.RunRef(d.cls, d.pk, task, process_name), error,
                statuses=statuses, send_again=call,
            )
        finally:
            self.publisher.error = None
        resends = self.publisher.calls[calls_before:]
        joins = []
        if send_again and d.status is S.RUNNING and task == d.task and d.losses >= d.cap():
            assert resends == []  # invariant 6: past the cap, ended instead
            STATS["end_run past the cap ended"] += 1
            d.status, d.aged = S.FAILURE, False
            d.errors.append(past_cap_error(d.cap(), error))
            d.losses += 1
            expected = endings.Ending.FAILED
        elif send_again and d.status is S.RUNNING and task == d.task:
            d.losses += 1
            assert len(resends) == 1 and resends[0]["args"][1] == json_pk(d.pk)
            d.task = resends[0]["task_id"]
            d.history.append(d.task)
            d.status, d.aged = S.PENDING, False
            d.warnings.append(f"sent again after {error}")
            expected = endings.Ending.SENT_AGAIN
            if publish_fails:
                d.status = S.FAILURE
                d.errors.append(f"{error}; could not send again: RuntimeError: broker down")
                expected = endings.Ending.FAILED
        elif d.status in statuses and task == d.task and process_name == d.process:
            assert resends == []
            d.status, d.aged = S.FAILURE, False
            d.errors.append(error)
            expected = endings.Ending.FAILED
        else:
            assert resends == []
            expected = None
        assert result == expected, f"end_run({d.key}, {task}) → {result}, expected {expected}"
        STATS[f"end_run {expected}"] += 1
        if expected == endings.Ending.FAILED:
            joins = self.after_run(d, S.FAILURE)
        self.check_joins(joins_before, joins)

    @precondition(lambda self: self.any_in({S.WAITING_FOR_RESULT}))
    @rule(n=st.integers(2, 4), data=st.data())
    @_guarded
    def compete_join(self, n, data):
        """Several join tasks (fresh or already sent, maybe the same twice) race for one wait."""
        d = self.pick(data, {S.WAITING_FOR_RESULT})
        sent = self.sent_joins[d.key]
        ids = [
            data.draw(st.sampled_from(sent)) if sent and data.draw(st.booleans())
            else self.fresh("join")
            for _ in range(n)
        ]
        # One worker's pool processes: which of them wins is up to the race, but the run's
        # fate (the sweeper judges the worker instance) must not be, for replays to agree.
        worker = self.workers[data.draw(worker_numbers)]
        refs = [replace(worker, pid=worker.pid + 100 * (i + 1)) for i in range(n)]
        barrier = threading.Barrier(n)

        def claim(i):
            barrier.wait()
            return _ORIGINAL["begin_join"](at(d.coll, d.pk), ids[i], refs[i])

        before = self.snapshot()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(claim, range(n)))
        after = self.snapshot()
        winners = [i for i, r in enumerate(results) if r is not None]
        for pk, doc in before.items():
            if pk != d.pk:
                assert after[pk] == doc
        if d.status is S.WAITING_FOR_RESULT:
            # Invariant 3: exactly one of the competing join tasks claims the wait.
            assert len(winners) == 1, f"{len(winners)} of {ids} won the join of {d.key}"
            STATS[f"compete_join of {n}: one won"] += 1
            i = winners[0]
            edge = (S.WAITING_FOR_RESULT, S(after[d.pk]["process_status"]))
            assert edge in EDGES_BY_WRITE["begin_join"] and edge[1] in LEGAL_TRANSITIONS[edge[0]]
            assert after[d.pk]["celery_task_id"] == ids[i]
            self.record_join(d.pk, ids[i])
            d.status, d.task, d.joining, d.worker, d.aged = S.RUNNING, ids[i], True, refs[i], False
            d.history.extend(t for t in dict.fromkeys(ids) if t not in d.history)
            self.spied_status[d.pk] = S.RUNNING
        else:
            assert winners == [] and after[d.pk] == before[d.pk], f"join won in {d.status}"

    @precondition(lambda self: self.any_in({S.WAITING_FOR_RESULT}))
    @rule(worker=worker_numbers, use_sent=st.booleans(), data=st.data())
    @_guarded
    def run_join_task(self, worker, use_sent, data):
        """A join task delivered to a worker, then a second one for the same wait."""
        d = self.pick(data, {S.WAITING_FOR_RESULT})
        sent = self.sent_joins[d.key]
        task = data.draw(st.sampled_from(sent)) if use_sent and sent else self.fresh("join")
        self.do_run_join(d, task, self.workers[worker])
        self.do_run_join(d, self.fresh("join"), self.workers[(worker + 1) % 3])

    @precondition(lambda self: self.any_in(PROCESSING))
    @rule(data=st.data())
    @_guarded
    def cancel(self, data):
        """``Proc.cancel()``: ends whatever run is under way, revokes its task unless it waits."""
        d = self.pick(data, PROCESSING)
        joins_before = len(self.join_publisher.calls)
        revoked_before = len(self.publisher.revoked)
        cancelled = d.cls.objects.get(pk=d.pk).cancel()
        joins, revoked = [], []
        if d.status in PROCESSING:
            assert cancelled is True, f"cancel of {d.key} in {d.status} refused"
            if d.status is not S.WAITING_FOR_RESULT:
                revoked = [d.task]
            d.status, d.aged = S.FAILURE, False
            d.errors.append("cancelled")
            joins = self.after_run(d, S.FAILURE)
        else:
            assert cancelled is False, f"cancel of {d.key} in {d.status} won"
        assert self.publisher.revoked[revoked_before:] == revoked
        self.check_joins(joins_before, joins)

    @precondition(lambda self: self.any_in(PROCESSING | COMPLETED))
    @rule(force=st.booleans(), data=st.data())
    @_guarded
    def reset(self, force, data):
        """The operator's override: SUCCESS/FAILURE (anything, with ``force``) → READY."""
        d = self.pick(data, PROCESSING | COMPLETED if force else COMPLETED)
        before = transitions.reset(at(d.coll, d.pk), force=force)
        if d.status in COMPLETED or (force and d.status is not S.READY):
            assert before is not None, f"reset(force={force}) of {d.key} in {d.status} lost"
            assert (before["process_status"], before.get("celery_task_id")) == (
                d.status.value, d.task,
            )
            d.status, d.task, d.errors, d.warnings, d.joining = S.READY, None, [], [], False
            d.losses = 0
            d.run += 1
        else:
            assert before is None, f"reset(force={force}) of {d.key} won in {d.status}"

    @rule(worker=worker_numbers, state=st.sampled_from(("alive", "dead", "stopped", "absent")),
          drops=st.booleans(), suspected=st.booleans())
    @_guarded
    def set_worker(self, worker, state, drops, suspected):
        self.set_worker_state(self.workers[worker], state, drops, suspected)

    @rule()
    @_guarded
    def time_passes(self):
        self.do_time_passes()

    @rule(pending_timeout=st.sampled_from((None, THRESHOLD)), publish_fails=st.booleans())
    @_guarded
    def sweep(self, pending_timeout, publish_fails):
        self.do_sweep(pending_timeout, publish_fails)

    @rule()
    @_guarded
    def probe_no_dead_end(self):
        """Invariant 4, per state: fail_run with the stored task id and process would win.

        Run on a copy in a scratch collection, so the model's documents stay as they are.
        Catches a processing state that no ending from outside can match (a null or
        mismatched task id or process), from which only a human could get it out.
        """
        scratch = self.parent.coll.database["state_model_scratch"]
        processing = [
            doc for doc in self.snapshot().values() if S(doc["process_status"]) in PROCESSING
        ]
        if not processing:
            return
        scratch.drop()
        scratch.insert_many(processing)
        try:
            for stored in processing:
                ended = _ORIGINAL["fail_run"](
                    at(scratch, stored["_id"]), stored.get("celery_task_id"),
                    stored.get("current_process"), "probe",
                )
                key = self.by_pk[stored["_id"]].key
                assert ended, f"dead end: {key} {stored['process_status']} cannot be failed"
        finally:
            scratch.drop()

    # --- invariants (one read of the documents per step) -----------------------------------

    @invariant()
    @_guarded
    def invariants(self):
        STATS["steps"] += 1
        stored = self.snapshot()
        self.stored_state_matches_the_model(stored)
        self.every_status_change_was_a_checked_write(stored)
        self.errors_and_warnings_only_grow_within_a_run(stored)
        self.no_run_is_tried_again_past_its_cap(stored)
        # Invariant 3: catches two begin_join wins of one wait, however they came about.
        assert all(len(w) == 1 for w in self.join_winners.values()), self.join_winners

    def stored_state_matches_the_model(self, stored):
        # Catches any write that wins or loses other than the model says, or writes other
        # values (task id, process, worker, joining, errors, warnings) than it should.
        for d in self.docs.values():
            doc = stored[d.pk]
            got = (
                doc["process_status"], doc.get("celery_task_id"), doc.get("current_process"),
                bool(doc.get("joining")),
                (doc.get("worker_hostname"), doc.get("worker_instance"), doc.get("worker_pid")),
            )
            worker = d.worker or WorkerRef()
            want = (
                d.status.value, d.task, d.process, d.joining,
                (worker.hostname, worker.instance, worker.pid),
            )
            assert got == want, f"{d.key}: stored {got}, model {want}"
            assert d.errors == list(doc.get("errors") or []), f"{d.key} errors"
            assert d.warnings == list(doc.get("warnings") or []), f"{d.key} warnings"
            assert d.losses == (doc.get("worker_losses") or 0), f"{d.key} worker_losses"

    def every_status_change_was_a_checked_write(self, stored):
        # Invariant 1: catches a status changed by anything but a spied write of transitions.
        for d in self.docs.values():
            assert S(stored[d.pk]["process_status"]) is self.spied_status[d.pk], d.key

    def errors_and_warnings_only_grow_within_a_run(self, stored):
        # Invariant 5: catches errors or warnings lost between two steps of one run.
        for d in self.docs.values():
            errors = stored[d.pk].get("errors") or []
            warnings = stored[d.pk].get("warnings") or []
            run, seen_errors, seen_warnings = self.seen[d.pk]
            if run == d.run:
                assert _prefix(seen_errors, errors), f"{d.key} lost errors: {seen_errors}"
                assert _prefix(seen_warnings, warnings), f"{d.key} lost warnings"
            self.seen[d.pk] = (d.run, errors, warnings)

    def no_run_is_tried_again_past_its_cap(self, stored):
        # Invariant 6: catches a write that tries a run again without counting the loss, or
        # past its cap (the count would pass cap + 1, or a run past it would be under way).
        for d in self.docs.values():
            doc = stored[d.pk]
            losses = doc.get("worker_losses") or 0
            assert losses <= d.cap() + 1, f"{d.key} lost {losses} workers, cap {d.cap()}"
            if losses > d.cap():
                assert doc["process_status"] == S.FAILURE.value, (
                    f"{d.key} is {doc['process_status']} after {losses} lost workers"
                )

    # --- teardown: invariant 4 for real -----------------------------------------------------

    def teardown(self):
        try:
            if not self.failed:
                self.drain()
        finally:
            _CURRENT["machine"] = None
            self.heartbeats().delete_many({"_id": {"$in": [w.instance for w in self.workers]}})

    def drain(self):
        """No dead ends: the sweeper alone, and the joins it sends, end every document.

        Every worker dies, time passes and the sweeper runs, a few rounds; each join task
        sent meanwhile is delivered. Catches a state the backstop never ends, e.g. a parent
        waiting for a join nobody sends or a PENDING run the sweeper never looks at.
        """
        for w in self.workers:
            self.set_worker_state(w, "dead")
        for _ in range(6):
            if all(d.status in COMPLETED | {S.READY} for d in self.docs.values()):
                break
            self.do_time_passes()
            delivered = len(self.join_publisher.calls)
            self.do_sweep(THRESHOLD, publish_fails=False)
            while delivered < len(self.join_publisher.calls):
                call = self.join_publisher.calls[delivered]
                delivered += 1
                self.do_run_join(
                    self.by_pk[_pk(call["args"][1])], call["task_id"], self.workers[0]
                )
        self.stored_state_matches_the_model(self.snapshot())
        stuck = {d.key: d.status.value for d in self.docs.values() if d.status in PROCESSING}
        assert not stuck, f"dead end: the sweeper never ends {stuck}"


def _pk(text):
    return next(pk for pk in _CURRENT["machine"].by_pk if json_pk(pk) == text)


# --- the test --------------------------------------------------------------------------------

_SHRINK = os.environ.get("PROCSTATUS_MODEL_SHRINK") != "0"
SETTINGS = settings(
    max_examples=int(os.environ.get("PROCSTATUS_MODEL_EXAMPLES", "30")),
    stateful_step_count=int(os.environ.get("PROCSTATUS_MODEL_STEPS", "40")),
    deadline=None,
    derandomize=False,
    database=None,  # replay by seed or blob; nothing written into the work tree
    print_blob=True,
    # PROCSTATUS_MODEL_SHRINK=0: report the first failing program as found (a quick check).
    phases=[p for p in Phase if p is not Phase.shrink or _SHRINK],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _machine_factory():
    return StateModel()


def _seed_value(request):
    given = os.environ.get("PROCSTATUS_MODEL_SEED") or request.config.getoption(
        "hypothesis_seed", None
    )
    if given is None:
        return random.SystemRandom().getrandbits(32)
    return int(given) if str(given).isdigit() else given


# A passing run takes well under a minute; a failing one shrinks for up to hypothesis's own
# five minutes, which the suite's 300 s timeout would cut short (and hypothesis would then
# report the interrupted replay as a FlakyFailure).
@pytest.mark.timeout(900)
def test_state_machine_matches_its_model(monkeypatch, request):
    seed_value = _seed_value(request)
    replay = f".venv/bin/python -m pytest tests/unit/test_model.py --hypothesis-seed={seed_value}"
    print(f"model seed: {seed_value} (replay: {replay})")
    for name in _ORIGINAL:
        monkeypatch.setattr(transitions, name, _spy(name))
    monkeypatch.setattr(runtime.current, "run_task", None)
    monkeypatch.setattr(runtime.current, "join_task", None)
    # The grace after a suspicion (1.5 intervals) must outlast real time and not AGE.
    monkeypatch.setattr(runtime.current, "heartbeat_interval", THRESHOLD / 3)
    monkeypatch.setattr(runtime.current, "max_worker_losses", MODEL_LOSS_CAP)
    monkeypatch.setattr(liveness.WorkerIdentity, "instance", liveness.WorkerIdentity.instance)
    monkeypatch.setattr(liveness.WorkerIdentity, "hostname", liveness.WorkerIdentity.hostname)

    @functools.wraps(_machine_factory)  # carries a @reproduce_failure put on it
    def factory():
        return _machine_factory()

    try:
        run_state_machine_as_test(seed(seed_value)(factory), settings=SETTINGS)
    except BaseException as exc:
        if hasattr(exc, "add_note"):
            exc.add_note(f"model seed {seed_value}; replay: {replay}")
        raise
    finally:
        print("reached:", ", ".join(f"{k}: {v}" for k, v in sorted(STATS.items())))
        _CURRENT["machine"] = None
        for cls in CLASSES:
            cls._get_collection().drop()

