"""The one input-error type of the operator layer, and how an error is said in one line.

Each front end translates these at its edge: the CLI prints the message on one line of
stderr (exit 2; exit 1 for :class:`NotFound`), the dashboard answers with an HTTP status
(404 for :class:`NotFound`, 400 for :class:`AmbiguousId`, 503 for the rest).
"""

from __future__ import annotations

import re


class OperatorError(Exception):
    """A problem the operator can fix: one line saying what was wrong and how to fix it."""


class NotFound(OperatorError):
    """An id that names no document (or a document gone meanwhile)."""


class AmbiguousId(NotFound):
    """An id that names documents of several classes: the class has to be named."""


def first_line(exc: BaseException) -> str:
    """The part of an error's text that says it, on one line.

    pymongo's message ends with a long topology description; the first part says it.
    """
    return re.split(r" \(configured timeouts|, Timeout:|\n", str(exc))[0][:300]
