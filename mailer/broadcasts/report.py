"""What `broadcast show` and `list` print: an issue's state, times, and its mail counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer import ledger
from mailer.broadcasts import issues
from mailer.models import Broadcast, Delivery, DeliveryAttempt


@dataclass(frozen=True)
class Summary:
    """One issue as the operator sees it."""

    id: int
    name: str
    subject: str
    audience: str
    archive: bool
    state: str
    at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    total: int  # ledger rows written from the audience so far
    writing: bool  # the audience is still being written
    by_state: dict[str, int] = field(default_factory=dict)
    waiting: int = 0  # pending rows not due yet: quiet hours where the reader is, or a retry
    failures: dict[str, int] = field(default_factory=dict)  # by SMTP code ("-": no reply)


def summary(session: Session, issue_id: int, now: datetime) -> Summary:
    """The issue's counts by state, its times, and its failures by code."""
    issue = issues.get(session, issue_id)
    waiting = session.scalar(
        select(func.count()).where(
            Delivery.broadcast_id == issue.id,
            Delivery.state == ledger.State.PENDING,
            Delivery.available_at > now,
        )
    )
    failures = session.execute(
        select(DeliveryAttempt.code, func.count())
        .join(Delivery, Delivery.id == DeliveryAttempt.delivery_id)
        .where(Delivery.broadcast_id == issue.id, DeliveryAttempt.outcome == "failed")
        .group_by(DeliveryAttempt.code)
    ).all()
    return Summary(
        id=issue.id,
        name=issue.name,
        subject=" ".join(issue.subject.split()),
        audience=issue.audience,
        archive=issue.archive,
        state=issue.state,
        at=issue.at,
        started_at=issue.started_at,
        finished_at=issue.finished_at,
        total=issue.audience_written,
        writing=issue.audience_next is not None and issue.state == issues.IssueState.SENDING,
        by_state=issues.state_counts(session, issue.id),
        waiting=int(waiting or 0),
        failures={str(code) if code is not None else "-": int(n) for code, n in failures},
    )


def listing(session: Session) -> list[tuple[Broadcast, dict[str, int]]]:
    """Every issue, newest first, with its rows by state."""
    counts: dict[int, dict[str, int]] = {}
    for broadcast_id, state, n in session.execute(
        select(Delivery.broadcast_id, Delivery.state, func.count())
        .where(Delivery.broadcast_id.is_not(None))
        .group_by(Delivery.broadcast_id, Delivery.state)
    ):
        counts.setdefault(broadcast_id or 0, {})[state] = n
    found = session.scalars(select(Broadcast).order_by(Broadcast.id.desc()))
    return [(issue, counts.get(issue.id, {})) for issue in found]
