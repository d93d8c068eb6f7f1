"""Proc subclasses whose processes write more than a MongoDB document can hold.

Each body builds its large text on the worker, so the message stays small: what is
tested is what procstatus writes for it.
"""

from __future__ import annotations

from procstatus import Proc, process


class Bulky(Proc):
    meta = {"collection": "bulky"}

    @process
    def add_warnings(self, count: int, size: int) -> None:
        """Adds ``count`` warnings of ``size`` characters each, one call each, then returns."""
        for number in range(count):
            prefix = f"warning {number}: "
            self.warning(prefix + "w" * (size - len(prefix)))

    @process
    def raise_huge(self, size: int) -> None:
        """Raises a ``ValueError`` whose message is ``size`` characters long."""
        raise ValueError("first line of a huge message\n" + "x" * size)

    @process
    def set_huge_step(self, size: int) -> None:
        """Sets a step of ``size`` characters, then returns."""
        self.set_process_step("s" * size)
