"""Callers that release many threads at once, and the test's end of them.

A caller module (:mod:`tests.support.queue_caller`, :mod:`tests.support.race_caller`) hands
:func:`release_at_once` the call each thread makes; it starts the threads, prints ``ready``,
waits for a line on stdin, releases every thread at the same moment, then prints a JSON
list of how each call ended. :func:`run_callers` is the test's end: it starts such callers
in their own OS processes, releases them together once all are ready, and returns every
outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def release_at_once(call: Callable[..., str], arguments: Sequence[tuple[Any, ...]]) -> None:
    """``call(*args)`` in one thread per ``args``, all released by one line on stdin; each
    returns its outcome (an exception is reported as ``error: ...``)."""
    go = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(*args: Any) -> None:
        go.wait()
        try:
            outcome = call(*args)
        except Exception as exc:  # reported to the test, which fails on it
            outcome = f"error: {exc!r}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for thread in threads:
        thread.join(60)
    print(json.dumps(outcomes), flush=True)


def run_callers(
    module: str, argument_lists: Sequence[Sequence[str]], env: Mapping[str, str]
) -> list[str]:
    """Run ``python -m MODULE ARGS...`` once per argument list, with ``env`` added to this
    process's environment; release all of them once every one is ready (so the threads of
    every process start together); the outcomes of all, caller after caller."""
    callers = [
        subprocess.Popen(
            [sys.executable, "-m", module, *arguments],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, **env},
        )
        for arguments in argument_lists
    ]
    try:
        for caller in callers:
            assert caller.stdout is not None
            assert caller.stdout.readline().strip() == "ready"
        for caller in callers:
            assert caller.stdin is not None
            caller.stdin.write("go\n")
            caller.stdin.flush()
        outcomes: list[str] = []
        for caller in callers:
            out, _ = caller.communicate(timeout=60)
            outcomes += json.loads(out.strip().splitlines()[-1])
    finally:
        for caller in callers:
            caller.kill()
    return outcomes
