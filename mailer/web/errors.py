"""One translator from failures to answers: pages get the site's HTML, `/api` gets JSON.

    HTTPException (routing's 404 and 405 among them)   -> its status; 405 keeps its Allow header
    RequestValidationError                             -> 422 invalid
    the database locked, read-only or away (db.outage) -> 503 unavailable, Retry-After; a warning
    any other exception                                -> 500, logged with its traceback

On `/api/` the body is `{"error": {"code": ..., "message": ...}}`; elsewhere it is a page.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from mailer.db import outage
from mailer.web.pages import Pages

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}
TITLES = {404: "notfound.title", 405: "notallowed.title", 503: "unavailable.title"}  # else the neutral page
BODIES = {503: "unavailable.body"}
INTERNAL = "internal error"  # nothing about the failure goes to the client
UNAVAILABLE = "the service is busy; try again in a moment"
# Seconds a client is told to wait (RFC 9110 section 10.2.3): a lock clears in seconds, a
# PostgreSQL restart in a few more; a reader only sees the page's words.
RETRY_AFTER = "10"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def is_api(path: str) -> bool:
    """The JSON API's paths; every other path is a page."""
    return path == "/api" or path.startswith("/api/")


def allowed_methods(request: Request) -> str:
    """Every method the URL takes, asked of the routes one method at a time. Starlette's own
    Allow names only the first route of the path, and the form's URL has two (GET, POST)."""
    routes = request.app.router.routes
    base = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
    return ", ".join(
        method
        for method in METHODS
        if any(route.matches({**base, "method": method})[0] is Match.FULL for route in routes)
    )


class Translator:
    """Builds the answer for a status, as JSON or as a page depending on the path."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    def answer(
        self, path: str, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        if is_api(path):
            code = CODES.get(status, "error")
            body = {"error": {"code": code, "message": message}}
            return JSONResponse(body, status_code=status, headers=headers)
        words = self.pages.t(BODIES[status]) if status in BODIES else ""
        response = self.pages.message(TITLES.get(status, "invalid.title"), words, status)
        response.headers.update(headers or {})
        return response

    def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # registered for this class only
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
        return self.answer(request.url.path, exc.status_code, message, headers)

    def invalid(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)  # registered for this class only
        # Where and what, never the input itself: it may be an address.
        message = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        return self.answer(request.url.path, 422, message)

    def internal(self, path: str) -> Response:
        return self.answer(path, 500, INTERNAL)

    def unavailable(self, path: str) -> Response:
        return self.answer(path, 503, UNAVAILABLE, {"Retry-After": RETRY_AFTER})


class Unexpected:
    """ASGI middleware: an exception no handler took is answered here. The database being locked,
    read-only or away is an outage that passes: a 503 "try again" and one warning naming the
    route and the error, no traceback and no statement (its parameters may hold an address).
    Anything else is logged with its traceback (the masking filter in `mailer.logs` takes out
    addresses) and answered with the neutral 500. Either way it stops here: Starlette's own
    catch-all would re-raise it for the server to log a second time, through handlers that mask
    nothing."""

    def __init__(self, app: ASGIApp, translator: Translator) -> None:
        self.app = app
        self.translator = translator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            route = getattr(scope.get("route"), "path", "-")  # the template: no token in the log
            kind, verb, reason = type(exc).__name__, scope["method"], outage(exc)
            if reason is not None:
                log.warning("web.unavailable type=%s reason=%s method=%s route=%s", kind, reason, verb, route)
                answer = self.translator.unavailable(scope["path"])
            else:
                log.exception("web.error type=%s method=%s route=%s", kind, verb, route)
                answer = self.translator.internal(scope["path"])
            if not started:  # else the client sees a cut-off response; the log says why
                await answer(scope, receive, send)


def install(app: FastAPI, pages: Pages) -> None:
    """Route every failure of `app` through one Translator."""
    translator = Translator(pages)
    app.add_exception_handler(HTTPException, translator.http_error)
    app.add_exception_handler(RequestValidationError, translator.invalid)
    app.add_middleware(Unexpected, translator=translator)
