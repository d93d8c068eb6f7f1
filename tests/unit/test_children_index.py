"""A parent whose children() no index serves is told so once, with the index to declare.

Every child's end asks "is any other child still processing?" (``children()`` plus a
``process_status`` condition). Without an index that begins with the children() fields
and ``process_status``, that question reads through the parent's children (or the whole
collection) at every child's end: quadratic work per parent.
"""

from __future__ import annotations

import logging

import pytest
from mongoengine import IntField, StringField

from procstatus import Proc, join


class IndexedChild(Proc):
    meta = {"collection": "unit_indexed_children", "indexes": [("batch", "process_status")]}
    batch = IntField()


class UnindexedChild(Proc):
    meta = {"collection": "unit_unindexed_children", "indexes": ["batch"]}
    batch = IntField()


class ParentOfIndexed(Proc):
    meta = {"collection": "unit_parents_of_indexed"}
    name = StringField()

    def children(self):
        return IndexedChild.objects(batch=7)


class ParentOfUnindexed(Proc):
    meta = {"collection": "unit_parents_of_unindexed"}
    name = StringField()

    def children(self):
        return UnindexedChild.objects(batch=7)


@pytest.fixture(autouse=True)
def _checked_afresh(test_db):
    join._children_index_checked.clear()
    yield
    join._children_index_checked.clear()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "index" in r.getMessage()]


def test_children_without_a_serving_index_warn_once_naming_the_index(caplog):
    parent = ParentOfUnindexed.create(name="p")
    UnindexedChild.create(batch=7)
    with caplog.at_level(logging.WARNING, logger="procstatus"):
        assert join.any_child_processing(parent) is False
        assert join.any_child_processing(parent) is False
    [message] = _warnings(caplog)
    assert "ParentOfUnindexed.children()" in message
    assert "('batch', 'process_status')" in message
    assert "UnindexedChild.meta['indexes']" in message


def test_children_with_a_compound_index_do_not_warn(caplog):
    parent = ParentOfIndexed.create(name="p")
    IndexedChild.create(batch=7)
    with caplog.at_level(logging.WARNING, logger="procstatus"):
        assert join.any_child_processing(parent) is False
    assert _warnings(caplog) == []
