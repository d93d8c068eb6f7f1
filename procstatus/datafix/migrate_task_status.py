"""The ``python -m procstatus.datafix.migrate_task_status`` command.

Its arguments, connection, output and exit code. Moves documents from the legacy
``tasks_status``/``task_status`` scheme to the single ``process_status`` +
``current_process_step`` scheme. The mapping lives in
:mod:`procstatus.datafix.task_status_mapping`, the two run modes (whole-collection, the
default, and batched with ``--batch-size``) in :mod:`procstatus.datafix.task_status_runner`;
operator instructions are in ``procstatus/datafix/OPERATOR.md``.

Exit codes: 0 every legacy document was migrated (or, in a dry run, would be); 1 some were
skipped (in flight) or invalid, all reported; 2 usage or connection errors.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import pymongo
import typer
from bson import json_util
from pymongo.database import Database
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from procstatus.datafix.task_status_runner import (
    BATCHED,
    DEFAULT_MAX_REPORT_IDS,
    SUGGESTED_BATCH_SIZE,
    WHOLE_COLLECTION,
    CollectionResult,
    migrate_collection,
)
from procstatus.text import redact

EXIT_OK = 0
EXIT_LEFT_BEHIND = 1
EXIT_USAGE = 2

PLAIN_PROGRESS_INTERVAL_S = 5.0
INVALID_SHOWN = 10

app = typer.Typer(add_completion=False, rich_markup_mode=None)


class UsageProblem(Exception):
    """A problem the operator can fix; the message says what was wrong and how to fix it."""


def _json(value: Any) -> Any:
    """Plain JSON for BSON values (ObjectId -> {"$oid": ...}, datetimes -> {"$date": ...})."""
    return json.loads(json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS))


def _id_text(value: Any) -> str:
    return json.dumps(_json(value))


def _client(uri: str, timeout_s: float) -> pymongo.MongoClient:
    """A client for ``uri``; nothing is sent yet (see :func:`_ping`)."""
    try:
        return pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=int(timeout_s * 1000), connect=False
        )
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise UsageProblem(
            f"--mongodb-uri is not a valid MongoDB URI ({exc}). "
            "Use the form mongodb://HOST:PORT or mongodb+srv://..."
        ) from None


def _ping(client: pymongo.MongoClient, uri: str, timeout_s: float) -> None:
    try:
        client.admin.command("ping")
    except OperationFailure as exc:
        reason = (exc.details or {}).get("errmsg", str(exc))
        raise UsageProblem(
            f"the server refused the connection: {reason}. Check the credentials in --mongodb-uri."
        ) from None
    except PyMongoError as exc:
        # pymongo's message ends with a long topology description; the first part says it.
        first_line = re.split(r" \(configured timeouts|, Timeout:|\n", str(exc))[0]
        raise UsageProblem(
            f"cannot reach MongoDB at {redact(uri)} within {timeout_s:g}s ({first_line}). "
            "Check that the server is running and that --mongodb-uri names its host and port "
            "(or raise --server-timeout on a slow network)."
        ) from None


def _mute_pymongo_background_errors() -> None:
    """Keep the tracebacks of pymongo's background thread off the operator's terminal.

    A cursor that cannot be killed when it is closed (the server was lost mid-run) is
    queued for pymongo's kill-cursors thread, which retries in the background; and
    ``MongoClient.close()`` retries once itself, then only asks that thread to stop, it
    does not wait for it. A retry that fails is logged with its traceback to the
    ``pymongo.client`` logger, and with no logging configured Python's last-resort
    handler prints it on stderr, even after this command's message, while the process
    exits. None of it is for the operator: that thread only kills cursors and tends the
    connection pool, neither touches the data, and a server problem behind it also fails
    the command the migration is running, which the message reports. A handler on the
    logger keeps its records from the last resort; handlers configured higher up still
    get them.
    """
    logger = logging.getLogger("pymongo.client")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _check_collections(db: Database, names: list[str]) -> None:
    existing = set(db.list_collection_names())
    missing = [n for n in names if n not in existing]
    if missing:
        listing = ", ".join(sorted(existing)[:20]) or "none"
        raise UsageProblem(
            f"collection(s) {', '.join(missing)} not found in database {db.name!r} "
            f"(existing collections: {listing}). Check --db and --collection."
        )


class _ProgressOutput:
    """A rich progress bar on a terminal, plain lines otherwise (logs, CI, pipes).

    Batched mode advances per document and prints a plain line every few seconds;
    whole-collection mode advances per step (one server-side update per mapping row, then
    the listing of what was left) and prints a plain line when each step starts, since a
    single step can run for minutes.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._last_line = 0.0
        self._last_step = ""

    def __enter__(self) -> _ProgressOutput:
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)

    def start(self, name: str) -> None:
        self._last_step = ""
        if self.progress is not None:
            self.task = self.progress.add_task(name, total=None, unit="")
        else:
            self.console.print(f"{name}: started", highlight=False)
            self._last_line = time.monotonic()

    def update(self, result: CollectionResult, done: bool = False) -> None:
        if result.mode == WHOLE_COLLECTION:
            self._update_steps(result, done)
            return
        total = max(result.total_estimate, result.scanned)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=result.scanned, total=total, unit="docs")
            return
        now = time.monotonic()
        if done or now - self._last_line >= PLAIN_PROGRESS_INTERVAL_S:
            self._last_line = now
            pct = 100.0 * result.scanned / total if total else 100.0
            self.console.print(
                f"{result.name}: scanned {result.scanned}/{total} ({pct:.0f}%), "
                f"migrated {result.migrated_total}" + (" - done" if done else ""),
                highlight=False,
            )

    def _update_steps(self, r: CollectionResult, done: bool) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(
                self.task,
                description=f"{r.name}: {'done' if done else r.step}",
                completed=r.steps_done,
                total=r.steps_total,
                unit="steps",
            )
            return
        if done:
            self.console.print(
                f"{r.name}: {r.scanned} documents, migrated {r.migrated_total} - done",
                highlight=False,
            )
        elif r.step != self._last_step and r.steps_done < r.steps_total:
            self._last_step = r.step
            self.console.print(
                f"{r.name}: step {r.steps_done + 1}/{r.steps_total}: {r.step} "
                f"(migrated so far {r.migrated_total})",
                highlight=False,
            )


def _summary_table(
    results: list[CollectionResult], *, dry_run: bool, fail_in_flight: bool
) -> Table:
    title = "task_status migration: documents " + (
        "that WOULD be migrated (DRY RUN: nothing written)" if dry_run else "migrated"
    )
    table = Table(title=title)
    table.add_column("collection", no_wrap=True)
    table.add_column("scanned", justify="right")
    for status in ("READY", "SUCCESS", "FAILURE"):
        table.add_column(f"→ {status}", justify="right")
    table.add_column("already\nmigrated", justify="right")
    table.add_column(
        "in flight\n" + ("→ FAILURE" if fail_in_flight else "skipped"), justify="right"
    )
    table.add_column("invalid", justify="right")
    for r in results:
        table.add_row(
            r.name,
            str(r.scanned),
            *(str(r.migrated[s]) for s in ("READY", "SUCCESS", "FAILURE")),
            str(r.already_migrated),
            str(r.in_flight),
            str(r.invalid + r.unmatched),
        )
    return table


def _print_details(console: Console, r: CollectionResult, *, fail_in_flight: bool) -> None:
    if r.in_flight and not fail_in_flight:
        console.print(
            f"{r.name}: {r.in_flight} in-flight document(s) left untouched (their process was "
            "running when workers stopped). Rerun with --fail-in-flight to mark them FAILURE.",
            highlight=False,
        )
    if r.invalid:
        console.print(f"{r.name}: {r.invalid} invalid document(s) left untouched:", highlight=False)
        for item in r.invalid_docs.items[:INVALID_SHOWN]:
            console.print(f"  _id={_id_text(item['_id'])}: {item['reason']}", highlight=False)
        if r.invalid > INVALID_SHOWN:
            console.print(f"  ... {r.invalid - INVALID_SHOWN} more (see --report)", highlight=False)
    if r.unmatched:
        console.print(
            f"{r.name}: {r.unmatched} document(s) changed while being migrated and were left "
            "untouched. Make sure every worker is stopped, then rerun.",
            highlight=False,
        )


def _print_samples(console: Console, r: CollectionResult) -> None:
    for sample in r.samples:
        before, after = sample["before"], sample["after"]
        keys = [
            k for k in dict.fromkeys([*before, *after]) if before.get(k, ...) != after.get(k, ...)
        ]
        console.print(
            f"{r.name}: sample {sample['row']} -> {sample['target']}, "
            f"_id={_id_text(before['_id'])}",
            highlight=False,
        )
        for k in keys:
            old = json.dumps(_json(before[k])) if k in before else "(absent)"
            new = json.dumps(_json(after[k])) if k in after else "(removed)"
            console.print(f"    {k}: {old} -> {new}", highlight=False)


def run(
    *,
    mongodb_uri: str,
    db_name: str,
    collections: list[str],
    dry_run: bool,
    fail_in_flight: bool,
    batch_size: int | None,
    report_path: Path | None,
    server_timeout: float,
    max_report_ids: int,
    out: Console,
    err: Console,
) -> int:
    """Run the migration; return the exit code. Raises :class:`UsageProblem`."""
    started = datetime.now(timezone.utc)
    client = _client(mongodb_uri, server_timeout)
    results: list[CollectionResult] = []
    error: str | None = None
    try:
        _ping(client, mongodb_uri, server_timeout)
        db = client[db_name]
        _check_collections(db, collections)
        with _ProgressOutput(err) as progress:
            for name in dict.fromkeys(collections):  # a name given twice runs once
                progress.start(name)
                results.append(
                    migrate_collection(
                        db[name],
                        dry_run=dry_run,
                        fail_in_flight=fail_in_flight,
                        batch_size=batch_size,
                        max_report_ids=max_report_ids,
                        on_progress=progress.update,
                    )
                )
                progress.update(results[-1], done=True)
    except PyMongoError as exc:
        error = (
            f"the server failed during the migration ({str(exc).splitlines()[0][:300]}). "
            "Documents already migrated are complete; fix the cause and rerun the same "
            "command to finish (the migration is resumable)."
        )
    finally:
        # Every way out, an unreachable server and Ctrl-C included. This does not wait
        # for pymongo's background thread (see _mute_pymongo_background_errors).
        client.close()

    code = EXIT_OK if all(r.legacy_left == 0 for r in results) else EXIT_LEFT_BEHIND
    if error:
        code = EXIT_USAGE
    if results:
        out.print(_summary_table(results, dry_run=dry_run, fail_in_flight=fail_in_flight))
        for r in results:
            if dry_run:
                _print_samples(out, r)
            _print_details(out, r, fail_in_flight=fail_in_flight)
    if report_path is not None:
        report = {
            "tool": "procstatus.datafix.migrate_task_status",
            "database": db_name,
            "dry_run": dry_run,
            "fail_in_flight": fail_in_flight,
            "mode": WHOLE_COLLECTION if batch_size is None else BATCHED,
            "batch_size": batch_size,
            "started_at": started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "exit_code": code,
            "error": error,
            "collections": {r.name: r.to_report() for r in results},
        }
        report_path.write_text(json.dumps(_json(report), indent=2) + "\n")
    if error:
        raise UsageProblem(error)
    return code


@app.command()
def main(
    mongodb_uri: Annotated[str, typer.Option("--mongodb-uri", help="e.g. mongodb://HOST:27017")],
    db: Annotated[str, typer.Option("--db", help="database to migrate")],
    collection: Annotated[
        list[str], typer.Option("--collection", help="collection to migrate; repeatable")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="write nothing; print what would change")
    ] = False,
    fail_in_flight: Annotated[
        bool,
        typer.Option(
            "--fail-in-flight",
            help="set documents whose process was in flight to FAILURE (default: leave them)",
        ),
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            max=100_000,
            help="run in batches of N documents (stops within a batch when interrupted; "
            f"{SUGGESTED_BATCH_SIZE} suits most servers). Default: one server-side update "
            "per mapping row over the whole collection",
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="write the summary and ids as JSON here")
    ] = None,
    server_timeout: Annotated[
        float, typer.Option("--server-timeout", min=0.1, help="seconds to wait for the server")
    ] = 5.0,
    max_report_ids: Annotated[
        int,
        typer.Option("--max-report-ids", min=0, help="ids listed per category in --report"),
    ] = DEFAULT_MAX_REPORT_IDS,
) -> None:
    """Migrate legacy tasks_status/task_status documents to process_status."""
    out = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True)
    # Before any client exists: its close() may already log (see the function).
    _mute_pymongo_background_errors()
    if report is not None and not report.parent.is_dir():
        err.print(
            f"error: --report {report}: directory {report.parent} does not exist", highlight=False
        )
        raise typer.Exit(EXIT_USAGE)
    try:
        code = run(
            mongodb_uri=mongodb_uri,
            db_name=db,
            collections=collection,
            dry_run=dry_run,
            fail_in_flight=fail_in_flight,
            batch_size=batch_size,
            report_path=report,
            server_timeout=server_timeout,
            max_report_ids=max_report_ids,
            out=out,
            err=err,
        )
    except UsageProblem as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        err.print(
            "interrupted: every document is either fully migrated or untouched; "
            "rerun the same command to finish. "
            + (
                ""
                if batch_size is not None
                else "(An update already sent may still be finishing on the server: that "
                "is safe, it makes the same change the rerun would.)"
            ),
            highlight=False,
        )
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def cli() -> None:
    """The ``procstatus-datafix`` console script."""
    app(prog_name="procstatus-datafix")


if __name__ == "__main__":
    app(prog_name="python -m procstatus.datafix.migrate_task_status")
