"""The web app's factory: page templates, middleware, routers and the error translator.

Routes: `public` (`/`, `/subscribe`, `/confirm/…`, `/unsubscribe/…`, `/healthz`), `outbox` (`/outbox`,
on the maildir transport only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from mailer.i18n import translator
from mailer.runtime import Runtime
from mailer.send.maildir import MaildirTransport
from mailer.web import errors, outbox, public
from mailer.web.pages import Pages


def create_app(runtime: Runtime, *, broker_ok: Callable[[], bool] = lambda: True) -> FastAPI:
    site = runtime.site
    t = translator(site.locale)
    environment = Environment(
        loader=FileSystemLoader(runtime.settings.home / "templates" / "pages"),
        autoescape=select_autoescape(["html"]),
        auto_reload=True,
    )
    environment.globals.update(t=t, site=site)
    pages = Pages(environment, t)

    app = FastAPI(title="mailer", docs_url=None, redoc_url=None, openapi_url=None)
    # Installed before the headers below, so its middleware sits inside them: a 500 page gets them too.
    errors.install(app, pages)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        # Confirm and unsubscribe URLs carry tokens: no page may hand them on in a Referer.
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    app.include_router(public.router(runtime, pages, broker_ok))
    transport = runtime.transport
    if isinstance(transport, MaildirTransport):
        outbox.mount(app, transport, pages)
    return app


def from_environment() -> FastAPI:
    """The app as each `mailer web --workers N` process builds it: settings from the environment."""
    from mailer import logs, tasks  # noqa: PLC0415 (a fresh process: set it up like the CLI)
    from mailer.config import load_settings  # noqa: PLC0415

    logs.configure()
    runtime = Runtime(load_settings())
    tasks.configure(runtime)
    return create_app(runtime, broker_ok=tasks.broker_ok)
