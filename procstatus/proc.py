"""``Proc``: the class users subclass. A document whose processes run on Celery workers.

Subclass it, add your own fields and ``meta`` (the base indexes on ``process_status``
are kept), and decorate methods with :func:`procstatus.process`. Its status fields,
reads and in-run writes are :class:`procstatus.document.ProcDocument`'s; this class adds
what needs the machinery that ends runs (:mod:`procstatus.endings`), which itself works
on ``ProcDocument``, so the imports run one way.
"""

from __future__ import annotations

from procstatus import endings
from procstatus.document import ProcDocument


class Proc(ProcDocument):
    """A document whose processes run on Celery workers and whose status is always stored."""

    meta = {"abstract": True}

    def cancel(self, terminate: bool = False) -> bool:
        """End the process under way as FAILURE "cancelled"; ``False`` if none was.

        A PENDING process never runs: its message is revoked and, should a worker get it
        anyway, the claim fails. A RUNNING process is killed with ``terminate=True``;
        without, it is marked cancelled at once and stops at its next
        ``set_process_step()`` or ``warning()``, and nothing it writes to its status
        afterwards is kept. A cancelled parent is not joined; a cancelled child's parent
        is told, and joins once its other children have ended.
        """
        return endings.cancel(self, terminate=terminate)
