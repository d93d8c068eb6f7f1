"""How the dashboard's pages are made: the Jinja2 templates with their filters, and the
security headers on every response (no inline script or style runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from procstatus.ops.values import PROCESSING_STATUSES, STATUSES, fmt_age, jsonable

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
STATUS_LABEL = {"WAITING_FOR_RESULT": "WAITING"}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response (no inline script or style runs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["age"] = fmt_age
    env.filters["span"] = _span
    env.filters["short_status"] = lambda s: STATUS_LABEL.get(s or "", s or "-")
    env.filters["idq"] = lambda pk: quote(str(pk), safe="")
    env.filters["pretty"] = lambda v: json.dumps(jsonable(v), indent=2, sort_keys=True)
    env.filters["when"] = lambda m: "-" if m is None else m.strftime("%Y-%m-%d %H:%M:%S UTC")
    env.filters["clock"] = lambda m: "-" if m is None else m.strftime("%H:%M:%S")
    env.filters["pct"] = lambda f: "" if f is None else f"{f * 100:.0f}%"
    env.filters["thousands"] = lambda n: f"{n:,}"
    env.globals["STATUSES"] = STATUSES
    env.globals["PROCESSING"] = PROCESSING_STATUSES
    return env


def _span(seconds: float) -> str:
    """A window of time in round words: ``24 h``, ``7 days``, ``90 min``."""
    if seconds >= 3 * 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return fmt_age(seconds)


def wants_html(request: Request) -> bool:
    path = request.url.path
    return not path.startswith(("/api/", "/partials/", "/static/"))
