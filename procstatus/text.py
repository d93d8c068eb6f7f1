"""Text that procstatus logs, prints or stores: connection strings with their password
hidden, and texts cut to a size a MongoDB document can always hold.

No dependency beyond the standard library, so the datafix, the CLI and the worker's
wiring share it.
"""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(//[^:/@]*:)[^@/]*@")

MAX_TEXT_BYTES = 4 * 1024
"""Most UTF-8 bytes of one text procstatus stores: a step, a message, an error, a warning."""

_SMALLEST_LIMIT = 64
"""Room for some text and the longest ending :func:`cut` may add."""


def redact(uri: str | None) -> str:
    """``uri`` with any password replaced by ``***``, safe to log."""
    return _PASSWORD.sub(r"\1***@", uri or "")


def cut(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``text`` if its UTF-8 encoding fits in ``limit`` bytes, else its beginning ending
    with ``… (N bytes cut)``, the whole at most ``limit`` bytes.

    The cut falls between characters, never inside one, and N counts the bytes of the
    original left out. A text within the limit is returned as it is (the same object);
    a cut one is stable (cutting it again changes nothing). Limit: the bytes are counted
    as UTF-8, which is how BSON stores a string; a lone surrogate (not encodable) is
    counted, and kept in a cut text, as ``?``.
    """
    if limit < _SMALLEST_LIMIT:
        raise ValueError(f"cut() limit must be at least {_SMALLEST_LIMIT} bytes, not {limit}")
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes: nothing to measure
        return text
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    # The ending is reserved for the largest N possible, so the real one always fits.
    keep = limit - len(_ending(len(encoded)).encode())
    while keep > 0 and encoded[keep] & 0xC0 == 0x80:  # a continuation byte: back off
        keep -= 1
    return encoded[:keep].decode("utf-8") + _ending(len(encoded) - keep)


def _ending(cut_bytes: int) -> str:
    return f"… ({cut_bytes} bytes cut)"
