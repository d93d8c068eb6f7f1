"""What the ``procstatus`` commands share: exit codes, output (tables' styles, lines on
stdout and stderr, JSON), the options every command takes, and the edge where the
operator layer's errors become one line on stderr and an exit code.

Parsing and formatting that the dashboard shares live in :mod:`procstatus.ops.values`;
here they only become typer's ``BadParameter`` (a usage error, exit 2).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.text import Text

from procstatus.ops import values
from procstatus.ops.actions import Tally
from procstatus.ops.errors import OperatorError, first_line
from procstatus.ops.session import Session

EXIT_OK = 0
EXIT_ATTENTION = 1
EXIT_USAGE = 2

STATUS_STYLE = {
    "READY": "dim",
    "PENDING": "yellow",
    "RUNNING": "cyan",
    "WAITING_FOR_RESULT": "blue",
    "SUCCESS": "green",
    "FAILURE": "bold red",
}
SHORT_STATUS = {"WAITING_FOR_RESULT": "WAITING"}

F = TypeVar("F", bound=Callable[..., Any])

ClassOption = Annotated[
    str | None, typer.Option("--class", "-c", metavar="C", help="class (or collection) name")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


def interactive() -> bool:
    """Whether to ask before writing (stdin is a terminal)."""
    return sys.stdin.isatty()


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    sized = stream.isatty() or os.environ.get("COLUMNS", "").isdigit()
    return Console(stderr=stderr, highlight=False, width=None if sized else 160)


def say(text: str) -> None:
    typer.echo(text)


def warn(text: str) -> None:
    typer.echo(text, err=True)


def json_out(data: Any) -> None:
    typer.echo(json.dumps(values.jsonable(data), indent=2))


def tally() -> Tally:
    """The outcomes of a command over several ids: done writes on stdout, refusals (and
    ids not found) on stderr."""
    return Tally(say, warn)


def tally_code(counted: Tally) -> int:
    """1 when any write was refused, else 0."""
    return EXIT_ATTENTION if counted.refused else EXIT_OK


def handles_errors(command: F) -> F:
    """The CLI's edge: an :class:`~procstatus.ops.errors.OperatorError` or a MongoDB
    error becomes one line on stderr and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OperatorError as exc:
            warn(f"error: {exc}")
            raise typer.Exit(EXIT_USAGE) from None
        except PyMongoError as exc:
            warn(
                f"error: MongoDB failed: {type(exc).__name__}: {first_line(exc)}. "
                "Check that the server runs and answers, then retry."
            )
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper  # type: ignore[return-value]


def session_of(ctx: typer.Context) -> Session:
    """The session the global options made (:func:`procstatus.cli.options`)."""
    session = ctx.obj
    assert isinstance(session, Session)
    return session


# --- formatting ------------------------------------------------------------------------


def fmt_progress(done: int | None, total: int | None, width: int = 10) -> str:
    """``██████░░░░  60% 6/10``; just the count when the total is unknown; ``''`` if none."""
    if done is None:
        return ""
    fraction = values.progress_fraction(done, total)
    if fraction is None:
        return f"{done} done"
    filled = round(fraction * width)
    return f"{'█' * filled}{'░' * (width - filled)} {fraction * 100:3.0f}% {done}/{total}"


def fmt_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def styled(status: str | None, short: bool = False) -> Text:
    text = status or "-"
    return Text(SHORT_STATUS.get(text, text) if short else text, style=STATUS_STYLE.get(text, ""))


def one_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d`` → seconds (:func:`values.parse_duration`)."""
    try:
        return values.parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_statuses(names: Sequence[str] | None) -> tuple[str, ...]:
    """Status names (any case), or the groups ``processing`` / ``completed``."""
    try:
        return values.parse_statuses(names)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
