"""Claim due ledger rows -> decide and render -> send in groups -> settle: what every worker runs.

The ledger is the truth. A row is claimed with a lease, its kind decides whether it may go (an
unsubscribe skips it), and it is marked sent in small groups as soon as SMTP accepts it, so a crash
re-sends at most the group in flight and never loses a mail.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailer import ledger
from mailer.config import Site
from mailer.db import session_scope, waiting_flag
from mailer.deliver.admission import Admission
from mailer.deliver.jobs import CLAIMED, PREPARE_ERROR, Claimed, Job, Outcomes, Report
from mailer.deliver.settle import Settler
from mailer.mail.compose import MailTemplate, Recipient, Renderer
from mailer.mail.kinds import Go, Hold, MailKind, Skip, kinds
from mailer.models import Delivery, Enrolment, Subscriber
from mailer.ratelimit import Limiter, LocalLimiter
from mailer.seminars import cursor
from mailer.seminars.sequences import Catalog
from mailer.send import Connection, Transport
from mailer.subscribers.addresses import wire_form

log = logging.getLogger(__name__)

RECORD_PATIENCE = 600.0  # how long mail SMTP took waits for the database to record it as sent
# How long a worker lets go of SQLite's write lock when a writer had to wait for it (db.waiting_flag):
# longer than the longest sleep of SQLite's busy handler (100 ms), so the waiter's next try gets in.
SQLITE_TURN = 0.11

# A step between render and send (a DKIM signature): the finished bytes of one job's mail.
Finisher = Callable[[Claimed, bytes], bytes]


class Deliverer:
    def __init__(  # noqa: PLR0913 (the send path's parts, keyword-only, wired by Runtime.deliverer)
        self,
        *,
        session_factory: sessionmaker[Session],
        transport: Transport,
        site: Site,
        catalog: Callable[[], Catalog],
        renderer: Renderer,
        limiter: Limiter | None = None,
        jitter: Callable[[], float] = random.random,
        finishers: Iterable[Finisher] = (),
    ) -> None:
        self.sessions = session_factory
        self.transport = transport
        self.site = site
        self.catalog = catalog
        self.renderer = renderer
        self.limiter = limiter or LocalLimiter()
        self.kinds: dict[str, MailKind] = kinds(site, renderer)
        self.finishers = tuple(finishers)
        self.settler = Settler(site, jitter)
        bind = session_factory.kw.get("bind")
        self.waiting = waiting_flag(bind) if isinstance(bind, Engine) else None
        self.waited = self._flag_time()

    def _flag_time(self) -> int:
        try:
            return self.waiting.stat().st_mtime_ns if self.waiting is not None else 0
        except FileNotFoundError:
            return 0

    def give_turn(self) -> None:
        """Between two transactions of a run: on SQLite, a writer who had to wait gets in now."""
        if self.waiting is not None and (moved := self._flag_time()) != self.waited:
            self.waited = moved
            time.sleep(SQLITE_TURN)

    def run(self, now: Callable[[], datetime], *, max_batches: int | None = None) -> Report:
        """Send everything due, batch after batch, over one transport session."""
        report = Report()
        batches = 0
        with self.transport.session() as connection:
            while max_batches is None or batches < max_batches:
                moment = now()
                token = uuid.uuid4().hex
                ids = self.claim(moment, token)
                if not ids:
                    break
                report += self.send_claimed(ids, token, moment, connection)
                batches += 1
        return report

    def claim(self, now: datetime, token: str) -> list[int]:
        """One batch of due rows, claimed for `token` in a transaction of its own."""
        delivery = self.site.delivery
        with session_scope(self.sessions) as session:
            return ledger.claim(
                session, now=now, limit=delivery.batch_size, worker=token, lease=delivery.lease
            )

    def send_claimed(self, ids: list[int], token: str, now: datetime, connection: Connection) -> Report:
        """Prepare the rows `token` claimed, then send them in groups of `commit_every`."""
        report = Report()
        catalog = self.catalog()
        with session_scope(self.sessions) as session:
            jobs = self.prepare(session, catalog, ids, token, now, report)
        size = max(1, self.site.delivery.commit_every)
        for start in range(0, len(jobs), size):
            self.give_turn()
            report += self.send_group(jobs[start : start + size], token, now, connection, catalog)
        self.give_turn()
        return report

    def prepare(
        self, session: Session, catalog: Catalog, ids: list[int], token: str, now: datetime, report: Report
    ) -> list[Job]:
        """Each claimed row's kind decides; what may go is rendered, the rest settled here."""
        rows = session.execute(
            select(*CLAIMED)
            .join(Subscriber, Delivery.subscriber_id == Subscriber.id)
            .outerjoin(Enrolment, Delivery.enrolment_id == Enrolment.id)
            .where(Delivery.id.in_(ids), Delivery.claimed_by == token)
            .order_by(Delivery.id)
        ).all()
        claimed = [Claimed(*tuple(raw)) for raw in rows]
        for kind, mail_kind in self.kinds.items():
            mail_kind.load(session, [row for row in claimed if row.kind == kind])
        templates: dict[tuple[str, ...], MailTemplate] = {}
        jobs = []
        held: list[tuple[int, datetime]] = []
        for row in claimed:
            try:
                verdict = self.kinds[row.kind].decide(row, catalog, now)
                if isinstance(verdict, Go):
                    jobs.append(self.render(templates, row, verdict, now))
            except SQLAlchemyError:
                raise  # the database, not this row: the whole batch waits for its lease
            except Exception as exc:
                # One row that cannot be prepared (a template broken after `sequences check`, an
                # address the email package refuses) is retried alone, counted and logged by id;
                # the rest of the batch goes. No traceback: it may quote the content or the address.
                log.error("delivery.prepare_failed delivery_id=%s error=%s", row.id, type(exc).__name__)  # noqa: TRY400
                failed = session.get_one(Delivery, row.id)
                report += self.settler.retry(
                    session, failed, f"{PREPARE_ERROR}{type(exc).__name__}: {exc}", None, now
                )
                continue
            if isinstance(verdict, Hold):
                held.append((row.id, verdict.until))
            elif isinstance(verdict, Skip):
                ledger.skip(session.get_one(Delivery, row.id), verdict.reason)
                report.skipped += 1
                if verdict.passed is not None:
                    cursor.move_past(session, self.site, catalog, [verdict.passed], now)
        ledger.defer(session, held, token)
        report.deferred += len(held)
        return jobs

    def render(
        self, templates: dict[tuple[str, ...], MailTemplate], row: Claimed, verdict: Go, now: datetime
    ) -> Job:
        """The job for a row that may go: its mail rendered (each template built once a batch),
        then finished (signed)."""
        if verdict.key not in templates:
            templates[verdict.key] = verdict.template()
        recipient = Recipient(row.id, row.subscriber_id, wire_form(row.email), row.name)
        message = templates[verdict.key].render(recipient, now, **verdict.extra)
        for finish in self.finishers:
            message = finish(row, message)
        return Job(row.id, row.subscriber_id, recipient.email, message, verdict.passed)

    def send_group(
        self, jobs: list[Job], token: str, now: datetime, connection: Connection, catalog: Catalog
    ) -> Report:
        """Send a group in one transaction: marked sent and locked first, SMTP, then what SMTP
        did not take put back and recorded, so nobody sees a mark before SMTP has answered."""
        outcomes = Outcomes()
        admission = Admission(self.site.limits, self.limiter)
        try:
            with session_scope(self.sessions) as session:
                # An unsubscribe committed before this lock skips the row; one arriving after it
                # waits for this commit, so no mail goes to an address that has already left.
                live = ledger.mark_sent(session, [job.delivery_id for job in jobs], token, now)
                admitted = admission.admitted([job for job in jobs if job.delivery_id in live], now, outcomes)
                for job, error in connection.send_many(self.site.sender.address, admitted):
                    if error is None:
                        outcomes.sent.append(job)
                    else:
                        outcomes.failed.append((job, error))
                return self.settler.group(session, catalog, live, outcomes, token, now)
        except OperationalError:
            if not outcomes.sent:
                raise  # nothing reached SMTP: the rows wait for their lease to lapse
            # The database went away after SMTP took these: record them once it is back.
            return self.record_when_back(outcomes, token, now, catalog)

    def record_when_back(self, outcomes: Outcomes, token: str, now: datetime, catalog: Catalog) -> Report:
        """Record a group SMTP took while the database was away, as soon as it is back."""
        # Past the lease another worker may send these rows again once the database is back;
        # recording them first is still right (a reclaimed row no longer matches our token).
        deadline = time.monotonic() + max(RECORD_PATIENCE, self.site.delivery.lease.total_seconds())
        tried = [job.delivery_id for job in outcomes.tried()]
        pause = 0.25
        while True:
            try:
                with session_scope(self.sessions) as session:
                    live = ledger.mark_sent(session, tried, token, now)
                    return self.settler.group(session, catalog, live, outcomes, token, now)
            except OperationalError:
                if time.monotonic() + pause > deadline:
                    raise  # these rows go again when their lease lapses: this group twice at most
                log.warning("delivery.record_waiting sent=%s", len(outcomes.sent))
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
