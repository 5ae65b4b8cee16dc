"""Subscribe, confirm, unsubscribe: the reader's three actions, as plain functions over a session.

These never commit: the request or command that calls them does, then wakes a worker.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Connection, Row, Table, bindparam, func, select
from sqlalchemy.orm import Session

from mailer import ledger
from mailer.config import Site
from mailer.models import Consent, Enrolment, Subscriber
from mailer.seminars import cursor, schedule
from mailer.seminars.sequences import Catalog, Sequence
from mailer.subscribers import suppression
from mailer.subscribers.addresses import Address, Refusal, check_address
from mailer.subscribers.tokens import ConfirmClaim, UnsubscribeClaim

log = logging.getLogger(__name__)

MAX_NAME = 100


@dataclass(frozen=True)
class SignupRequest:
    email: str
    name: str = ""
    sequence: str = ""
    timezone: str = ""
    client_ip: str | None = None
    form_version: str | None = None
    source: str = "form"


@dataclass(frozen=True)
class Accepted:
    """The same answer whether the address is new, pending or confirmed (no enumeration)."""

    sequence: Sequence
    confirmation_id: int | None  # the ledger row of a confirmation mail to send, if one is due


def check_name(raw: str) -> str | Refusal:
    name = raw.strip()
    # A name goes into a To: header and into pages: no line breaks, no control characters, no
    # markup (escaping would show it; refusing tells the reader at once).
    if any(not ch.isprintable() or ch in "<>" for ch in name):
        return Refusal("name")
    if len(name) > MAX_NAME:
        return Refusal("name_long")
    return name


# The sign-up's statements, built once: a rush of sign-ups runs them hundreds of times a second,
# and building an ORM statement or flushing an object costs more than SQLite takes to run it.
_SUBSCRIBERS = cast("Table", Subscriber.__table__)
_ENROLMENTS = cast("Table", Enrolment.__table__)
_FIND = (
    select(
        _SUBSCRIBERS.c.id,
        _SUBSCRIBERS.c.state,
        _ENROLMENTS.c.id.label("enrolment_id"),
        _ENROLMENTS.c.state.label("enrolment_state"),
        _ENROLMENTS.c.confirm_nonce,
    )
    .outerjoin(
        _ENROLMENTS,
        (_ENROLMENTS.c.subscriber_id == _SUBSCRIBERS.c.id)
        & (_ENROLMENTS.c.sequence_id == bindparam("sequence_id")),
    )
    .where(_SUBSCRIBERS.c.email_key == bindparam("key"))
)
Found = Row[int, str, int | None, str | None, int | None]  # what _FIND reads
_ADD_SUBSCRIBER = _SUBSCRIBERS.insert().returning(_SUBSCRIBERS.c.id)
_RENEW_SUBSCRIBER = (
    _SUBSCRIBERS.update()
    .where(_SUBSCRIBERS.c.id == bindparam("subscriber_id"))
    .values(
        name=func.coalesce(func.nullif(bindparam("new_name"), ""), _SUBSCRIBERS.c.name),
        timezone=func.coalesce(bindparam("new_timezone"), _SUBSCRIBERS.c.timezone),
    )
)
_ADD_ENROLMENT = _ENROLMENTS.insert().returning(_ENROLMENTS.c.id)
_RENEW_ENROLMENT = (
    _ENROLMENTS.update()
    .where(_ENROLMENTS.c.id == bindparam("enrolment_id"))
    .values(state="pending", next_due_at=None, confirm_nonce=bindparam("nonce"))
)
_ADD_CONSENT = cast("Table", Consent.__table__).insert()


def subscribe(
    session: Session,
    site: Site,
    catalog: Catalog,
    request: SignupRequest,
    now: datetime,
    *,
    smtputf8: Callable[[], bool] = lambda: True,
) -> Accepted | Refusal:
    """Record a sign-up and plan its confirmation mail, or say why not. Nothing is stored on
    refusal. `smtputf8`: can mail go to a local part that is not ASCII (the transport says)."""
    name = check_name(request.name)
    if isinstance(name, Refusal):
        return name
    sequence = catalog.get(request.sequence or site.default_sequence)
    if sequence is None:
        return Refusal("sequence")
    address = check_address(
        request.email,
        site.signup.blocked,
        check_deliverability=site.signup.check_deliverability,
        smtputf8=smtputf8,
    )
    if isinstance(address, Refusal):
        return address
    timezone = request.timezone.strip() if schedule.is_zone(request.timezone.strip()) else None

    db = session.connection()
    found = db.execute(_FIND, {"key": address.key, "sequence_id": sequence.id}).first()
    if found is not None and found.state == "confirmed" and found.enrolment_state == "active":
        return Accepted(sequence, None)  # already reading it: nothing to send, same answer
    subscriber_id = _keep_subscriber(db, found, address, name, timezone, now)
    enrolment_id = _keep_enrolment(db, found, subscriber_id, sequence, now)
    db.execute(
        _ADD_CONSENT,
        {
            "subscriber_id": subscriber_id,
            "sequence_id": sequence.id,
            "at": now,
            "source": request.source,
            "form_version": request.form_version,
            "client_ip": request.client_ip,
        },
    )

    if found is not None:  # a new address has had no confirmation yet
        recent = ledger.count_recent(session, subscriber_id, ledger.Kind.CONFIRM, now - timedelta(days=1))
        if recent >= site.signup.confirmations_per_day:
            log.info("signup.confirmation_capped subscriber_id=%s", subscriber_id)
            return Accepted(sequence, None)
    confirmation_id = ledger.add(
        session,
        kind=ledger.Kind.CONFIRM,
        subscriber_id=subscriber_id,
        due=now,
        now=now,
        enrolment_id=enrolment_id,
        sequence_id=sequence.id,
    )
    log.info("signup.accepted subscriber_id=%s enrolment_id=%s", subscriber_id, enrolment_id)
    return Accepted(sequence, confirmation_id)


def _keep_subscriber(
    db: Connection, found: Found | None, address: Address, name: str, timezone: str | None, now: datetime
) -> int:
    """The subscriber's id: a new row for a new address."""
    if found is None:
        values: dict[str, object] = {"email": address.email, "email_key": address.key, "name": name}
        values |= {"timezone": timezone, "state": "pending", "created_at": now}
        subscriber_id: int = db.execute(_ADD_SUBSCRIBER, values).scalar_one()
        return subscriber_id
    if found.state != "confirmed":
        # Not yet theirs to keep: the latest sign-up's details win. A confirmed subscriber's
        # details are never changed by a form anyone can fill in.
        db.execute(_RENEW_SUBSCRIBER, {"subscriber_id": found.id, "new_name": name, "new_timezone": timezone})
    return int(found.id)


def _keep_enrolment(
    db: Connection, found: Found | None, subscriber_id: int, sequence: Sequence, now: datetime
) -> int:
    """The enrolment's id, pending again and with an open confirmation (its nonce kept if open)."""
    if found is None or found.enrolment_id is None:
        values: dict[str, object] = {"subscriber_id": subscriber_id, "sequence_id": sequence.id}
        values["state"] = "pending"
        values |= {"created_at": now, "shift_days": 0, "confirm_nonce": secrets.randbelow(2**31)}
        enrolment_id: int = db.execute(_ADD_ENROLMENT, values).scalar_one()
        return enrolment_id
    nonce = found.confirm_nonce if found.confirm_nonce is not None else secrets.randbelow(2**31)
    db.execute(_RENEW_ENROLMENT, {"enrolment_id": found.enrolment_id, "nonce": nonce})
    return int(found.enrolment_id)


@dataclass(frozen=True)
class Confirmed:
    sequence: Sequence
    delivery_id: int | None  # the welcome, planned at once when it is due at entry


@dataclass(frozen=True)
class AlreadyConfirmed:
    """The link was used before, and its reader is confirmed and reading that seminar."""

    sequence: Sequence | None  # None when the seminar's file has gone since


@dataclass(frozen=True)
class Awaiting:
    """A link that would confirm: the seminar the page with the button names."""

    sequence: Sequence


def _open(
    session: Session, catalog: Catalog, claim: ConfirmClaim, *, lock: bool = False
) -> tuple[Enrolment, Subscriber, Sequence] | AlreadyConfirmed | None:
    """What a signed claim stands for now. None: unknown, replaced (a later sign-up after leaving
    made a new nonce) or stopped; every answer here is for a token this site signed."""
    enrolment = session.get(Enrolment, claim.enrolment_id, with_for_update=lock)
    if enrolment is None:
        return None
    subscriber = session.get(Subscriber, enrolment.subscriber_id)
    if subscriber is None:
        return None
    sequence = catalog.get(enrolment.sequence_id)
    if enrolment.confirm_nonce is None:
        # Using a link clears its nonce, and so does leaving (`cursor.stop_all`): a cleared one
        # whose reader is confirmed and reading the seminar was used by that reader.
        if enrolment.state == "active" and subscriber.state == "confirmed":
            return AlreadyConfirmed(sequence)
        return None
    if enrolment.confirm_nonce != claim.nonce or sequence is None:
        return None
    return enrolment, subscriber, sequence


def check_confirm(
    session: Session, catalog: Catalog, claim: ConfirmClaim
) -> Awaiting | AlreadyConfirmed | None:
    """What confirming would do, changing nothing: link scanners fetch every link in a mail, and
    their GET must not make an opt-in nobody gave."""
    found = _open(session, catalog, claim)
    if isinstance(found, tuple):
        return Awaiting(found[2])
    return found


def confirm(
    session: Session, site: Site, catalog: Catalog, claim: ConfirmClaim, now: datetime
) -> Confirmed | AlreadyConfirmed | None:
    """Confirm the address and enter the seminar; AlreadyConfirmed for a link its reader used
    before; None for one unknown or no longer usable."""
    # FOR UPDATE: a double click posts twice at once; the second waits for the first to commit
    # and finds the link used (on SQLite, BEGIN IMMEDIATE already serialises the two).
    found = _open(session, catalog, claim, lock=True)
    if not isinstance(found, tuple):
        return found
    enrolment, subscriber, sequence = found
    if subscriber.state != "confirmed":
        subscriber.state = "confirmed"
        subscriber.confirmed_at = now
    for consent in session.scalars(
        select(Consent).where(
            Consent.subscriber_id == subscriber.id,
            Consent.sequence_id == sequence.id,
            Consent.confirmed_at.is_(None),
        )
    ):
        consent.confirmed_at = now
    # Confirmation mails still queued for this enrolment would only confuse now.
    ledger.skip_open(
        session,
        subscriber_id=subscriber.id,
        reason="confirmed",
        kind=ledger.Kind.CONFIRM,
        enrolment_id=enrolment.id,
    )
    delivery_id = cursor.enter(session, site, catalog, subscriber, enrolment, now)
    log.info("signup.confirmed subscriber_id=%s enrolment_id=%s", subscriber.id, enrolment.id)
    return Confirmed(sequence, delivery_id)


@dataclass(frozen=True)
class Unsubscribed:
    already: bool  # the reader had left (or bounced) before: nothing changed now


def unsubscribe(session: Session, claim: UnsubscribeClaim, now: datetime) -> Unsubscribed | None:
    """Stop everything for this subscriber at once, including mail claimed but not yet handed to
    SMTP. None when the token names nobody. Idempotent."""
    subscriber = session.get(Subscriber, claim.subscriber_id)
    if subscriber is None:
        return None
    already = subscriber.state in suppression.STOPPED
    suppression.stop(session, subscriber, state="unsubscribed", now=now, delivery_id=claim.delivery_id)
    return Unsubscribed(already)


def has_left(session: Session, claim: UnsubscribeClaim) -> bool | None:
    """Whether nothing is sent to this link's reader any more, changing nothing (link scanners
    fetch the unsubscribe page too). None when the token names nobody."""
    subscriber = session.get(Subscriber, claim.subscriber_id)
    if subscriber is None:
        return None
    return subscriber.state in suppression.STOPPED
