"""The dashboard's web application: HTML pages, the live fragments they poll, the JSON
endpoints, and the operator's actions (cancel, retry, reset) when allowed.

``create_app(session, ...)`` makes a Starlette application over a
:class:`procstatus.operating.Session` (what ``-A``, ``--mongodb-uri`` and ``--db`` name);
``procstatus dashboard`` serves it with uvicorn. Every read goes through
:mod:`procstatus.dashboard.data`, built on the CLI's own queries.

Safety: actions exist only with ``allow_actions``; each is a POST carrying the token
(header ``X-Procstatus-Token`` or form field ``token``), compared in constant time; a
request without it is refused with 403 and changes nothing; GET never acts. Every action,
done or refused, is logged (logger ``procstatus.dashboard``). What the URL says is
validated: a malformed id or filter gets a 4xx with a sentence, an error a JSON or HTML
message, never a traceback.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from procstatus import operating, queries
from procstatus.dashboard import data
from procstatus.dashboard.data import BadRequest, NotFound
from procstatus.operating import OperatorError, Session, fmt_age
from procstatus.queries import Source

logger = logging.getLogger("procstatus.dashboard")

HERE = Path(__file__).resolve().parent
TOKEN_HEADER = "X-Procstatus-Token"
ACTIONS = ("cancel", "retry", "reset")
MAX_ACTION_BODY = 4096
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
STATUS_LABEL = {"WAITING_FOR_RESULT": "WAITING"}

Handler = Callable[[Request], Response]


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


def _environment() -> jinja2.Environment:
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
    env.filters["pretty"] = lambda v: json.dumps(queries.jsonable(v), indent=2, sort_keys=True)
    env.filters["when"] = lambda m: "-" if m is None else m.strftime("%Y-%m-%d %H:%M:%S UTC")
    env.filters["clock"] = lambda m: "-" if m is None else m.strftime("%H:%M:%S")
    env.filters["pct"] = lambda f: "" if f is None else f"{f * 100:.0f}%"
    env.filters["thousands"] = lambda n: f"{n:,}"
    env.globals["STATUSES"] = queries.STATUSES
    env.globals["PROCESSING"] = queries.PROCESSING_STATUSES
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


def _wants_html(request: Request) -> bool:
    path = request.url.path
    return not path.startswith(("/api/", "/partials/", "/static/"))


class Dashboard:
    """The routes' shared state: the session, the counts cache, the templates, the token."""

    def __init__(
        self, session: Session, *, allow_actions: bool, token: str | None, refresh_s: float,
        failures_refresh_s: float,
    ) -> None:
        if allow_actions and not token:
            raise ValueError("actions need a token")
        self.session = session
        self.allow_actions = allow_actions
        self.token = token
        self.refresh_s = refresh_s
        self.failures_refresh_s = failures_refresh_s
        self.env = _environment()
        self.counts = data.CountsCache(self._count, interval=refresh_s)

    # --- plumbing ------------------------------------------------------------------------

    def sources(self) -> list[Source]:
        return self.session.sources()

    def database(self) -> str:
        return str(self.session.connect().name)

    def _count(self) -> list[queries.ClassCounts]:
        now = queries.utcnow()
        return [queries.counts(source, now=now) for source in self.sources()]

    def render(self, name: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        base = {
            "database": self.database(),
            "allow_actions": self.allow_actions,
            "refresh_ms": int(self.refresh_s * 1000),
            "failures_refresh_ms": int(self.failures_refresh_s * 1000),
            "class_names": [s.name for s in self.sources()],
        }
        html = self.env.get_template(name).render(**base, **context)
        return HTMLResponse(html, status_code=http_status)

    def error(self, request: Request, status_code: int, message: str) -> Response:
        if _wants_html(request):
            try:
                return self.render("error.html", status_code, status_code=status_code,
                                   message=message)
            except Exception:  # the database itself may be what failed
                page = self.env.get_template("error.html").render(
                    database="?", allow_actions=False, refresh_ms=0, failures_refresh_ms=0,
                    class_names=[], status_code=status_code, message=message)
                return HTMLResponse(page, status_code=status_code)
        return JSONResponse({"error": message, "status": status_code}, status_code=status_code)

    def guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Run ``handler`` in a thread (it reads MongoDB); turn errors into 4xx/5xx."""

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                return await run_in_threadpool(handler, request)
            except BadRequest as exc:
                return self.error(request, 400, str(exc))
            except NotFound as exc:
                return self.error(request, 404, str(exc))
            except OperatorError as exc:
                return self.error(request, 503, str(exc))
            except PyMongoError as exc:
                return self.error(
                    request, 503, f"MongoDB failed: {type(exc).__name__}: "
                    f"{operating.first_line(exc)}. Check that the server runs and answers.")
            except Exception:
                logger.exception("dashboard: %s %s failed", request.method, request.url.path)
                return self.error(request, 500, "internal error: the dashboard's log has the "
                                                "details")

        return endpoint

    def filters(self, request: Request) -> data.Filters:
        return data.parse_filters(self.sources(), request.query_params)

    def locate(self, request: Request) -> tuple[Source, Any]:
        return data.locate(self.sources(), request.path_params["cls"], request.path_params["id"])

    # --- the main page -------------------------------------------------------------------

    def counts_context(self) -> dict[str, Any]:
        snapshot = self.counts.get()
        if snapshot is None:
            return {"counting": True, "chart": [], "snapshot": None, "counted_age": None}
        if not snapshot.rows and snapshot.error:
            raise OperatorError(f"counting failed: {snapshot.error}")
        return {
            "counting": False,
            "chart": data.chart(snapshot),
            "snapshot": snapshot,
            "counted_age": fmt_age(queries.seconds_since(snapshot.at, queries.utcnow())),
        }

    def processing_context(self, filters: data.Filters) -> dict[str, Any]:
        sources = data.parse_class(self.sources(), filters.class_name)
        rows = queries.list_documents(sources, filters.query())
        more = urlencode({**filters.as_params(), "limit": str(data.MAX_LIMIT)})
        return {"rows": rows, "filters": filters, "more_query": more}

    def failures_context(self, request: Request) -> dict[str, Any]:
        params = request.query_params
        sources = data.parse_class(self.sources(), data.one(params, "class"))
        window = data.parse_duration(data.one(params, "window"), "window", data.FAILURE_WINDOW,
                                     30 * 86400.0)
        scan = data.parse_limit(data.one(params, "scan"), data.FAILURE_SCAN,
                                data.MAX_FAILURE_SCAN)
        found = data.failures(sources, process=data.parse_process(data.one(params, "process")),
                              window=window, scan=scan)
        return {"failures": found}

    def workers_context(self, request: Request) -> dict[str, Any]:
        threshold_text = data.one(request.query_params, "threshold")
        threshold = data.parse_duration(threshold_text, "threshold", self.session.threshold(),
                                        7 * 86400.0)
        found = queries.workers(self.session.workers_collection(), threshold=threshold)
        return {"workers": found, "threshold": threshold}

    def index(self, request: Request) -> Response:
        filters = self.filters(request)
        return self.render(
            "index.html", **self.counts_context(), **self.processing_context(filters),
            **self.failures_context(request), **self.workers_context(request),
            processes=sorted({p for s in self.sources() for p in
                              operating.process_names(s.cls)}),
        )

    def partial_counts(self, request: Request) -> Response:
        return self.render("_counts.html", **self.counts_context())

    def partial_processing(self, request: Request) -> Response:
        return self.render("_processing.html", **self.processing_context(self.filters(request)))

    def partial_failures(self, request: Request) -> Response:
        return self.render("_failures.html", **self.failures_context(request))

    def partial_workers(self, request: Request) -> Response:
        return self.render("_workers.html", **self.workers_context(request))

    # --- one document --------------------------------------------------------------------

    def document_context(self, request: Request) -> dict[str, Any]:
        source, pk = self.locate(request)
        params = request.query_params
        child_status = data.one(params, "child_status")
        statuses = None if child_status is None else data.parse_statuses(child_status)[0]
        limit = data.parse_limit(data.one(params, "child_limit"), data.CHILDREN_LIMIT)
        detail = data.document(self.sources(), source, pk, child_statuses=statuses,
                               child_limit=limit)
        return {"doc": detail, "child_status": child_status or "",
                "doc_path": f"{quote(source.name, safe='')}/{quote(str(pk), safe='')}"}

    def document_page(self, request: Request) -> Response:
        context = self.document_context(request)
        return self.render("document.html", **context)

    def partial_document(self, request: Request) -> Response:
        return self.render("_document.html", **self.document_context(request))

    def partial_children(self, request: Request) -> Response:
        return self.render("_children.html", **self.document_context(request))

    def find(self, request: Request) -> Response:
        """``/find?id=ID[&class=C]``: the document page of the one document with that id."""
        params = request.query_params
        text = data.one(params, "id")
        if text is None:
            raise BadRequest("give the id of a document: /find?id=ID")
        sources = data.parse_class(self.sources(), data.one(params, "class"))
        for source in sources:
            data.check_id(Source(source.name, source.collection), text)
        matches = queries.find_id(sources, text)
        if not matches:
            raise NotFound(f"no document with id {text[:80]}")
        if len(matches) > 1:
            names = ", ".join(s.name for s, _ in matches)
            raise BadRequest(f"id {text[:80]} names documents in {names}: choose a class")
        source, pk = matches[0]
        return RedirectResponse(f"/documents/{quote(source.name, safe='')}/"
                                f"{quote(str(pk), safe='')}", status_code=303)

    # --- JSON ----------------------------------------------------------------------------

    def api_status(self, request: Request) -> Response:
        """Exactly ``procstatus status --json``."""
        sources = data.parse_class(self.sources(), data.one(request.query_params, "class"))
        now = queries.utcnow()
        rows = [queries.counts(source, now=now) for source in sources]
        report = operating.status_json(self.database(), rows, self.session.skipped, now)
        return JSONResponse(queries.jsonable(report))

    def api_list(self, request: Request) -> Response:
        """``procstatus list --json``, with the list's filters as parameters (every
        status unless ``status`` says otherwise, newest first unless ``order=oldest``)."""
        params = request.query_params
        sources = data.parse_class(self.sources(), data.one(params, "class"))
        statuses, _ = data.parse_statuses(data.one(params, "status"), default="all")
        older = data.one(params, "older_than")
        order = (data.one(params, "order") or "newest").lower()
        if order not in {"oldest", "newest"}:
            raise BadRequest(f"order {order[:40]!r} is neither oldest nor newest")
        query = queries.ListQuery(
            statuses=statuses,
            process=data.parse_process(data.one(params, "process")),
            older_than=None if older is None else data.parse_duration(
                older, "older_than", 0, 3650 * 86400.0),
            worker=data.parse_worker(data.one(params, "worker")),
            limit=data.parse_limit(data.one(params, "limit"), data.DEFAULT_LIMIT),
            oldest_first=order == "oldest",
        )
        return JSONResponse(data.rows_json(queries.list_documents(sources, query)))

    def api_failures(self, request: Request) -> Response:
        found: data.Failures = self.failures_context(request)["failures"]
        return JSONResponse(queries.jsonable(found.as_dict(queries.utcnow())))

    def api_workers(self, request: Request) -> Response:
        """``procstatus workers --json``."""
        context = self.workers_context(request)
        return JSONResponse({"threshold_s": context["threshold"],
                             "workers": [w.as_dict() for w in context["workers"]]})

    def api_document(self, request: Request) -> Response:
        detail = self.document_context(request)["doc"]
        return JSONResponse(data.document_json(detail))

    def api_children(self, request: Request) -> Response:
        detail = self.document_context(request)["doc"]
        children = detail["children"]
        if children is None:
            raise NotFound(f"{detail['class']}({detail['id']}) has no children()")
        return JSONResponse(data.document_json({"children": children})["children"])

    def api_counts_snapshot(self, request: Request) -> Response:
        """The chart's data: the last counts (shared by every page), and their age."""
        context = self.counts_context()
        snapshot = context["snapshot"]
        return JSONResponse(queries.jsonable({
            "counting": context["counting"],
            "counted_at": snapshot.at if snapshot else None,
            "took_s": round(snapshot.took_s, 3) if snapshot else None,
            "error": snapshot.error if snapshot else None,
            "classes": [{k: v for k, v in c.items() if k != "bars"} for c in context["chart"]],
        }))

    # --- actions -------------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        """POST /api/documents/{cls}/{id}/{cancel|retry|reset}: needs the token."""
        name = request.path_params["action"]
        where = f"{request.path_params.get('cls')}({request.path_params.get('id')})"
        client = request.client.host if request.client else "?"
        if name not in ACTIONS:
            return self.error(request, 404, f"no action {name[:40]!r}: use "
                                            f"{', '.join(ACTIONS)}")
        if not self.allow_actions:
            logger.warning("dashboard %s %s from %s refused: actions are disabled", name, where,
                           client)
            return self.error(request, 403, "actions are disabled: start the dashboard with "
                                            "--allow-actions")
        body = await request.body()
        if len(body) > MAX_ACTION_BODY:
            return self.error(request, 413, "the request body is too large")
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        given = request.headers.get(TOKEN_HEADER) or form.get("token") or ""
        assert self.token is not None
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            logger.warning("dashboard %s %s from %s refused: %s token", name, where, client,
                           "wrong" if given else "no")
            return self.error(request, 403, "refused: this action needs the dashboard's token "
                                            f"(header {TOKEN_HEADER} or form field token)")
        try:
            terminate = data.parse_bool(form.get("terminate"), "terminate")
        except BadRequest as exc:
            return self.error(request, 400, str(exc))

        def act(request: Request) -> Response:
            source, pk = self.locate(request)
            outcome = self._act(name, source, pk, terminate=terminate)
            logger.warning("dashboard %s %s from %s: %s", name, operating.label(source, pk),
                           client, outcome.message)
            state = queries.show(source, pk)
            return JSONResponse(
                queries.jsonable({
                    "action": name, "ok": outcome.ok, "message": outcome.message,
                    "process_status": state["process_status"] if state else None,
                }),
                status_code=200 if outcome.ok else 409,
            )

        return await self.guarded(act)(request)

    def _act(self, name: str, source: Source, pk: Any, *, terminate: bool) -> operating.Outcome:
        if source.cls is None:
            raise OperatorError(f"{name} needs the classes: start the dashboard with -A MODULE")
        if name == "cancel":
            return operating.cancel_document(source, pk, terminate=terminate)
        if name == "reset":
            from procstatus import transitions

            refusal = operating.reset_refusal(
                source, pk, transitions.read_state(source.collection, pk), force=False,
                hint="Cancel it first",
            )
            if refusal is not None:
                return operating.Outcome(False, refusal)
            return operating.reset_document(source, pk)
        state = queries.show(source, pk) or {}
        if state.get("process_status") != "FAILURE":
            return operating.Outcome(
                False, f"{operating.label(source, pk)} is {state.get('process_status')}: only a "
                       "FAILURE is retried")
        plan = operating.plan_retry(source, pk, state.get("current_process"))
        if isinstance(plan, str):
            return operating.Outcome(False, plan)
        return plan.call()

    # --- the routes ----------------------------------------------------------------------

    def routes(self) -> list[Route | Mount]:
        g = self.guarded
        return [
            Route("/", g(self.index)),
            Route("/find", g(self.find)),
            Route("/documents/{cls}/{id}", g(self.document_page)),
            Route("/partials/counts", g(self.partial_counts)),
            Route("/partials/processing", g(self.partial_processing)),
            Route("/partials/failures", g(self.partial_failures)),
            Route("/partials/workers", g(self.partial_workers)),
            Route("/partials/documents/{cls}/{id}", g(self.partial_document)),
            Route("/partials/documents/{cls}/{id}/children", g(self.partial_children)),
            Route("/api/status", g(self.api_status)),
            Route("/api/counts", g(self.api_counts_snapshot)),
            Route("/api/list", g(self.api_list)),
            Route("/api/failures", g(self.api_failures)),
            Route("/api/workers", g(self.api_workers)),
            Route("/api/documents/{cls}/{id}", g(self.api_document)),
            Route("/api/documents/{cls}/{id}/children", g(self.api_children)),
            Route("/api/documents/{cls}/{id}/{action}", self.action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]


def create_app(
    session: Session,
    *,
    allow_actions: bool = False,
    token: str | None = None,
    refresh_s: float = 2.0,
    failures_refresh_s: float | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard over ``session``'s database.

    ``allow_actions`` offers cancel, retry and reset, each a POST carrying ``token``.
    ``refresh_s``: how often the page polls its live parts (and the counts' least age);
    ``failures_refresh_s`` (default five times that): how often it polls the failures.
    ``allowed_hosts``: the Host headers accepted (the CLI names the loopback names when
    it binds to 127.0.0.1, against DNS rebinding); ``None`` accepts any.
    """
    dashboard = Dashboard(
        session, allow_actions=allow_actions, token=token, refresh_s=refresh_s,
        failures_refresh_s=5 * refresh_s if failures_refresh_s is None else failures_refresh_s,
    )
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        messages = {404: f"nothing at {request.url.path[:200]}",
                    405: f"{request.method} is not allowed here"}
        message = messages.get(exc.status_code, str(exc.detail))
        if exc.status_code == 405:
            message += ": actions are POSTs carrying the token, and pages are read with GET"
        return dashboard.error(request, exc.status_code, message)

    app = Starlette(routes=dashboard.routes(), middleware=middleware,
                    exception_handlers={HTTPException: http_error})
    app.state.dashboard = dashboard
    return app
