"""Queries that more than one caller needs: atomic claims of due work, skips, ledger inserts."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailer.models import Delivery, Enrolment, Subscriber

_DELIVERIES = cast("Table", Delivery.__table__)  # for the statements that skip the ORM layer
CLAIMABLE = ("pending", "sending")
OPEN = ("pending", "sending")


def _skip_locked(session: Session, query: Select[Any]) -> Select[Any]:
    # PostgreSQL: workers on many machines each take rows nobody else holds. SQLite has one
    # writer at a time (BEGIN IMMEDIATE), which serialises claims by itself.
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query


def lock_named(session: Session, name: str) -> None:
    """One transaction at a time holds `name` until it ends (PostgreSQL advisory lock; on SQLite
    every writing transaction already holds the database)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))


def claim_deliveries(
    session: Session, *, now: datetime, limit: int, worker: str, lease: timedelta
) -> list[int]:
    """Take up to `limit` ledger rows that are due (or whose lease lapsed) for `worker`.

    The row stays claimed until `now + lease`; after that another worker may take it again, which
    is how a crashed worker's rows are recovered.
    """
    due = _skip_locked(
        session,
        select(Delivery.id)
        .where(Delivery.state.in_(CLAIMABLE), Delivery.available_at <= now)
        .order_by(Delivery.available_at)
        .limit(limit),
    )
    claimed = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()))
        .values(state="sending", claimed_by=worker, available_at=now + lease)
        .returning(Delivery.id),
        execution_options={"synchronize_session": False},
    )
    return sorted(claimed.scalars())


# The send path's statements, built once: they run for every group of `commit_every` mails.
_MARK_SENT = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.id.in_(bindparam("ids", expanding=True)),
        _DELIVERIES.c.claimed_by == bindparam("worker"),
        _DELIVERIES.c.state == "sending",
    )
    .values(state="sent", sent_at=bindparam("now"), claimed_by=None, attempts=_DELIVERIES.c.attempts + 1)
    .returning(_DELIVERIES.c.id)
)
_UNMARK_SENT = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id.in_(bindparam("ids", expanding=True)), _DELIVERIES.c.state == "sent")
    .values(
        state="sending", sent_at=None, claimed_by=bindparam("worker"), attempts=_DELIVERIES.c.attempts - 1
    )
)


def mark_sent(session: Session, ids: list[int], worker: str, now: datetime) -> set[int]:
    """Of these rows, those `worker` still holds unsent: marked sent, and locked until the
    transaction ends.

    The send path marks a group before handing it to SMTP and puts back (`unmark_sent`) what SMTP
    did not take, in the same transaction: nobody sees the mark before SMTP has answered, and an
    unsubscribe that arrives meanwhile waits for the commit (on PostgreSQL the row locks; on SQLite
    the write lock of BEGIN IMMEDIATE holds the whole database).
    """
    marked = session.connection().execute(_MARK_SENT, {"ids": ids, "worker": worker, "now": now})
    return set(marked.scalars())


def unmark_sent(session: Session, ids: list[int], worker: str) -> None:
    """Undo `mark_sent` for rows SMTP did not take: claimed by `worker` again, as before it."""
    session.connection().execute(_UNMARK_SENT, {"ids": ids, "worker": worker})


def claim_due_enrolments(session: Session, *, now: datetime, limit: int) -> list[int]:
    """Enrolments whose next step is due; their cursor is cleared in the same statement, so two
    schedulers never plan the same step (and the unique ledger rule backs that up)."""
    due = _skip_locked(
        session,
        select(Enrolment.id).where(Enrolment.next_due_at <= now).order_by(Enrolment.next_due_at).limit(limit),
    )
    claimed = session.execute(
        update(Enrolment)
        .where(Enrolment.id.in_(due.scalar_subquery()))
        .values(next_due_at=None)
        .returning(Enrolment.id),
        execution_options={"synchronize_session": False},
    )
    return sorted(claimed.scalars())


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def insert_delivery(session: Session, **values: object) -> int | None:
    """Add a ledger row unless its uniqueness rule already has one; the new id, or None."""
    result = session.execute(
        _insert(session)(Delivery).values(**values).on_conflict_do_nothing().returning(Delivery.id)
    )
    return result.scalar_one_or_none()


def insert_step_deliveries(session: Session, rows: list[dict[str, object]]) -> dict[int, int]:
    """Add seminar steps' ledger rows in one statement, each unless the ledger already has it.
    The new ids by enrolment."""
    if not rows:
        return {}
    # Executed for many rows with RETURNING: SQLAlchemy sends it as multi-row INSERTs from one
    # cached statement ("insertmanyvalues").
    result = session.connection().execute(
        _insert(session)(_DELIVERIES)
        .on_conflict_do_nothing()
        .returning(_DELIVERIES.c.enrolment_id, _DELIVERIES.c.id),
        rows,
    )
    return dict(result.all())


def skip_open_deliveries(
    session: Session,
    *,
    subscriber_id: int,
    reason: str,
    kind: str | None = None,
    enrolment_id: int | None = None,
) -> int:
    """Everything not yet handed to SMTP for this subscriber is not sent (state skipped)."""
    query = update(Delivery).where(Delivery.subscriber_id == subscriber_id, Delivery.state.in_(OPEN))
    if kind is not None:
        query = query.where(Delivery.kind == kind)
    if enrolment_id is not None:
        query = query.where(Delivery.enrolment_id == enrolment_id)
    result = session.execute(
        query.values(state="skipped", skip_reason=reason, claimed_by=None),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0) or 0)


def count_recent_confirmations(session: Session, subscriber_id: int, since: datetime) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(
                Delivery.subscriber_id == subscriber_id,
                Delivery.kind == "confirm",
                Delivery.created_at >= since,
            )
        )
        or 0
    )


def find_subscriber_by_key(session: Session, email_key: str) -> Subscriber | None:
    return session.scalars(select(Subscriber).where(Subscriber.email_key == email_key)).first()


def sent_steps(session: Session, subscriber_id: int, sequence_id: str) -> set[str]:
    """The steps of this seminar the subscriber has received."""
    return set(
        session.scalars(
            select(Delivery.step_id).where(
                Delivery.subscriber_id == subscriber_id,
                Delivery.sequence_id == sequence_id,
                Delivery.kind == "step",
                Delivery.state == "sent",
            )
        )
    )
