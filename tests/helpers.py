"""Small steps the tests share: join a seminar the way a reader does, read what arrived."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select

from mailer.db import session_scope
from mailer.models import Delivery, Subscriber
from mailer.runtime import Runtime
from mailer.subscribers import signup
from mailer.subscribers.addresses import Refusal
from tests.conftest import SECRET


class Inbox(Protocol):
    """Where the tests read what was sent: the aiosmtpd sink or a MemoryTransport."""

    def to(self, address: str) -> list[EmailMessage]: ...


TOKYO = ZoneInfo("Asia/Tokyo")
CONFIRM_LINK = re.compile(r"https?://[^\s\"<>]+/confirm/([A-Za-z0-9_.\-]+)")


def identity(moment: datetime) -> datetime:
    """A clock stopped at `moment`, as partial(identity, moment)."""
    return moment


def at(text: str, zone: ZoneInfo = TOKYO) -> datetime:
    """A local wall time, e.g. at("2026-12-01 10:00") in Tokyo."""
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def confirm_token(message: EmailMessage) -> str:
    found = CONFIRM_LINK.search(text_of(message))
    assert found, "no confirmation link in the mail"
    return found.group(1)


def subscribe(rt: Runtime, email: str, now: datetime, **fields: str) -> signup.Accepted | Refusal:
    with session_scope(rt.sessions) as session:
        return signup.subscribe(
            session, rt.site, rt.catalog(), signup.SignupRequest(email=email, **fields), now
        )


def confirm(rt: Runtime, token: str, now: datetime) -> signup.Confirmed | signup.AlreadyConfirmed | None:
    claim = rt.tokens.read_confirm(token, 7 * 86400)
    assert claim is not None
    with session_scope(rt.sessions) as session:
        return signup.confirm(session, rt.site, rt.catalog(), claim, now)


def join(rt: Runtime, sink: Inbox, email: str, now: datetime, **fields: str) -> int:
    """Sign up, receive the confirmation, confirm at `now`, and receive the welcome; the id."""
    assert isinstance(subscribe(rt, email, now, **fields), signup.Accepted)
    rt.tick(lambda: now)
    confirmation = [m for m in sink.to(email) if "/confirm/" in text_of(m)][-1]
    assert isinstance(confirm(rt, confirm_token(confirmation), now), signup.Confirmed)
    rt.tick(lambda: now)
    with session_scope(rt.sessions) as session:
        return session.scalars(select(Subscriber.id).where(Subscriber.email == email)).one()


def step_subjects(home: Path, sequence: str = "web-business") -> dict[str, str]:
    """Each step's subject line, to tell which step a received mail is."""
    folder = home / "templates" / "mail" / sequence
    return {
        (folder / d.name / "subject.txt").read_text(encoding="utf-8").strip(): d.name
        for d in folder.iterdir()
    }


def arrivals(sink: Inbox, email: str, home: Path, zone: ZoneInfo = TOKYO) -> list[tuple[str, datetime]]:
    """(step, local time in the Date header) of every seminar mail `email` received, in order."""
    subjects = step_subjects(home)
    out = []
    for message in sink.to(email):
        step = subjects.get(str(message["Subject"]))
        if step:
            out.append((step, parsedate_to_datetime(str(message["Date"])).astimezone(zone)))
    return out


def timetable(sink: Inbox, email: str, home: Path, zone: ZoneInfo = TOKYO) -> list[tuple[str, str]]:
    """(step, "MM-DD HH:MM" local) of each seminar mail `email` received: what the reader saw."""
    return [(step, when.strftime("%m-%d %H:%M")) for step, when in arrivals(sink, email, home, zone)]


# The example seminar for a reader who confirms on 2026-12-01 at 10:00 Tokyo time.
EXAMPLE_TIMETABLE = [
    ("welcome", "12-01 10:00"),
    ("lesson-1", "12-02 09:00"),
    ("lesson-2", "12-04 12:30"),
    ("lesson-3", "12-06 09:00"),
    ("lesson-4", "12-08 09:00"),
    ("lesson-5", "12-11 09:00"),
    ("lesson-6", "12-15 09:00"),
]


def tick_through(
    rt: Runtime, start: datetime, end: datetime, every: timedelta = timedelta(minutes=30)
) -> None:
    """Run the scheduler as beat would, every `every` from `start` to `end` (simulated time)."""
    moment = start
    while moment <= end:
        rt.tick(partial(identity, moment))
        moment += every


def ledger_row(rt: Runtime, subscriber_id: int, step_id: str) -> Delivery:
    """The ledger row of one step for one subscriber, as the database holds it now."""
    with session_scope(rt.sessions) as session:
        return session.scalars(
            select(Delivery).where(Delivery.subscriber_id == subscriber_id, Delivery.step_id == step_id)
        ).one()


def seminar_mails(sink: Inbox, email: str) -> list[EmailMessage]:
    """The list mails `email` received (those with List-Unsubscribe), not the confirmation."""
    return [m for m in sink.to(email) if m["List-Unsubscribe"]]


def ledger(rt: Runtime, subscriber_id: int) -> dict[str | None, str]:
    with session_scope(rt.sessions) as session:
        rows = session.execute(
            select(Delivery.step_id, Delivery.state).where(
                Delivery.subscriber_id == subscriber_id, Delivery.kind == "step"
            )
        ).all()
    return dict(rows)


def mailer_env(home: Path, *, db: str | None = None, smtp: str = "maildir:./outbox") -> dict[str, str]:
    """The environment an operator's `mailer` runs with from `home` (a pipe: no colours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_") and k != "COLUMNS"}
    return env | {
        "MAILER_HOME": str(home),
        "MAILER_DATABASE_URL": db or f"sqlite:///{home / 'mailer.db'}",
        "MAILER_SMTP_URL": smtp,
        "MAILER_SECRET_KEY": SECRET,
        "NO_COLOR": "1",
    }


def run_mailer(
    home: Path,
    *args: str,
    db: str | None = None,
    smtp: str = "maildir:./outbox",
    columns: int | None = 200,
    timeout: float = 60,
    python: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """`mailer ARGS` as an operator runs it from `home`, output piped; `columns=None` leaves the
    width to the command, as a shell pipe does; `python`: options for the interpreter."""
    env = mailer_env(home, db=db, smtp=smtp)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, *python, "-m", "mailer", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
