"""The read-only ``procstatus`` commands: ``status``, ``list``, ``show``, ``workers``
(whose ``--prune`` marks silent workers stopped); ``watch`` is
:mod:`procstatus.cli.watching`.

Each reads through the operator layer (:mod:`procstatus.ops`) and prints a table, or
JSON with ``--json``. Without ``-A`` they work over the database's collections that
hold ``process_status``, and import no Celery.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from procstatus import liveness
from procstatus.cli.common import (
    EXIT_ATTENTION,
    EXIT_OK,
    SHORT_STATUS,
    STATUS_STYLE,
    ClassOption,
    JsonOption,
    console,
    fmt_progress,
    fmt_time,
    handles_errors,
    json_out,
    one_line,
    parse_duration,
    parse_statuses,
    say,
    session_of,
    styled,
    warn,
)
from procstatus.clock import server_now
from procstatus.ops import queries
from procstatus.ops import workers as heartbeats
from procstatus.ops.errors import NotFound
from procstatus.ops.family import children_summary
from procstatus.ops.queries import ListQuery, Row
from procstatus.ops.values import (
    STATUSES,
    fmt_age,
    jsonable,
    seconds_since,
)

# --- status ------------------------------------------------------------------------------


@handles_errors
def status(
    ctx: typer.Context, class_name: ClassOption = None, as_json: JsonOption = False
) -> None:
    """Counts per class and status, the oldest PENDING and RUNNING, failures in the last hour.

    Exits 1 when any class had a failure in the last hour.
    """
    session = session_of(ctx)
    sources = session.sources(class_name)
    now = server_now(session.connect())  # ages on the clock that wrote the stored times
    rows = [queries.counts(source, now=now) for source in sources]
    code = EXIT_ATTENTION if any(r.failures_last_hour for r in rows) else EXIT_OK
    if as_json:
        json_out(queries.status_json(session.connect().name, rows, session.skipped, now))
        raise typer.Exit(code)
    table = Table(title=f"process statuses in {session.connect().name}", title_justify="left")
    table.add_column("class", no_wrap=True)
    for name in STATUSES:
        table.add_column(SHORT_STATUS.get(name, name), justify="right", style=STATUS_STYLE[name])
    table.add_column("oldest\nPENDING", justify="right")
    table.add_column("oldest\nRUNNING", justify="right")
    table.add_column("failed\nlast 1h", justify="right")
    for r in rows:
        table.add_row(
            r.name, *(str(r.counts[s]) for s in STATUSES),
            fmt_age(seconds_since(r.oldest_pending, now)),
            fmt_age(seconds_since(r.oldest_running, now)),
            str(r.failures_last_hour),
        )
    if len(rows) > 1:
        table.add_section()
        table.add_row(
            "total", *(str(sum(r.counts[s] for r in rows)) for s in STATUSES),
            "", "", str(sum(r.failures_last_hour for r in rows)),
        )
    console().print(table)
    if session.skipped:
        warn("not shown (no MongoDB connection for their db_alias here): "
              + ", ".join(session.skipped))
    raise typer.Exit(code)


# --- list --------------------------------------------------------------------------------


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
    session = session_of(ctx)
    query = ListQuery(
        statuses=parse_statuses(status_), process=process,
        older_than=parse_duration(older_than) if older_than is not None else None,
        worker=worker, limit=limit, oldest_first=oldest_first,
    )
    rows = queries.list_documents(session.sources(class_name), query)
    if as_json:
        json_out([row.as_dict() for row in rows])
        return
    if not rows:
        say("no document matches")
        return
    console().print(_list_table(rows))
    if len(rows) == limit:
        say(f"showing the first {limit} (--limit); more may match")


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
            str(r.id), r.cls, styled(r.process_status), r.current_process or "",
            one_line(r.current_process_step, 40),
        ]
        if with_progress:
            cells.append(fmt_progress(r.progress_done, r.progress_total))
        cells += [r.worker_hostname or "", fmt_age(r.age_s)]
        if with_errors:
            cells.append(one_line(r.last_error))
        table.add_row(*cells)
    return table


# --- show --------------------------------------------------------------------------------


@handles_errors
def show(
    ctx: typer.Context,
    document_id: Annotated[str, typer.Argument(metavar="ID")],
    class_name: ClassOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every status field of one document, errors and warnings in full, and its children."""
    session = session_of(ctx)
    try:
        source, pk = session.locate(document_id, class_name)
    except NotFound as exc:
        warn(str(exc))
        raise typer.Exit(EXIT_ATTENTION) from None
    detail = queries.show(source, pk)
    if detail is None:
        warn(f"{source.name}({document_id}) no longer exists")
        raise typer.Exit(EXIT_ATTENTION)
    detail["children"] = children_summary(source, pk)
    if as_json:
        json_out(detail)
        return
    _print_detail(detail)


def _print_detail(detail: dict[str, Any]) -> None:
    out = console()
    status_text = styled(detail["process_status"])
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
    grid.add_row("process_arguments", json.dumps(jsonable(detail["process_arguments"])))
    for name in ("create_time", "start_time", "complete_time", "status_changed_at"):
        grid.add_row(name, fmt_time(detail[name]))
    for name in ("worker_hostname", "worker_instance", "worker_pid", "celery_task_id"):
        grid.add_row(name, "-" if detail[name] is None else str(detail[name]))
    grid.add_row("joining", "yes" if detail["joining"] else "no")
    queue = detail["call_queue"]
    grid.add_row("call_queue", f"{len(queue)} call(s) waiting" if queue else "empty")
    for call in queue:
        grid.add_row("", json.dumps(jsonable(call)))
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
            line = "  ".join(f"{s} {counts[s]}" for s in STATUSES)
            out.print(Text(f"children ({children['class']}, {sum(counts.values())}): {line}"))


# --- workers -----------------------------------------------------------------------------


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
    session = session_of(ctx)
    collection = session.workers_collection()
    limit = parse_duration(threshold) if threshold is not None else session.threshold()
    now = server_now(session.connect())  # the clock that stamps heartbeats and suspicions
    found = heartbeats.workers(collection, threshold=limit, now=now)
    code = EXIT_ATTENTION if any(w.state == "silent" for w in found) else EXIT_OK
    marked = 0
    if prune:
        # A silent worker is first suspected; a later prune or sweep past the grace marks
        # it stopped (silence alone may be a MongoDB outage: see procstatus.liveness).
        liveness.suspect_silent(collection, threshold=limit, now=now)
        marked = liveness.mark_gone(
            collection, threshold=limit, prune_after=liveness.PRUNE_HEARTBEATS_AFTER, now=now
        )
        found = heartbeats.workers(collection, threshold=limit, now=now)
    if as_json:
        payload: dict[str, Any] = {
            "threshold_s": limit, "workers": [w.as_dict() for w in found],
        }
        if prune:
            payload["marked_stopped"] = marked
        json_out(payload)
        raise typer.Exit(code)
    if prune:
        say(f"marked {marked} silent worker(s) stopped; deleted stopped heartbeats older "
             f"than {fmt_age(liveness.PRUNE_HEARTBEATS_AFTER)}")
    if not found:
        say("no worker heartbeat recorded (no worker has started with this database)")
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
    console().print(table)
    raise typer.Exit(code)
