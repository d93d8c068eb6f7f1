"""What ``@process`` knows about one method, and what a call of it may carry.

A :class:`ProcessSpec` is attached to every decorated method; :func:`process_spec`
finds it again from a class and a method name (the caller, the worker and the sweeper
all ask). Arguments travel as JSON in the task's message, so :func:`check_arguments`
refuses, before anything is written, what JSON cannot carry or what is larger than
:data:`MAX_ARGUMENT_BYTES`; the worker checks the same bound again on what it receives.
They are also stored on the document as BSON (``process_arguments``, and each call
waiting in ``call_queue``), so they must fit :data:`MAX_STORED_ARGUMENT_BYTES` there too,
and be what MongoDB can store (integers of at most 8 bytes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bson
from bson.errors import InvalidDocument

MAX_ARGUMENT_BYTES = 64 * 1024
"""Largest JSON encoding of a call's arguments; bigger data belongs in the document."""

MAX_STORED_ARGUMENT_BYTES = MAX_ARGUMENT_BYTES + 1024
"""Largest BSON encoding of a call's arguments, as stored on the document: the JSON bound
plus 1 KiB of BSON's own framing. BSON stores every list index as a key, so a long list of
small numbers takes up to about four times its JSON size; with this bound the 100 calls a
queue may hold (``procstatus.callqueue.MAX_QUEUED_CALLS``) stay under 7 MB, well inside
MongoDB's 16 MB document limit."""

SPEC_ATTRIBUTE = "__procstatus_process__"
_STRICT_JSON = json.JSONEncoder(allow_nan=False)
"""``json.dumps(..., allow_nan=False)`` without building an encoder on every call."""


@dataclass(frozen=True)
class ProcessSpec:
    """What ``@process`` knows about one method."""

    name: str
    function: Callable[..., Any]
    is_child: bool = False
    queue: str | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    max_retries: int = 3
    retry_backoff: float = 1.0
    retry_backoff_max: float = 600.0
    retry_on_worker_lost: bool = False
    max_worker_losses: int | None = None
    """Lost workers a run may have and still be tried again; ``None``: ``install()``'s."""
    is_blocking: bool = True
    clear_queue_on_failure: bool = True
    priority: int | None = None

    def retry_countdown(self, retries_done: int) -> float:
        """Seconds before attempt ``retries_done + 2``: exponential, capped."""
        return float(min(self.retry_backoff * (2 ** retries_done), self.retry_backoff_max))

    def retries(self, exc: BaseException, retries_done: int) -> bool:
        """Whether ``exc``, raised by the process, is retried after ``retries_done`` retries."""
        return bool(self.autoretry_for) and isinstance(exc, self.autoretry_for) and (
            retries_done < self.max_retries
        )


def check_loss_cap(value: object) -> int:
    """``value`` as a cap on worker losses (``max_worker_losses``), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"max_worker_losses must be an int of 0 or more (how many times a run may lose "
            f"its worker and still be tried again), not {value!r}"
        )
    if value < 0:
        raise ValueError(
            f"max_worker_losses must be an int of 0 or more (0: the first lost worker ends "
            f"the run), not {value}"
        )
    return value


def process_spec(cls: type, name: str) -> ProcessSpec | None:
    """The spec of ``cls.name`` if it is a ``@process`` method, else ``None``."""
    attribute = getattr(cls, name, None)
    spec = getattr(attribute, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, ProcessSpec) else None


_non_blocking: dict[type, bool] = {}


def has_non_blocking(cls: type) -> bool:
    """Whether ``cls`` has a non-blocking process, so its documents may have waiting calls."""
    if cls not in _non_blocking:
        specs = (process_spec(cls, name) for name in dir(cls))
        _non_blocking[cls] = any(spec is not None and not spec.is_blocking for spec in specs)
    return _non_blocking[cls]


def check_arguments(owner: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the first argument that JSON cannot carry."""
    try:
        # The common case in one pass: every argument is encoded once, for the size.
        for value in (*args, *kwargs.values()):
            _require_str_keys(value)
        size = len(_STRICT_JSON.encode([list(args), kwargs]))
    except (TypeError, ValueError):
        _name_bad_argument(owner, args, kwargs)
        raise  # not reached: one of the arguments is the one that failed
    if size > MAX_ARGUMENT_BYTES:
        raise ValueError(
            f"arguments of {owner}() are {size} bytes as JSON, over the "
            f"{MAX_ARGUMENT_BYTES}-byte limit; store large data on a document and pass "
            "its id instead"
        )
    stored = _stored_size(owner, args, kwargs)
    if stored > MAX_STORED_ARGUMENT_BYTES:
        raise ValueError(
            f"arguments of {owner}() are {stored} bytes as stored on the document (BSON, "
            f"where every list item carries its index), over the {MAX_STORED_ARGUMENT_BYTES}"
            "-byte limit; store large data (long lists above all) on a document and pass "
            "its id instead"
        )


def _stored_size(owner: str, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """The BSON size of the arguments as the document stores them (``process_arguments``)."""
    try:
        return len(bson.encode({"args": list(args), "kwargs": kwargs}))
    except (OverflowError, InvalidDocument) as exc:
        raise TypeError(
            f"arguments of {owner}() cannot be stored in MongoDB ({exc}); integers must fit "
            "in 8 bytes (pass a larger one as a str) and dict keys must not contain NUL"
        ) from None


def _name_bad_argument(owner: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the first argument that JSON cannot carry (if any)."""
    named = [(f"positional argument {i}", v) for i, v in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            _require_str_keys(value)
            _STRICT_JSON.encode(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{label} of {owner}() is not JSON-serializable ({exc}); process "
                "arguments travel as JSON: pass str, int, float, bool, None, or lists "
                "and dicts of them (store anything bigger on the document)"
            ) from None


def _require_str_keys(value: Any) -> None:
    # json.dumps would turn {1: "a"} into {"1": "a"}: the method would get other data.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict key {key!r} is not a string")
            _require_str_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _require_str_keys(item)
