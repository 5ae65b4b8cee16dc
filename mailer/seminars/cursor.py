"""The enrolment cursor: where each subscriber is in a seminar, and the ledger rows it plans.

A cursor names the next step and when it is due. The scheduler turns a due cursor into one
ledger row and clears the cursor; when that row is sent the cursor moves to the following step,
timed from when the mail really went out (late by N local days: later steps move N days).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailer import store
from mailer.config import Site
from mailer.db import session_scope
from mailer.models import Delivery, Enrolment, SequenceVersion, Subscriber
from mailer.seminars import schedule
from mailer.seminars.sequences import Catalog, Sequence, Step

log = logging.getLogger(__name__)


def _zone(subscriber: Subscriber, sequence: Sequence) -> schedule.ZoneInfo:
    return schedule.zone_for(subscriber.timezone, sequence.timezone)


def received_position(session: Session, enrolment: Enrolment, sequence: Sequence) -> int:
    """The file position of the last step received (-1: none). A step added before it is skipped."""
    received = store.sent_steps(session, enrolment.subscriber_id, sequence.id)
    positions = [step.position for step in sequence.steps if step.id in received]
    return max(positions, default=-1)


def _due_at(
    site: Site, sequence: Sequence, step: Step, *, timezone: str | None, entered_at: datetime, shift_days: int
) -> datetime:
    return schedule.step_due(
        sequence,
        step,
        entered_at=entered_at,
        shift_days=shift_days,
        zone=schedule.zone_for(timezone, sequence.timezone),
        quiet=site.quiet_hours,
    )


def _due(
    site: Site, subscriber: Subscriber, sequence: Sequence, step: Step, enrolment: Enrolment
) -> datetime:
    assert enrolment.entered_at is not None
    return _due_at(
        site,
        sequence,
        step,
        timezone=subscriber.timezone,
        entered_at=enrolment.entered_at,
        shift_days=enrolment.shift_days,
    )


def set_cursor(
    session: Session,
    site: Site,
    subscriber: Subscriber,
    sequence: Sequence,
    enrolment: Enrolment,
    step: Step | None,
) -> None:
    """Point the cursor at `step` (None: nothing more to send for now)."""
    enrolment.next_step_id = step.id if step else None
    enrolment.next_due_at = _due(site, subscriber, sequence, step, enrolment) if step else None
    session.flush()


def plan(
    session: Session,
    site: Site,
    subscriber: Subscriber,
    sequence: Sequence,
    enrolment: Enrolment,
    now: datetime,
) -> int | None:
    """Turn a due cursor into its ledger row; the row's id, or None when nothing was planned."""
    step = sequence.step(enrolment.next_step_id)
    if step is None:  # the step was removed from the file: recompute from what was received
        set_cursor(
            session,
            site,
            subscriber,
            sequence,
            enrolment,
            sequence.step_after(received_position(session, enrolment, sequence)),
        )
        step = sequence.step(enrolment.next_step_id)
        if step is None or enrolment.next_due_at is None or enrolment.next_due_at > now:
            return None
    due = _due(site, subscriber, sequence, step, enrolment)
    enrolment.next_due_at = None
    planned = store.insert_step_deliveries(session, [_step_row(subscriber, enrolment, step, due, now)])
    if enrolment.id in planned:
        return planned[enrolment.id]
    return _planned_before(session, site, subscriber, sequence, enrolment, step, due)


def _step_row(
    subscriber: Subscriber, enrolment: Enrolment, step: Step, due: datetime, now: datetime
) -> dict[str, object]:
    return {
        "subscriber_id": subscriber.id,
        "kind": "step",
        "enrolment_id": enrolment.id,
        "sequence_id": enrolment.sequence_id,
        "step_id": step.id,
        "state": "pending",
        "due_at": due,
        "available_at": due,
        "attempts": 0,
        "created_at": now,
    }


def _planned_before(
    session: Session,
    site: Site,
    subscriber: Subscriber,
    sequence: Sequence,
    enrolment: Enrolment,
    step: Step,
    due: datetime,
) -> int | None:
    """The ledger has this step for them already: skipped while they were away, it goes out again
    (they re-subscribed); sent, the cursor moves on; pending, it is on its way."""
    existing = session.scalars(
        select(Delivery).where(
            Delivery.subscriber_id == subscriber.id,
            Delivery.sequence_id == sequence.id,
            Delivery.step_id == step.id,
        )
    ).one()
    if existing.state in {"skipped", "failed"}:
        existing.state = "pending"
        existing.due_at = existing.available_at = due
        existing.attempts = 0
        existing.skip_reason = existing.last_error = existing.claimed_by = None
        session.flush()
        return existing.id
    if existing.state == "sent":
        set_cursor(session, site, subscriber, sequence, enrolment, sequence.step_after(step.position))
    return None


def plan_due(
    sessions: sessionmaker[Session], site: Site, catalog: Catalog, now: datetime, limit: int = 500
) -> int:
    """One scheduler pass over the cursor index: plan every step due by `now`. Rows planned.

    Each batch of `limit` cursors is one transaction: claimed, and its ledger rows added in one
    INSERT, so the pass costs what is due and never holds the database for long.
    """
    planned = 0
    while True:
        with session_scope(sessions) as session:
            ids = store.claim_due_enrolments(session, now=now, limit=limit)
            if not ids:
                return planned
            planned += _plan_batch(session, site, catalog, ids, now)


def _plan_batch(session: Session, site: Site, catalog: Catalog, ids: list[int], now: datetime) -> int:
    rows = session.execute(select(Enrolment, Subscriber).join(Subscriber).where(Enrolment.id.in_(ids))).all()
    planned = 0
    due: list[tuple[Enrolment, Subscriber, Sequence, Step, datetime]] = []
    for enrolment, subscriber in rows:
        sequence = catalog.get(enrolment.sequence_id)
        if sequence is None or enrolment.state != "active" or subscriber.state != "confirmed":
            log.warning("enrolment.unplannable enrolment_id=%s", enrolment.id)
            continue
        step = sequence.step(enrolment.next_step_id)
        if step is None:  # removed from the file: plan() finds what comes instead
            planned += plan(session, site, subscriber, sequence, enrolment, now) is not None
            continue
        # claim_due_enrolments already cleared next_due_at
        at = _due(site, subscriber, sequence, step, enrolment)
        due.append((enrolment, subscriber, sequence, step, at))
    inserted = store.insert_step_deliveries(session, [_step_row(s, e, st, t, now) for e, s, _, st, t in due])
    for enrolment, subscriber, sequence, step, at in due:
        if (
            enrolment.id in inserted
            or _planned_before(session, site, subscriber, sequence, enrolment, step, at) is not None
        ):
            planned += 1
    return planned


def enter(
    session: Session,
    site: Site,
    subscriber: Subscriber,
    sequence: Sequence,
    enrolment: Enrolment,
    now: datetime,
) -> int | None:
    """Start (or resume) the seminar: the cursor at the next step not yet received.

    Resuming after an unsubscribe is like coming back from an outage: the next step goes out at
    its hour on the first day it can, and the steps after it keep their spacing. Returns the id of
    a ledger row planned at once (the day-0 welcome), if any.
    """
    enrolment.state = "active"
    enrolment.confirm_nonce = None
    if enrolment.entered_at is None:
        enrolment.entered_at = now
    step = sequence.step_after(received_position(session, enrolment, sequence))
    if step is not None and not step.immediate:
        zone = _zone(subscriber, sequence)
        due = _due(site, subscriber, sequence, step, enrolment)
        if due < now:
            enrolment.shift_days += max(
                0, (schedule.local_date(now, zone) - schedule.local_date(due, zone)).days
            )
            if _due(site, subscriber, sequence, step, enrolment) < now:
                enrolment.shift_days += 1
    set_cursor(session, site, subscriber, sequence, enrolment, step)
    if enrolment.next_due_at is not None and enrolment.next_due_at <= now:
        return plan(session, site, subscriber, sequence, enrolment, now)
    return None


@dataclass(frozen=True)
class Sent:
    """What moving a cursor past a sent step needs, read in one query for a whole group."""

    enrolment_id: int
    enrolment_state: str
    entered_at: datetime
    shift_days: int
    sequence_id: str
    step_id: str
    due_at: datetime
    subscriber_id: int
    timezone: str | None


def _following(
    site: Site, sequence: Sequence, sent: Sent, delivered: bool, now: datetime, position: int
) -> tuple[Step | None, int, datetime | None]:
    """The step after `position`, the new day shift, and when that step is due."""
    shift = sent.shift_days
    if delivered:
        shift += schedule.late_days(sent.due_at, now, schedule.zone_for(sent.timezone, sequence.timezone))
    following = sequence.step_after(position)
    if following is None:
        return None, shift, None
    due = _due_at(
        site, sequence, following, timezone=sent.timezone, entered_at=sent.entered_at, shift_days=shift
    )
    return following, shift, due


def after_sent(
    session: Session,
    site: Site,
    catalog: Catalog,
    subscriber: Subscriber,
    enrolment: Enrolment,
    delivery: Delivery,
    now: datetime,
) -> None:
    """Move the cursor past a step that went out (or was dropped from the file, or failed)."""
    sequence = catalog.get(enrolment.sequence_id)
    if sequence is None or enrolment.state != "active" or enrolment.entered_at is None:
        return
    assert delivery.step_id is not None
    sent = Sent(
        enrolment.id,
        enrolment.state,
        enrolment.entered_at,
        enrolment.shift_days,
        sequence.id,
        delivery.step_id,
        delivery.due_at,
        subscriber.id,
        subscriber.timezone,
    )
    step = sequence.step(delivery.step_id)
    position = step.position if step else received_position(session, enrolment, sequence)
    following, enrolment.shift_days, enrolment.next_due_at = _following(
        site, sequence, sent, delivery.state == "sent", now, position
    )
    enrolment.next_step_id = following.id if following else None
    if following is None and sequence.then:
        enrol_after(session, site, catalog, subscriber, sequence.then, now)


_ENROLMENTS = cast("Table", Enrolment.__table__)
_MOVE_PAST_SENT = (  # built once: the send path runs it for every group
    update(_ENROLMENTS)
    .where(_ENROLMENTS.c.id == bindparam("moved_id"), _ENROLMENTS.c.state == "active")  # none stopped since
    .values(
        next_step_id=bindparam("moved_step"),
        next_due_at=bindparam("moved_due"),
        shift_days=bindparam("moved_shift"),
    )
)


def move_past_sent(session: Session, site: Site, catalog: Catalog, group: list[Sent], now: datetime) -> None:
    """after_sent() for a group of steps that went out, in one UPDATE: the send path's way."""
    changes = []
    finished = []
    for sent in group:
        sequence = catalog.get(sent.sequence_id)
        step = sequence.step(sent.step_id) if sequence else None
        if sequence is None or step is None or sent.enrolment_state != "active":
            continue
        following, shift, due = _following(site, sequence, sent, True, now, step.position)
        changes.append(
            {
                "moved_id": sent.enrolment_id,
                "moved_step": following.id if following else None,
                "moved_due": due,
                "moved_shift": shift,
            }
        )
        if following is None and sequence.then:
            finished.append((sent.subscriber_id, sequence.then))
    if changes:
        # One statement executed for the whole group (executemany), not an ORM flush per reader.
        session.connection().execute(_MOVE_PAST_SENT, changes)
    for subscriber_id, then in finished:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is not None:
            enrol_after(session, site, catalog, subscriber, then, now)


def enrol_after(
    session: Session,
    site: Site,
    catalog: Catalog,
    subscriber: Subscriber,
    sequence_id: str,
    now: datetime,
) -> None:
    """On finishing a seminar, join its `then` (a seminar, or a magazine's broadcast-only list)."""
    sequence = catalog.get(sequence_id)
    if sequence is None:
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
    enter(session, site, subscriber, sequence, enrolment, now)


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
    applied_versions = {v.sequence_id: v for v in session.scalars(select(SequenceVersion))}
    moved = 0
    for sequence in catalog.sequences.values():
        version = applied_versions.get(sequence.id)
        if version is not None and version.fingerprint == sequence.fingerprint:
            continue
        in_flight = select(Delivery.enrolment_id).where(
            Delivery.sequence_id == sequence.id,
            Delivery.kind == "step",
            Delivery.state.in_(store.OPEN),
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
        for enrolment, subscriber in rows:
            step = sequence.step_after(received_position(session, enrolment, sequence))
            before = (enrolment.next_step_id, enrolment.next_due_at)
            set_cursor(session, site, subscriber, sequence, enrolment, step)
            moved += before != (enrolment.next_step_id, enrolment.next_due_at)
        if version is None:
            session.add(
                SequenceVersion(sequence_id=sequence.id, fingerprint=sequence.fingerprint, applied_at=now)
            )
        else:
            version.fingerprint, version.applied_at = sequence.fingerprint, now
        log.info("sequence.applied sequence=%s cursors_moved=%s", sequence.id, moved)
    session.flush()
    return moved


def stop_all(session: Session, subscriber: Subscriber) -> None:
    for enrolment in session.scalars(select(Enrolment).where(Enrolment.subscriber_id == subscriber.id)):
        enrolment.state = "stopped"
        enrolment.next_due_at = None
        enrolment.confirm_nonce = None
