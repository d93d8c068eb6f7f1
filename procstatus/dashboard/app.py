"""The dashboard's web application: HTML pages, the live fragments they poll, the JSON
endpoints, and the operator's actions (cancel, retry, reset) when allowed.

``create_app(session, ...)`` makes a Starlette application over a
:class:`procstatus.ops.session.Session`; ``procstatus dashboard`` serves it. The routes
are thin over the operator layer the CLI uses too (:mod:`procstatus.ops`): they validate
the URL (:mod:`.params`), read through :mod:`procstatus.ops` and :mod:`.data`, act
through :func:`procstatus.ops.actions.perform` and render (:mod:`.rendering`). Here the
operator layer's errors become HTTP statuses: a bad parameter or an id naming documents
of several classes 400, nothing found 404, any other ``OperatorError`` 503.

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
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

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

from procstatus.clock import server_now, utcnow
from procstatus.dashboard import data, params
from procstatus.dashboard.params import BadRequest
from procstatus.dashboard.rendering import HERE, SecurityHeaders, environment, wants_html
from procstatus.ops import actions, queries
from procstatus.ops import workers as heartbeats
from procstatus.ops.errors import AmbiguousId, NotFound, OperatorError, first_line
from procstatus.ops.session import Session
from procstatus.ops.sources import Source
from procstatus.ops.values import fmt_age, jsonable, seconds_since

logger = logging.getLogger("procstatus.dashboard")

TOKEN_HEADER = "X-Procstatus-Token"
MAX_ACTION_BODY = 4096

Handler = Callable[[Request], Response]


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
        self.env = environment()
        self.counts = data.CountsCache(self._count, interval=refresh_s)

    # --- plumbing ------------------------------------------------------------------------

    def sources(self) -> list[Source]:
        return self.session.sources()

    def database(self) -> str:
        return str(self.session.connect().name)

    def now(self) -> datetime:
        """The server's time: ages are measured on the clock that wrote the stored times."""
        return server_now(self.session.connect())

    def _count(self) -> list[queries.ClassCounts]:
        now = self.now()
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
        if wants_html(request):
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
            except (BadRequest, AmbiguousId) as exc:
                return self.error(request, 400, str(exc))
            except NotFound as exc:
                return self.error(request, 404, str(exc))
            except OperatorError as exc:
                return self.error(request, 503, str(exc))
            except PyMongoError as exc:
                return self.error(
                    request, 503, f"MongoDB failed: {type(exc).__name__}: "
                    f"{first_line(exc)}. Check that the server runs and answers.")
            except Exception:
                logger.exception("dashboard: %s %s failed", request.method, request.url.path)
                return self.error(request, 500, "internal error: the dashboard's log has the "
                                                "details")

        return endpoint

    def filters(self, request: Request) -> params.Filters:
        return params.parse_filters(self.sources(), request.query_params)

    def locate(self, request: Request) -> tuple[Source, Any]:
        """The document a path's ``{cls}/{id}`` names: the class must exist (404), the id
        be one of its ids (400); then the one rule of :meth:`Session.locate`."""
        source = params.source_named(self.sources(), request.path_params["cls"])
        text = request.path_params["id"]
        params.check_id(source, text)
        return self.session.locate(text, source.name)

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
            "counted_age": fmt_age(seconds_since(snapshot.at, utcnow())),
        }

    def processing_context(self, filters: params.Filters) -> dict[str, Any]:
        sources = params.parse_class(self.sources(), filters.class_name)
        rows = queries.list_documents(sources, filters.query())
        more = urlencode({**filters.as_params(), "limit": str(params.MAX_LIMIT)})
        return {"rows": rows, "filters": filters, "more_query": more}

    def failures_context(self, request: Request) -> dict[str, Any]:
        query = request.query_params
        sources = params.parse_class(self.sources(), params.one(query, "class"))
        window = params.parse_duration(params.one(query, "window"), "window",
                                       params.RECENT_FAILURES_WINDOW, 30 * 86400.0)
        scan = params.parse_limit(params.one(query, "scan"), params.FAILURE_SCAN,
                                  params.MAX_FAILURE_SCAN)
        found = data.failures(sources, process=params.parse_process(params.one(query, "process")),
                              window=window, scan=scan)
        return {"failures": found}

    def workers_context(self, request: Request) -> dict[str, Any]:
        threshold_text = params.one(request.query_params, "threshold")
        threshold = params.parse_duration(threshold_text, "threshold", self.session.threshold(),
                                          7 * 86400.0)
        found = heartbeats.workers(self.session.workers_collection(), threshold=threshold)
        return {"workers": found, "threshold": threshold}

    def index(self, request: Request) -> Response:
        filters = self.filters(request)
        return self.render(
            "index.html", **self.counts_context(), **self.processing_context(filters),
            **self.failures_context(request), **self.workers_context(request),
            processes=sorted({p for s in self.sources() for p in
                              actions.process_names(s.cls)}),
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
        query = request.query_params
        child_status = params.one(query, "child_status")
        statuses = None if child_status is None else params.parse_statuses(child_status)[0]
        limit = params.parse_limit(params.one(query, "child_limit"), params.CHILDREN_LIMIT)
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
        query = request.query_params
        text = params.one(query, "id")
        if text is None:
            raise BadRequest("give the id of a document: /find?id=ID")
        class_name = params.one(query, "class")
        for source in params.parse_class(self.sources(), class_name):
            params.check_id(Source(source.name, source.collection), text)
        source, pk = self.session.locate(text, class_name, hint="choose a class")
        return RedirectResponse(f"/documents/{quote(source.name, safe='')}/"
                                f"{quote(str(pk), safe='')}", status_code=303)

    # --- JSON ----------------------------------------------------------------------------

    def api_status(self, request: Request) -> Response:
        """Exactly ``procstatus status --json``."""
        sources = params.parse_class(self.sources(), params.one(request.query_params, "class"))
        now = self.now()
        rows = [queries.counts(source, now=now) for source in sources]
        report = queries.status_json(self.database(), rows, self.session.skipped, now)
        return JSONResponse(jsonable(report))

    def api_list(self, request: Request) -> Response:
        """``procstatus list --json``, with the list's filters as parameters (every
        status unless ``status`` says otherwise, newest first unless ``order=oldest``)."""
        sources = params.parse_class(self.sources(), params.one(request.query_params, "class"))
        query = params.parse_list_query(request.query_params)
        return JSONResponse(data.rows_json(queries.list_documents(sources, query)))

    def api_failures(self, request: Request) -> Response:
        found: data.Failures = self.failures_context(request)["failures"]
        return JSONResponse(jsonable(found.as_dict(self.now())))

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
        return JSONResponse(jsonable({
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
        if name not in actions.ACTIONS:
            return self.error(request, 404, f"no action {name[:40]!r}: use "
                                            f"{', '.join(actions.ACTIONS)}")
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
            terminate = params.parse_bool(form.get("terminate"), "terminate")
        except BadRequest as exc:
            return self.error(request, 400, str(exc))

        def act(request: Request) -> Response:
            source, pk = self.locate(request)
            outcome = self._act(name, source, pk, terminate=terminate)
            logger.warning("dashboard %s %s from %s: %s", name, actions.label(source, pk),
                           client, outcome.message)
            state = queries.show(source, pk)
            return JSONResponse(
                jsonable({
                    "action": name, "ok": outcome.ok, "message": outcome.message,
                    "process_status": state["process_status"] if state else None,
                }),
                status_code=200 if outcome.ok else 409,
            )

        return await self.guarded(act)(request)

    def _act(self, name: str, source: Source, pk: Any, *, terminate: bool) -> actions.Outcome:
        if source.cls is None:
            raise OperatorError(f"{name} needs the classes: start the dashboard with -A MODULE")
        return actions.perform(name, source, pk, terminate=terminate)

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
