"""``procstatus watch``: a live table of the documents under way and recent completions.

Read-only, through the operator layer (:mod:`procstatus.ops`); refreshed every second
under ``rich.live`` until Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from procstatus.cli.common import (
    EXIT_OK,
    SHORT_STATUS,
    STATUS_STYLE,
    ClassOption,
    console,
    handles_errors,
    one_line,
    session_of,
    styled,
)
from procstatus.ops import queries
from procstatus.ops.queries import ListQuery, Row
from procstatus.ops.sources import Source
from procstatus.ops.values import COMPLETED_STATUSES, PROCESSING_STATUSES, STATUSES, fmt_age


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

    session = session_of(ctx)
    sources = session.sources(class_name)
    database = session.connect().name
    out = console()
    try:
        with Live(
            _watch_view(sources, database, limit), console=out, auto_refresh=False,
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
    now = queries.now_of(sources)  # ages on the clock that wrote the stored times
    totals = dict.fromkeys(STATUSES, 0)
    failed_1h = 0
    for source in sources:
        counted = queries.counts(source, now=now)
        failed_1h += counted.failures_last_hour
        for name, n in counted.counts.items():
            totals[name] += n
    header = Text.assemble(
        ("procstatus watch", "bold"), f"  {database}  {now:%H:%M:%S} UTC   ",
        *(
            part for name in PROCESSING_STATUSES
            for part in ((SHORT_STATUS.get(name, name), STATUS_STYLE[name]), f" {totals[name]}  ")
        ),
        ("failed in the last hour", STATUS_STYLE["FAILURE"]), f" {failed_1h}   (Ctrl-C to leave)",
    )
    under_way = queries.list_documents(
        sources, ListQuery(statuses=PROCESSING_STATUSES, limit=limit, oldest_first=True),
        now=now,
    )
    busy = Table(title=f"under way ({sum(totals[s] for s in PROCESSING_STATUSES)})",
                 title_justify="left", expand=False)
    for column in ("class", "id", "status", "process", "step", "progress", "worker", "for"):
        busy.add_column(column, no_wrap=column in {"id", "status", "for", "progress"})
    for r in under_way:
        busy.add_row(
            r.cls, str(r.id), styled(r.process_status, short=True), r.current_process or "",
            one_line(r.current_process_step, 40), _progress_cell(r), r.worker_hostname or "",
            fmt_age(r.age_s),
        )
    recent = queries.list_documents(
        sources, ListQuery(statuses=COMPLETED_STATUSES, limit=8), now=now
    )
    done = Table(title="recently completed", title_justify="left")
    for column in ("class", "id", "status", "process", "ago", "error"):
        done.add_column(column, no_wrap=column in {"id", "status", "ago"})
    for r in recent:
        done.add_row(
            r.cls, str(r.id), styled(r.process_status), r.current_process or "",
            fmt_age(r.age_s), one_line(r.last_error, 50),
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


