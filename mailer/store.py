"""Queries that more than one caller needs, outside the ledger: cursors due, named locks, lookups."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from mailer.models import Enrolment, Subscriber


def skip_locked(session: Session, query: Select[Any]) -> Select[Any]:
    return skip_locked_on(session.get_bind().dialect.name, query)


def skip_locked_on(dialect: str, query: Select[Any]) -> Select[Any]:
    # PostgreSQL: workers on many machines each take rows nobody else holds. SQLite has one
    # writer at a time (BEGIN IMMEDIATE), which serialises claims by itself.
    if dialect == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query


def lock_named(session: Session, name: str) -> None:
    """One transaction at a time holds `name` until it ends (PostgreSQL advisory lock; on SQLite
    every writing transaction already holds the database)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))


def claim_due_enrolments(session: Session, *, now: datetime, limit: int) -> list[int]:
    """Enrolments whose next step is due; their cursor is cleared in the same statement, so two
    schedulers never plan the same step (and the unique ledger rule backs that up)."""
    due = skip_locked(
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


def find_subscriber_by_key(session: Session, email_key: str) -> Subscriber | None:
    return session.scalars(select(Subscriber).where(Subscriber.email_key == email_key)).first()
