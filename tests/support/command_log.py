"""Counts MongoDB commands with pymongo command monitoring, in any process of the tests."""

from __future__ import annotations

import os
import threading

from pymongo import monitoring

IGNORED = frozenset({"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo"})


class CommandRecorder(monitoring.CommandListener):
    """Records ``(command, collection)`` of each started command while ``active``."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.active = path is not None
        self.commands: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.active or event.command_name in IGNORED:
            return
        collection = event.command.get(event.command_name)
        entry = (event.command_name, str(collection))
        with self._lock:
            self.commands.append(entry)
            if self.path:
                with open(self.path, "a") as log:
                    log.write(f"{os.getpid()} {entry[0]} {entry[1]}\n")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def install_from_environment() -> None:
    """In a worker: log every command to ``PROCSTATUS_TEST_COMMAND_LOG`` when it is set."""
    path = os.environ.get("PROCSTATUS_TEST_COMMAND_LOG")
    if path:
        monitoring.register(CommandRecorder(path))
