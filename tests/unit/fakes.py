"""Test doubles shared by the unit tests."""

from __future__ import annotations


class FakePublisher:
    """Stands in for the generic Celery task: records apply_async calls, optionally fails."""

    def __init__(self, error=None):
        self.calls = []
        self.error = error

    def apply_async(self, args=None, kwargs=None, **options):
        self.calls.append({"args": args, "kwargs": kwargs, **options})
        if self.error is not None:
            raise self.error
