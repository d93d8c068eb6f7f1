"""Test doubles shared by the unit tests."""

from __future__ import annotations

from types import SimpleNamespace


class FakePublisher:
    """Stands in for the generic Celery task: records apply_async calls, optionally fails."""

    def __init__(self, error=None):
        self.calls = []
        self.error = error
        self.app = SimpleNamespace(conf=SimpleNamespace(task_always_eager=False))

    def apply_async(self, args=None, kwargs=None, **options):
        self.calls.append({"args": args, "kwargs": kwargs, **options})
        if self.error is not None:
            raise self.error
