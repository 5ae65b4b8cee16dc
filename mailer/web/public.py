"""The reader's routes: the sign-up form, confirmation, unsubscribe, and health."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mailer.db import outage, writable
from mailer.ratelimit import Bucket, LimiterUnavailableError, Rate
from mailer.runtime import Runtime
from mailer.subscribers import signup
from mailer.subscribers.addresses import Refusal
from mailer.subscribers.intake import Intake
from mailer.subscribers.tokens import ConfirmClaim
from mailer.web.pages import Pages

log = logging.getLogger(__name__)

# Every accepted sign-up is answered this long after it arrived, whether its address was new,
# pending or confirmed: the work differs by a few milliseconds, which one request could measure.
# Above the work's usual time on a quiet server; under load the queue's noise is far wider.
ANSWER_AFTER = 0.025
# The event loop's timers wake on a millisecond grid counted from when the wait began, so a fixed
# deadline would still be met later or sooner by the work's fraction of a millisecond. A deadline
# spread evenly over one grid step makes the wait's overshoot the same for every kind of answer.
TIMER_GRID = 0.001


class RateLimited:
    """Too many sign-ups from this client within the hour."""


RATE_LIMITED = RateLimited()


class Reader:
    """The handlers behind the reader's pages; each request's writes are one `Runtime.transaction`,
    which wakes a worker after the commit when mail is due at once."""

    def __init__(self, runtime: Runtime, pages: Pages, broker_ok: Callable[[], bool]) -> None:
        self.runtime = runtime
        self.site = site = runtime.site
        self.pages = pages
        self.t = pages.t
        self.broker_ok = broker_ok
        # The consent record names the exact form text the reader saw.
        form_source = (runtime.settings.home / "templates" / "pages" / "subscribe.html").read_bytes()
        self.form_version = hashlib.sha256(form_source).hexdigest()[:16]
        self.signup_rate = Rate(site.signup.per_client_per_hour, timedelta(hours=1))
        self.intake = Intake(runtime.transaction, self.record)
        t = self.t
        self.thanks = {"title": t("thanks.title"), "body": t("thanks.body"), "hint": t("thanks.hint")}
        separator = "、" if site.locale == "ja" else ", "
        self.blocked_names = separator.join(b.provider for b in site.signup.blocked)

    def form(self, status: int = 200, error: str = "", **values: str) -> HTMLResponse:
        return self.pages.page(
            "subscribe.html",
            status,
            error=error,
            values=values,
            blocked_names=self.blocked_names,
            sequence=self.runtime.catalog().get(values.get("sequence") or self.site.default_sequence),
        )

    def invalid(self, status: int) -> HTMLResponse:
        return self.pages.message("invalid.title", self.t("invalid.body"), status)

    def allowed(self, client: str) -> bool:
        """Sign-ups per client address, counted across every web process (Redis)."""
        key = "signup:" + hashlib.sha256(client.encode()).hexdigest()[:24]  # no IP kept in Redis
        try:
            bucket = Bucket(key, self.signup_rate, burst=self.signup_rate.count)
            return self.runtime.limiter.take([bucket]) == 0
        except LimiterUnavailableError:
            log.warning("ratelimit.unavailable")
            return True  # the per-address confirmation limit in the database still holds

    def subscribe_form(self, sequence: str = "") -> HTMLResponse:
        return self.form(sequence=sequence)

    async def subscribe(
        self,
        request: Request,
        email: Annotated[str, Form()] = "",
        name: Annotated[str, Form()] = "",
        sequence: Annotated[str, Form()] = "",
        timezone: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        started = time.monotonic()
        values = {"email": email, "name": name, "sequence": sequence, "timezone": timezone}
        client = request.client.host if request.client else "unknown"
        req = signup.SignupRequest(
            email=email,
            name=name,
            sequence=sequence,
            timezone=timezone,
            client_ip=client,
            form_version=self.form_version,
        )
        outcome = await self.intake.submit(req)
        if outcome is RATE_LIMITED:
            return self.form(429, self.t("error.rate"), **values)
        if isinstance(outcome, Refusal):
            return self.form(422, self.t(f"error.{outcome.reason}", provider=outcome.provider), **values)
        # The same answer for a new, a pending and a confirmed address, at the same time: the work
        # behind it differs, so it is not given before ANSWER_AFTER (and a spread) has passed.
        deadline = started + ANSWER_AFTER + random.uniform(0, TIMER_GRID)  # noqa: S311  # not a secret
        await asyncio.sleep(deadline - time.monotonic())
        return self.pages.same("message.html", **self.thanks)

    def record(self, session: Session, req: signup.SignupRequest) -> signup.Accepted | Refusal | RateLimited:
        """One sign-up, in the intake's batch: the client's limit, then the sign-up itself."""
        if not self.allowed(req.client_ip or "unknown"):
            return RATE_LIMITED
        catalog, now = self.runtime.catalog(), self.runtime.clock()
        smtputf8 = self.runtime.transport.offers_smtputf8
        return signup.subscribe(session, self.site, catalog, req, now, smtputf8=smtputf8)

    def confirm_claim(self, token: str) -> ConfirmClaim | None:
        return self.runtime.tokens.read_confirm(token, self.site.signup.confirm_days * 86400)

    def confirm_page(self, token: str) -> HTMLResponse:
        # Link scanners (Safe Links and the like) fetch every link in a mail: this page only
        # reads, and offers the button that confirms.
        claim = self.confirm_claim(token)
        if claim is None:  # forged or expired: refused before any lookup
            return self.invalid(400)
        with self.runtime.transaction() as session:
            found = signup.check_confirm(session, self.runtime.catalog(), claim)
        if isinstance(found, signup.AlreadyConfirmed):
            return self.already_confirmed(found)
        if found is None:
            return self.invalid(410)
        return self.pages.page("confirm.html", token=token, sequence=found.sequence)

    def confirm(self, token: str) -> HTMLResponse:
        # The page's button posts here with no cookie and no CSRF token: the signed token in the
        # URL is the secret, and it must work in a mail client's own browser.
        claim = self.confirm_claim(token)
        if claim is None:
            return self.invalid(400)
        with self.runtime.transaction() as session:
            outcome = signup.confirm(session, self.site, self.runtime.catalog(), claim, self.runtime.clock())
        if isinstance(outcome, signup.AlreadyConfirmed):
            return self.already_confirmed(outcome)
        if outcome is None:
            return self.invalid(410)
        return self.pages.message("confirmed.title", self.t("confirmed.body", title=outcome.sequence.title))

    def already_confirmed(self, outcome: signup.AlreadyConfirmed) -> HTMLResponse:
        if outcome.sequence is None:
            return self.pages.message("already_confirmed.title", self.t("already_confirmed.body_untitled"))
        body = self.t("already_confirmed.body", title=outcome.sequence.title)
        return self.pages.message("already_confirmed.title", body)

    def unsubscribe_page(self, token: str) -> HTMLResponse:
        # Link scanners fetch GET links: this page changes nothing, it only offers the button
        # (or says that mail has already stopped).
        claim = self.runtime.tokens.read_unsubscribe(token)
        if claim is None:
            return self.invalid(400)
        with self.runtime.transaction() as session:
            left = signup.has_left(session, claim)
        if left is None:
            return self.invalid(404)
        if left:
            return self.already_unsubscribed()
        return self.pages.page("unsubscribe.html", token=token)

    def unsubscribe(self, token: str) -> HTMLResponse:
        # RFC 8058 one-click: the mail client POSTs `List-Unsubscribe=One-Click` with no cookie and
        # follows no redirect; the page's own button posts the same. Either way: done at once.
        claim = self.runtime.tokens.read_unsubscribe(token)
        if claim is None:
            return self.invalid(400)
        with self.runtime.transaction() as session:
            outcome = signup.unsubscribe(session, claim, self.runtime.clock())
        if outcome is None:
            return self.invalid(404)
        if outcome.already:
            return self.already_unsubscribed()
        return self.pages.message("unsubscribed.title", self.t("unsubscribed.body"))

    def already_unsubscribed(self) -> HTMLResponse:
        return self.pages.message("already_unsubscribed.title", self.t("already_unsubscribed.body"))

    def healthz(self) -> JSONResponse:
        # The database is "ok" when it takes a write: a read-only one answers a SELECT and loses
        # every sign-up. It waits 1 s for a SQLite lock (one held longer is trouble), for the whole
        # answer must come within the checker's 3 s (docker-compose.yml), broker_ok's 2 s at worst.
        checks = {"database": "ok", "broker": "ok" if self.broker_ok() else "down"}
        try:
            if not writable(self.runtime.engine, wait=1.0):
                log.warning("healthz.database_down reason=read_only")
                checks["database"] = "down"
        except SQLAlchemyError as exc:
            log.warning("healthz.database_down type=%s reason=%s", type(exc).__name__, outage(exc))
            checks["database"] = "down"
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", **checks},
            status_code=200 if healthy else 503,
        )


def router(runtime: Runtime, pages: Pages, broker_ok: Callable[[], bool]) -> APIRouter:
    """The reader's routes, as DESIGN.md's HTTP table lists them."""
    reader = Reader(runtime, pages, broker_ok)
    routes = APIRouter(default_response_class=HTMLResponse)
    routes.add_api_route("/", reader.subscribe_form, methods=["GET"])
    routes.add_api_route("/subscribe", reader.subscribe_form, methods=["GET"])
    routes.add_api_route("/subscribe", reader.subscribe, methods=["POST"])
    routes.add_api_route("/confirm/{token}", reader.confirm_page, methods=["GET"])
    routes.add_api_route("/confirm/{token}", reader.confirm, methods=["POST"])
    routes.add_api_route("/unsubscribe/{token}", reader.unsubscribe_page, methods=["GET"])
    routes.add_api_route("/unsubscribe/{token}", reader.unsubscribe, methods=["POST"])
    routes.add_api_route("/healthz", reader.healthz, methods=["GET"], response_class=JSONResponse)
    return routes
