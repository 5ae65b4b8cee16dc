"""The delivery ledger: its states and kinds, and the only code that moves a row between states.

    pending ──claim──> sending ──mark_sent──> sent
       ^                  │  └──unmark_sent──> sending (SMTP did not take it: same transaction)
       │                  ├──defer / retry──> pending (later)
       │                  ├──retry (attempts spent) / fail──> failed
       └──revive──────────┴──skip──> skipped          (skip_open: anything not yet handed to SMTP)

A magazine issue's rows are added from its audience in batches (`add_broadcast`, one INSERT ...
SELECT each); pausing parks what is not yet handed to SMTP (pending, due never) and resuming makes
it due again, so nobody gets an issue twice and nobody is left out; cancelling skips it.

Every planned mail is one row, unique per subscriber and step (or broadcast). A row is claimed with
a lease: `available_at` is when it may next be claimed (its due time while pending, the end of the
lease while sending), so one index finds what is due and what a dead worker left behind.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, func, literal, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnClause

from mailer import store
from mailer.db import UTCDateTime
from mailer.models import Delivery, DeliveryAttempt

log = logging.getLogger(__name__)


class State(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


class Kind(StrEnum):
    CONFIRM = "confirm"  # the double opt-in mail
    STEP = "step"  # a seminar step
    BROADCAST = "broadcast"  # a mail-magazine issue


OPEN = (State.PENDING, State.SENDING)  # not yet handed to SMTP: what a claim may take, a stop skips
WAKE = "mailer.wake"  # a session.info key: this transaction queued mail that is due now

_DELIVERIES = cast("Table", Delivery.__table__)  # for the statements that skip the ORM layer
# Plain strings for the rows added by the thousand: sqlite3 binds a str subclass (an enum member)
# through its adapter lookup, three times slower than a str.
_STEP, _PENDING = Kind.STEP.value, State.PENDING.value
# When a paused issue's rows are due: never, until it is resumed.
PARKED = datetime(9999, 1, 1, tzinfo=UTC)
# Literals, not bound values: only then may SQLite's planner use the partial indexes the claim
# reads (ix_deliveries_claimable, and _first that puts the magazine last), whose WHERE names the
# same constants. With `state IN (?, ?)` it scans the whole table and sorts it for every batch.
_OPEN_LITERALS: list[ColumnClause[str]] = [literal_column(f"'{state.value}'") for state in OPEN]
_IS_BROADCAST: ColumnClause[str] = literal_column("'broadcast'")


def _queued(session: Session, due: datetime, now: datetime) -> None:
    """Mail due now was queued: the edge that commits this transaction wakes a worker after it."""
    if due <= now:
        session.info[WAKE] = True


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def add(
    session: Session, *, kind: Kind, subscriber_id: int, due: datetime, now: datetime, **keys: object
) -> int | None:
    """Add one pending row unless its uniqueness rule already has one; the new id, or None."""
    values = {
        "kind": kind.value,
        "subscriber_id": subscriber_id,
        "state": _PENDING,
        "due_at": due,
        "available_at": due,
        "attempts": 0,
        "created_at": now,
        **keys,
    }
    added = session.connection().execute(_add_one(session), values).scalar_one_or_none()
    if added is not None:
        _queued(session, due, now)
    return added


@cache
def _add_one_for(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(_DELIVERIES).on_conflict_do_nothing().returning(_DELIVERIES.c.id)


def _add_one(session: Session) -> Any:
    # Built once per dialect: a sign-up adds one row, and building the statement cost more than
    # running it.
    return _add_one_for(session.get_bind().dialect.name)


def step_row(
    *, subscriber_id: int, enrolment_id: int, sequence_id: str, step_id: str, due: datetime, now: datetime
) -> dict[str, object]:
    """The values of a seminar step's pending row, for `add_steps`."""
    return {
        "subscriber_id": subscriber_id,
        "kind": _STEP,
        "enrolment_id": enrolment_id,
        "sequence_id": sequence_id,
        "step_id": step_id,
        "state": _PENDING,
        "due_at": due,
        "available_at": due,
        "attempts": 0,
        "created_at": now,
    }


def add_steps(session: Session, rows: list[dict[str, object]], now: datetime) -> dict[int, int]:
    """Add seminar steps' rows (`step_row`) in one statement, each unless the ledger already has
    it. The new ids by enrolment."""
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
    added = dict(result.all())
    if any(row["enrolment_id"] in added and cast("datetime", row["due_at"]) <= now for row in rows):
        session.info[WAKE] = True
    return added


def revive(session: Session, row: Delivery, due: datetime, now: datetime) -> bool:
    """A row skipped or failed while the reader was away goes out again (they came back).
    False when it is not closed that way (sent, or on its way)."""
    if row.state not in {State.SKIPPED, State.FAILED}:
        return False
    row.state = State.PENDING
    row.due_at = row.available_at = due
    row.attempts = 0
    row.skip_reason = row.last_error = row.claimed_by = None
    session.flush()
    _queued(session, due, now)
    return True


def claim(session: Session, *, now: datetime, limit: int, worker: str, lease: timedelta) -> list[int]:
    """Take up to `limit` rows that are due (or whose lease lapsed) for `worker`.

    The row stays claimed until `now + lease`; after that another worker may take it again, which
    is how a crashed worker's rows are recovered.

    Every other kind goes before the magazine: a reader's confirmation or welcome is claimed
    ahead of any number of issue mails queued before it; issue mails fill the rest of the batch.
    """
    dialect = session.get_bind().dialect.name
    connection = session.connection()
    due = list(connection.execute(_due_for(dialect, first=True), {"now": now, "limit": limit}).scalars())
    if len(due) < limit:
        rest = {"now": now, "limit": limit - len(due)}
        due += connection.execute(_due_for(dialect, first=False), rest).scalars()
    if not due:
        return []
    claimed = connection.execute(_CLAIM, {"ids": due, "worker": worker, "until": now + lease})
    return sorted(claimed.scalars())


@cache
def _due_for(dialect: str, *, first: bool) -> Any:
    # Built once per dialect: a rush of sign-ups claims a few rows many times a second.
    kind = _DELIVERIES.c.kind != _IS_BROADCAST if first else _DELIVERIES.c.kind == _IS_BROADCAST
    return store.skip_locked_on(
        dialect,
        select(_DELIVERIES.c.id)
        .where(_DELIVERIES.c.state.in_(_OPEN_LITERALS), kind, _DELIVERIES.c.available_at <= bindparam("now"))
        .order_by(_DELIVERIES.c.available_at)
        .limit(bindparam("limit")),
    )


_CLAIM = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id.in_(bindparam("ids", expanding=True)))
    .values(state=State.SENDING, claimed_by=bindparam("worker"), available_at=bindparam("until"))
    .returning(_DELIVERIES.c.id)
)


def add_broadcast(
    session: Session, broadcast_id: int, audience: Select[Any], due: datetime, now: datetime
) -> int:
    """One pending row of this issue for each subscriber id `audience` selects, unless the ledger
    has it already: one INSERT ... SELECT, nothing read into Python. Rows added."""
    ids = audience.subquery()
    subscriber_id = ids.c[0]
    rows = select(
        subscriber_id,
        literal(Kind.BROADCAST.value),
        literal(broadcast_id),
        literal(_PENDING),
        literal(due, UTCDateTime()),
        literal(due, UTCDateTime()),
        literal(0),
        literal(now, UTCDateTime()),
    ).where(subscriber_id.is_not(None))  # a WHERE: SQLite reads "SELECT ... ON CONFLICT" as a join
    columns = ["subscriber_id", "kind", "broadcast_id", "state", "due_at", "available_at", "attempts"]
    # RETURNING counts what was added: psycopg leaves rowcount at -1 for this statement.
    result = session.execute(
        _insert(session)(_DELIVERIES)
        .from_select([*columns, "created_at"], rows)
        .on_conflict_do_nothing()
        .returning(_DELIVERIES.c.id)
    )
    added = len(result.all())
    if added:
        _queued(session, due, now)
    return added


def open_of(broadcast_id: int) -> tuple[Any, ...]:
    """The conditions of an issue's rows not yet handed to SMTP (for reading them)."""
    return (Delivery.broadcast_id == broadcast_id, Delivery.state.in_(OPEN))


def _open_of(broadcast_id: int) -> Any:
    return update(Delivery).where(*open_of(broadcast_id))


def _changed(session: Session, statement: Any) -> int:
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return int(getattr(result, "rowcount", 0) or 0)


def skip_broadcast(session: Session, broadcast_id: int, reason: str) -> int:
    """Nothing of this issue not yet handed to SMTP goes (cancelled). Rows skipped.

    A row in a group being sent is marked sent and locked: this waits for that group's commit and
    then leaves it alone; a row claimed but not yet marked no longer matches its worker's claim."""
    return _changed(
        session, _open_of(broadcast_id).values(state=State.SKIPPED, skip_reason=reason, claimed_by=None)
    )


def park_broadcast(session: Session, broadcast_id: int) -> int:
    """What of this issue is not yet handed to SMTP waits, pending, until `unpark_broadcast`
    (paused). Rows parked; a worker holding one of them finds its claim gone."""
    return _changed(
        session, _open_of(broadcast_id).values(state=State.PENDING, claimed_by=None, available_at=PARKED)
    )


def unpark_broadcast(session: Session, broadcast_id: int, now: datetime) -> int:
    """The parked rows of this issue are due again (resumed). Rows made due."""
    resumed = _changed(
        session,
        update(Delivery)
        .where(
            Delivery.broadcast_id == broadcast_id,
            Delivery.state == State.PENDING,
            Delivery.available_at == PARKED,
        )
        .values(available_at=now),
    )
    if resumed:
        _queued(session, now, now)
    return resumed


# The send path's statements, built once: they run for every group of `commit_every` mails.
_MARK_SENT = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.id.in_(bindparam("ids", expanding=True)),
        _DELIVERIES.c.claimed_by == bindparam("worker"),
        _DELIVERIES.c.state == State.SENDING,
    )
    .values(state=State.SENT, sent_at=bindparam("now"), claimed_by=None, attempts=_DELIVERIES.c.attempts + 1)
    .returning(_DELIVERIES.c.id)
)
_UNMARK_SENT = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id.in_(bindparam("ids", expanding=True)), _DELIVERIES.c.state == State.SENT)
    .values(
        state=State.SENDING,
        sent_at=None,
        claimed_by=bindparam("worker"),
        attempts=_DELIVERIES.c.attempts - 1,
    )
)
_DEFER = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("deferred_id"), _DELIVERIES.c.claimed_by == bindparam("worker"))
    .values(state=State.PENDING, available_at=bindparam("until"), claimed_by=None)
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


def defer(session: Session, deferrals: list[tuple[int, datetime]], worker: str) -> None:
    """Rows `worker` holds go back to pending until each one's time (rate limits, quiet hours);
    no attempt is counted: nothing was tried."""
    if deferrals:
        session.connection().execute(
            _DEFER, [{"deferred_id": i, "until": until, "worker": worker} for i, until in deferrals]
        )


def skip(row: Delivery, reason: str) -> None:
    """This row is not sent, for a reason that is counted (an expected outcome, not an error)."""
    row.state, row.skip_reason, row.claimed_by = State.SKIPPED, reason, None
    log.info("delivery.skipped delivery_id=%s reason=%s", row.id, reason)


def skip_open(
    session: Session,
    *,
    subscriber_id: int,
    reason: str,
    kind: Kind | None = None,
    enrolment_id: int | None = None,
) -> int:
    """Everything not yet handed to SMTP for this subscriber is not sent. Rows skipped."""
    query = update(Delivery).where(Delivery.subscriber_id == subscriber_id, Delivery.state.in_(OPEN))
    if kind is not None:
        query = query.where(Delivery.kind == kind)
    if enrolment_id is not None:
        query = query.where(Delivery.enrolment_id == enrolment_id)
    result = session.execute(
        query.values(state=State.SKIPPED, skip_reason=reason, claimed_by=None),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _attempt(
    session: Session, row: Delivery, now: datetime, code: int | None, text: str, outcome: str
) -> None:
    row.attempts += 1
    row.last_error = text[:1000]
    row.claimed_by = None
    session.add(DeliveryAttempt(delivery_id=row.id, at=now, code=code, text=text[:1000], outcome=outcome))


def retry(
    session: Session, row: Delivery, *, error: str, code: int | None, now: datetime, delay: timedelta | None
) -> bool:
    """A temporary failure, recorded: back to pending after `delay`, or failed for good when
    `delay` is None (the attempts are spent). True when it will be tried again."""
    _attempt(session, row, now, code, error, "retry" if delay is not None else "failed")
    if delay is None:
        row.state = State.FAILED
        log.warning("delivery.failed delivery_id=%s attempts=%s", row.id, row.attempts)
        return False
    row.state, row.available_at = State.PENDING, now + delay
    log.info(
        "delivery.retry delivery_id=%s attempts=%s in_seconds=%d", row.id, row.attempts, delay.total_seconds()
    )
    return True


def fail(session: Session, row: Delivery, *, error: str, code: int | None, now: datetime) -> None:
    """A permanent failure (a 5xx): this row is never tried again."""
    _attempt(session, row, now, code, error, "failed")
    row.state = State.FAILED
    log.warning("delivery.failed delivery_id=%s code=%s", row.id, code)


def count_recent(session: Session, subscriber_id: int, kind: Kind, since: datetime) -> int:
    """Rows of this kind added for the subscriber since `since` (the confirmation cap)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(
                Delivery.subscriber_id == subscriber_id, Delivery.kind == kind, Delivery.created_at >= since
            )
        )
        or 0
    )


def sent_steps(session: Session, subscriber_id: int, sequence_id: str) -> set[str]:
    """The steps of this seminar the subscriber has received."""
    return set(
        session.scalars(
            select(Delivery.step_id).where(
                Delivery.subscriber_id == subscriber_id,
                Delivery.sequence_id == sequence_id,
                Delivery.kind == Kind.STEP,
                Delivery.state == State.SENT,
            )
        )
    )
