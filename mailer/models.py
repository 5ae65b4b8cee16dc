"""The tables: subscribers, their consent, their place in each seminar, and the delivery ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mailer.db import UTCDateTime


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}  # noqa: RUF012 (SQLAlchemy reads it as a class attribute)


class Subscriber(Base):
    """One person, stored once by address. `state`: pending, confirmed, unsubscribed, bounced."""

    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    # The address folded for uniqueness (the local part's case too): Taro@ and taro@ are one person.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    timezone: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    # The mail whose link they left by: "unsubscribes by step" in the stats.
    unsubscribed_delivery_id: Mapped[int | None]


class Consent(Base):
    """Why we may write: when, through which form text, from which client."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), index=True)
    sequence_id: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(32))  # form, import, api
    form_version: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None]


class Enrolment(Base):
    """A subscriber's place in one seminar: the cursor the scheduler scans.

    `state`: pending (awaiting confirmation), active, stopped. `next_due_at` is set only while the
    next step waits for its time; it is NULL while that step is in the ledger, so the tick's index
    holds exactly what may become due.
    """

    __tablename__ = "enrolments"
    __table_args__ = (UniqueConstraint("subscriber_id", "sequence_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    sequence_id: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime]
    entered_at: Mapped[datetime | None]
    shift_days: Mapped[int] = mapped_column(default=0)  # whole local days later steps moved by
    next_step_id: Mapped[str | None] = mapped_column(String(100))
    next_due_at: Mapped[datetime | None] = mapped_column(index=True)
    confirm_nonce: Mapped[int | None]  # the open confirmation; cleared when used


class Delivery(Base):
    """The ledger: one row per planned mail. pending -> sending -> sent | failed | skipped.

    `available_at` is when the row may next be claimed: its due time while pending, the end of the
    lease while sending, so one index finds both what is due and what a dead worker left behind.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "sequence_id", "step_id", name="uq_delivery_step"),
        UniqueConstraint("subscriber_id", "broadcast_id", name="uq_delivery_broadcast"),
        Index(
            "ix_deliveries_claimable",
            "available_at",
            sqlite_where=text("state IN ('pending', 'sending')"),
            postgresql_where=text("state IN ('pending', 'sending')"),
        ),
        # What a claim takes first: every kind but the magazine's, so a queued issue of 100,000
        # never stands between a reader and their confirmation or welcome (ledger.claim).
        Index(
            "ix_deliveries_claimable_first",
            "available_at",
            sqlite_where=text("state IN ('pending', 'sending') AND kind != 'broadcast'"),
            postgresql_where=text("state IN ('pending', 'sending') AND kind != 'broadcast'"),
        ),
        Index("ix_deliveries_sequence_step", "sequence_id", "step_id"),
        # Partial: a seminar row never has an entry, so its every state change costs nothing here.
        Index(
            "ix_deliveries_broadcast",
            "broadcast_id",
            "state",
            sqlite_where=text("broadcast_id IS NOT NULL"),
            postgresql_where=text("broadcast_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    kind: Mapped[str] = mapped_column(String(16))  # confirm, step, broadcast
    enrolment_id: Mapped[int | None] = mapped_column(ForeignKey("enrolments.id"))
    sequence_id: Mapped[str | None] = mapped_column(String(100))
    step_id: Mapped[str | None] = mapped_column(String(100))  # NULL for confirmations: never unique
    broadcast_id: Mapped[int | None]  # a broadcast's row: the issue (broadcasts.id)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    due_at: Mapped[datetime]
    available_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    """A try that did not deliver: the relay's code and words (or why it never reached SMTP).

    Kept for the operator; the ledger row holds the outcome. Accepted mail adds no row here.
    """

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    at: Mapped[datetime]
    code: Mapped[int | None]  # the SMTP reply code; NULL when there was none (a lost connection)
    text: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))  # retry (later) or failed (for good)


class SequenceVersion(Base):
    """The fingerprint of each seminar file as last applied: an edit re-plans its cursors once."""

    __tablename__ = "sequence_versions"

    sequence_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    applied_at: Mapped[datetime]


class Broadcast(Base):
    """A mail-magazine issue: its content (kept as written at `create`), audience and time.

    `state`: draft, scheduled, held (late: waits for the operator), sending, paused, sent,
    cancelled. Its ledger rows are written from the audience in batches once sending starts:
    `audience_upto` fixes who is in it (subscribers up to that id, confirmed by `started_at`),
    `audience_next` is the first id not yet written, NULL once all of it is in the ledger.
    """

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))  # the folder's name, for the operator
    subject: Mapped[str] = mapped_column(Text)  # the templates' source
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    audience: Mapped[str] = mapped_column(String(200))  # all, seminar:SEQ, tag:TAG
    archive: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    at: Mapped[datetime | None]  # when it is to go (scheduled), or went
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    audience_upto: Mapped[int | None]
    audience_next: Mapped[int | None]
    audience_written: Mapped[int] = mapped_column(default=0)


class SubscriberTag(Base):
    """A short label on a subscriber (`vip`, `seminar-2026`): a broadcast's `--to tag:TAG`."""

    __tablename__ = "subscriber_tags"
    __table_args__ = (PrimaryKeyConstraint("subscriber_id", "tag"), Index("ix_subscriber_tags_tag", "tag"))

    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    tag: Mapped[str] = mapped_column(String(64))
