"""``failCommand`` fail points on a MongoDB-protocol server started with test commands, and
a command listener that records which faults a client actually met.

A fail point is server-wide and one at a time (arming one replaces the last); ``appName``
aims it at the connections of one client, whose URI names that application, and
``skip`` lets that client's first matching commands through. The kinds here are the
ambiguous outcomes of a write at a failover:

- ``not-primary``: the server refuses the write, ``NotWritablePrimary`` (10107), labelled
  ``RetryableWriteError`` as mongod labels it on a retryable write: nothing was written;
- ``close``: the server drops the connection instead of running the command: the client
  cannot know whether it ran (here it did not);
- ``write-concern``: the write runs, and the reply carries a ``writeConcernError``
  (91, ``ShutdownInProgress``, labelled ``RetryableWriteError``): applied, its
  replication unconfirmed.

:class:`FaultRecorder` (a pymongo ``CommandListener``) appends one line per fault its
client met — ``"<command> <kind>"`` — to a Redis list named after the client's
``appName``, so a test checks that its fault was injected where it meant, in the test
process or in a worker's pool process alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import MongoClient, monitoring

KINDS: dict[str, dict[str, Any]] = {
    "not-primary": {"errorCode": 10107, "errorLabels": ["RetryableWriteError"]},
    "close": {"closeConnection": True},
    "write-concern": {
        "writeConcernError": {"code": 91, "errmsg": "Replication is being shut down"},
        "errorLabels": ["RetryableWriteError"],
    },
}


def arm(
    admin: MongoClient, command: str, kind: str, app_name: str, *, skip: int = 0
) -> None:
    """Fail the next ``command`` of the client named ``app_name`` (after ``skip`` of them)
    once, with ``kind``; replaces any fail point armed before."""
    mode: dict[str, int] = {"times": 1}
    if skip:
        mode["skip"] = skip
    admin.admin.command({
        "configureFailPoint": "failCommand",
        "mode": mode,
        "data": {"failCommands": [command], "appName": app_name, **KINDS[kind]},
    })


def disarm(admin: MongoClient) -> None:
    admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


def step_down(admin: MongoClient, seconds: int) -> None:
    """The server refuses writes (``NotWritablePrimary``) for ``seconds``, as a primary that
    stepped down does until an election; reads from a secondary still work."""
    admin.admin.command({"replSetStepDown": seconds, "force": True})


def seen_key(app_name: str) -> str:
    return f"procstatus-test:failover:seen:{app_name}"


def describe_failure(failure: Mapping[str, Any]) -> str:
    """``not-primary``, ``step-down``, ``close``, ``write-concern`` or what else the reply
    or the client's error says. (With retryable writes, pymongo reports a write whose reply
    carried a retryable ``writeConcernError`` as a failed command, with that error.)"""
    if failure.get("code") == 10107:
        # A refusal the fail point injected says so; a stepped-down server's does not.
        return "not-primary" if "failCommand" in str(failure.get("errmsg")) else "step-down"
    if failure.get("code") == 91 or "writeConcernError" in failure:
        return "write-concern"
    if failure.get("errtype") == "AutoReconnect" and "closed" in str(failure.get("errmsg")):
        return "close"
    return str(failure.get("codeName") or failure.get("errtype") or failure.get("code"))


class FaultRecorder(monitoring.CommandListener):
    """Records the faults met by the client it listens to, in Redis under its app name."""

    WRITES = frozenset({"update", "findAndModify", "insert", "delete"})

    def __init__(self, app_name: str, redis_url: str) -> None:
        self.app_name = app_name
        self.redis_url = redis_url
        self._redis: Any = None

    def _record(self, line: str) -> None:
        import redis

        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.redis_url, socket_timeout=2, socket_connect_timeout=1
            )
        self._redis.rpush(seen_key(self.app_name), line)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name in self.WRITES and "writeConcernError" in event.reply:
            self._record(f"{event.command_name} write-concern")

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if event.command_name in self.WRITES:
            self._record(f"{event.command_name} {describe_failure(event.failure)}")
