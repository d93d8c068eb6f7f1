"""Fixtures of the unit tests: a raw collection, the mongoengine connection and a fake publisher."""

from __future__ import annotations

import pytest

import procstatus.runtime
from tests.unit.fakes import FakePublisher


@pytest.fixture
def coll(mongo_client, fresh_db_name):
    """A raw pymongo collection in a database used by this test only."""
    return mongo_client[fresh_db_name]["x"]


@pytest.fixture
def publisher(monkeypatch):
    fake = FakePublisher()
    monkeypatch.setattr(procstatus.runtime.current, "run_task", fake)
    return fake
