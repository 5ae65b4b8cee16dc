"""Claim due ledger rows -> render -> send -> mark: the pipeline every worker runs.

The ledger is the truth. A row is claimed with a lease, re-checked just before SMTP (an
unsubscribe skips it), and marked sent in small groups as soon as SMTP accepts it, so a crash
re-sends at most the group in flight and never loses a mail.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Self

from jinja2 import TemplateError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailer import store
from mailer.config import Site
from mailer.db import session_scope
from mailer.errors import DeliveryError, PermanentDeliveryError
from mailer.mail.compose import MailTemplate, Recipient, Renderer
from mailer.models import Delivery, DeliveryAttempt, Enrolment, Subscriber
from mailer.ratelimit import Limiter, LimiterUnavailableError, LocalLimiter
from mailer.seminars import cursor, schedule
from mailer.seminars.sequences import Catalog
from mailer.send import Connection, Transport

log = logging.getLogger(__name__)

# RFC 3463: 5.1.x is a bad address, 5.2.1 a disabled mailbox. Without an enhanced code, 550,
# 551 and 553 say the same about the mailbox. Either way the address is never written to again.
_SUPPRESS_ENHANCED = re.compile(r"\b5\.(?:1\.\d{1,3}|2\.1)\b")
_ENHANCED = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")
MAX_SLEEP = 1.0  # a rate-limit wait up to this long is slept through; a longer one defers the row
RECORD_PATIENCE = 600.0  # how long mail SMTP took waits for the database to record it as sent
LIMITER_DOWN_WAIT = 10.0  # Redis unreachable: put mail off rather than risk the relay's limits


def suppresses(error: PermanentDeliveryError) -> bool:
    text = str(error)
    if _ENHANCED.search(text):
        return bool(_SUPPRESS_ENHANCED.search(text))
    return error.code in {550, 551, 553}


@dataclass
class Report:
    """What a run did, counted: skipped and deferred rows are expected outcomes, not errors."""

    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    retried: int = 0
    failed: int = 0

    def __iadd__(self, other: Report) -> Self:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


# What preparing a claimed row reads, in one query for the batch (no ORM objects on the send path).
CLAIMED = (
    Delivery.id,
    Delivery.kind,
    Delivery.sequence_id,
    Delivery.step_id,
    Delivery.subscriber_id,
    Subscriber.email,
    Subscriber.name,
    Subscriber.state.label("subscriber_state"),
    Subscriber.timezone,
    Delivery.enrolment_id,
    Enrolment.state.label("enrolment_state"),
    Enrolment.confirm_nonce,
    Enrolment.entered_at,
    Enrolment.shift_days,
    Delivery.due_at,
)


@dataclass
class Outcomes:
    """What SMTP (or the rate limits) made of a group."""

    sent: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, DeliveryError]] = field(default_factory=list)
    throttled: list[tuple[Job, datetime]] = field(default_factory=list)

    def tried(self) -> list[Job]:
        """Every job of the group that got this far: sent, refused or put off."""
        return [*self.sent, *(job for job, _ in self.failed), *(job for job, _ in self.throttled)]


@dataclass(frozen=True)
class Job:
    """A claimed row, rendered and ready for SMTP."""

    delivery_id: int
    subscriber_id: int
    recipient: str
    message: bytes
    step: cursor.Sent | None = None  # a seminar step: what moving the cursor past it needs


def _attempt(
    session: Session, delivery: Delivery, now: datetime, code: int | None, text: str, outcome: str
) -> None:
    session.add(
        DeliveryAttempt(delivery_id=delivery.id, at=now, code=code, text=text[:1000], outcome=outcome)
    )


class Deliverer:
    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        transport: Transport,
        site: Site,
        catalog: Callable[[], Catalog],
        renderer: Renderer,
        limiter: Limiter | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.sessions = session_factory
        self.transport = transport
        self.site = site
        self.catalog = catalog
        self.renderer = renderer
        self.limiter = limiter or LocalLimiter()
        self.jitter = jitter

    def run(self, now: Callable[[], datetime], *, max_batches: int | None = None) -> Report:
        """Send everything due, batch after batch, over one transport session."""
        report = Report()
        batches = 0
        with self.transport.session() as connection:
            while max_batches is None or batches < max_batches:
                moment = now()
                token = uuid.uuid4().hex
                with session_scope(self.sessions) as session:
                    ids = store.claim_deliveries(
                        session,
                        now=moment,
                        limit=self.site.delivery.batch_size,
                        worker=token,
                        lease=self.site.delivery.lease,
                    )
                if not ids:
                    break
                report += self._batch(ids, token, moment, connection)
                batches += 1
        return report

    def _batch(self, ids: list[int], token: str, now: datetime, connection: Connection) -> Report:
        report = Report()
        catalog = self.catalog()
        templates: dict[tuple[str, ...], MailTemplate] = {}
        jobs: list[Job] = []
        with session_scope(self.sessions) as session:
            rows = session.execute(
                select(*CLAIMED)
                .join(Subscriber, Delivery.subscriber_id == Subscriber.id)
                .outerjoin(Enrolment, Delivery.enrolment_id == Enrolment.id)
                .where(Delivery.id.in_(ids), Delivery.claimed_by == token)
                .order_by(Delivery.id)
            ).all()
            for row in rows:
                job = self._prepare(session, catalog, templates, row, now, report)
                if job is not None:
                    jobs.append(job)
        size = max(1, self.site.delivery.commit_every)
        for start in range(0, len(jobs), size):
            report += self._send_group(jobs[start : start + size], token, now, connection, catalog)
        return report

    def _prepare(
        self,
        session: Session,
        catalog: Catalog,
        templates: dict[tuple[str, ...], MailTemplate],
        row: Any,  # a Row of CLAIMED
        now: datetime,
        report: Report,
    ) -> Job | None:
        """Render a claimed row, or settle it here: skipped, deferred by quiet hours, or retried."""
        sequence = catalog.get(row.sequence_id)
        extra: dict[str, object] = {}
        if row.kind == "confirm":
            if row.enrolment_state != "pending" or row.confirm_nonce is None:
                self._skip(session.get_one(Delivery, row.id), "not_pending", report)
                return None
            if sequence is None:
                self._skip(session.get_one(Delivery, row.id), "sequence_removed", report)
                return None
            key: tuple[str, ...] = ("confirm", sequence.id)
            if key not in templates:
                templates[key] = self.renderer.confirm(sequence)
            token = self.renderer.tokens.confirm(row.enrolment_id, row.confirm_nonce)
            extra = {
                "confirm_url": f"{self.renderer.base_url}/confirm/{token}",
                "confirm_days": self.site.signup.confirm_days,
            }
        else:
            if row.subscriber_state != "confirmed":
                self._skip(session.get_one(Delivery, row.id), row.subscriber_state, report)
                return None
            if row.enrolment_state != "active":
                self._skip(session.get_one(Delivery, row.id), "not_enrolled", report)
                return None
            step = sequence.step(row.step_id) if sequence else None
            if sequence is None or step is None:
                # A step removed from the file is sent to no one who has not had it.
                delivery = session.get_one(Delivery, row.id)
                self._skip(delivery, "step_removed", report)
                subscriber = session.get_one(Subscriber, row.subscriber_id)
                enrolment = session.get_one(Enrolment, row.enrolment_id)
                cursor.after_sent(session, self.site, catalog, subscriber, enrolment, delivery, now)
                return None
            if not step.immediate:
                zone = schedule.zone_for(row.timezone, sequence.timezone)
                held = schedule.hold_for_quiet_hours(now, zone, self.site.quiet_hours)
                if held > now:  # late into the quiet hours: wait for the morning
                    delivery = session.get_one(Delivery, row.id)
                    delivery.state, delivery.available_at, delivery.claimed_by = "pending", held, None
                    report.deferred += 1
                    return None
            key = ("step", sequence.id, step.id)
            if key not in templates:
                templates[key] = self.renderer.step(sequence, step)
        recipient = Recipient(row.id, row.subscriber_id, row.email, row.name)
        try:
            message = templates[key].render(recipient, now, **extra)
        except (TemplateError, OSError) as exc:
            # A template broken after `sequences check`: keep the mail, retry once it is fixed. No
            # traceback in the log: it may quote the content; the row keeps the error text.
            log.error("delivery.render_failed delivery_id=%s error=%s", row.id, type(exc).__name__)  # noqa: TRY400
            self._retry(session, session.get_one(Delivery, row.id), f"render: {exc}", None, now, report)
            return None
        moves = None
        if row.kind == "step" and row.entered_at is not None:
            moves = cursor.Sent(
                row.enrolment_id,
                row.enrolment_state,
                row.entered_at,
                row.shift_days,
                row.sequence_id,
                row.step_id,
                row.due_at,
                row.subscriber_id,
                row.timezone,
            )
        return Job(row.id, row.subscriber_id, row.email, message, moves)

    def _skip(self, delivery: Delivery, reason: str, report: Report) -> None:
        delivery.state, delivery.skip_reason, delivery.claimed_by = "skipped", reason, None
        report.skipped += 1
        log.info("delivery.skipped delivery_id=%s reason=%s", delivery.id, reason)

    def _retry(
        self,
        session: Session,
        delivery: Delivery,
        error: str,
        code: int | None,
        now: datetime,
        report: Report,
    ) -> None:
        """A temporary failure: back to pending with backoff, until the attempts run out."""
        settings = self.site.delivery
        delivery.attempts += 1
        delivery.last_error = error[:1000]
        delivery.claimed_by = None
        gave_up = delivery.attempts >= settings.max_attempts
        _attempt(session, delivery, now, code, error, "failed" if gave_up else "retry")
        if gave_up:
            delivery.state = "failed"
            report.failed += 1
            log.warning("delivery.failed delivery_id=%s attempts=%s", delivery.id, delivery.attempts)
            return
        delay = schedule.retry_delay(
            delivery.attempts, settings.retry_base, settings.retry_cap, self.jitter()
        )
        delivery.state, delivery.available_at = "pending", now + delay
        report.retried += 1
        log.info(
            "delivery.retry delivery_id=%s attempts=%s in_seconds=%d",
            delivery.id,
            delivery.attempts,
            delay.total_seconds(),
        )

    def _send_group(
        self, jobs: list[Job], token: str, now: datetime, connection: Connection, catalog: Catalog
    ) -> Report:
        """Send a group in one transaction: marked sent and locked first, SMTP, then what SMTP
        did not take put back and recorded, so nobody sees a mark before SMTP has answered."""
        outcomes = Outcomes()
        try:
            with session_scope(self.sessions) as session:
                # An unsubscribe committed before this lock skips the row; one arriving after it
                # waits for this commit, so no mail goes to an address that has already left.
                live = store.mark_sent(session, [job.delivery_id for job in jobs], token, now)
                admitted = self._admitted([job for job in jobs if job.delivery_id in live], now, outcomes)
                for job, error in connection.send_many(self.site.sender.address, admitted):
                    if error is None:
                        outcomes.sent.append(job)
                    else:
                        outcomes.failed.append((job, error))
                report = Report()
                self._record(session, live, outcomes, token, now, catalog, report)
        except OperationalError:
            if not outcomes.sent:
                raise  # nothing reached SMTP: the rows wait for their lease to lapse
            # The database went away after SMTP took these: record them once it is back.
            report = self._record_when_back(outcomes, token, now, catalog)
        return report

    def _admitted(self, jobs: list[Job], now: datetime, outcomes: Outcomes) -> Iterator[Job]:
        """The jobs the rate limits let go now, each as SMTP is ready for it; the others put off."""
        blocked: dict[tuple[str, ...], float] = {}
        for job in jobs:
            if wait := self._admit(job, blocked):
                outcomes.throttled.append((job, now + timedelta(seconds=wait)))
            else:
                yield job

    def _admit(self, job: Job, blocked: dict[tuple[str, ...], float]) -> float:
        """Wait out the rate limits: 0 when the mail may go now, else seconds to put it off by."""
        buckets = self.site.limits.buckets_for(job.recipient)
        if not buckets:
            return 0.0
        signature = tuple(b.key for b in buckets)
        if (until := blocked.get(signature, 0.0) - time.monotonic()) > 0:
            return until
        while True:
            try:
                wait = self.limiter.take(buckets)
            except LimiterUnavailableError:
                log.warning("ratelimit.unavailable")
                wait = LIMITER_DOWN_WAIT
            if wait == 0:
                return 0.0
            if wait > MAX_SLEEP:
                blocked[signature] = time.monotonic() + wait
                return wait
            time.sleep(wait)

    def _record_when_back(self, outcomes: Outcomes, token: str, now: datetime, catalog: Catalog) -> Report:
        # Past the lease another worker may send these rows again once the database is back;
        # recording them first is still right (a reclaimed row no longer matches our token).
        deadline = time.monotonic() + max(RECORD_PATIENCE, self.site.delivery.lease.total_seconds())
        tried = [job.delivery_id for job in outcomes.tried()]
        pause = 0.25
        while True:
            report = Report()
            try:
                with session_scope(self.sessions) as session:
                    live = store.mark_sent(session, tried, token, now)
                    self._record(session, live, outcomes, token, now, catalog, report)
            except OperationalError:
                if time.monotonic() + pause > deadline:
                    raise  # these rows go again when their lease lapses: this group twice at most
                log.warning("delivery.record_waiting sent=%s", len(outcomes.sent))
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            else:
                return report

    def _record(
        self,
        session: Session,
        marked: set[int],
        outcomes: Outcomes,
        token: str,
        now: datetime,
        catalog: Catalog,
        report: Report,
    ) -> None:
        """Settle a group `mark_sent` marked: SMTP's refusals and deferrals put back and recorded,
        the cursors of what it took moved on."""
        sent = [job for job in outcomes.sent if job.delivery_id in marked]
        report.sent += len(sent)
        if unsent := sorted(marked - {job.delivery_id for job in sent}):
            store.unmark_sent(session, unsent, token)
        # The group's rows are locked: the cursors read with the claim are still theirs.
        cursor.move_past_sent(session, self.site, catalog, [j.step for j in sent if j.step is not None], now)
        for job, until in outcomes.throttled:
            session.execute(
                update(Delivery)
                .where(Delivery.id == job.delivery_id, Delivery.claimed_by == token)
                .values(state="pending", available_at=until, claimed_by=None),
                execution_options={"synchronize_session": False},
            )
            report.deferred += 1
        for job, error in outcomes.failed:
            failed = session.get(Delivery, job.delivery_id)
            if failed is None or failed.claimed_by != token:
                continue
            if isinstance(error, PermanentDeliveryError):
                self._fail(session, failed, error, now, catalog, report)
            else:
                self._retry(session, failed, str(error), error.code, now, report)

    def _fail(
        self,
        session: Session,
        delivery: Delivery,
        error: PermanentDeliveryError,
        now: datetime,
        catalog: Catalog,
        report: Report,
    ) -> None:
        """A 5xx: this row fails for good; a dead mailbox is suppressed, else the seminar goes on."""
        delivery.state, delivery.claimed_by = "failed", None
        delivery.attempts += 1
        delivery.last_error = str(error)[:1000]
        _attempt(session, delivery, now, error.code, str(error), "failed")
        report.failed += 1
        log.warning("delivery.failed delivery_id=%s code=%s", delivery.id, error.code)
        subscriber = session.get(Subscriber, delivery.subscriber_id)
        if subscriber is None:
            return
        if suppresses(error):
            subscriber.state = "bounced"
            cursor.stop_all(session, subscriber)
            store.skip_open_deliveries(session, subscriber_id=subscriber.id, reason="bounced")
            log.info("subscriber.suppressed subscriber_id=%s", subscriber.id)
            return
        enrolment = session.get(Enrolment, delivery.enrolment_id) if delivery.kind == "step" else None
        if enrolment is not None:  # this step cannot reach them: go on with the next
            cursor.after_sent(session, self.site, catalog, subscriber, enrolment, delivery, now)
