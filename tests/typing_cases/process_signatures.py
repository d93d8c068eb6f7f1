"""A user's module as mypy sees it: calls of @process methods are checked like the methods.

Lines ending in "error expected" must be mypy errors; every other line must pass.
tests/test_structure.py runs mypy on this file (it is never imported by pytest).
"""

from __future__ import annotations

from mongoengine import StringField

from procstatus import Proc, ProcessStatus, process


class Upload(Proc):
    path = StringField()

    @process
    def process_upload(self, path: str, *, lines: int = 0) -> ProcessStatus | None:
        return None

    @process(queue="reports", is_blocking=False)
    def report(self, title: str) -> None:
        pass


def calls(upload: Upload) -> None:
    upload.process_upload("a.csv")
    upload.process_upload("a.csv", lines=3)
    upload.report("monthly")
    nothing: None = upload.report("monthly")
    upload.process_upload(42)  # error expected
    upload.process_upload("a.csv", colour="red")  # error expected
    upload.report()  # error expected
    print(nothing)
