"""Time as procstatus reads it: aware UTC datetimes.

pymongo returns naive UTC datetimes unless its client is ``tz_aware``; :func:`aware`
turns what it returns into an aware one, so times read back compare with
:func:`utcnow`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def utcnow() -> datetime:
    """This process's clock, as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def aware(moment: Any) -> datetime | None:
    """``moment`` as an aware UTC datetime; ``None`` when it is not a datetime."""
    if not isinstance(moment, datetime):
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment
