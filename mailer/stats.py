"""Who is where: subscribers by state, readers by their next step, deliveries, unsubscribes by step,
and what the relay said when it did not take a mail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from mailer import ledger
from mailer.deliver.jobs import PREPARE_ERROR
from mailer.models import Delivery, DeliveryAttempt, Enrolment, Subscriber


def held_back(session: Session) -> list[dict[str, Any]]:
    """Mail that could not be prepared (a template missing or broken since `sequences check`) and
    waits for its next try, by seminar and step: what the operator must fix first."""
    rows = session.execute(
        select(
            Delivery.kind, Delivery.sequence_id, Delivery.step_id, func.count(), func.max(Delivery.last_error)
        )
        .where(Delivery.state.in_(ledger.OPEN), Delivery.last_error.like(f"{PREPARE_ERROR}%"))
        .group_by(Delivery.kind, Delivery.sequence_id, Delivery.step_id)
        .order_by(Delivery.kind, Delivery.sequence_id, Delivery.step_id)
    ).all()
    return [
        {"kind": kind, "sequence": sequence_id, "step": step_id, "count": count, "error": error}
        for kind, sequence_id, step_id, count, error in rows
    ]


def collect(session: Session, since: datetime) -> dict[str, Any]:
    """The figures; failed delivery attempts are those since `since` (the relay's recent replies)."""
    subscribers = dict(
        session.execute(select(Subscriber.state, func.count()).group_by(Subscriber.state)).all()
    )
    enrolments = [
        {"sequence": sequence_id, "state": state, "next_step": next_step, "count": count}
        for sequence_id, state, next_step, count in session.execute(
            select(Enrolment.sequence_id, Enrolment.state, Enrolment.next_step_id, func.count())
            .group_by(Enrolment.sequence_id, Enrolment.state, Enrolment.next_step_id)
            .order_by(Enrolment.sequence_id, Enrolment.state, Enrolment.next_step_id)
        ).all()
    ]
    deliveries: list[dict[str, Any]] = []
    rows = session.execute(
        select(Delivery.kind, Delivery.sequence_id, Delivery.step_id, Delivery.state, func.count())
        .group_by(Delivery.kind, Delivery.sequence_id, Delivery.step_id, Delivery.state)
        .order_by(Delivery.kind, Delivery.sequence_id, Delivery.step_id, Delivery.state)
    ).all()
    for kind, sequence_id, step_id, state, count in rows:
        deliveries.append(
            {"kind": kind, "sequence": sequence_id, "step": step_id, "state": state, "count": count}
        )
    via = aliased(Delivery)
    unsubscribes = [
        {"kind": kind, "sequence": sequence_id, "step": step_id, "count": count}
        for kind, sequence_id, step_id, count in session.execute(
            select(via.kind, via.sequence_id, via.step_id, func.count())
            .select_from(Subscriber)
            .outerjoin(via, Subscriber.unsubscribed_delivery_id == via.id)
            .where(Subscriber.state == "unsubscribed")
            .group_by(via.kind, via.sequence_id, via.step_id)
        ).all()
    ]
    failures = [
        {"code": code, "outcome": outcome, "count": count, "last_at": last.isoformat(), "reply": text}
        for code, outcome, count, last, text in session.execute(
            select(
                DeliveryAttempt.code,
                DeliveryAttempt.outcome,
                func.count(),
                func.max(DeliveryAttempt.at),
                func.max(DeliveryAttempt.text),
            )
            .where(DeliveryAttempt.at >= since)
            .group_by(DeliveryAttempt.code, DeliveryAttempt.outcome)
            .order_by(func.count().desc())
        ).all()
    ]
    return {
        "held_back": held_back(session),
        "subscribers": subscribers,
        "enrolments": enrolments,
        "deliveries": deliveries,
        "unsubscribes": unsubscribes,
        "failed_attempts": failures,
    }
