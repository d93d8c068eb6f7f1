"""The ``procstatus`` operator command (also ``python -m procstatus``).

``procstatus [-A MODULE] [--mongodb-uri URI] [--db NAME] COMMAND [OPTIONS]``

``-A MODULE`` imports the app module your workers load with ``celery -A``: it defines
the ``Proc`` classes and calls ``procstatus.install()``, whose MongoDB settings become
the defaults; ``--mongodb-uri`` (or ``MONGODB_URI``) and ``--db`` override them.
Without ``-A`` the read-only commands (status, list, show, workers, watch) work over the
collections of the database that hold ``process_status``, named after the collection;
the read-only path imports no Celery.

Every read goes through :mod:`procstatus.queries`; every status write through
:mod:`procstatus.transitions` (reset), :mod:`procstatus.endings` (cancel), a process
call (retry) or :mod:`procstatus.sweeper` (sweep). The session (what the global options
name) and the writes on one document live in :mod:`procstatus.operating`, shared with
the web dashboard (``procstatus dashboard``, :mod:`procstatus.dashboard`).

Exit codes: 0 fine; 1 something to look at (a refusal, failures, lost runs, silent
workers, an id not found); 2 usage or connection errors, in one line saying how to fix it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pymongo.errors import PyMongoError

try:
    import typer
    from rich.console import Console, Group, RenderableType
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text
except ModuleNotFoundError as missing:  # installed without the extra
    raise SystemExit(
        f"procstatus: the command needs {missing.name}, which is not installed: "
        "pip install 'procstatus[cli]'"
    ) from None

from procstatus import liveness, operating, queries
from procstatus.operating import (  # noqa: F401  (part of this module's interface)
    DEFAULT_URI,
    START_SERVER_HINT,
    NotFound,
    OperatorError,
    Session,
    fmt_age,
    redact,
)
from procstatus.operating import first_line as _first_line
from procstatus.queries import ListQuery, Row, Source
from procstatus.status import ProcessStatus

CliError = OperatorError
"""A problem the operator can fix: one line saying what was wrong and how to fix it."""

logger = logging.getLogger("procstatus")

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

app = typer.Typer(
    name="procstatus",
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _interactive() -> bool:
    """Whether to ask before writing (stdin is a terminal)."""
    return sys.stdin.isatty()


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    sized = stream.isatty() or os.environ.get("COLUMNS", "").isdigit()
    return Console(stderr=stderr, highlight=False, width=None if sized else 160)


def _say(text: str) -> None:
    typer.echo(text)


def _warn(text: str) -> None:
    typer.echo(text, err=True)


def _json_out(data: Any) -> None:
    typer.echo(json.dumps(queries.jsonable(data), indent=2))


class _Tally:
    """The exit code of a command that writes on several documents, and their lines: a done
    write on stdout, a refusal (or an id not found) on stderr, which makes the code 1."""

    def __init__(self) -> None:
        self.code = EXIT_OK

    def refuse(self, message: str) -> None:
        _warn(message)
        self.code = EXIT_ATTENTION

    def report(self, outcome: operating.Outcome) -> None:
        if outcome.ok:
            _say(outcome.message)
        else:
            self.refuse(outcome.message)

    def located(
        self, session: Session, ids: Sequence[str], class_name: str | None
    ) -> Iterator[tuple[Source, Any]]:
        """The document each id names, one at a time (so each line follows its own id);
        an id that names none, or several, is refused and skipped."""
        for text in ids:
            try:
                yield session.locate(text, class_name)
            except NotFound as exc:
                self.refuse(str(exc))


def handles_errors(command: F) -> F:
    """Turn :class:`CliError` and MongoDB errors into one line on stderr and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            _warn(f"error: {exc}")
            raise typer.Exit(EXIT_USAGE) from None
        except PyMongoError as exc:
            _warn(
                f"error: MongoDB failed: {type(exc).__name__}: {_first_line(exc)}. "
                "Check that the server runs and answers, then retry."
            )
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper  # type: ignore[return-value]


# --- formatting ------------------------------------------------------------------------


def fmt_progress(done: int | None, total: int | None, width: int = 10) -> str:
    """``██████░░░░  60% 6/10``; just the count when the total is unknown; ``''`` if none."""
    if done is None:
        return ""
    fraction = queries.progress_fraction(done, total)
    if fraction is None:
        return f"{done} done"
    filled = round(fraction * width)
    return f"{'█' * filled}{'░' * (width - filled)} {fraction * 100:3.0f}% {done}/{total}"


def fmt_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _styled(status: str | None, short: bool = False) -> Text:
    text = status or "-"
    return Text(SHORT_STATUS.get(text, text) if short else text, style=STATUS_STYLE.get(text, ""))


def _one_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d`` → seconds."""
    try:
        return operating.parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_statuses(values: Sequence[str] | None) -> tuple[str, ...]:
    """Status names (any case), or the groups ``processing`` / ``completed``."""
    try:
        return operating.parse_statuses(values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _session(ctx: typer.Context) -> Session:
    session = ctx.obj
    assert isinstance(session, Session)
    return session


# --- global options ----------------------------------------------------------------------


@app.callback()
def options(
    ctx: typer.Context,
    app_module: Annotated[
        str | None,
        typer.Option(
            "-A", "--app", metavar="MODULE",
            help="your app module (as for celery -A): its Proc classes and install() settings",
        ),
    ] = None,
    mongodb_uri: Annotated[
        str | None,
        typer.Option(
            "--mongodb-uri", envvar="MONGODB_URI", metavar="URI",
            help="MongoDB to use (default: install()'s, else mongodb://127.0.0.1:27017)",
        ),
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", metavar="NAME", help="database (default: install()'s)")
    ] = None,
    server_timeout: Annotated[
        float,
        typer.Option("--server-timeout", min=0.1, metavar="SECONDS",
                     help="how long to wait for the server"),
    ] = 3.0,
) -> None:
    """Look at and operate the process statuses of procstatus documents.

    Without -A, the read-only commands (status, list, show, workers, watch) work over the
    database's collections that hold process_status. Exit codes: 0 fine; 1 something to
    look at (a refusal, failures, lost runs, silent workers, an id not found); 2 usage or
    connection errors.
    """
    source = ctx.get_parameter_source("mongodb_uri")
    origin = "MONGODB_URI" if source is not None and source.name == "ENVIRONMENT" else (
        "--mongodb-uri"
    )
    ctx.obj = Session(
        app_module=app_module, mongodb_uri=mongodb_uri, uri_origin=origin, db_name=db,
        server_timeout=server_timeout,
    )


ClassOption = Annotated[
    str | None, typer.Option("--class", "-c", metavar="C", help="class (or collection) name")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


# --- status ------------------------------------------------------------------------------


@app.command()
@handles_errors
def status(
    ctx: typer.Context, class_name: ClassOption = None, as_json: JsonOption = False
) -> None:
    """Counts per class and status, the oldest PENDING and RUNNING, failures in the last hour.

    Exits 1 when any class had a failure in the last hour.
    """
    session = _session(ctx)
    sources = session.sources(class_name)
    now = queries.utcnow()
    rows = [queries.counts(source, now=now) for source in sources]
    code = EXIT_ATTENTION if any(r.failures_last_hour for r in rows) else EXIT_OK
    if as_json:
        _json_out(operating.status_json(session.connect().name, rows, session.skipped, now))
        raise typer.Exit(code)
    table = Table(title=f"process statuses in {session.connect().name}", title_justify="left")
    table.add_column("class", no_wrap=True)
    for name in queries.STATUSES:
        table.add_column(SHORT_STATUS.get(name, name), justify="right", style=STATUS_STYLE[name])
    table.add_column("oldest\nPENDING", justify="right")
    table.add_column("oldest\nRUNNING", justify="right")
    table.add_column("failed\nlast 1h", justify="right")
    for r in rows:
        table.add_row(
            r.name, *(str(r.counts[s]) for s in queries.STATUSES),
            fmt_age(queries.seconds_since(r.oldest_pending, now)),
            fmt_age(queries.seconds_since(r.oldest_running, now)),
            str(r.failures_last_hour),
        )
    if len(rows) > 1:
        table.add_section()
        table.add_row(
            "total", *(str(sum(r.counts[s] for r in rows)) for s in queries.STATUSES),
            "", "", str(sum(r.failures_last_hour for r in rows)),
        )
    _console().print(table)
    if session.skipped:
        _warn("not shown (no MongoDB connection for their db_alias here): "
              + ", ".join(session.skipped))
    raise typer.Exit(code)


# --- list --------------------------------------------------------------------------------


@app.command("list")
@handles_errors
def list_(
    ctx: typer.Context,
    status_: Annotated[
        list[str] | None,
        typer.Option(
            "--status", "-s", metavar="S",
            help="status (repeatable, or comma-separated; also processing, completed)",
        ),
    ] = None,
    class_name: ClassOption = None,
    process: Annotated[
        str | None, typer.Option("--process", "-p", metavar="P", help="current_process name")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", metavar="AGE", help="status unchanged for this long: 10m, 2h"),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option("--worker", "-w", metavar="W", help="worker instance id or hostname prefix"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100_000)] = 50,
    oldest_first: Annotated[
        bool, typer.Option("--oldest-first", help="oldest status change first")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Documents with their status, process, step, progress, worker, age and last error."""
    session = _session(ctx)
    query = ListQuery(
        statuses=parse_statuses(status_), process=process,
        older_than=parse_duration(older_than) if older_than is not None else None,
        worker=worker, limit=limit, oldest_first=oldest_first,
    )
    rows = queries.list_documents(session.sources(class_name), query)
    if as_json:
        _json_out([row.as_dict() for row in rows])
        return
    if not rows:
        _say("no document matches")
        return
    _console().print(_list_table(rows))
    if len(rows) == limit:
        _say(f"showing the first {limit} (--limit); more may match")


def _list_table(rows: Sequence[Row]) -> Table:
    """One row per document; the progress and last-error columns only when some row has one."""
    with_progress = any(r.progress_done is not None for r in rows)
    with_errors = any(r.errors for r in rows)
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("class", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("process", no_wrap=True)
    table.add_column("step")
    if with_progress:
        table.add_column("progress", no_wrap=True)
    table.add_column("worker")
    table.add_column("age", justify="right", no_wrap=True)
    if with_errors:
        table.add_column("last error")
    for r in rows:
        cells: list[RenderableType] = [
            str(r.id), r.cls, _styled(r.process_status), r.current_process or "",
            _one_line(r.current_process_step, 40),
        ]
        if with_progress:
            cells.append(fmt_progress(r.progress_done, r.progress_total))
        cells += [r.worker_hostname or "", fmt_age(r.age_s)]
        if with_errors:
            cells.append(_one_line(r.last_error))
        table.add_row(*cells)
    return table


# --- show --------------------------------------------------------------------------------


@app.command()
@handles_errors
def show(
    ctx: typer.Context,
    document_id: Annotated[str, typer.Argument(metavar="ID")],
    class_name: ClassOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every status field of one document, errors and warnings in full, and its children."""
    session = _session(ctx)
    try:
        source, pk = session.locate(document_id, class_name)
    except NotFound as exc:
        _warn(str(exc))
        raise typer.Exit(EXIT_ATTENTION) from None
    detail = queries.show(source, pk)
    if detail is None:
        _warn(f"{source.name}({document_id}) no longer exists")
        raise typer.Exit(EXIT_ATTENTION)
    detail["children"] = operating.children_summary(source, pk)
    if as_json:
        _json_out(detail)
        return
    _print_detail(detail)


def _print_detail(detail: dict[str, Any]) -> None:
    out = _console()
    status_text = _styled(detail["process_status"])
    title = Text.assemble(
        (f"{detail['class']} {detail['id']}", "bold"), f"  (collection {detail['collection']})"
    )
    out.print(title)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    grid.add_row("process_status", Text.assemble(status_text, f"  for {fmt_age(detail['age_s'])}"))
    for name in ("current_process", "current_process_step"):
        grid.add_row(name, detail[name] or "-")
    grid.add_row(
        "progress", fmt_progress(detail["progress_done"], detail["progress_total"]) or "-"
    )
    grid.add_row("last_status_message", detail["last_status_message"] or "-")
    grid.add_row("process_arguments", json.dumps(queries.jsonable(detail["process_arguments"])))
    for name in ("create_time", "start_time", "complete_time", "status_changed_at"):
        grid.add_row(name, fmt_time(detail[name]))
    for name in ("worker_hostname", "worker_instance", "worker_pid", "celery_task_id"):
        grid.add_row(name, "-" if detail[name] is None else str(detail[name]))
    grid.add_row("joining", "yes" if detail["joining"] else "no")
    queue = detail["call_queue"]
    grid.add_row("call_queue", f"{len(queue)} call(s) waiting" if queue else "empty")
    for call in queue:
        grid.add_row("", json.dumps(queries.jsonable(call)))
    out.print(grid)
    for name in ("errors", "warnings"):
        messages = detail[name]
        out.print(Text(f"{name} ({len(messages)})" + (":" if messages else ""), style="bold"))
        for message in messages:
            out.print(Text("  " + message.replace("\n", "\n  ")), soft_wrap=True)
    children = detail.get("children")
    if children:
        if "error" in children:
            out.print(Text(f"children: {children['error']}", style="yellow"))
        else:
            counts = children["counts"]
            line = "  ".join(f"{s} {counts[s]}" for s in queries.STATUSES)
            out.print(Text(f"children ({children['class']}, {sum(counts.values())}): {line}"))


# --- cancel ------------------------------------------------------------------------------


@app.command()
@handles_errors
def cancel(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(metavar="ID...")],
    terminate: Annotated[
        bool, typer.Option("--terminate", help="kill the worker process running it (SIGKILL)")
    ] = False,
    class_name: ClassOption = None,
) -> None:
    """End the processes under way as FAILURE "cancelled" (see Proc.cancel).

    Exits 1 when a document was not processing or not found.
    """
    session = _session(ctx)
    session.require_classes("cancel")
    tally = _Tally()
    for source, pk in tally.located(session, ids, class_name):
        tally.report(operating.cancel_document(source, pk, terminate=terminate))
    raise typer.Exit(tally.code)


# --- reset -------------------------------------------------------------------------------


@app.command()
@handles_errors
def reset(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(metavar="ID...")],
    to: Annotated[str, typer.Option("--to", metavar="READY", help="the only target: READY")] = (
        "READY"
    ),
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="reset a document under way too (its run's later writes are then refused)",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask on a terminal")] = False,
    class_name: ClassOption = None,
) -> None:
    """Operator override: set documents back to READY (transitions.reset).

    Clears the run's step, errors, warnings, progress and task id; domain fields and
    waiting calls are untouched. A document under way is refused unless --force. Each
    reset is logged (logger "procstatus"). Exits 1 when any document was refused.
    """
    if to.upper() != ProcessStatus.READY.value:
        raise typer.BadParameter(
            f"{to!r}: reset goes to READY only (the state machine's one operator override)",
            param_hint="--to",
        )
    session = _session(ctx)
    from procstatus import transitions

    tally = _Tally()
    plan: list[tuple[Source, Any, str]] = []
    for source, pk in tally.located(session, ids, class_name):
        state = transitions.read_state(source.collection, pk) or {}
        refusal = operating.reset_refusal(
            source, pk, state, force=force,
            hint="Cancel it first (procstatus cancel), or pass --force",
        )
        if refusal is not None:
            tally.refuse(refusal)
        else:
            plan.append((source, pk, str(state.get("process_status"))))
    if plan and _interactive() and not yes:
        for source, pk, current in plan:
            _say(f"  {source.name}({pk}): {current} → READY")
        if not typer.confirm(f"Reset {len(plan)} document(s) to READY?", default=False):
            _warn("nothing reset")
            raise typer.Exit(EXIT_ATTENTION)
    for source, pk, _current in plan:
        tally.report(operating.reset_document(source, pk, force=force))
    raise typer.Exit(tally.code)


# --- retry -------------------------------------------------------------------------------


@app.command()
@handles_errors
def retry(
    ctx: typer.Context,
    class_name: Annotated[
        str, typer.Option("--class", "-c", metavar="C", help="class whose failures to retry")
    ],
    process: Annotated[
        str | None, typer.Option("--process", "-p", metavar="P", help="only this process")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100_000)] = 100,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be called")] = False,
) -> None:
    """Call the failed process again, with its stored arguments, on FAILURE documents.

    Oldest failures first, at most --limit; run it again for the next ones. Exits 1 when
    a call was refused.
    """
    session = _session(ctx)
    session.require_classes("retry")
    sources = session.sources(class_name)
    if len(sources) > 1:
        raise CliError(f"--class {class_name} names {', '.join(s.name for s in sources)}")
    source = sources[0]
    query = ListQuery(
        statuses=(ProcessStatus.FAILURE.value,), process=process, limit=limit, oldest_first=True
    )
    matching = queries.count_matching(source, query)
    rows = queries.list_documents([source], query)
    what = f"FAILURE document(s) of {source.name}" + (f" ({process})" if process else "")
    if not rows:
        _say(f"no {what}")
        return
    _say(f"{matching} {what}; {'would retry' if dry_run else 'retrying'} {len(rows)}")
    tally = _Tally()
    for row in rows:
        plan = operating.plan_retry(source, row.id, row.current_process)
        if isinstance(plan, str):
            tally.refuse(plan)
        elif dry_run:
            _say(f"would call {plan.describe()}")
        else:
            tally.report(plan.call())
    raise typer.Exit(tally.code)


# --- sweep -------------------------------------------------------------------------------


@app.command()
@handles_errors
def sweep(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report only; write nothing")] = False,
    as_json: JsonOption = False,
    threshold: Annotated[
        str | None,
        typer.Option("--threshold", metavar="AGE", help="worker silence that means lost "
                     "(default: install()'s heartbeat threshold)"),
    ] = None,
    pending_timeout: Annotated[
        str,
        typer.Option("--pending-timeout", metavar="AGE",
                     help="fail PENDING runs no worker took for this long; 'off' to skip"),
    ] = "6h",
    class_name: ClassOption = None,
) -> None:
    """One pass of the sweeper over the classes known through -A.

    Exits 1 when it found something to end, resend or join (or would, with --dry-run).
    """
    session = _session(ctx)
    session.require_classes("sweep")
    from procstatus import sweeper

    classes = [s.cls for s in session.sources(class_name) if s.cls is not None]
    report = sweeper.sweep(
        threshold=parse_duration(threshold) if threshold is not None else None,
        pending_timeout=None if pending_timeout.lower() == "off"
        else parse_duration(pending_timeout),
        classes=classes,  # type: ignore[arg-type]
        dry_run=dry_run,
    )
    code = EXIT_ATTENTION if report.acted() else EXIT_OK
    data = report.as_dict()
    if as_json:
        _json_out({"dry_run": dry_run, **data})
        raise typer.Exit(code)
    _say(
        f"sweep{' (dry run: nothing written)' if dry_run else ''}: checked {report.checked} "
        f"RUNNING run(s) in {len(classes)} class(es)"
    )
    labels = {
        "failed": "failed (worker lost, or orphaned)",
        "sent_again": "sent again (retry_on_worker_lost)",
        "awaiting_redelivery": "PENDING for the broker's redelivery (acks_late)",
        "never_started": "never started (PENDING past --pending-timeout)",
        "joins_sent": "joins sent (waiting parents with no child under way)",
        "queued_calls_sent": "queued calls started (idle documents with calls waiting)",
    }
    for key, label in labels.items():
        items = data[key]
        _say(f"  {label}: {len(items)}" + (f"  {', '.join(items)}" if items else ""))
    _say(f"  silent workers marked stopped: {report.workers_gone}")
    raise typer.Exit(code)


# --- workers -----------------------------------------------------------------------------


@app.command()
@handles_errors
def workers(
    ctx: typer.Context,
    as_json: JsonOption = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="mark silent workers stopped, delete stopped ones silent for over a day",
        ),
    ] = False,
    threshold: Annotated[
        str | None,
        typer.Option("--threshold", metavar="AGE", help="silence after which a worker is gone "
                     "(default: install()'s heartbeat threshold, else 30s)"),
    ] = None,
) -> None:
    """Worker heartbeats: host, instance, last beat, running tasks, alive or gone.

    Exits 1 when a worker is silent (no beat within the threshold, not stopped: killed or
    cut off).
    """
    session = _session(ctx)
    collection = session.workers_collection()
    limit = parse_duration(threshold) if threshold is not None else session.threshold()
    now = queries.utcnow()
    found = queries.workers(collection, threshold=limit, now=now)
    code = EXIT_ATTENTION if any(w.state == "silent" for w in found) else EXIT_OK
    marked = 0
    if prune:
        # A silent worker is first suspected; a later prune or sweep past the grace marks
        # it stopped (silence alone may be a MongoDB outage: see procstatus.liveness).
        liveness.suspect_silent(collection, threshold=limit, now=now)
        marked = liveness.mark_gone(
            collection, threshold=limit, prune_after=liveness.PRUNE_HEARTBEATS_AFTER, now=now
        )
        found = queries.workers(collection, threshold=limit, now=now)
    if as_json:
        payload: dict[str, Any] = {
            "threshold_s": limit, "workers": [w.as_dict() for w in found],
        }
        if prune:
            payload["marked_stopped"] = marked
        _json_out(payload)
        raise typer.Exit(code)
    if prune:
        _say(f"marked {marked} silent worker(s) stopped; deleted stopped heartbeats older "
             f"than {fmt_age(liveness.PRUNE_HEARTBEATS_AFTER)}")
    if not found:
        _say("no worker heartbeat recorded (no worker has started with this database)")
        raise typer.Exit(code)
    table = Table(title=f"workers (alive = a beat within {limit:g}s)", title_justify="left")
    for column in ("host", "instance", "pid", "last beat", "running", "state"):
        table.add_column(column, no_wrap=column in {"instance", "pid", "last beat", "state"})
    styles = {"alive": "green", "stopped": "dim", "silent": "bold red"}
    for w in found:
        table.add_row(
            w.hostname or "-", w.instance, str(w.pid or "-"), f"{fmt_age(w.silent_s)} ago",
            "\n".join(w.active) if w.active else "-", Text(w.state, style=styles[w.state]),
        )
    _console().print(table)
    raise typer.Exit(code)


# --- watch -------------------------------------------------------------------------------


@app.command()
@handles_errors
def watch(
    ctx: typer.Context,
    class_name: ClassOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="rows under way")] = 20,
    interval: Annotated[float, typer.Option("--interval", min=0.1, hidden=True)] = 1.0,
    iterations: Annotated[
        int | None, typer.Option("--iterations", min=1, hidden=True, help="stop after N")
    ] = None,
) -> None:
    """A live table of the documents under way (steps, progress) and recent completions.

    Refreshes every second; Ctrl-C leaves.
    """
    from rich.live import Live

    session = _session(ctx)
    sources = session.sources(class_name)
    database = session.connect().name
    console = _console()
    try:
        with Live(
            _watch_view(sources, database, limit), console=console, auto_refresh=False,
            transient=False,
        ) as live:
            live.refresh()
            shown = 1
            while iterations is None or shown < iterations:
                time.sleep(interval)
                live.update(_watch_view(sources, database, limit), refresh=True)
                shown += 1
    except KeyboardInterrupt:
        pass
    raise typer.Exit(EXIT_OK)


def _watch_view(sources: Sequence[Source], database: str, limit: int) -> RenderableType:
    now = queries.utcnow()
    totals = dict.fromkeys(queries.STATUSES, 0)
    failed_1h = 0
    for source in sources:
        counted = queries.counts(source, now=now)
        failed_1h += counted.failures_last_hour
        for name, n in counted.counts.items():
            totals[name] += n
    header = Text.assemble(
        ("procstatus watch", "bold"), f"  {database}  {now:%H:%M:%S} UTC   ",
        *(
            part for name in queries.PROCESSING_STATUSES
            for part in ((SHORT_STATUS.get(name, name), STATUS_STYLE[name]), f" {totals[name]}  ")
        ),
        ("failed in the last hour", STATUS_STYLE["FAILURE"]), f" {failed_1h}   (Ctrl-C to leave)",
    )
    under_way = queries.list_documents(
        sources, ListQuery(statuses=queries.PROCESSING_STATUSES, limit=limit, oldest_first=True),
        now=now,
    )
    busy = Table(title=f"under way ({sum(totals[s] for s in queries.PROCESSING_STATUSES)})",
                 title_justify="left", expand=False)
    for column in ("class", "id", "status", "process", "step", "progress", "worker", "for"):
        busy.add_column(column, no_wrap=column in {"id", "status", "for", "progress"})
    for r in under_way:
        busy.add_row(
            r.cls, str(r.id), _styled(r.process_status, short=True), r.current_process or "",
            _one_line(r.current_process_step, 40), _progress_cell(r), r.worker_hostname or "",
            fmt_age(r.age_s),
        )
    recent = queries.list_documents(
        sources, ListQuery(statuses=queries.COMPLETED_STATUSES, limit=8), now=now
    )
    done = Table(title="recently completed", title_justify="left")
    for column in ("class", "id", "status", "process", "ago", "error"):
        done.add_column(column, no_wrap=column in {"id", "status", "ago"})
    for r in recent:
        done.add_row(
            r.cls, str(r.id), _styled(r.process_status), r.current_process or "",
            fmt_age(r.age_s), _one_line(r.last_error, 50),
        )
    return Group(header, busy, done)


def _progress_cell(row: Row) -> RenderableType:
    fraction = row.progress
    if fraction is None:
        return Text(f"{row.progress_done} done" if row.progress_done is not None else "")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        ProgressBar(total=float(row.progress_total or 1), completed=float(row.progress_done or 0),
                    width=12),
        Text(f"{fraction * 100:3.0f}% {row.progress_done}/{row.progress_total}"),
    )
    return grid


# --- dashboard ---------------------------------------------------------------------------

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@app.command()
@handles_errors
def dashboard(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", help="address to listen on (default: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8765,
    allow_actions: Annotated[
        bool,
        typer.Option("--allow-actions",
                     help="offer cancel, retry and reset on a document (POSTs carrying the token)"),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="PROCSTATUS_DASHBOARD_TOKEN", metavar="TOKEN",
                     help="the actions' token (default: a new one, printed at start)"),
    ] = None,
    refresh: Annotated[float, typer.Option("--refresh", min=0.2, max=2.0, hidden=True)] = 2.0,
) -> None:
    """A live web page: counts per class and status, the documents under way, recent
    failures grouped by cause, documents with their children, workers; JSON under /api.

    Read-only unless --allow-actions (which needs -A). Needs the dashboard extra:
    pip install 'procstatus[dashboard]'.
    """
    import secrets
    import socket

    try:
        import uvicorn

        from procstatus.dashboard import create_app
    except ModuleNotFoundError as missing:
        raise CliError(
            f"the dashboard needs {missing.name}, which is not installed: "
            "pip install 'procstatus[dashboard]'"
        ) from None
    session = _session(ctx)
    if allow_actions:
        session.require_classes("dashboard --allow-actions")
        if token is not None and len(token) < 12:
            raise CliError("--token (or PROCSTATUS_DASHBOARD_TOKEN) must be at least 12 "
                           "characters: it is all that stands between a visitor and an action")
    session.sources()  # connects: a wrong URI or database fails here, in one line
    database = session.connect().name
    token_set = token is not None
    if allow_actions and token is None:
        token = secrets.token_urlsafe(18)
    loopback = host in LOOPBACK_NAMES
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Pass "
                           "another --port, or stop what uses it") from None
    web = create_app(
        session, allow_actions=allow_actions, token=token if allow_actions else None,
        refresh_s=refresh, allowed_hosts=list(LOOPBACK_NAMES) if loopback else None,
    )
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    mode = "actions enabled" if allow_actions else "read-only"
    _say(f"procstatus dashboard for {database}: {url} ({mode}; Ctrl-C stops it)")
    if allow_actions and token_set:
        _say("actions need the token you set (--token or PROCSTATUS_DASHBOARD_TOKEN)")
    elif allow_actions:
        _say(f"actions need this token: {token}")
        _say(f"or open {url}#token={token} to act from the page")
    if not loopback:
        _warn(f"warning: listening on {host}: whoever reaches this port reads every status"
              + (", and acts with the token" if allow_actions else ""))
    uvicorn.run(web, host=host, port=port, log_level="warning", access_log=False)


# --- entry points ------------------------------------------------------------------------


def _configure_logging() -> None:
    """Library log lines (resets, sweeps) on stderr, once."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )


def main() -> None:
    """The ``procstatus`` console script."""
    _configure_logging()
    app(prog_name="procstatus")
