"""The size bounds of what procstatus stores, against the real MongoDB-protocol server.

MongoDB refuses a document over 16 MiB. procstatus cuts every text it writes
(:func:`procstatus.text.cut`), keeps only the last entries of ``errors`` and
``warnings`` (:data:`procstatus.transitions.MAX_LIST_ENTRIES`), and the sweeper goes on
past a document it cannot write.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import bson
import mongoengine
import pytest
from bson import ObjectId
from pymongo.errors import WriteConcernError

from procstatus import CallQueueFull, Proc, ProcessStatus, process, sweeper, transitions
from procstatus.callqueue import MAX_QUEUED_CALLS
from procstatus.failures import describe, failure_messages
from procstatus.spec import MAX_ARGUMENT_BYTES, MAX_STORED_ARGUMENT_BYTES, check_arguments
from procstatus.text import MAX_TEXT_BYTES, cut
from procstatus.transitions import MAX_LIST_ENTRIES
from tests.unit.compat import at

S = ProcessStatus
KIB = 1024
MIB = 1024 * KIB
MONGODB_LIMIT = 16 * MIB
LONG_AGO = datetime.now(timezone.utc) - timedelta(days=2)


def cut_count(text: str) -> int:
    """The N of a text's "… (N bytes cut)" ending."""
    head, _, tail = text.rpartition("… (")
    assert head and tail.endswith(" bytes cut)"), text[-40:]
    return int(tail.removesuffix(" bytes cut)"))


# --- cut ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "short", "é" * 100, "x" * MAX_TEXT_BYTES])
def test_a_text_within_the_limit_is_kept_whole(text):
    assert cut(text) is text


def test_a_text_of_exactly_the_limit_is_kept_and_one_byte_more_is_cut():
    assert cut("x" * 100, limit=100) == "x" * 100
    longer = cut("x" * 101, limit=100)
    assert longer.startswith("x") and longer.endswith(" bytes cut)")
    assert len(longer.encode()) <= 100
    kept = longer.rpartition("… (")[0]
    assert cut_count(longer) == 101 - len(kept.encode())


@pytest.mark.parametrize("character", ["é", "€", "😀", "a€😀é"])
def test_a_cut_never_splits_a_character_and_counts_the_bytes_it_cut(character):
    text = character * 5000
    whole = len(text.encode())
    cut_text = cut(text)
    encoded = cut_text.encode()  # a split character would not round-trip
    assert len(encoded) <= MAX_TEXT_BYTES
    assert len(encoded) > MAX_TEXT_BYTES - 4 - len("… (99999 bytes cut)".encode())
    kept = cut_text.rpartition("… (")[0]
    assert text.startswith(kept)
    assert cut_count(cut_text) == whole - len(kept.encode())


def test_a_17_mib_text_is_cut_to_the_limit():
    cut_text = cut("x" * (17 * MIB))
    assert len(cut_text.encode()) <= MAX_TEXT_BYTES
    assert cut_text.endswith(f"… ({17 * MIB - len(cut_text.rpartition('… (')[0])} bytes cut)")


def test_a_cut_is_stable():
    once = cut("€" * 10_000)
    assert cut(once) == once


def test_a_limit_too_small_for_the_suffix_is_refused():
    with pytest.raises(ValueError, match="limit"):
        cut("x" * 100, limit=10)


# --- exceptions: the true type always --------------------------------------------------


def test_an_exception_with_a_huge_message_keeps_its_type_and_first_line():
    exc = ValueError("the first line\n" + "x" * (17 * MIB))
    [message] = failure_messages(exc)
    assert message.startswith("ValueError: the first line\nxxx")
    assert len(message.encode()) <= MAX_TEXT_BYTES
    assert describe(exc) == message


def test_an_exception_whose_str_raises_is_still_recorded_by_its_type():
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    [message] = failure_messages(Unprintable())
    assert message.startswith("Unprintable: ")
    assert "str() failed" in message


# --- the cap of errors and warnings, and every written text cut ------------------------


def insert(coll, status: ProcessStatus, task_id: str = "task-1", **fields: Any) -> dict:
    doc = {
        "_id": ObjectId(),
        "process_status": status.value,
        "current_process": "crunch",
        "errors": [f"old error {n}" for n in range(MAX_LIST_ENTRIES)],
        "warnings": [f"old warning {n}" for n in range(MAX_LIST_ENTRIES)],
        "celery_task_id": task_id,
        "worker_instance": "w-1",
        "worker_pid": 11,
        **fields,
    }
    coll.insert_one(doc)
    return doc


def stored(coll, pk) -> dict:
    document = coll.find_one({"_id": pk})
    assert document is not None
    return document


def assert_bounded(document: dict) -> None:
    for name in ("errors", "warnings"):
        assert len(document[name]) <= MAX_LIST_ENTRIES
        assert all(len(text.encode()) <= MAX_TEXT_BYTES for text in document[name])
    for name in ("last_status_message", "current_process_step"):
        assert len((document.get(name) or "").encode()) <= MAX_TEXT_BYTES


HUGE = "h" * (17 * MIB)


def test_many_huge_warnings_keep_the_last_100_each_cut(coll):
    doc = insert(coll, S.RUNNING)
    messages = [f"new {n}: {'w' * 100 * KIB}" for n in range(150)]
    assert transitions.add_warnings(at(coll, doc["_id"]), "task-1", messages)
    after = stored(coll, doc["_id"])
    assert [w.partition(":")[0] for w in after["warnings"]] == [f"new {n}" for n in range(50, 150)]
    assert_bounded(after)
    assert len(bson.encode(after)) < MIB


def test_a_single_17_mib_warning_and_step_are_cut(coll):
    doc = insert(coll, S.RUNNING)
    assert transitions.add_warnings(at(coll, doc["_id"]), "task-1", [HUGE])
    assert transitions.set_step(at(coll, doc["_id"]), "task-1", HUGE)
    after = stored(coll, doc["_id"])
    assert after["warnings"][-1].startswith("hhh") and after["warnings"][0] == "old warning 1"
    assert after["current_process_step"].startswith("hhh")
    assert_bounded(after)


def test_a_failure_with_300_messages_of_100_kib_keeps_the_last_100(coll):
    doc = insert(coll, S.RUNNING, errors=[])
    errors = [f"error {n}: {'e' * 100 * KIB}" for n in range(300)]  # 30 MiB
    assert transitions.complete(at(coll, doc["_id"]), "task-1", S.FAILURE,
                                message="; ".join(errors), errors=errors)
    after = stored(coll, doc["_id"])
    assert after["process_status"] == "FAILURE"
    assert [e.partition(":")[0] for e in after["errors"]] == [f"error {n}" for n in range(200, 300)]
    assert after["last_status_message"].startswith("error 0: eee")
    assert_bounded(after)
    assert len(bson.encode(after)) < MIB


def _fail_run(coll, pk):
    return transitions.fail_run(at(coll, pk), "task-1", "crunch", HUGE)


def _back_to_pending(coll, pk):
    return transitions.back_to_pending(at(coll, pk), "task-1", message=HUGE, warning=HUGE)


def _reclaim(coll, pk):
    lost = {"worker_instance": "w-1", "worker_pid": 11}
    return transitions.reclaim(at(coll, pk), "task-1", lost, transitions.WorkerRef("h", "w-2", 12),
                               HUGE)


def _abandon_join(coll, pk):
    return transitions.abandon_join(at(coll, pk), "task-1", warning=HUGE)


@pytest.mark.parametrize("write", [_fail_run, _back_to_pending, _reclaim, _abandon_join],
                         ids=lambda w: w.__name__.strip("_"))
def test_every_write_that_pushes_keeps_the_last_100_and_cuts_its_texts(coll, write):
    doc = insert(coll, S.RUNNING, joining=True)
    assert write(coll, doc["_id"])
    after = stored(coll, doc["_id"])
    pushed = "errors" if write is _fail_run else "warnings"
    assert len(after[pushed]) == MAX_LIST_ENTRIES
    assert after[pushed][0].endswith(" 1")  # the oldest went
    assert HUGE[:100] in after[pushed][-1]
    assert_bounded(after)


class LandsThenRaises:
    """A collection whose updates land, then report a lost write concern (ambiguous)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.name = real.name

    def update_one(self, *args: Any, **kwargs: Any) -> None:
        self.real.update_one(*args, **kwargs)
        raise WriteConcernError("waiting for replication timed out", 64, {})

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.find_one(*args, **kwargs)


AMBIGUOUS_WRITES = {
    "fail_run": lambda t: transitions.fail_run(t, "task-1", "crunch", HUGE),
    "complete": lambda t: transitions.complete(t, "task-1", S.FAILURE, message=HUGE,
                                               errors=[HUGE] * 150),
    "back_to_pending": lambda t: transitions.back_to_pending(t, "task-1", message=HUGE,
                                                             warning=HUGE),
    "set_step": lambda t: transitions.set_step(t, "task-1", HUGE),
    "add_warnings": lambda t: transitions.add_warnings(t, "task-1", [HUGE] * 150),
}


@pytest.mark.parametrize("name", AMBIGUOUS_WRITES)
def test_an_ambiguous_write_of_a_cut_text_is_known_to_have_landed(coll, name):
    """After an ambiguous error the write re-reads the document: it must recognise its
    texts as stored, cut, or it would take a write that landed for one that did not."""
    doc = insert(coll, S.RUNNING)
    target = transitions.Target(LandsThenRaises(coll), {"_id": doc["_id"]})
    assert AMBIGUOUS_WRITES[name](target) is True
    assert_bounded(stored(coll, doc["_id"]))


def test_every_status_field_at_its_bound_leaves_room_for_the_users_fields():
    """The worst case procstatus itself can store: every text and list at its bound, the
    largest arguments and a full call queue."""
    text = "€" * MAX_TEXT_BYTES  # 3 bytes each: cut to the limit
    arguments = {"args": ["a" * (MAX_STORED_ARGUMENT_BYTES - 40)], "kwargs": {}}
    assert MAX_STORED_ARGUMENT_BYTES - 40 < len(bson.encode(arguments)) <= (
        MAX_STORED_ARGUMENT_BYTES)  # the largest arguments a document may store
    worst = {
        "current_process_step": cut(text),
        "last_status_message": cut(text),
        "errors": [cut(text)] * MAX_LIST_ENTRIES,
        "warnings": [cut(text)] * MAX_LIST_ENTRIES,
        "process_arguments": arguments,
        "call_queue": [{"id": "x" * 36, "process": "p" * 64, **arguments,
                        "queued_at": LONG_AGO}] * MAX_QUEUED_CALLS,
    }
    assert len(bson.encode(worst)) < MONGODB_LIMIT // 2


# --- arguments: bounded as the message carries them and as the document stores them ----


def test_a_list_of_small_numbers_small_as_json_but_large_as_stored_is_refused():
    numbers = [0] * 20_000  # 60 KB as JSON, 220 KB as BSON
    assert len(json.dumps([[numbers], {}])) <= MAX_ARGUMENT_BYTES
    with pytest.raises(ValueError) as refused:
        check_arguments("X.m", [numbers], {})
    message = str(refused.value)
    assert "arguments of X.m() are" in message and "as stored on the document" in message
    assert f"over the {MAX_STORED_ARGUMENT_BYTES}-byte limit" in message
    assert "pass its id instead" in message


def test_an_integer_mongodb_cannot_store_is_refused_by_name():
    with pytest.raises(TypeError, match=r"arguments of X\.m\(\) cannot be stored in MongoDB"):
        check_arguments("X.m", [2**70], {})


class Queued(Proc):
    meta = {"collection": "bounds_queued"}

    @process(is_blocking=False)
    def append(self, values: list[int]) -> None:
        """Never runs here: every call waits behind a run that never ends."""


def largest_numbers() -> list[int]:
    """The longest list of small numbers a call may carry: the stored bound decides."""
    numbers = [0] * 20_000
    while True:
        try:
            check_arguments("X.m", [numbers], {})
            return numbers
        except ValueError:
            numbers = numbers[: len(numbers) * 9 // 10]


def test_a_full_queue_of_the_largest_calls_stays_inside_mongodbs_limit(test_db, publisher):
    """A full queue of the largest calls, the last two made through the call itself.

    Before the stored bound, 64 KB of JSON could hold 20,000 small numbers, 220 KB as
    BSON: a queue of them passed 16 MB and the caller got MongoDB's error instead of a
    clear one (the test above). The 98 calls before are written directly, as the queue
    stores them: made one by one they would take a minute on the test server.
    """
    numbers = largest_numbers()
    queued = [{"id": f"q-{n}", "process": "append", "args": [numbers], "kwargs": {},
               "queued_at": LONG_AGO} for n in range(MAX_QUEUED_CALLS - 2)]
    busy = Queued.create()
    Queued._get_collection().update_one(
        {"_id": busy.pk},
        {"$set": {"process_status": "RUNNING", "celery_task_id": "t", "call_queue": queued}},
    )
    busy.append(numbers)
    busy.append(numbers)
    with pytest.raises(CallQueueFull):
        busy.append(numbers)
    stored_document = Queued._get_collection().find_one({"_id": busy.pk})
    assert len(stored_document["call_queue"]) == MAX_QUEUED_CALLS
    assert len(bson.encode(stored_document)) < MONGODB_LIMIT // 2
    assert publisher.calls == []


# --- the sweeper goes on past a document it cannot write --------------------------------

ALIAS = "bounds-sweep"


class SweptA(Proc):
    meta = {"collection": "bounds_swept_a", "db_alias": ALIAS}

    @process
    def crunch(self) -> None:
        """Never runs here: the documents are written as a lost worker leaves them."""


class SweptB(Proc):
    meta = {"collection": "bounds_swept_b", "db_alias": ALIAS}

    @process
    def crunch(self) -> None:
        """As :class:`SweptA`."""


@pytest.fixture
def swept(mongodb_uri: str, fresh_db_name: str, publisher) -> Iterator[None]:
    mongoengine.connect(db=fresh_db_name, host=mongodb_uri, alias=ALIAS)
    for cls in (SweptA, SweptB):
        cls._collection = None  # a new database each test
    try:
        yield
    finally:
        mongoengine.disconnect(alias=ALIAS)
        for cls in (SweptA, SweptB):
            cls._collection = None


def lost_run(cls: type[Proc], status: ProcessStatus, blob_bytes: int = 0) -> Any:
    """A run as a lost worker leaves it, long ago; ``blob_bytes`` of a user's own field."""
    document: dict[str, Any] = {
        "_id": ObjectId(),
        "process_status": status.value,
        "current_process": "crunch",
        "celery_task_id": f"task-{ObjectId()}",
        "worker_instance": "gone" if status is S.RUNNING else None,
        "status_changed_at": LONG_AGO,
        "start_time": LONG_AGO,
        "errors": [],
        "warnings": [],
    }
    if blob_bytes:
        # Just under MongoDB's limit: the sweeper's FAILURE write pushes it over.
        room = MONGODB_LIMIT - len(bson.encode({**document, "blob": ""})) - 64
        document["blob"] = "b" * room
    cls._get_collection().insert_one(document)
    return document["_id"]


def status_of(cls: type[Proc], pk: Any) -> str:
    return cls._get_collection().find_one({"_id": pk}, {"process_status": 1})["process_status"]


def test_a_document_the_sweeper_cannot_write_is_counted_and_the_pass_goes_on(swept):
    full_running = lost_run(SweptA, S.RUNNING, blob_bytes=MONGODB_LIMIT)
    other_running = lost_run(SweptA, S.RUNNING)
    full_pending = lost_run(SweptA, S.PENDING, blob_bytes=MONGODB_LIMIT)
    other_pending = lost_run(SweptA, S.PENDING)
    next_class_running = lost_run(SweptB, S.RUNNING)

    report = sweeper.sweep(threshold=3, pending_timeout=3600, classes=[SweptA, SweptB])

    assert sorted(report.write_failed) == sorted(
        [f"SweptA({full_running})", f"SweptA({full_pending})"]
    )
    assert sorted(report.failed) == sorted([f"SweptA({other_running})",
                                            f"SweptB({next_class_running})"])
    assert report.never_started == [f"SweptA({other_pending})"]
    assert report.acted()
    assert status_of(SweptA, other_running) == status_of(SweptB, next_class_running) == "FAILURE"
    assert status_of(SweptA, other_pending) == "FAILURE"
    # The documents that could not be written are as they were: the next pass tries again.
    assert status_of(SweptA, full_running) == "RUNNING"
    assert status_of(SweptA, full_pending) == "PENDING"
