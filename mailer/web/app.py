"""The public pages: sign-up form, confirmation, one-click unsubscribe, health, local outbox."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailer.db import session_scope
from mailer.i18n import translator
from mailer.ratelimit import Bucket, LimiterUnavailableError, Rate
from mailer.runtime import Runtime
from mailer.send.maildir import MaildirTransport
from mailer.subscribers import signup
from mailer.subscribers.addresses import Refusal
from mailer.web import outbox

log = logging.getLogger(__name__)


def create_app(runtime: Runtime, *, broker_ok: Callable[[], bool] = lambda: True) -> FastAPI:
    site = runtime.site
    t = translator(site.locale)
    pages = Environment(
        loader=FileSystemLoader(runtime.settings.home / "templates" / "pages"),
        autoescape=select_autoescape(["html"]),
        auto_reload=True,
    )
    pages.globals.update(t=t, site=site)
    # The consent record names the exact form text the reader saw.
    form_source = (runtime.settings.home / "templates" / "pages" / "subscribe.html").read_bytes()
    form_version = hashlib.sha256(form_source).hexdigest()[:16]
    signup_rate = Rate(site.signup.per_client_per_hour, timedelta(hours=1))
    blocked_names = ("、" if site.locale == "ja" else ", ").join(b.provider for b in site.signup.blocked)

    app = FastAPI(title="mailer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        # Confirm and unsubscribe URLs carry tokens: no page may hand them on in a Referer.
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = pages.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def message(title_key: str, body: str, status: int = 200) -> HTMLResponse:
        return page("message.html", status, title=t(title_key), body=body)

    def form(status: int = 200, error: str = "", **values: str) -> HTMLResponse:
        return page(
            "subscribe.html",
            status,
            error=error,
            values=values,
            blocked_names=blocked_names,
            sequence=runtime.catalog().get(values.get("sequence") or site.default_sequence),
        )

    @app.exception_handler(StarletteHTTPException)
    def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return message("notfound.title", "", exc.status_code)

    @app.exception_handler(Exception)
    def unexpected(_request: Request, exc: Exception) -> Response:
        log.error("web.error type=%s", type(exc).__name__)
        return message("invalid.title", "", 500)

    def allowed(client: str) -> bool:
        """Sign-ups per client address, counted across every web process (Redis)."""
        key = "signup:" + hashlib.sha256(client.encode()).hexdigest()[:24]  # no IP kept in Redis
        try:
            return runtime.limiter.take([Bucket(key, signup_rate, burst=signup_rate.count)]) == 0
        except LimiterUnavailableError:
            log.warning("ratelimit.unavailable")
            return True  # the per-address confirmation limit in the database still holds

    @app.get("/", response_class=HTMLResponse)
    @app.get("/subscribe", response_class=HTMLResponse)
    def subscribe_form(sequence: str = "") -> HTMLResponse:
        return form(sequence=sequence)

    @app.post("/subscribe", response_class=HTMLResponse)
    def subscribe(
        request: Request,
        email: Annotated[str, Form()] = "",
        name: Annotated[str, Form()] = "",
        sequence: Annotated[str, Form()] = "",
        timezone: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        values = {"email": email, "name": name, "sequence": sequence, "timezone": timezone}
        client = request.client.host if request.client else "unknown"
        if not allowed(client):
            return form(429, t("error.rate"), **values)
        req = signup.SignupRequest(
            email=email,
            name=name,
            sequence=sequence,
            timezone=timezone,
            client_ip=client,
            form_version=form_version,
        )

        def record() -> signup.Accepted | Refusal:
            with session_scope(runtime.sessions) as session:
                return signup.subscribe(session, site, runtime.catalog(), req, runtime.clock())

        try:
            outcome = record()
        except IntegrityError:
            # The same new address signed up twice at once: the other request created the row;
            # this one now finds it and answers like any second sign-up.
            outcome = record()
        if isinstance(outcome, Refusal):
            return form(422, t(f"error.{outcome.reason}", provider=outcome.provider), **values)
        if outcome.confirmation_id is not None:
            runtime.wake()
        return page("message.html", title=t("thanks.title"), body=t("thanks.body"), hint=t("thanks.hint"))

    @app.get("/confirm/{token}", response_class=HTMLResponse)
    def confirm(token: str) -> HTMLResponse:
        claim = runtime.tokens.read_confirm(token, site.signup.confirm_days * 86400)
        if claim is None:
            return message("invalid.title", t("invalid.body"), 400)
        with session_scope(runtime.sessions) as session:
            outcome = signup.confirm(session, site, runtime.catalog(), claim, runtime.clock())
        if outcome is None:
            return message("invalid.title", t("invalid.body"), 410)
        runtime.wake()
        return message("confirmed.title", t("confirmed.body", title=outcome.sequence.title))

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe_page(token: str) -> HTMLResponse:
        # Link scanners fetch GET links: this page changes nothing, it only offers the button.
        if runtime.tokens.read_unsubscribe(token) is None:
            return message("invalid.title", t("invalid.body"), 400)
        return page("unsubscribe.html", token=token)

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe(token: str) -> HTMLResponse:
        # RFC 8058 one-click: the mail client POSTs `List-Unsubscribe=One-Click` with no cookie and
        # follows no redirect; the page's own button posts the same. Either way: done at once.
        claim = runtime.tokens.read_unsubscribe(token)
        if claim is None:
            return message("invalid.title", t("invalid.body"), 400)
        with session_scope(runtime.sessions) as session:
            found = signup.unsubscribe(session, claim, runtime.clock())
        if not found:
            return message("invalid.title", t("invalid.body"), 404)
        return message("unsubscribed.title", t("unsubscribed.body"))

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        checks = {"database": "ok", "broker": "ok" if broker_ok() else "down"}
        try:
            with runtime.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:
            checks["database"] = "down"
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", **checks},
            status_code=200 if healthy else 503,
        )

    transport = runtime.transport
    if isinstance(transport, MaildirTransport):
        outbox.mount(app, transport, page, t)
    return app


def from_environment() -> FastAPI:
    """The app as each `mailer web --workers N` process builds it: settings from the environment."""
    from mailer import logs, tasks  # noqa: PLC0415 (a fresh process: set it up like the CLI)
    from mailer.config import load_settings  # noqa: PLC0415

    logs.configure()
    runtime = Runtime(load_settings())
    tasks.configure(runtime)
    return create_app(runtime, broker_ok=tasks.broker_ok)
