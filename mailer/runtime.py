"""Everything a process needs, built once from Settings and mailer.toml and passed down."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailer import ledger
from mailer.broadcasts import issues
from mailer.config import Settings, Site, load_site
from mailer.db import make_engine, make_session_factory, session_scope, upgrade, utcnow
from mailer.deliver.jobs import Report
from mailer.deliver.pipeline import Deliverer
from mailer.mail.compose import Renderer
from mailer.ratelimit import Limiter, limiter_for
from mailer.seminars import planner
from mailer.seminars.sequences import Catalog, CatalogCache
from mailer.send import Transport, transport_from_url
from mailer.subscribers.tokens import Tokens

log = logging.getLogger(__name__)

# How long a statement waits for SQLite's write lock, held by another writer, before it fails
# (db.make_engine). A writer holds it for one transaction: a request's, or a worker's group of
# `delivery.commit_every` mails, milliseconds at the benchmarked pace. A worker may wait long:
# nobody watches it, and a failure costs it a retry. Every other runtime (pages, commands) waits
# a few seconds, and a page then answers "try again" (web.errors): a lock held longer is trouble,
# not a queue, and each waiting request holds one of the server's threads (anyio's 40), so
# 30-second waits would soon stall every page and /healthz with them. `mailer run` is a web
# process: its embedded worker waits as pages do, and recording mail SMTP took survives that
# (pipeline.record_when_back keeps trying).
WORKER_WAIT = 30.0
PAGE_WAIT = 5.0


@dataclass
class Runtime:
    settings: Settings
    transport_override: Transport | None = None
    wake: Callable[[], None] = field(default=lambda: None)  # nudges a worker after a commit
    sending: bool = False  # a worker process: no pre-ping per transaction, a longer wait for locks
    clock: Callable[[], datetime] = utcnow  # "now" for requests and tasks; tests pass a fixed one

    @cached_property
    def site(self) -> Site:
        return load_site(self.settings.home)

    @cached_property
    def catalogs(self) -> CatalogCache:
        return CatalogCache(self.settings.home)

    def catalog(self) -> Catalog:
        return self.catalogs.get()

    @cached_property
    def engine(self) -> Engine:
        wait = WORKER_WAIT if self.sending else PAGE_WAIT
        return make_engine(self.settings.database_url, pre_ping=not self.sending, wait=wait)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def secret_key(self) -> str:
        return self.settings.effective_secret_key()

    @cached_property
    def tokens(self) -> Tokens:
        return Tokens(self.secret_key)

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer(self.site, self.settings.base_url, self.tokens, self.secret_key)

    @cached_property
    def limiter(self) -> Limiter:
        """Shared through Redis when there is one, so every process counts against one budget."""
        return limiter_for(self.settings.effective_redis_url)

    @cached_property
    def configured_transport(self) -> Transport:
        return transport_from_url(self.settings.smtp_url, self.settings.home)

    @property
    def transport(self) -> Transport:
        return self.transport_override or self.configured_transport

    def deliverer(self) -> Deliverer:
        return Deliverer(
            session_factory=self.sessions,
            transport=self.transport,
            site=self.site,
            catalog=self.catalog,
            renderer=self.renderer,
            limiter=self.limiter,
        )

    def close(self) -> None:
        """Let go of pooled SMTP sessions and database connections (a process shutting down)."""
        if self.transport_override is not None:
            self.transport_override.close()
        if "configured_transport" in self.__dict__:
            self.configured_transport.close()
        if "engine" in self.__dict__:
            self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work of an edge (a request, a command), committed when the block ends; a
        worker is woken after the commit when it queued mail that is due now."""
        with session_scope(self.sessions) as session:
            yield session
            wake = session.info.pop(ledger.WAKE, False)
        if wake:
            self.wake()

    def upgrade_db(self) -> None:
        upgrade(self.engine)

    def plan(self, now: datetime) -> int:
        """Apply seminar edits, turn every due cursor into a ledger row, and move the magazine's
        issues on (start what is due, hold what is late, write audiences). Rows planned."""
        catalog = self.catalogs.get(fresh=True)  # an edit counts from the next tick
        with session_scope(self.sessions) as session:
            planner.apply_edits(session, self.site, catalog, now)
        planned = planner.plan_due(self.sessions, self.site, catalog, now)
        return planned + issues.advance(self.sessions, self.site, now).written

    def tick(self, now: Callable[[], datetime], *, max_batches: int | None = None) -> tuple[int, Report]:
        """One scheduler pass and the sending of what is due: `mailer tick` and the tests."""
        planned = self.plan(now())
        return planned, self.deliverer().run(now, max_batches=max_batches)
