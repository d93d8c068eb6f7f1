"""Makes ``time.sleep`` work in a Python process run under libfaketime's ``FAKETIME``.

Only processes that ``tests.support.skew.skewed_env`` starts have this directory on
``PYTHONPATH``, so only they import it (Python imports ``sitecustomize`` at start-up,
before any module could bind ``from time import sleep``).

Why it is needed (libfaketime 0.9.10, Debian 12, Python 3.11): with
``FAKETIME_DONT_FAKE_MONOTONIC=1`` — the only setting under which a Celery worker's timed
waits work, see ``tests/test_clock_skew.py`` — libfaketime still rewrites the absolute
deadline that Python 3.11's ``time.sleep`` hands to
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...)`` as if it were a faked wall-clock
time, and the kernel answers ``EINVAL``: every ``time.sleep`` raises ``OSError``. A
relative ``select()`` timeout is not rewritten, and waits exactly as long.
"""

from __future__ import annotations

import os
import select
import time

if os.environ.get("FAKETIME"):

    def _sleep(seconds: float) -> None:
        """``time.sleep`` through ``select()``'s relative timeout (retried on EINTR)."""
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        select.select([], [], [], seconds)

    time.sleep = _sleep
