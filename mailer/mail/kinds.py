"""Kinds of mail: what each one needs before it may go, and which template it is written from.

The send path asks the row's kind for a verdict: `Go` (render it from this template), `Skip` (not
to be sent, for a counted reason) or `Hold` (not yet: quiet hours). A new kind of mail (the
magazine's broadcast) is one more class here, not a branch inside the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.broadcasts import content
from mailer.broadcasts.content import Content
from mailer.config import Site
from mailer.deliver.jobs import Claimed
from mailer.ledger import Kind
from mailer.mail.compose import MailTemplate, Renderer
from mailer.models import Broadcast
from mailer.seminars import schedule
from mailer.seminars.cursor import Passed
from mailer.seminars.sequences import Catalog


@dataclass(frozen=True)
class Go:
    """Render the mail from `template` (fetched once per batch for each `key`) with `extra`."""

    key: tuple[str, ...]
    template: Callable[[], MailTemplate]
    extra: dict[str, object] = field(default_factory=dict)
    passed: Passed | None = None  # a seminar step: its cursor moves on once it is sent


@dataclass(frozen=True)
class Skip:
    """Not to be sent; `passed`: the reader's cursor moves past it all the same."""

    reason: str
    passed: Passed | None = None


@dataclass(frozen=True)
class Hold:
    """Not yet: back to pending until `until`, no attempt counted."""

    until: datetime


Verdict = Go | Skip | Hold


class MailKind(Protocol):
    def load(self, session: Session, rows: list[Claimed]) -> None:
        """Read what deciding this batch's rows of the kind needs (once a batch, in its session)."""

    def decide(self, row: Claimed, catalog: Catalog, now: datetime) -> Verdict: ...


@dataclass(frozen=True)
class Confirmation:
    """The double opt-in mail: only while the enrolment still waits for it."""

    site: Site
    renderer: Renderer

    def load(self, session: Session, rows: list[Claimed]) -> None:
        """Everything is in the claimed row."""

    def decide(self, row: Claimed, catalog: Catalog, now: datetime) -> Verdict:  # noqa: ARG002 (never held)
        if row.enrolment_state != "pending" or row.confirm_nonce is None or row.enrolment_id is None:
            return Skip("not_pending")
        sequence = catalog.get(row.sequence_id)
        if sequence is None:
            return Skip("sequence_removed")
        token = self.renderer.tokens.confirm(row.enrolment_id, row.confirm_nonce)
        return Go(
            ("confirm", sequence.id),
            lambda: self.renderer.confirm(sequence),
            {
                "confirm_url": f"{self.renderer.base_url}/confirm/{token}",
                "confirm_days": self.site.signup.confirm_days,
            },
        )


@dataclass(frozen=True)
class SeminarStep:
    """A step of a seminar: to a confirmed reader still enrolled, outside their quiet hours."""

    site: Site
    renderer: Renderer

    def load(self, session: Session, rows: list[Claimed]) -> None:
        """Everything is in the claimed row."""

    def decide(self, row: Claimed, catalog: Catalog, now: datetime) -> Verdict:
        if row.subscriber_state != "confirmed":
            return Skip(row.subscriber_state)
        if row.enrolment_state != "active":
            return Skip("not_enrolled")
        sequence = catalog.get(row.sequence_id)
        step = sequence.step(row.step_id) if sequence else None
        if sequence is None or step is None:
            # A step removed from the file is sent to no one who has not had it.
            return Skip("step_removed", row.passed(delivered=False))
        zone = schedule.zone_for(row.timezone, sequence.timezone)
        held = schedule.held(step, now, zone, self.site.quiet_hours)
        if held > now:  # late into the quiet hours: wait for the morning
            return Hold(held)
        return Go(
            ("step", sequence.id, step.id), lambda: self.renderer.step(sequence, step), {}, row.passed()
        )


@dataclass
class BroadcastIssue:
    """A magazine issue: to a confirmed reader, outside their quiet hours, in the magazine's layout.

    Cancelling and pausing act on the ledger rows themselves (ledger.skip_broadcast, park_broadcast),
    so a row claimed here is one still meant to go. An issue's content never changes once
    created: it is read once per process and kept."""

    site: Site
    renderer: Renderer
    issues: dict[int, Content] = field(default_factory=dict)
    # Compiled once per issue and magazine file, not per batch: its templates are strings, which
    # Jinja2 does not cache as it does the files of steps.
    templates: dict[tuple[int, str], MailTemplate] = field(default_factory=dict)

    def load(self, session: Session, rows: list[Claimed]) -> None:
        wanted = {row.broadcast_id for row in rows if row.broadcast_id is not None} - set(self.issues)
        if wanted:
            for issue in session.scalars(select(Broadcast).where(Broadcast.id.in_(wanted))):
                self.issues[issue.id] = content.of(issue)

    def decide(self, row: Claimed, catalog: Catalog, now: datetime) -> Verdict:
        if row.subscriber_state != "confirmed":
            return Skip(row.subscriber_state)
        issue = self.issues.get(row.broadcast_id or 0)
        if issue is None:
            return Skip("broadcast_removed")
        magazine = content.magazine(self.site, catalog)  # its file gone: retried, counted, logged
        zone = schedule.zone_for(row.timezone, magazine.timezone)
        until = schedule.hold_for_quiet_hours(now, zone, self.site.quiet_hours)
        if until > now:  # quiet hours where this reader is: they get it when those end
            return Hold(until)
        key = (row.broadcast_id or 0, magazine.fingerprint)
        if key not in self.templates:
            self.templates[key] = content.template(self.renderer, magazine, issue)
        template = self.templates[key]
        return Go(("broadcast", str(row.broadcast_id)), lambda: template)


def kinds(site: Site, renderer: Renderer) -> dict[str, MailKind]:
    """Every kind of mail the ledger holds, by its `Kind`."""
    return {
        Kind.CONFIRM: Confirmation(site, renderer),
        Kind.STEP: SeminarStep(site, renderer),
        Kind.BROADCAST: BroadcastIssue(site, renderer),
    }
