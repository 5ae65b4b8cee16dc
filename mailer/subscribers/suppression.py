"""One way to stop a reader: every mail not yet handed to SMTP skipped, every seminar stopped.

Unsubscribes and permanent bounces come through `stop()` (complaints and erasure will too), so the
lock order is the same everywhere: the reader's ledger rows first (a worker sending one of them
holds its lock until its group commits, and this waits for it), then the subscriber, then the
cursors.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from mailer import ledger
from mailer.models import Subscriber
from mailer.seminars import cursor

log = logging.getLogger(__name__)

STOPPED = frozenset({"unsubscribed", "bounced"})  # subscriber states nothing is sent to


def stop(
    session: Session, subscriber: Subscriber, *, state: str, now: datetime, delivery_id: int | None = None
) -> int:
    """Stop everything for this subscriber at once, for `state` (unsubscribed, bounced); the mail
    they left from, if known. Rows skipped; idempotent."""
    if subscriber.state in STOPPED:
        return 0
    skipped = ledger.skip_open(session, subscriber_id=subscriber.id, reason=state)
    subscriber.state = state
    if state == "unsubscribed":
        subscriber.unsubscribed_at = now
        subscriber.unsubscribed_delivery_id = delivery_id
    cursor.stop_all(session, subscriber)
    log.info("subscriber.stopped subscriber_id=%s state=%s skipped=%s", subscriber.id, state, skipped)
    return skipped
