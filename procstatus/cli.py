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
call (retry) or :mod:`procstatus.sweeper` (sweep).

Exit codes: 0 fine; 1 something to look at (a refusal, failures, lost runs, silent
workers, an id not found); 2 usage or connection errors, in one line saying how to fix it.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI, OperationFailure, PyMongoError

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

from procstatus import queries
from procstatus.queries import ListQuery, Row, Source
from procstatus.status import PROCESSING, ProcessStatus

logger = logging.getLogger("procstatus")

EXIT_OK = 0
EXIT_ATTENTION = 1
EXIT_USAGE = 2

DEFAULT_URI = "mongodb://127.0.0.1:27017"
PRUNE_AFTER = 24 * 3600.0
"""Seconds after its last beat that ``workers --prune`` deletes a stopped heartbeat
(the sweeper's ``PRUNE_HEARTBEATS_AFTER``; not imported, since that loads Celery)."""
START_SERVER_HINT = (
    "Start the server (`mongod --dbpath DIR`, or `docker compose up -d mongo` in a "
    "procstatus checkout) or point --mongodb-uri (or MONGODB_URI) at one that runs"
)
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


class CliError(Exception):
    """A problem the operator can fix: one line saying what was wrong and how to fix it."""


def redact(uri: str | None) -> str:
    """``uri`` with any password replaced by ``***`` (as :func:`procstatus.hooks.redact`,
    which imports Celery)."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", uri or "")


def _first_line(exc: BaseException) -> str:
    # pymongo's message ends with a long topology description; the first part says it.
    return re.split(r" \(configured timeouts|, Timeout:|\n", str(exc))[0][:300]


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


def fmt_age(seconds: float | None) -> str:
    """``12s``, ``4m05s``, ``2h05m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


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
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration: use e.g. 90, 30s, 10m, 2h or 1d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * unit


def parse_statuses(values: Sequence[str] | None) -> tuple[str, ...]:
    """Status names (any case), or the groups ``processing`` / ``completed``."""
    if not values:
        return queries.STATUSES
    chosen: list[str] = []
    for value in values:
        for word in value.split(","):
            name = word.strip().upper()
            if name == "PROCESSING":
                chosen.extend(queries.PROCESSING_STATUSES)
            elif name == "COMPLETED":
                chosen.extend(queries.COMPLETED_STATUSES)
            elif name == "WAITING":
                chosen.append(ProcessStatus.WAITING_FOR_RESULT.value)
            elif name in queries.STATUSES:
                chosen.append(name)
            else:
                raise typer.BadParameter(
                    f"{word!r} is not a status: use {', '.join(queries.STATUSES)}, "
                    "processing or completed"
                )
    return tuple(s for s in queries.STATUSES if s in chosen)


# --- the session: app module, connection, sources ----------------------------------------


@dataclass
class Session:
    """What the global options name, connected on first use."""

    app_module: str | None = None
    mongodb_uri: str | None = None
    uri_origin: str = "--mongodb-uri"
    db_name: str | None = None
    server_timeout: float = 3.0
    alias: str = "default"
    uri: str = DEFAULT_URI
    database: Database | None = None
    skipped: list[str] = field(default_factory=list)
    _sources: list[Source] | None = None

    # --- connecting ----------------------------------------------------------------------

    def connect(self) -> Database:
        if self.database is not None:
            return self.database
        if self.app_module:
            _import_app(self.app_module)
        uri, origin, db = self._resolve()
        self.uri = uri
        try:
            database = self._open(uri, db)
            database.client.admin.command("ping")
        except OperationFailure as exc:
            reason = (exc.details or {}).get("errmsg", str(exc))
            raise CliError(
                f"MongoDB at {redact(uri)} ({origin}) refused the connection: {reason}. "
                "Check the user, password and authSource in the URI."
            ) from None
        except (ConfigurationError, InvalidURI, ValueError, TypeError) as exc:
            raise CliError(
                f"{redact(uri)} ({origin}) is not a valid MongoDB URI ({exc}). Use the form "
                "mongodb://HOST:PORT or mongodb+srv://..."
            ) from None
        except PyMongoError as exc:
            raise CliError(
                f"cannot reach MongoDB at {redact(uri)} ({origin}) within "
                f"{self.server_timeout:g}s: {_first_line(exc)}. {START_SERVER_HINT}."
            ) from None
        self.database = database
        return database

    def _resolve(self) -> tuple[str, str, str]:
        """The URI, where it came from, and the database name."""
        from mongoengine.connection import _connection_settings

        from procstatus import connection, liveness

        self.alias = liveness.settings.alias
        # Without -A, what this process was told (by install() or mongoengine) is no default.
        configured = connection._configured.get(self.alias) if self.app_module else None
        defined = _connection_settings.get(self.alias) if self.app_module else None
        defined_host = _host_of(defined)
        module = f"-A {self.app_module}"
        if self.mongodb_uri and not self.mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
            raise CliError(
                f"{self.uri_origin} {redact(self.mongodb_uri)!r} is not a MongoDB URI: use the "
                "form mongodb://HOST:PORT or mongodb+srv://..."
            )
        if self.mongodb_uri:
            uri, origin = self.mongodb_uri, f"from {self.uri_origin}"
        elif configured is not None:
            uri, origin = configured.uri, f"from install() in {module}"
        elif defined_host is not None:
            uri, origin = defined_host, f"from the mongoengine connection of {module}"
        else:
            uri, origin = DEFAULT_URI, "the default; set --mongodb-uri or MONGODB_URI"
        db = (
            self.db_name
            or _database_in(uri)
            or (configured.db if configured is not None else None)
            or (defined.get("name") if defined else None)
        )
        if not db:
            raise CliError(
                "no database named: pass --db NAME (or a URI with the database, "
                "mongodb://HOST:PORT/NAME, or -A MODULE whose install() names mongodb_db)"
            )
        return uri, origin, db

    def _open(self, uri: str, db: str) -> Database:
        timeout_ms = int(self.server_timeout * 1000)
        if not self.app_module:
            client: MongoClient = MongoClient(
                uri, serverSelectionTimeoutMS=timeout_ms, connect=False
            )
            return client[db]
        # The app's classes read and write through mongoengine's connection for the alias
        # install() named: point it at the same server (made here, with a short timeout,
        # unless this process already has that very connection).
        import mongoengine
        from mongoengine.connection import _connection_settings, get_db

        from procstatus import connection

        defined = _connection_settings.get(self.alias)
        if defined is None or (_host_of(defined), defined.get("name")) != (uri, db):
            mongoengine.disconnect(self.alias)
            mongoengine.connect(
                db=db, host=uri, alias=self.alias, connect=False,
                serverSelectionTimeoutMS=timeout_ms,
            )
            connection.configure(self.alias, uri, db)
        database: Database = get_db(self.alias)
        return database

    # --- what to look at -------------------------------------------------------------------

    def sources(self, class_name: str | None = None) -> list[Source]:
        """The Proc collections (by class with -A, by collection without), maybe one."""
        if self._sources is None:
            self._sources = self._find_sources()
        chosen = queries.select(self._sources, class_name)
        if not chosen:
            known = ", ".join(s.name for s in self._sources)
            raise CliError(f"no class or collection {class_name!r}; known: {known}")
        return chosen

    def _find_sources(self) -> list[Source]:
        database = self.connect()
        if not self.app_module:
            found = queries.discover(database)
            if not found:
                listing = ", ".join(sorted(database.list_collection_names())[:15]) or "none"
                raise CliError(
                    f"database {database.name!r} at {redact(self.uri)} holds no collection of "
                    f"Proc documents (its collections: {listing}). Check --db, or pass "
                    "-A MODULE (the module your workers load with celery -A)"
                )
            return found
        from mongoengine import DEFAULT_CONNECTION_NAME
        from mongoengine.connection import get_db

        from procstatus import connection
        from procstatus.sweeper import proc_classes

        found = []
        for cls in sorted(proc_classes(), key=lambda c: c.__name__):
            alias = cls._meta.get("db_alias") or DEFAULT_CONNECTION_NAME
            if alias == self.alias:
                class_db = database
            else:
                connection.ensure(alias)
                if not connection.is_defined(alias):
                    self.skipped.append(f"{cls.__name__} (db_alias {alias!r})")
                    continue
                class_db = get_db(alias)
            found.append(Source(cls.__name__, class_db[cls._get_collection_name()], cls))
        if not found:
            raise CliError(
                f"-A {self.app_module} defines no Proc class: import the modules that define "
                "your Proc subclasses in it (your workers need them too)"
            )
        return found

    def require_classes(self, command: str) -> None:
        if not self.app_module:
            raise CliError(
                f"procstatus {command} needs your Proc classes: pass -A MODULE (the module "
                "your workers load with celery -A), e.g. procstatus -A myapp.tasks "
                f"{command} ..."
            )

    def locate(self, text: str, class_name: str | None) -> tuple[Source, Any]:
        """The one document with id ``text``; :class:`NotFound` if none or several."""
        matches = queries.find_id(self.sources(class_name), text)
        if not matches:
            where = class_name or "any class"
            raise NotFound(f"no document with id {text} in {where}")
        if len(matches) > 1:
            names = ", ".join(s.name for s, _ in matches)
            raise NotFound(f"id {text} names documents in {names}: pass --class")
        return matches[0]

    def workers_collection(self) -> Any:
        from procstatus.liveness import WORKERS_COLLECTION

        return self.connect()[WORKERS_COLLECTION]

    def threshold(self) -> float:
        from procstatus import liveness

        return liveness.settings.threshold


class NotFound(Exception):
    """An id that names no document, or more than one."""


def _host_of(settings: dict[str, Any] | None) -> str | None:
    if not settings:
        return None
    host = settings.get("host")
    if isinstance(host, (list, tuple)):
        host = host[0] if host else None
    return str(host) if host else None


def _database_in(uri: str) -> str | None:
    """The database named in the URI's path (``mongodb://HOST/NAME``), if any."""
    match = re.match(r"^mongodb(?:\+srv)?://[^/?]*/([^?]+)", uri)
    return match.group(1) if match else None


def _import_app(module: str) -> None:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `celery -A` does
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise CliError(
                f"-A {module}: no module named {exc.name!r} here ({cwd}). Run procstatus from "
                "the directory your workers start in, or add that directory to PYTHONPATH"
            ) from None
        raise CliError(f"-A {module}: importing it failed: ModuleNotFoundError: {exc}") from None
    except Exception as exc:
        raise CliError(
            f"-A {module}: importing it failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


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
        _json_out({
            "database": session.connect().name,
            "classes": [r.as_dict(now) for r in rows],
            "skipped": session.skipped,
        })
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
    detail["children"] = _children(source, pk)
    if as_json:
        _json_out(detail)
        return
    _print_detail(detail)


def _children(source: Source, pk: Any) -> dict[str, Any] | None:
    """The children's counts by status, when the class (known through -A) has children()."""
    from procstatus.document import Proc

    cls = source.cls
    if cls is None or getattr(cls, "children", Proc.children) is Proc.children:
        return None
    parent = cls.objects(pk=pk).first()  # type: ignore[attr-defined]
    if parent is None:
        return None
    try:
        children = parent.children()
    except NotImplementedError:
        return None
    except Exception as exc:
        return {"class": None, "error": f"children() raised {type(exc).__name__}: {exc}"}
    collection = getattr(children, "_collection", None)
    query = getattr(children, "_query", None)
    if collection is None or not isinstance(query, dict):
        return {"class": None, "error": "children() did not return a mongoengine QuerySet"}
    document = getattr(children, "_document", None)
    return {
        "class": getattr(document, "__name__", None),
        "counts": queries.children_counts(collection, query),
    }


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
    from procstatus import endings, transitions

    code = EXIT_OK
    for text in ids:
        try:
            source, pk = session.locate(text, class_name)
        except NotFound as exc:
            _warn(str(exc))
            code = EXIT_ATTENTION
            continue
        assert source.cls is not None
        label = f"{source.name}({pk})"
        before = transitions.read_state(source.collection, pk) or {}
        proc = source.cls.objects(pk=pk).first()  # type: ignore[attr-defined]
        if proc is None or not endings.cancel(proc, terminate=terminate):
            now_status = proc.process_status if proc is not None else "deleted"
            _warn(f"{label} is {now_status}: nothing to cancel")
            code = EXIT_ATTENTION
            continue
        _say(
            f"cancelled {label}: was {before.get('process_status')} "
            f"({before.get('current_process')}), now FAILURE"
            + ("; its worker was told to kill the process running it" if terminate else "")
        )
    raise typer.Exit(code)


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

    code = EXIT_OK
    plan: list[tuple[Source, Any, str]] = []
    for text in ids:
        try:
            source, pk = session.locate(text, class_name)
        except NotFound as exc:
            _warn(str(exc))
            code = EXIT_ATTENTION
            continue
        state = transitions.read_state(source.collection, pk) or {}
        current = state.get("process_status")
        label = f"{source.name}({pk})"
        if current == ProcessStatus.READY.value:
            _warn(f"{label} is already READY")
            code = EXIT_ATTENTION
        elif current in {s.value for s in PROCESSING} and not force:
            _warn(
                f"{label} is {current} ({state.get('current_process')}): refused, a worker may "
                "be running it. Cancel it first (procstatus cancel), or pass --force"
            )
            code = EXIT_ATTENTION
        else:
            plan.append((source, pk, str(current)))
    if plan and _interactive() and not yes:
        for source, pk, current in plan:
            _say(f"  {source.name}({pk}): {current} → READY")
        if not typer.confirm(f"Reset {len(plan)} document(s) to READY?", default=False):
            _warn("nothing reset")
            raise typer.Exit(EXIT_ATTENTION)
    for source, pk, _current in plan:
        label = f"{source.name}({pk})"
        before = transitions.reset(source.collection, pk, force=force)
        if before is None:
            _warn(f"{label} changed meanwhile: not reset")
            code = EXIT_ATTENTION
            continue
        was = before.get("process_status")
        logger.warning(
            "operator reset %s: %s (%s) → READY%s", label, was, before.get("current_process"),
            " (forced)" if force else "",
        )
        _say(f"reset {label}: {was} → READY")
    raise typer.Exit(code)


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
    from procstatus import dispatch
    from procstatus.errors import ProcessAlreadyRunning

    sources = session.sources(class_name)
    if len(sources) > 1:
        raise CliError(f"--class {class_name} names {', '.join(s.name for s in sources)}")
    source = sources[0]
    cls = source.cls
    assert cls is not None
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
    code = EXIT_OK
    for row in rows:
        label = f"{source.name}({row.id}).{row.current_process}"
        spec = dispatch.process_spec(cls, row.current_process or "")
        if spec is None:
            _warn(f"{label}: not a @process method of {source.name}: skipped")
            code = EXIT_ATTENTION
            continue
        proc = cls.objects(pk=row.id).first()  # type: ignore[attr-defined]
        arguments = getattr(proc, "process_arguments", None)
        if proc is None or not isinstance(arguments, dict):
            _warn(f"{label}: no stored arguments (it ran before they were stored): skipped")
            code = EXIT_ATTENTION
            continue
        args = list(arguments.get("args") or [])
        kwargs = dict(arguments.get("kwargs") or {})
        call = _call_text(row.current_process or "", args, kwargs)
        if dry_run:
            _say(f"would call {source.name}({row.id}).{call}")
            continue
        try:
            getattr(proc, spec.name)(*args, **kwargs)
        except ProcessAlreadyRunning:
            _warn(f"{label}: refused, it was called again meanwhile")
            code = EXIT_ATTENTION
            continue
        except Exception as exc:
            _warn(f"{label}: the call failed: {type(exc).__name__}: {_first_line(exc)}")
            code = EXIT_ATTENTION
            continue
        _say(f"called {source.name}({row.id}).{call}: {proc.process_status}")
    raise typer.Exit(code)


def _call_text(name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    parts = [json.dumps(a) for a in args] + [f"{k}={json.dumps(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


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
        from procstatus import liveness

        marked = liveness.mark_gone(collection, threshold=limit, prune_after=PRUNE_AFTER, now=now)
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
             f"than {fmt_age(PRUNE_AFTER)}")
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
