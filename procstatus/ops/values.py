"""What an operator types and reads: status names, durations, ages, progress, JSON.

Pure functions over plain values (no database): the CLI and the dashboard parse what
is typed with them (:func:`parse_statuses`, :func:`parse_duration`, each raising
``ValueError`` with a sentence that its front end shows) and print with them
(:func:`fmt_age`, :func:`jsonable`). Times come from :mod:`procstatus.clock`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bson import ObjectId

from procstatus.clock import aware
from procstatus.status import COMPLETED, PROCESSING, ProcessStatus

STATUSES: tuple[str, ...] = tuple(s.value for s in ProcessStatus)
"""The six stored status strings, in lifecycle order."""
PROCESSING_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if ProcessStatus(s) in PROCESSING)
COMPLETED_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if ProcessStatus(s) in COMPLETED)


def seconds_since(moment: Any, now: datetime) -> float | None:
    when = aware(moment)
    return None if when is None else max(0.0, (now - when).total_seconds())


def rounded(value: float | None) -> float | None:
    """Seconds to one decimal, as the JSON outputs give them."""
    return None if value is None else round(value, 1)


def progress_fraction(done: Any, total: Any) -> float | None:
    """``done / total`` in [0, 1], or ``None`` when the total is unknown."""
    if not isinstance(done, int) or not isinstance(total, int) or total < 1:
        return None
    return min(1.0, max(0.0, done / total))


def jsonable(value: Any) -> Any:
    """``value`` with ObjectIds as strings and datetimes as ISO 8601 UTC, for ``json.dumps``."""
    if isinstance(value, datetime):
        return (aware(value) or value).isoformat().replace("+00:00", "Z")
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def fmt_age(seconds: float | None) -> str:
    """``12s``, ``4m05s``, ``2h05m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d`` → seconds; ``ValueError`` saying the form."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90, 30s, 10m, 2h or 1d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * unit


def parse_statuses(values: Sequence[str] | None) -> tuple[str, ...]:
    """Status names (any case, comma-separated too), or the groups ``processing`` /
    ``completed`` (and ``waiting``); in lifecycle order. ``ValueError`` names a bad one."""
    if not values:
        return STATUSES
    chosen: list[str] = []
    for value in values:
        for word in value.split(","):
            name = word.strip().upper()
            if name == "PROCESSING":
                chosen.extend(PROCESSING_STATUSES)
            elif name == "COMPLETED":
                chosen.extend(COMPLETED_STATUSES)
            elif name == "WAITING":
                chosen.append(ProcessStatus.WAITING_FOR_RESULT.value)
            elif name in STATUSES:
                chosen.append(name)
            else:
                raise ValueError(
                    f"{word!r} is not a status: use {', '.join(STATUSES)}, "
                    "processing or completed"
                )
    return tuple(s for s in STATUSES if s in chosen)
