"""The planner: ledger rows from due cursors, and seminar edits applied to the cursors.

The scheduler's tick is `apply_edits` then `plan_due`: its cost follows what is due, not the size
of the list, and two schedulers at once plan nothing twice (the claim clears each cursor, and the
ledger's uniqueness rule backs that up).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from mailer import ledger, store
from mailer.config import Site
from mailer.db import session_scope
from mailer.models import Delivery, Enrolment, SequenceVersion, Subscriber
from mailer.seminars import cursor
from mailer.seminars.sequences import Catalog, Sequence, Step

log = logging.getLogger(__name__)

BATCH = 500  # cursors claimed and planned in one transaction


class Due(NamedTuple):
    """A cursor whose step is due: the step's ledger row is to be added."""

    enrolment: Enrolment
    subscriber: Subscriber
    sequence: Sequence
    step: Step
    at: datetime


def plan(
    session: Session,
    site: Site,
    catalog: Catalog,
    readers: Iterable[tuple[Enrolment, Subscriber]],
    now: datetime,
) -> dict[int, int]:
    """Turn these due cursors into ledger rows, in one INSERT. The rows planned, by enrolment."""
    due: list[Due] = []
    for enrolment, subscriber in readers:
        sequence = catalog.get(enrolment.sequence_id)
        if sequence is None or enrolment.state != "active" or subscriber.state != "confirmed":
            log.warning("enrolment.unplannable enrolment_id=%s", enrolment.id)
            continue
        step = sequence.step(enrolment.next_step_id)
        if step is None:  # removed from the file: recompute from what was received
            following = sequence.step_after(cursor.received_position(session, enrolment, sequence))
            cursor.point(session, site, subscriber, sequence, enrolment, following)
            if following is None or enrolment.next_due_at is None or enrolment.next_due_at > now:
                continue
            step = following
        at = cursor.due(site, subscriber, sequence, step, enrolment)
        due.append(Due(enrolment, subscriber, sequence, step, at))
        if enrolment.next_due_at is not None:  # the tick's claim cleared it already: no ORM flush
            enrolment.next_due_at = None  # the step is in the ledger now: that row moves the cursor on
    added = ledger.add_steps(
        session,
        [
            ledger.step_row(
                subscriber_id=item.subscriber.id,
                enrolment_id=item.enrolment.id,
                sequence_id=item.sequence.id,
                step_id=item.step.id,
                due=item.at,
                now=now,
            )
            for item in due
        ],
        now,
    )
    planned = {}
    for item in due:
        row_id = added.get(item.enrolment.id)
        if row_id is None:
            row_id = _planned_before(session, site, item, now)
        if row_id is not None:
            planned[item.enrolment.id] = row_id
    return planned


def _planned_before(session: Session, site: Site, item: Due, now: datetime) -> int | None:
    """The ledger has this step for them already: skipped while they were away, it goes out again
    (they re-subscribed); sent, the cursor moves on; pending, it is on its way."""
    subscriber, sequence, step = item.subscriber, item.sequence, item.step
    existing = session.scalars(
        select(Delivery).where(
            Delivery.subscriber_id == subscriber.id,
            Delivery.sequence_id == sequence.id,
            Delivery.step_id == step.id,
        )
    ).one()
    if ledger.revive(session, existing, item.at, now):
        return existing.id
    if existing.state == ledger.State.SENT:
        cursor.point(session, site, subscriber, sequence, item.enrolment, sequence.step_after(step.position))
    return None


def plan_due(sessions: sessionmaker[Session], site: Site, catalog: Catalog, now: datetime) -> int:
    """One scheduler pass over the cursor index: plan every step due by `now`. Rows planned.

    Each batch of cursors is one transaction, so the pass never holds the database for long.
    """
    planned = 0
    while True:
        with session_scope(sessions) as session:
            ids = store.claim_due_enrolments(session, now=now, limit=BATCH)
            if not ids:
                return planned
            readers = session.execute(
                select(Enrolment, Subscriber).join(Subscriber).where(Enrolment.id.in_(ids))
            ).all()
            planned += len(plan(session, site, catalog, readers, now))


def apply_edits(session: Session, site: Site, catalog: Catalog, now: datetime) -> int:
    """Re-place the cursors of each seminar whose file changed since last applied. Cursors moved.

    A step added later reaches whoever has not received a step after its place; a removed step
    reaches nobody who has not had it; a changed day applies to whoever has not had it yet.
    Cursors with a step already in the ledger are left alone: that row moves them when it is done.
    """
    applied = {v.sequence_id: v.fingerprint for v in session.scalars(select(SequenceVersion))}
    if all(applied.get(s.id) == s.fingerprint for s in catalog.sequences.values()):
        return 0
    # Two schedulers may see the same edit: one applies it, the other then finds it applied.
    store.lock_named(session, "apply_edits")
    session.expire_all()
    versions = {v.sequence_id: v for v in session.scalars(select(SequenceVersion))}
    moved = 0
    for sequence in catalog.sequences.values():
        version = versions.get(sequence.id)
        if version is not None and version.fingerprint == sequence.fingerprint:
            continue
        moved += _replace_cursors(session, site, sequence)
        if version is None:
            session.add(
                SequenceVersion(sequence_id=sequence.id, fingerprint=sequence.fingerprint, applied_at=now)
            )
        else:
            version.fingerprint, version.applied_at = sequence.fingerprint, now
        log.info("sequence.applied sequence=%s cursors_moved=%s", sequence.id, moved)
    session.flush()
    return moved


def _replace_cursors(session: Session, site: Site, sequence: Sequence) -> int:
    """Every cursor of `sequence` with no step in the ledger, re-placed. Cursors moved."""
    in_flight = select(Delivery.enrolment_id).where(
        Delivery.sequence_id == sequence.id,
        Delivery.kind == ledger.Kind.STEP,
        Delivery.state.in_(ledger.OPEN),
    )
    rows = session.execute(
        select(Enrolment, Subscriber)
        .join(Subscriber)
        .where(
            Enrolment.sequence_id == sequence.id,
            Enrolment.state == "active",
            or_(Enrolment.next_due_at.is_not(None), Enrolment.next_step_id.is_(None)),
            Enrolment.id.not_in(in_flight),
        )
    ).all()
    moved = 0
    for enrolment, subscriber in rows:
        step = sequence.step_after(cursor.received_position(session, enrolment, sequence))
        before = (enrolment.next_step_id, enrolment.next_due_at)
        cursor.point(session, site, subscriber, sequence, enrolment, step)
        moved += before != (enrolment.next_step_id, enrolment.next_due_at)
    return moved
