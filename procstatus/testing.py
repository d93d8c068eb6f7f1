"""Testing your own Proc subclasses: processes run inline, in the test process, same writes.

Celery's eager mode (``task_always_eager``) runs a task inside ``apply_async``. procstatus
honours it: calling a process runs it to its end before the call returns — claim, the
method, its hooks, the final write, its children and their parent's join — through the
same conditional writes a worker makes, and the caller's copy shows the final status::

    from procstatus.testing import run_inline

    def test_an_empty_upload_fails(mongodb):          # your own connection fixture
        upload = Upload.create(path="empty.csv", lines=[])
        with run_inline():
            upload.process_upload()
        assert upload.process_status is ProcessStatus.FAILURE
        assert upload.errors == ["empty.csv is empty"]

With pytest, the ``procstatus_inline`` fixture does the same for a whole test; this
module is registered as a pytest plugin when procstatus is installed, and its fixture is
used only where a test asks for it.

Limits, since no worker is involved: time limits, heartbeats and lost pool processes do
not apply; a retry runs at once, without its countdown; a child called from its parent's
process runs inside that call; an exception raised by a process is recorded on the
document (as on a worker), not raised to the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from procstatus import runtime

if TYPE_CHECKING:
    from celery import Celery


def installed_app() -> Celery:
    """The Celery app that :func:`procstatus.install` was called with in this process."""
    return runtime.current.app(
        "procstatus.testing (import the module that defines your Celery app in the test, "
        "or in its conftest.py)"
    )


@contextmanager
def run_inline(app: Celery | None = None) -> Iterator[Celery]:
    """Within the block, process calls on ``app`` (default: the installed app) run inline."""
    app = app if app is not None else installed_app()
    saved: dict[str, Any] = {
        "task_always_eager": app.conf.task_always_eager,
        "task_eager_propagates": app.conf.task_eager_propagates,
    }
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = False  # a failure is recorded, as on a worker
    try:
        yield app
    finally:
        app.conf.update(saved)


@pytest.fixture
def procstatus_inline() -> Iterator[Celery]:
    """For one test: every process call runs inline (see :func:`run_inline`)."""
    with run_inline() as app:
        yield app
