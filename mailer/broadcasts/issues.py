"""An issue's life: create, schedule, send, pause, resume, cancel, and the tick's part in it.

    draft ──schedule──> scheduled ──(tick, on time)──> sending ──(all settled)──> sent
      │                    └──(tick, later than max_lateness)──> held ──send──┘   │
      └──────────────send─────────────────────────────────────────────────┘  pause/resume
    any of those but sent ──cancel──> cancelled                               paused

The audience is fixed when sending starts: subscribers up to the highest id at that moment, who
were confirmed by then (and enrolled by then, for `seminar:SEQ`). Its ledger rows are written in
batches of ids, each one INSERT ... SELECT in a transaction of its own, so 100,000 readers hold the
write lock for milliseconds at a time. Whoever leaves before their mail is handed to SMTP is
skipped by the one stop (`suppression.stop`), as for seminar mail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from mailer import ledger
from mailer.broadcasts import content
from mailer.config import Site
from mailer.db import session_scope
from mailer.errors import BroadcastError
from mailer.mail.compose import Renderer
from mailer.models import Broadcast, Delivery, Enrolment, Subscriber, SubscriberTag
from mailer.seminars.sequences import Catalog

log = logging.getLogger(__name__)

AUDIENCE_BATCH = 5000  # subscriber ids written to the ledger per transaction


class IssueState(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    HELD = "held"  # later than max_lateness: waits for the operator's `send`
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"


STARTABLE = (IssueState.DRAFT, IssueState.SCHEDULED, IssueState.HELD)
FINISHED = (IssueState.SENT, IssueState.CANCELLED)


@dataclass(frozen=True)
class Audience:
    """Who an issue goes to: `all`, `seminar:SEQ` or `tag:TAG` (confirmed, not suppressed)."""

    kind: str
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Audience:
        kind, _, value = text.strip().partition(":")
        if kind == "all" and not value:
            return cls("all")
        if kind in {"seminar", "tag"} and value.strip():
            return cls(kind, value.strip())
        raise BroadcastError(f"--to {text!r}: expected all, seminar:SEQ or tag:TAG")

    def __str__(self) -> str:
        return self.kind if self.kind == "all" else f"{self.kind}:{self.value}"

    def check(self, session: Session, catalog: Catalog) -> None:
        """An unknown seminar or a tag nobody carries is refused, naming what there is."""
        if self.kind == "seminar" and self.value not in catalog:
            have = ", ".join(sorted(catalog.sequences))
            raise BroadcastError(f"--to {self}: no seminar {self.value!r} (have: {have})")
        if self.kind == "tag" and not session.scalar(select(exists().where(SubscriberTag.tag == self.value))):
            raise BroadcastError(f"--to {self}: no subscriber carries the tag {self.value!r}")

    def ids(self, since: datetime, lo: int, hi: int) -> Select[Any]:
        """The subscriber ids in [lo, hi] who are in this audience for an issue started `since`."""
        query = select(Subscriber.id).where(
            Subscriber.id >= lo,
            Subscriber.id <= hi,
            Subscriber.state == "confirmed",
            or_(Subscriber.confirmed_at.is_(None), Subscriber.confirmed_at <= since),
        )
        if self.kind == "seminar":
            query = query.where(
                exists().where(
                    Enrolment.subscriber_id == Subscriber.id,
                    Enrolment.sequence_id == self.value,
                    Enrolment.state == "active",
                    Enrolment.entered_at <= since,
                )
            )
        elif self.kind == "tag":
            query = query.where(
                exists().where(SubscriberTag.subscriber_id == Subscriber.id, SubscriberTag.tag == self.value)
            )
        return query


def parse_at(text: str, zone: ZoneInfo) -> datetime:
    """`--at` in any zone, as UTC; a time without an offset is the magazine's local time."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BroadcastError(
            f"--at {text!r} is not an ISO-8601 time such as 2026-12-05T09:00+09:00"
        ) from None
    return (moment.replace(tzinfo=zone) if moment.tzinfo is None else moment).astimezone(UTC)


def _future(at: datetime, now: datetime) -> datetime:
    if at <= now:
        raise BroadcastError(f"--at {at.isoformat()} is in the past (send ID sends an issue now)")
    return at


def create(  # noqa: PLR0913 (what `broadcast create` takes, keyword-only)
    session: Session,
    site: Site,
    catalog: Catalog,
    renderer: Renderer,
    folder: Path,
    *,
    to: str = "all",
    at: datetime | None = None,
    archive: bool = False,
    now: datetime,
) -> Broadcast:
    """A new issue from `folder`, checked by rendering it once for a sample reader; nothing is
    stored when anything is wrong (one line naming the file)."""
    audience = Audience.parse(to)
    found = content.read(folder)
    content.check(found, folder, renderer, content.magazine(site, catalog))
    audience.check(session, catalog)
    issue = Broadcast(
        name=found.name,
        subject=found.subject,
        body_text=found.body_text,
        body_html=found.body_html,
        audience=str(audience),
        archive=archive,
        state=IssueState.SCHEDULED if at is not None else IssueState.DRAFT,
        at=_future(at, now) if at is not None else None,
        created_at=now,
        audience_written=0,
    )
    session.add(issue)
    session.flush()
    log.info("broadcast.created broadcast_id=%s state=%s", issue.id, issue.state)
    return issue


def get(session: Session, issue_id: int, *, lock: bool = False) -> Broadcast:
    """The issue, locked until the transaction ends when `lock` (every change takes the lock)."""
    issue = session.get(Broadcast, issue_id, with_for_update=lock or None)
    if issue is None:
        raise BroadcastError(f"no issue {issue_id} (mailer broadcast list shows them)")
    if lock:
        session.refresh(issue, with_for_update=True)
    return issue


def _refuse(issue: Broadcast, doing: str) -> BroadcastError:
    return BroadcastError(f"issue {issue.id} is {issue.state}: it cannot be {doing}")


def schedule(session: Session, issue_id: int, at: datetime, now: datetime) -> Broadcast:
    """A draft, scheduled or held issue is to go at `at`."""
    issue = get(session, issue_id, lock=True)
    if issue.state not in STARTABLE:
        raise _refuse(issue, "scheduled")
    issue.at = _future(at, now)
    issue.state = IssueState.SCHEDULED
    return issue


def start(session: Session, issue_id: int, now: datetime) -> Broadcast:
    """Send the issue now (a held one too): its audience is fixed as of `now`."""
    issue = get(session, issue_id, lock=True)
    if issue.state not in STARTABLE:
        hint = " (mailer broadcast resume)" if issue.state == IssueState.PAUSED else ""
        raise BroadcastError(f"issue {issue.id} is {issue.state}: it cannot be sent{hint}")
    _start(session, issue, now)
    return issue


def _start(session: Session, issue: Broadcast, now: datetime) -> None:
    lowest, highest = session.execute(select(func.min(Subscriber.id), func.max(Subscriber.id))).one()
    issue.state = IssueState.SENDING
    issue.started_at = now
    issue.at = issue.at or now
    issue.audience_upto = highest or 0
    issue.audience_next = lowest
    log.info("broadcast.started broadcast_id=%s", issue.id)


def write_audience(
    sessions: sessionmaker[Session], issue_id: int, now: datetime, *, batch: int = AUDIENCE_BATCH
) -> int:
    """Write the issue's audience to the ledger, a batch of ids per transaction. Rows added."""
    added = 0
    while True:
        with session_scope(sessions) as session:
            issue = get(session, issue_id, lock=True)
            if issue.state != IssueState.SENDING or issue.audience_next is None:
                return added
            added += _write_batch(session, issue, now, batch)


def _write_batch(session: Session, issue: Broadcast, now: datetime, batch: int) -> int:
    assert issue.audience_next is not None
    assert issue.audience_upto is not None
    assert issue.started_at is not None
    lo = issue.audience_next
    hi = min(lo + batch - 1, issue.audience_upto)
    ids = Audience.parse(issue.audience).ids(issue.started_at, lo, hi)
    added = ledger.add_broadcast(session, issue.id, ids, issue.started_at, now)
    issue.audience_written += added
    issue.audience_next = hi + 1 if hi < issue.audience_upto else None
    return added


def cancel(session: Session, issue_id: int) -> int:
    """Nothing of the issue not yet handed to SMTP goes. Rows skipped."""
    issue = get(session, issue_id, lock=True)
    if issue.state in FINISHED:
        raise _refuse(issue, "cancelled")
    issue.state = IssueState.CANCELLED
    issue.audience_next = None
    skipped = ledger.skip_broadcast(session, issue.id, "cancelled")
    log.info("broadcast.cancelled broadcast_id=%s skipped=%s", issue.id, skipped)
    return skipped


def pause(session: Session, issue_id: int) -> int:
    """Stop handing the issue to SMTP, keeping its place. Rows parked."""
    issue = get(session, issue_id, lock=True)
    if issue.state != IssueState.SENDING:
        raise _refuse(issue, "paused (only a sending issue can be)")
    issue.state = IssueState.PAUSED
    parked = ledger.park_broadcast(session, issue.id)
    log.info("broadcast.paused broadcast_id=%s parked=%s", issue.id, parked)
    return parked


def resume(session: Session, issue_id: int, now: datetime) -> int:
    """Go on from where the issue was paused. Rows due again."""
    issue = get(session, issue_id, lock=True)
    if issue.state != IssueState.PAUSED:
        raise _refuse(issue, "resumed (only a paused issue can be)")
    issue.state = IssueState.SENDING
    resumed = ledger.unpark_broadcast(session, issue.id, now)
    log.info("broadcast.resumed broadcast_id=%s resumed=%s", issue.id, resumed)
    return resumed


def close_if_done(session: Session, issue_id: int, now: datetime) -> bool:
    """A sending issue whose audience is written and whose rows are all settled is sent."""
    issue = get(session, issue_id, lock=True)
    if issue.state != IssueState.SENDING or issue.audience_next is not None:
        return issue.state == IssueState.SENT
    if session.scalar(select(exists().where(*ledger.open_of(issue.id)))):
        return False
    issue.state = IssueState.SENT
    issue.finished_at = now
    log.info("broadcast.sent broadcast_id=%s", issue.id)
    return True


@dataclass
class Advanced:
    """What one tick did for the magazine."""

    started: int = 0
    held: int = 0
    written: int = 0
    finished: int = 0


def advance(sessions: sessionmaker[Session], site: Site, now: datetime) -> Advanced:
    """The tick's part: due issues started (or held, when later than `max_lateness`), audiences
    written, issues whose mail is all settled closed."""
    done = Advanced()
    with session_scope(sessions) as session:
        due = list(
            session.scalars(
                select(Broadcast.id).where(Broadcast.state == IssueState.SCHEDULED, Broadcast.at <= now)
            )
        )
    for issue_id in due:
        with session_scope(sessions) as session:
            issue = get(session, issue_id, lock=True)
            if issue.state != IssueState.SCHEDULED:
                continue  # another scheduler got there first
            assert issue.at is not None
            if now - issue.at > site.delivery.max_lateness:  # the scheduler was down, the machine off
                issue.state = IssueState.HELD
                log.warning(
                    "broadcast.held broadcast_id=%s late_seconds=%d",
                    issue.id,
                    (now - issue.at).total_seconds(),
                )
                done.held += 1
            else:
                _start(session, issue, now)
                done.started += 1
    _each_sending(sessions, now, done)
    return done


def _each_sending(sessions: sessionmaker[Session], now: datetime, done: Advanced) -> None:
    with session_scope(sessions) as session:
        sending = list(session.scalars(select(Broadcast.id).where(Broadcast.state == IssueState.SENDING)))
    for issue_id in sending:
        done.written += write_audience(sessions, issue_id, now)
        with session_scope(sessions) as session:
            done.finished += close_if_done(session, issue_id, now)


def wait_until_sent(
    sessions: sessionmaker[Session],
    issue_id: int,
    clock: Callable[[], datetime],
    show: Callable[[int, int], None],
    sleep: Callable[[float], None],
) -> Broadcast:
    """Until the issue is sent (or paused, cancelled): `show(done, total)` after each look."""
    while True:
        with session_scope(sessions) as session:
            close_if_done(session, issue_id, clock())
        with session_scope(sessions) as session:
            issue = get(session, issue_id)
            counts = state_counts(session, issue_id)
        total = issue.audience_written
        settled = total - counts.get(ledger.State.PENDING, 0) - counts.get(ledger.State.SENDING, 0)
        show(settled, total)
        if issue.state != IssueState.SENDING:
            return issue
        sleep(0.5)


def state_counts(session: Session, issue_id: int) -> dict[str, int]:
    """The issue's ledger rows by state."""
    rows = session.execute(
        select(Delivery.state, func.count()).where(Delivery.broadcast_id == issue_id).group_by(Delivery.state)
    ).all()
    return {str(state): int(n) for state, n in rows}
