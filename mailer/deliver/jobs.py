"""What moves along the send path: a claimed row, the job ready for SMTP, what became of a group."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Self

from mailer.errors import DeliveryError
from mailer.ledger import Kind
from mailer.models import Delivery, Enrolment, Subscriber
from mailer.seminars.cursor import Passed

# What preparing a claimed row reads, in one query for the batch (no ORM objects on the send path).
# How a row that could not be prepared (rendered, finished) is marked in `last_error`, for `stats`.
PREPARE_ERROR = "prepare: "

CLAIMED = (
    Delivery.id,
    Delivery.kind,
    Delivery.sequence_id,
    Delivery.step_id,
    Delivery.subscriber_id,
    Subscriber.email,
    Subscriber.name,
    Subscriber.state.label("subscriber_state"),
    Subscriber.timezone,
    Delivery.enrolment_id,
    Enrolment.state.label("enrolment_state"),
    Enrolment.confirm_nonce,
    Enrolment.entered_at,
    Enrolment.shift_days,
    Delivery.due_at,
    Delivery.broadcast_id,
)


@dataclass(frozen=True)
class Claimed:
    """A claimed ledger row with what deciding and rendering its mail needs (a row of CLAIMED)."""

    id: int
    kind: str
    sequence_id: str | None
    step_id: str | None
    subscriber_id: int
    email: str
    name: str
    subscriber_state: str
    timezone: str | None
    enrolment_id: int | None
    enrolment_state: str | None
    confirm_nonce: int | None
    entered_at: datetime | None
    shift_days: int | None
    due_at: datetime
    broadcast_id: int | None = None

    def passed(self, *, delivered: bool = True) -> Passed | None:
        """A seminar step's row: what moving the reader's cursor past it needs."""
        if self.kind != Kind.STEP or self.entered_at is None or self.enrolment_id is None:
            return None
        assert self.sequence_id is not None
        assert self.step_id is not None
        return Passed(
            self.enrolment_id,
            self.enrolment_state or "",
            self.entered_at,
            self.shift_days or 0,
            self.sequence_id,
            self.step_id,
            self.due_at,
            self.subscriber_id,
            self.timezone,
            delivered,
        )


@dataclass(frozen=True)
class Job:
    """A claimed row, rendered and ready for SMTP."""

    delivery_id: int
    subscriber_id: int
    recipient: str
    message: bytes
    step: Passed | None = None  # a seminar step: what moving the cursor past it needs


@dataclass
class Outcomes:
    """What SMTP (or the rate limits) made of a group."""

    sent: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, DeliveryError]] = field(default_factory=list)
    throttled: list[tuple[Job, datetime]] = field(default_factory=list)

    def tried(self) -> list[Job]:
        """Every job of the group that got this far: sent, refused or put off."""
        return [*self.sent, *(job for job, _ in self.failed), *(job for job, _ in self.throttled)]


@dataclass
class Report:
    """What a run did, counted: skipped and deferred rows are expected outcomes, not errors."""

    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    retried: int = 0
    failed: int = 0

    def __iadd__(self, other: Report) -> Self:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self
