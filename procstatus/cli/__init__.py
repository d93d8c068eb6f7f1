"""The ``procstatus`` operator command (also ``python -m procstatus``).

``procstatus [-A MODULE] [--mongodb-uri URI] [--db NAME] COMMAND [OPTIONS]``

``-A MODULE`` imports the app module your workers load with ``celery -A``: it defines
the ``Proc`` classes and calls ``procstatus.install()``, whose MongoDB settings become
the defaults; ``--mongodb-uri`` (or ``MONGODB_URI``) and ``--db`` override them.
Without ``-A`` the read-only commands (status, list, show, workers, watch) work over the
collections of the database that hold ``process_status``, named after the collection;
the read-only path imports no Celery.

This package is the command line over the operator layer (:mod:`procstatus.ops`), which
the web dashboard shares: this module holds the typer app, the global options (made
into an :class:`~procstatus.ops.session.Session`) and :func:`main`; the commands live in
:mod:`~procstatus.cli.reading` (status, list, show, workers),
:mod:`~procstatus.cli.watching` (watch), :mod:`~procstatus.cli.acting` (cancel, reset,
retry, sweep) and :mod:`~procstatus.cli.serving` (dashboard), and what they share (output,
exit codes, the translation of errors) in :mod:`~procstatus.cli.common`.

Exit codes: 0 fine; 1 something to look at (a refusal, failures, lost runs, silent
workers, an id not found); 2 usage or connection errors, in one line saying how to fix it.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

try:
    import rich  # noqa: F401  (not used here: checked before a command imports it)
    import typer
except ModuleNotFoundError as missing:  # installed without the extra
    raise SystemExit(
        f"procstatus: the command needs {missing.name}, which is not installed: "
        "pip install 'procstatus[cli]'"
    ) from None

from procstatus.cli import acting, reading, serving, watching
from procstatus.ops.session import Session

app = typer.Typer(
    name="procstatus",
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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


for command, name in (
    (reading.status, None), (reading.list_, "list"), (reading.show, None),
    (acting.cancel, None), (acting.reset, None), (acting.retry, None), (acting.sweep, None),
    (reading.workers, None), (watching.watch, None), (serving.dashboard, None),
):
    app.command(name)(command)


def _configure_logging() -> None:
    """Library log lines (resets, sweeps) on stderr, once."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )


def main(prog_name: str = "procstatus") -> None:
    """The ``procstatus`` console script (and ``python -m procstatus``)."""
    _configure_logging()
    app(prog_name=prog_name)
