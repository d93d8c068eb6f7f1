"""A Proc class for the CLI tests, run by their own worker (``tests.support.cli_app``).

It shows what the session's models do not: numeric progress, a process that fails once
and succeeds when retried, a message no worker takes, and a run on a worker the test kills.
"""

from __future__ import annotations

import os

from mongoengine import StringField

from procstatus import Proc, process
from tests.support.models import gate_key, redis_client, runs_key

CLI_QUEUE = os.environ.get("PROCSTATUS_TEST_QUEUE", "procstatus-tests") + "-cli"
DOOMED_QUEUE = CLI_QUEUE + "-doomed"
NOBODY_QUEUE = CLI_QUEUE + "-nobody"


class CliJob(Proc):
    meta = {"collection": "cli_jobs"}

    name = StringField()

    @process(queue=CLI_QUEUE)
    def crunch(self, total: int, hold_at: int) -> None:
        """Reaches ``hold_at`` of ``total``, waits for the test to open the gate, finishes."""
        redis_client().rpush(runs_key(self.pk), f"crunch:{os.getpid()}")
        self.set_process_step(f"crunching {total} chunks")
        self.set_progress(hold_at, total)
        if redis_client().blpop([gate_key(self.pk)], timeout=60) is None:
            raise TimeoutError("gate never opened")
        self.set_process_step("finishing")
        self.set_progress(total, total)

    @process(queue=CLI_QUEUE)
    def flaky(self, message: str) -> None:
        """Fails with ``message`` on its first run; succeeds when called again."""
        if redis_client().rpush(runs_key(self.pk), f"flaky:{message}") == 1:
            raise ValueError(message)

    @process(queue=DOOMED_QUEUE)
    def hang_on_doomed(self) -> None:
        redis_client().rpush(runs_key(self.pk), f"doomed:{os.getpid()}")
        self.set_process_step("hanging on a worker the test kills")
        redis_client().blpop([gate_key(self.pk)], timeout=120)

    @process(queue=NOBODY_QUEUE)
    def never_taken(self) -> None:
        """Its queue has no consumer: the run stays PENDING until the sweeper ends it."""
