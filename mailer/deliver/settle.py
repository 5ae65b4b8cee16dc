"""Settling: what became of each mail of a group, written to the ledger and the cursors.

Sent rows stay marked and their cursors move on; what SMTP did not take is put back; a temporary
failure is retried with backoff until the attempts run out; a permanent one fails the row, and a
dead mailbox stops the reader (`suppression.stop`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from mailer import ledger
from mailer.config import Site
from mailer.deliver.jobs import Job, Outcomes, Report
from mailer.errors import DeliveryError, PermanentDeliveryError
from mailer.models import Delivery, Subscriber
from mailer.seminars import cursor, schedule
from mailer.seminars.sequences import Catalog
from mailer.send.replies import suppresses
from mailer.subscribers import suppression

log = logging.getLogger(__name__)


class Settler:
    """Writes the outcomes of the send path: the site's retry policy and the seminars at hand."""

    def __init__(self, site: Site, jitter: Callable[[], float]) -> None:
        self.site = site
        self.jitter = jitter

    def group(
        self,
        session: Session,
        catalog: Catalog,
        marked: set[int],
        outcomes: Outcomes,
        token: str,
        now: datetime,
    ) -> Report:
        """Settle a group `ledger.mark_sent` marked: SMTP's refusals and deferrals put back and
        recorded, the cursors of what it took moved on."""
        report = Report()
        sent = [job for job in outcomes.sent if job.delivery_id in marked]
        report.sent += len(sent)
        if unsent := sorted(marked - {job.delivery_id for job in sent}):
            ledger.unmark_sent(session, unsent, token)
        # The group's rows are locked: the cursors read with the claim are still theirs.
        cursor.move_past(session, self.site, catalog, [j.step for j in sent if j.step is not None], now)
        ledger.defer(session, [(job.delivery_id, until) for job, until in outcomes.throttled], token)
        report.deferred += len(outcomes.throttled)
        for job, error in outcomes.failed:
            row = session.get(Delivery, job.delivery_id)
            if row is None or row.claimed_by != token:
                continue
            if isinstance(error, PermanentDeliveryError):
                report += self.fail(session, catalog, row, job, error, now)
            else:
                report += self.retry(session, row, str(error), error.code, now)
        return report

    def retry(self, session: Session, row: Delivery, error: str, code: int | None, now: datetime) -> Report:
        """A temporary failure: back to pending with backoff, until the attempts run out."""
        policy = self.site.delivery
        attempt = row.attempts + 1
        delay = None
        if attempt < policy.max_attempts:
            delay = schedule.retry_delay(attempt, policy.retry_base, policy.retry_cap, self.jitter())
        again = ledger.retry(session, row, error=error, code=code, now=now, delay=delay)
        return Report(retried=1) if again else Report(failed=1)

    def fail(
        self, session: Session, catalog: Catalog, row: Delivery, job: Job, error: DeliveryError, now: datetime
    ) -> Report:
        """A 5xx: this row fails for good; a dead mailbox is suppressed, else the seminar goes on."""
        ledger.fail(session, row, error=str(error), code=error.code, now=now)
        subscriber = session.get(Subscriber, row.subscriber_id)
        if subscriber is None:
            return Report(failed=1)
        if isinstance(error, PermanentDeliveryError) and suppresses(error):
            suppression.stop(session, subscriber, state="bounced", now=now)
        elif job.step is not None:  # this step cannot reach them: go on with the next
            cursor.move_past(session, self.site, catalog, [job.step.undelivered()], now)
        return Report(failed=1)
