"""The ``procstatus`` commands that write: ``cancel``, ``reset``, ``retry`` and ``sweep``.

Each needs the app's classes (``-A``). The writes on one document, and the policy that
refuses them, are the operator layer's (:mod:`procstatus.ops.actions`); ``sweep`` runs
one pass of :func:`procstatus.sweeper.sweep`. A refusal is a line on stderr and makes the
exit code 1.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from procstatus import sweeper, transitions
from procstatus.cli.common import (
    EXIT_ATTENTION,
    EXIT_OK,
    ClassOption,
    JsonOption,
    handles_errors,
    interactive,
    json_out,
    parse_duration,
    say,
    session_of,
    tally,
    tally_code,
    warn,
)
from procstatus.ops import actions, queries
from procstatus.ops.errors import OperatorError
from procstatus.ops.queries import ListQuery
from procstatus.ops.sources import Source
from procstatus.status import ProcessStatus

# --- cancel ------------------------------------------------------------------------------


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
    session = session_of(ctx)
    session.require_classes("cancel")
    counted = tally()
    for source, pk in counted.located(session, ids, class_name):
        counted.report(actions.cancel_document(source, pk, terminate=terminate))
    raise typer.Exit(tally_code(counted))


# --- reset -------------------------------------------------------------------------------


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
    session = session_of(ctx)
    counted = tally()
    plan: list[tuple[Source, Any, str]] = []
    for source, pk in counted.located(session, ids, class_name):
        state = transitions.read_state(source.target(pk)) or {}
        refusal = actions.reset_refusal(
            source, pk, state, force=force,
            hint="Cancel it first (procstatus cancel), or pass --force",
        )
        if refusal is not None:
            counted.refuse(refusal)
        else:
            plan.append((source, pk, str(state.get("process_status"))))
    if plan and interactive() and not yes:
        for source, pk, current in plan:
            say(f"  {source.name}({pk}): {current} → READY")
        if not typer.confirm(f"Reset {len(plan)} document(s) to READY?", default=False):
            warn("nothing reset")
            raise typer.Exit(EXIT_ATTENTION)
    for source, pk, _current in plan:
        counted.report(actions.reset_document(source, pk, force=force))
    raise typer.Exit(tally_code(counted))


# --- retry -------------------------------------------------------------------------------


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
    session = session_of(ctx)
    session.require_classes("retry")
    sources = session.sources(class_name)
    if len(sources) > 1:
        raise OperatorError(f"--class {class_name} names {', '.join(s.name for s in sources)}")
    source = sources[0]
    query = ListQuery(
        statuses=(ProcessStatus.FAILURE.value,), process=process, limit=limit, oldest_first=True
    )
    matching = queries.count_matching(source, query)
    rows = queries.list_documents([source], query)
    what = f"FAILURE document(s) of {source.name}" + (f" ({process})" if process else "")
    if not rows:
        say(f"no {what}")
        return
    say(f"{matching} {what}; {'would retry' if dry_run else 'retrying'} {len(rows)}")
    counted = tally()
    for row in rows:
        plan = actions.plan_retry(source, row.id, row.current_process)
        if isinstance(plan, str):
            counted.refuse(plan)
        elif dry_run:
            say(f"would call {plan.describe()}")
        else:
            counted.report(plan.call())
    raise typer.Exit(tally_code(counted))


# --- sweep -------------------------------------------------------------------------------


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

    Exits 1 when it found something to end, resend or join (or would, with --dry-run),
    or a document it could not write.
    """
    session = session_of(ctx)
    session.require_classes("sweep")
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
        json_out({"dry_run": dry_run, **data})
        raise typer.Exit(code)
    say(
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
        "write_failed": "could not be written (error logged; left as they were)",
    }
    for key, label in labels.items():
        items = data[key]
        say(f"  {label}: {len(items)}" + (f"  {', '.join(items)}" if items else ""))
    say(f"  silent workers marked stopped: {report.workers_gone}")
    raise typer.Exit(code)


