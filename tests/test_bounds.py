"""Processes that write more than a MongoDB document can hold, on a real worker.

MongoDB refuses a document over 16 MiB. Whatever a process writes through procstatus —
warnings, a step, the message of the exception it raises — the run must still end with
its true status and exception type, and the stored document must stay small. Each
process builds its large text on the worker, so the message stays small.

The bounds are written out here (4 KiB a text, 100 entries a list) rather than imported,
so these tests ran, and failed, against the code before the bounds existed.
"""

from __future__ import annotations

from typing import Any

import bson
import pytest

from procstatus import ProcessStatus
from tests.support.bounds_models import Bulky

pytestmark = pytest.mark.integration

KIB = 1024
MIB = 1024 * KIB
TEXT_LIMIT = 4 * KIB
"""Most UTF-8 bytes of one stored text (``procstatus.text.MAX_TEXT_BYTES``)."""
LIST_LIMIT = 100
"""Most entries kept in ``errors`` and ``warnings`` (``transitions.MAX_LIST_ENTRIES``)."""
SMALL = 1 * MIB
"""What a whole stored document must stay under, whatever the process wrote."""


def raw_document(proc: Bulky) -> dict[str, Any]:
    stored = Bulky._get_collection().find_one({"_id": proc.pk})
    assert stored is not None
    return stored


def assert_cut(text: str, starts: str) -> None:
    assert text.startswith(starts)
    assert text.endswith(" bytes cut)")
    assert len(text.encode()) <= TEXT_LIMIT


def test_180_warnings_of_100_kib_end_in_success_with_the_last_100_kept(worker):
    proc = Bulky.create()
    proc.add_warnings(180, 100 * KIB)  # 18 MiB of warnings in all

    assert proc.block_until_complete(timeout=180) is ProcessStatus.SUCCESS
    stored = raw_document(proc)
    assert stored["errors"] == []
    assert stored["last_status_message"] == "Process add_warnings completed successfully"
    warnings = stored["warnings"]
    assert len(warnings) == LIST_LIMIT
    for number, warning in zip(range(180 - LIST_LIMIT, 180), warnings, strict=True):
        assert_cut(warning, f"warning {number}: www")
    assert len(bson.encode(stored)) < SMALL


def test_an_exception_with_a_17_mib_message_is_recorded_with_its_true_type(worker):
    proc = Bulky.create()
    proc.raise_huge(17 * MIB)

    assert proc.block_until_complete(timeout=180) is ProcessStatus.FAILURE
    stored = raw_document(proc)
    [error] = stored["errors"]
    assert_cut(error, "ValueError: first line of a huge message\nxxx")
    assert_cut(stored["last_status_message"], "Process raise_huge failed: ValueError: first line")
    assert len(bson.encode(stored)) < SMALL


def test_a_17_mib_step_is_cut_and_the_process_goes_on_to_success(worker):
    proc = Bulky.create()
    proc.set_huge_step(17 * MIB)

    assert proc.block_until_complete(timeout=180) is ProcessStatus.SUCCESS
    stored = raw_document(proc)
    assert stored["errors"] == []
    assert_cut(stored["current_process_step"], "sss")
    assert len(bson.encode(stored)) < SMALL
