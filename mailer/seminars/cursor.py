"""The enrolment cursor: where each reader is in a seminar, and how it moves.

A cursor names the next step and when it is due. The planner turns a due cursor into one ledger
row and clears the cursor; when that row is settled the cursor moves to the following step, timed
from when the mail really went out (late by N local days: later steps move N days, no flood).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from mailer import ledger
from mailer.config import Site
from mailer.models import Enrolment, Subscriber
from mailer.seminars import schedule
from mailer.seminars.sequences import Catalog, Sequence, Step

log = logging.getLogger(__name__)


def received_position(session: Session, enrolment: Enrolment, sequence: Sequence) -> int:
    """The file position of the last step received (-1: none). A step added before it is skipped."""
    received = ledger.sent_steps(session, enrolment.subscriber_id, sequence.id)
    positions = [step.position for step in sequence.steps if step.id in received]
    return max(positions, default=-1)


def due_at(
    site: Site, sequence: Sequence, step: Step, *, timezone: str | None, entered_at: datetime, shift_days: int
) -> datetime:
    """When `step` is due for a reader in `timezone` (else the seminar's) with this cursor."""
    return schedule.step_due(
        sequence,
        step,
        entered_at=entered_at,
        shift_days=shift_days,
        zone=schedule.zone_for(timezone, sequence.timezone),
        quiet=site.quiet_hours,
    )


def due(site: Site, subscriber: Subscriber, sequence: Sequence, step: Step, enrolment: Enrolment) -> datetime:
    assert enrolment.entered_at is not None
    return due_at(
        site,
        sequence,
        step,
        timezone=subscriber.timezone,
        entered_at=enrolment.entered_at,
        shift_days=enrolment.shift_days,
    )


def point(
    session: Session,
    site: Site,
    subscriber: Subscriber,
    sequence: Sequence,
    enrolment: Enrolment,
    step: Step | None,
) -> None:
    """Point the cursor at `step` (None: nothing more to send for now)."""
    enrolment.next_step_id = step.id if step else None
    enrolment.next_due_at = due(site, subscriber, sequence, step, enrolment) if step else None
    session.flush()


def enter(
    session: Session,
    site: Site,
    catalog: Catalog,
    subscriber: Subscriber,
    enrolment: Enrolment,
    now: datetime,
) -> int | None:
    """Start (or resume) the seminar: the cursor at the next step not yet received.

    Resuming after an unsubscribe is like coming back from an outage: the next step goes out at
    its hour on the first day it can, and the steps after it keep their spacing. Returns the id of
    a ledger row planned at once (the day-0 welcome), if any.
    """
    from mailer.seminars import planner  # noqa: PLC0415 (the planner builds on the cursor)

    sequence = catalog.get(enrolment.sequence_id)
    assert sequence is not None
    enrolment.state = "active"
    enrolment.confirm_nonce = None
    if enrolment.entered_at is None:
        enrolment.entered_at = now
    step = sequence.step_after(received_position(session, enrolment, sequence))
    if step is not None and not step.immediate:  # an immediate step is never late: no shift
        zone = schedule.zone_for(subscriber.timezone, sequence.timezone)
        enrolment.shift_days += schedule.late_days(
            due(site, subscriber, sequence, step, enrolment), now, zone
        )
        if due(site, subscriber, sequence, step, enrolment) < now:  # today's hour has passed too
            enrolment.shift_days += 1
    point(session, site, subscriber, sequence, enrolment, step)
    if enrolment.next_due_at is not None and enrolment.next_due_at <= now:
        return planner.plan(session, site, catalog, [(enrolment, subscriber)], now).get(enrolment.id)
    return None


def enrol_after(
    session: Session,
    site: Site,
    catalog: Catalog,
    subscriber: Subscriber,
    sequence_id: str,
    now: datetime,
) -> None:
    """On finishing a seminar, join its `then` (a seminar, or a magazine's broadcast-only list)."""
    if catalog.get(sequence_id) is None:
        return
    enrolment = session.scalars(
        select(Enrolment).where(
            Enrolment.subscriber_id == subscriber.id, Enrolment.sequence_id == sequence_id
        )
    ).first()
    if enrolment is None:
        enrolment = Enrolment(
            subscriber_id=subscriber.id, sequence_id=sequence_id, created_at=now, shift_days=0
        )
        session.add(enrolment)
        session.flush()
    elif enrolment.state == "active":
        return
    enter(session, site, catalog, subscriber, enrolment, now)


@dataclass(frozen=True)
class Passed:
    """A step whose ledger row is settled (sent, failed, or dropped from the file): what moving
    the reader's cursor past it needs, read with the claim for a whole group."""

    enrolment_id: int
    enrolment_state: str
    entered_at: datetime
    shift_days: int
    sequence_id: str
    step_id: str
    due_at: datetime
    subscriber_id: int
    timezone: str | None
    delivered: bool = True  # it went out: lateness moves the later steps

    def undelivered(self) -> Passed:
        """The same step, settled without reaching the reader (it failed)."""
        return replace(self, delivered=False)


_ENROLMENTS = cast("Table", Enrolment.__table__)
_MOVE = (  # built once: the send path runs it for every group
    update(_ENROLMENTS)
    .where(_ENROLMENTS.c.id == bindparam("moved_id"), _ENROLMENTS.c.state == "active")  # none stopped since
    .values(
        next_step_id=bindparam("moved_step"),
        next_due_at=bindparam("moved_due"),
        shift_days=bindparam("moved_shift"),
    )
)


def move_past(session: Session, site: Site, catalog: Catalog, passed: list[Passed], now: datetime) -> None:
    """Move each cursor past its settled step, in one UPDATE for the group; a reader who finished
    joins the seminar's `then`."""
    changes = []
    finished = []
    for item in passed:
        sequence = catalog.get(item.sequence_id)
        if sequence is None or item.enrolment_state != "active":
            continue
        step = sequence.step(item.step_id)
        if step is not None:
            position = step.position
        else:  # dropped from the file: the place is the last step they received
            enrolment = session.get_one(Enrolment, item.enrolment_id)
            position = received_position(session, enrolment, sequence)
        shift = item.shift_days
        if item.delivered:
            zone = schedule.zone_for(item.timezone, sequence.timezone)
            shift += schedule.late_days(item.due_at, now, zone)
        following = sequence.step_after(position)
        next_due = None
        if following is not None:
            next_due = due_at(
                site,
                sequence,
                following,
                timezone=item.timezone,
                entered_at=item.entered_at,
                shift_days=shift,
            )
        changes.append(
            {
                "moved_id": item.enrolment_id,
                "moved_step": following.id if following else None,
                "moved_due": next_due,
                "moved_shift": shift,
            }
        )
        if following is None and sequence.then:
            finished.append((item.subscriber_id, sequence.then))
    if changes:
        # One statement executed for the whole group (executemany), not an ORM flush per reader.
        session.connection().execute(_MOVE, changes)
    for subscriber_id, then in finished:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is not None:
            enrol_after(session, site, catalog, subscriber, then, now)


def stop_all(session: Session, subscriber: Subscriber) -> None:
    """Every seminar of this reader stops: nothing more is planned, no open confirmation works."""
    for enrolment in session.scalars(select(Enrolment).where(Enrolment.subscriber_id == subscriber.id)):
        enrolment.state = "stopped"
        enrolment.next_due_at = None
        enrolment.confirm_nonce = None
