"""Text that procstatus logs or prints: connection strings with their password hidden.

No dependency beyond the standard library, so the datafix, the CLI and the worker's
wiring share it.
"""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(//[^:/@]*:)[^@/]*@")


def redact(uri: str | None) -> str:
    """``uri`` with any password replaced by ``***``, safe to log."""
    return _PASSWORD.sub(r"\1***@", uri or "")
