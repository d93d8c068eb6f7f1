"""Running a test's process with its wall clock off by a fixed offset (libfaketime).

:func:`skewed_env` is the environment that moves a process's wall clock (``time.time``,
``datetime.now``) by ``offset`` seconds while its monotonic clock stays true, which is what
two hosts whose clocks disagree look like. Debian's ``faketime`` package provides the
library; ``scripts/bootstrap.sh`` installs it.

The setting, found by trying each on this machine (libfaketime 0.9.10, glibc 2.36,
Python 3.11) — see ``tests/test_clock_skew.py`` for the figures:

- libfaketime's default also fakes ``CLOCK_MONOTONIC`` (as the faked wall-clock time, an
  epoch-sized value). Python's timed lock waits (``threading.Event.wait``,
  ``Lock.acquire(timeout=…)``, ``queue.Queue.get(timeout=…)``) hand that value as an
  absolute deadline to ``sem_clockwait``, which libfaketime does not intercept: the wait
  does not end for decades. A Celery worker there beats once and never again.
- ``FAKETIME_DONT_FAKE_MONOTONIC=1`` keeps the monotonic clock true, so those waits work,
  but ``time.sleep`` fails with ``EINVAL`` (see ``faketime_site/sitecustomize.py``),
  which this module's environment puts on ``PYTHONPATH`` to repair.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

SITE_DIR = Path(__file__).resolve().parent / "faketime_site"


def libfaketime() -> Path | None:
    """Debian's ``libfaketime.so.1`` (``apt-get install faketime``), or ``None``."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return Path(found[0]) if found else None


def skewed_env(offset: int) -> dict[str, str]:
    """Environment for a Python process whose wall clock is ``offset`` seconds off."""
    library = libfaketime()
    if library is None:
        raise RuntimeError(
            "libfaketime is not installed: run ./scripts/bootstrap.sh as root (it runs "
            "apt-get install faketime), or apt-get install faketime yourself"
        )
    path = [str(SITE_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        "LD_PRELOAD": str(library),
        "FAKETIME": f"{offset:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": os.pathsep.join(path),
    }
