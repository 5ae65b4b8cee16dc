"""The web app's factory: page templates, middleware, routers and the error translator.

Routes: `public` (`/`, `/subscribe`, `/confirm/…`, `/unsubscribe/…`, `/healthz`), `archive`
(`/archive`, `/archive/<id>`: the magazine's back numbers), `outbox` (`/outbox`,
on the maildir transport only), and the site's static files (`/static/…`, from `templates/static/`).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailer.i18n import translator
from mailer.runtime import Runtime
from mailer.send.maildir import MaildirTransport
from mailer.web import archive, errors, outbox, public
from mailer.web.pages import Pages

# No inline script or style anywhere, no plugin, no <base>, forms only to this site, never framed.
PAGE_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HSTS = "max-age=31536000"  # a year; not includeSubDomains: the operator's other hosts are not ours


def security_headers(base_url: str) -> dict[str, str]:
    """What every answer carries unless its route set its own (the outbox's frame does)."""
    headers = {
        # Confirm and unsubscribe URLs carry tokens: no page may hand them on in a Referer.
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": PAGE_POLICY,
    }
    # Only a site served over HTTPS may ask the browser to come back over HTTPS alone.
    if urlsplit(base_url).scheme == "https":
        headers["Strict-Transport-Security"] = HSTS
    return headers


class SecurityHeaders:
    """ASGI middleware: `headers` on every answer that does not set its own. Plain ASGI, not
    Starlette's BaseHTTPMiddleware, which costs each request a task and a stream."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                present = {name.lower() for name, _ in raw}
                raw += [(name, value) for name, value in self.headers if name not in present]
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, sending)


def site_zone(runtime: Runtime) -> Callable[[], ZoneInfo]:
    """The site's time zone: its default seminar's, read at each call (the files may change)."""

    def zone() -> ZoneInfo:
        sequence = runtime.catalog().get(runtime.site.default_sequence)
        return sequence.timezone if sequence is not None else ZoneInfo("UTC")

    return zone


def create_app(runtime: Runtime, *, broker_ok: Callable[[], bool] = lambda: True) -> FastAPI:
    site = runtime.site
    templates = runtime.settings.home / "templates"
    t = translator(site.locale)
    environment = Environment(
        loader=FileSystemLoader(templates / "pages"),
        autoescape=select_autoescape(["html"]),
        auto_reload=True,
    )
    environment.globals.update(t=t, site=site)
    pages = Pages(environment, t, templates / "pages")

    # No redirect_slashes: its redirect is built from the Host header, which the client chooses.
    app = FastAPI(title="mailer", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    # Installed before the headers below, so its middleware sits inside them: a 500 page gets them too.
    errors.install(app, pages)
    app.add_middleware(SecurityHeaders, headers=security_headers(runtime.settings.base_url))

    app.include_router(public.router(runtime, pages, broker_ok))
    app.include_router(archive.router(runtime, pages))
    transport = runtime.transport
    if isinstance(transport, MaildirTransport):
        app.include_router(
            outbox.router(transport, pages, base_url=runtime.settings.base_url, zone=site_zone(runtime))
        )
    # The site's own files: its stylesheet and the form's script (no inline script under the policy).
    app.mount("/static", StaticFiles(directory=templates / "static", check_dir=False), name="static")
    return app


def from_environment() -> FastAPI:
    """The app as each `mailer web --workers N` process builds it: settings from the environment."""
    from mailer import logs, tasks  # noqa: PLC0415 (a fresh process: set it up like the CLI)
    from mailer.config import load_settings  # noqa: PLC0415

    logs.configure()
    runtime = Runtime(load_settings())
    tasks.configure(runtime)
    return create_app(runtime, broker_ok=tasks.broker_ok)
