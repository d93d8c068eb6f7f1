"""``procstatus dashboard``: serves the web dashboard (:mod:`procstatus.dashboard`) over
this session with uvicorn.

The web libraries are imported only when the command runs (the ``dashboard`` extra), so
the other commands load none of them.
"""

from __future__ import annotations

import secrets
import socket
from typing import Annotated

import typer

from procstatus.cli.common import handles_errors, say, session_of, warn
from procstatus.ops.errors import OperatorError

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


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
    try:
        import uvicorn

        from procstatus.dashboard import create_app
    except ModuleNotFoundError as missing:
        raise OperatorError(
            f"the dashboard needs {missing.name}, which is not installed: "
            "pip install 'procstatus[dashboard]'"
        ) from None
    session = session_of(ctx)
    if allow_actions:
        session.require_classes("dashboard --allow-actions")
        if token is not None and len(token) < 12:
            raise OperatorError("--token (or PROCSTATUS_DASHBOARD_TOKEN) must be at least 12 "
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
            raise OperatorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Pass "
                           "another --port, or stop what uses it") from None
    web = create_app(
        session, allow_actions=allow_actions, token=token if allow_actions else None,
        refresh_s=refresh, allowed_hosts=list(LOOPBACK_NAMES) if loopback else None,
    )
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    mode = "actions enabled" if allow_actions else "read-only"
    say(f"procstatus dashboard for {database}: {url} ({mode}; Ctrl-C stops it)")
    if allow_actions and token_set:
        say("actions need the token you set (--token or PROCSTATUS_DASHBOARD_TOKEN)")
    elif allow_actions:
        say(f"actions need this token: {token}")
        say(f"or open {url}#token={token} to act from the page")
    if not loopback:
        warn(f"warning: listening on {host}: whoever reaches this port reads every status"
              + (", and acts with the token" if allow_actions else ""))
    uvicorn.run(web, host=host, port=port, log_level="warning", access_log=False)

