"""The mail magazine on the ledger: who gets an issue, once, when, and what stops it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.broadcasts import issues
from mailer.db import session_scope
from mailer.errors import BroadcastError
from mailer.models import Broadcast, Delivery
from mailer.runtime import Runtime
from mailer.send.memory import MemoryTransport
from mailer.subscribers import signup
from mailer.subscribers.tokens import UnsubscribeClaim
from tests.conftest import Clock, Sink
from tests.helpers import at, confirm, confirm_token, join, subscribe, text_of
from tests.magazine import (
    SUBJECT_START,
    create,
    issue_folder,
    issue_rows,
    issue_state,
    readers,
    rows_by_state,
    start,
)

NEW_YORK = ZoneInfo("America/New_York")


def issue_mails(sink: Sink, address: str) -> list[str]:
    return [str(m["Subject"]) for m in sink.to(address) if SUBJECT_START in str(m["Subject"])]


def leave(rt: Runtime, subscriber_id: int, clock: Clock) -> None:
    with session_scope(rt.sessions) as session:
        signup.unsubscribe(session, UnsubscribeClaim(subscriber_id, None), clock())


def test_an_issue_reaches_each_confirmed_reader_once_in_the_magazine_layout(
    runtime: Runtime, sink: Sink, home: Path, clock: Clock
) -> None:
    """Confirmed readers get the issue once, with the footer, List-* headers and the magazine's
    List-Id; a pending and an unsubscribed reader get nothing; the issue ends sent."""
    taro = join(runtime, sink, "taro@example.com", clock(), name="山田 太郎")
    hanako = join(runtime, sink, "hanako@example.com", clock())
    gone = join(runtime, sink, "gone@example.com", clock())
    leave(runtime, gone, clock)
    subscribe(runtime, "pending@example.com", clock())
    issue = create(runtime, issue_folder(home), clock())
    assert start(runtime, issue, clock()) == 2
    runtime.tick(clock)
    runtime.tick(clock)  # the tick after the last mail closes the issue
    assert issue_mails(sink, "taro@example.com") == ["山田 太郎さんへ WEBビジネス通信 12月号"]
    assert len(issue_mails(sink, "hanako@example.com")) == 1
    assert issue_mails(sink, "gone@example.com") == issue_mails(sink, "pending@example.com") == []
    mail = next(m for m in sink.to("taro@example.com") if SUBJECT_START in str(m["Subject"]))
    assert str(mail["List-Id"]).endswith("<magazine.example.jp>")
    assert "WEBビジネス通信" in str(mail["List-Id"])
    assert str(mail["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/" in str(mail["List-Unsubscribe"])
    text = text_of(mail)
    assert "山田 太郎さん、こんにちは。" in text
    assert runtime.site.sender.disclaimer in text
    assert mail.get_body(("html",)) is not None
    assert issue_rows(runtime, issue) == {taro: "sent", hanako: "sent"}
    assert issue_state(runtime, issue) == "sent"


def test_the_message_id_is_the_same_when_a_row_is_sent_again(
    runtime: Runtime, home: Path, clock: Clock
) -> None:
    """Each reader's issue mail has a deterministic Message-ID of its own (a re-send carries it)."""
    readers(runtime, 2, clock())
    issue = create(runtime, issue_folder(home), clock())
    start(runtime, issue, clock())
    first = MemoryTransport()
    runtime.transport_override = first
    runtime.tick(clock)
    with session_scope(runtime.sessions) as session:
        ids = sorted(session.scalars(select(Delivery.id).where(Delivery.broadcast_id == issue)))
    expected = {runtime.renderer.message_id(i) for i in ids}
    assert {str(m["Message-ID"]) for n in range(2) for m in first.to(f"r{n}@example.com")} == expected


def test_the_audience_by_seminar_and_by_tag(runtime: Runtime, sink: Sink, home: Path, clock: Clock) -> None:
    """`seminar:SEQ` reaches the readers enrolled in it, `tag:TAG` those who carry the tag."""
    vip = readers(runtime, 3, clock(), prefix="vip", tag="vip")
    magazine = readers(runtime, 2, clock(), prefix="mag", sequence="magazine")
    readers(runtime, 2, clock(), prefix="other")
    by_tag = create(runtime, issue_folder(home, "vip"), clock(), to="tag:vip")
    by_seminar = create(runtime, issue_folder(home, "mag"), clock(), to="seminar:magazine")
    start(runtime, by_tag, clock())
    start(runtime, by_seminar, clock())
    assert sorted(issue_rows(runtime, by_tag)) == vip
    assert sorted(issue_rows(runtime, by_seminar)) == magazine
    runtime.tick(clock)
    assert len(sink.received) == 5


def test_who_confirms_after_the_start_does_not_get_the_issue(
    runtime: Runtime, sink: Sink, home: Path, clock: Clock
) -> None:
    """The audience is fixed when sending starts: a reader who signed up before it but confirms
    after it, and one who joins while it is being sent, get nothing of it."""
    early = readers(runtime, 30, clock())
    subscribe(runtime, "late-confirmer@example.com", clock())
    runtime.tick(clock)
    confirmation = sink.to("late-confirmer@example.com")
    issue = create(runtime, issue_folder(home), clock())
    with runtime.transaction() as session:
        issues.start(session, issue, clock())  # the audience is written by the ticks below
    clock.now += timedelta(minutes=1)
    confirm(runtime, confirm_token(confirmation[-1]), clock())
    join(runtime, sink, "joiner@example.com", clock())  # its ticks write the audience and send
    clock.now += timedelta(minutes=1)
    runtime.tick(clock)
    runtime.tick(clock)
    assert sorted(issue_rows(runtime, issue)) == early
    assert issue_mails(sink, "late-confirmer@example.com") == issue_mails(sink, "joiner@example.com") == []
    assert sum(len(issue_mails(sink, f"r{n}@example.com")) for n in range(30)) == 30
    assert issue_state(runtime, issue) == "sent"


def test_who_unsubscribes_during_the_send_does_not_get_it(runtime: Runtime, home: Path, clock: Clock) -> None:
    """A reader who leaves while the issue is being handed to SMTP, before their own mail, gets
    nothing; everyone else gets it once."""
    ids = readers(runtime, 50, clock())
    last = ids[-1]
    transport = MemoryTransport()
    runtime.transport_override = transport
    leaving = threading.Thread(target=leave, args=(runtime, last, clock))

    def unsubscribe_the_last(index: int, _recipient: str) -> None:
        if index == 0:  # the first mail of the issue is in flight: the last reader leaves
            leaving.start()
            leaving.join(0.5)

    transport.hook = unsubscribe_the_last
    issue = create(runtime, issue_folder(home), clock())
    start(runtime, issue, clock())
    runtime.tick(clock)
    leaving.join(10)
    received = [a.recipient for a in transport.accepted]
    assert "r49@example.com" not in received
    assert sorted(received) == sorted(f"r{n}@example.com" for n in range(49))
    assert issue_rows(runtime, issue)[last] == "skipped"


def run_worker(rt: Runtime, clock: Clock) -> threading.Thread:
    worker = threading.Thread(target=rt.deliverer().run, args=(clock,), daemon=True)
    worker.start()
    return worker


def test_a_confirmation_goes_within_seconds_while_an_issue_is_queued(
    runtime: Runtime, sink: Sink, home: Path, clock: Clock
) -> None:
    """A large issue shares the worker and the SMTP session with seminar mail and never stands
    between a new reader and their confirmation: it goes within seconds, the issue after it."""
    readers(runtime, 2000, clock())
    issue = create(runtime, issue_folder(home), clock())
    start(runtime, issue, clock())
    sink.handler.delay = 0.002  # a relay that takes 2 ms a mail: the issue takes seconds
    worker = run_worker(runtime, clock)
    sink.wait_for(50)
    asked = time.monotonic()
    subscribe(runtime, "newcomer@example.com", clock())
    while not sink.to("newcomer@example.com"):
        assert time.monotonic() - asked < 5, "the confirmation waited behind the issue"
        time.sleep(0.01)
    waited = time.monotonic() - asked
    queued = 2000 - len(issue_mails_all(sink))
    worker.join(120)
    assert waited < 2.0
    assert queued > 500  # most of the issue was still to go when the confirmation went
    assert len(issue_mails_all(sink)) == 2000


def issue_mails_all(sink: Sink) -> list[str]:
    return [r.recipients[0] for r in sink.received if SUBJECT_START in str(r.message["Subject"])]


def stopped_mid_send(
    rt: Runtime, sink: Sink, home: Path, clock: Clock, count: int, stop: Callable[[Session, int], int]
) -> tuple[int, int, float]:
    """An issue of `count` being sent by a running worker, stopped by `stop` once 40 are out: the
    issue, the mails received when `stop` committed, and the seconds from asking to the worker
    having nothing more to send."""
    readers(rt, count, clock())
    issue = create(rt, issue_folder(home), clock())
    start(rt, issue, clock())
    sink.handler.delay = 0.005  # a relay that takes 5 ms a mail: the issue takes seconds
    worker = run_worker(rt, clock)
    sink.wait_for(40)
    asked = time.monotonic()
    with rt.transaction() as session:
        stop(session, issue)
    at_stop = len(sink.received)
    worker.join(10)
    return issue, at_stop, time.monotonic() - asked


def test_cancel_under_a_running_worker_stops_within_a_second(
    runtime: Runtime, sink: Sink, home: Path, clock: Clock
) -> None:
    """Cancelled while a worker sends it: within a second at most the group in flight still goes,
    nothing after, and the rest of the issue's rows are skipped."""
    issue, at_cancel, seconds = stopped_mid_send(runtime, sink, home, clock, 400, issues.cancel)
    assert seconds < 1.0
    sent = len(sink.received)
    assert sent - at_cancel <= runtime.site.delivery.commit_every
    assert rows_by_state(runtime, issue) == {"sent": sent, "skipped": 400 - sent}
    assert issue_state(runtime, issue) == "cancelled"
    runtime.tick(clock)
    assert len(sink.received) == sent
    with (
        runtime.transaction() as session,
        pytest.raises(BroadcastError, match="cancelled: it cannot be sent"),
    ):
        issues.start(session, issue, clock())


def test_pause_and_resume_under_a_running_worker_send_each_reader_once(
    runtime: Runtime, sink: Sink, home: Path, clock: Clock
) -> None:
    """Paused mid-send, nothing more goes after the group in flight; resumed, the rest goes: every
    reader gets the issue exactly once, none skipped, and the issue ends sent."""
    issue, at_pause, seconds = stopped_mid_send(runtime, sink, home, clock, 300, issues.pause)
    assert seconds < 1.0
    paused = len(sink.received)
    assert 0 < paused - at_pause + 1 <= runtime.site.delivery.commit_every + 1
    runtime.tick(clock)  # a paused issue is not due
    assert len(sink.received) == paused
    assert issue_state(runtime, issue) == "paused"
    clock.now += timedelta(hours=8)  # paused for a night: not late
    with runtime.transaction() as session:
        issues.resume(session, issue, clock())
    runtime.tick(clock)
    runtime.tick(clock)
    received = sorted(issue_mails_all(sink))
    assert received == sorted(f"r{n}@example.com" for n in range(300))
    assert rows_by_state(runtime, issue) == {"sent": 300}
    assert issue_state(runtime, issue) == "sent"


@pytest.mark.parametrize(
    ("late", "expected"), [(timedelta(hours=5, minutes=59), "sent"), (timedelta(hours=6, minutes=1), "held")]
)
def test_an_issue_later_than_max_lateness_is_held_until_send(
    runtime: Runtime, sink: Sink, home: Path, clock: Clock, late: timedelta, expected: str
) -> None:
    """The scheduler down past the issue's time: within max_lateness (6 h) it still starts; later
    it is held, sends nothing, and goes only on `send`."""
    readers(runtime, 3, clock())
    due = at("2026-12-02 09:00")
    issue = create(runtime, issue_folder(home), clock(), at=due)
    clock.now = due + late
    runtime.tick(clock)
    runtime.tick(clock)
    assert issue_state(runtime, issue) == expected
    if expected == "held":
        assert len(sink.received) == 0
        start(runtime, issue, clock())
        runtime.tick(clock)
        runtime.tick(clock)
        assert issue_state(runtime, issue) == "sent"
    assert len(issue_mails_all(sink)) == 3


def test_quiet_hours_hold_an_issue_for_each_reader_in_their_own_zone(
    runtime: Runtime, sink: Sink, home: Path, clock: Clock
) -> None:
    """An issue at noon in Tokyo (22:00 in New York): the Tokyo reader gets it at noon, the New
    York reader at the end of their quiet hours (08:00 there), and neither waits for the other."""
    readers(runtime, 1, clock(), prefix="tokyo", timezone="Asia/Tokyo")
    readers(runtime, 1, clock(), prefix="ny", timezone="America/New_York")
    noon = at("2026-12-02 12:00")
    issue = create(runtime, issue_folder(home), clock(), at=noon)
    clock.now = noon
    runtime.tick(clock)
    assert [parsedate_to_datetime(str(m["Date"])) for m in sink.to("tokyo0@example.com")] == [noon]
    assert sink.to("ny0@example.com") == []
    morning_in_new_york = at("2026-12-02 08:00", NEW_YORK)
    clock.now = morning_in_new_york - timedelta(minutes=1)
    runtime.tick(clock)
    assert sink.to("ny0@example.com") == []
    assert issue_state(runtime, issue) == "sending"
    clock.now = morning_in_new_york
    runtime.tick(clock)
    runtime.tick(clock)
    [mail] = sink.to("ny0@example.com")
    assert parsedate_to_datetime(str(mail["Date"])).astimezone(NEW_YORK).hour == 8
    assert issue_state(runtime, issue) == "sent"


class Crash(BaseException):
    """The worker process dies: not an error any code path handles."""


def test_a_worker_killed_mid_issue_loses_none_and_resends_at_most_the_group(
    runtime: Runtime, home: Path, clock: Clock
) -> None:
    """Killed after SMTP took 25 mails of an issue (groups of 20): the next worker, after the
    lease, sends the rest; nobody is missed and only the 5 of the open group get it twice."""
    readers(runtime, 60, clock())
    issue = create(runtime, issue_folder(home), clock())
    start(runtime, issue, clock())

    def crash(index: int, _recipient: str) -> None:
        if index == 25:
            raise Crash

    transport = MemoryTransport(hook=crash)
    runtime.transport_override = transport
    with pytest.raises(Crash):
        runtime.deliverer().run(clock)
    assert rows_by_state(runtime, issue)["sent"] == 20
    transport.hook = None
    clock.now += timedelta(minutes=6)  # the lease (5 minutes) lapsed
    runtime.tick(clock)
    received = [a.recipient for a in transport.accepted]
    assert sorted(set(received)) == sorted(f"r{n}@example.com" for n in range(60))
    assert len(received) - 60 == 5
    assert rows_by_state(runtime, issue) == {"sent": 60}


def broadcasts_stored(rt: Runtime) -> int:
    with session_scope(rt.sessions) as session:
        return session.scalar(select(func.count()).select_from(Broadcast)) or 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_folder", "no such folder"),
        ("no_subject", "subject.txt: missing"),
        ("empty_subject", "subject.txt: the subject is empty"),
        ("broken", r"body.txt:2: "),
        ("undefined", "UndefinedError"),
        ("footer", "the footer lacks the unsubscribe link in the text part"),
        ("seminar", "no seminar 'nope'"),
        ("tag", "no subscriber carries the tag 'nobody'"),
        ("past", "is in the past"),
        ("audience", "expected all, seminar:SEQ or tag:TAG"),
    ],
)
def test_create_refuses_what_is_wrong_in_one_line_and_stores_nothing(
    runtime: Runtime, home: Path, clock: Clock, damage: str, message: str
) -> None:
    """Each thing that would break an issue is named (file and what is wrong); nothing is stored."""
    folder = issue_folder(home)
    options: dict[str, object] = {}
    if damage == "no_folder":
        folder = home / "issues" / "missing"
    elif damage == "no_subject":
        (folder / "subject.txt").unlink()
    elif damage == "empty_subject":
        (folder / "subject.txt").write_text("\n", encoding="utf-8")
    elif damage == "broken":
        (folder / "body.txt").write_text("こんにちは\n{% if name %}\n", encoding="utf-8")
    elif damage == "undefined":
        (folder / "body.txt").write_text("{{ coupon_code }}\n", encoding="utf-8")
    elif damage == "footer":
        base = home / "templates" / "mail" / "_base" / "body.txt"
        base.write_text(
            base.read_text(encoding="utf-8").replace("{{ unsubscribe_url }}", ""), encoding="utf-8"
        )
    elif damage in {"seminar", "tag", "audience"}:
        options["to"] = {"seminar": "seminar:nope", "tag": "tag:nobody", "audience": "everyone"}[damage]
    elif damage == "past":
        options["at"] = clock() - timedelta(minutes=1)
    with pytest.raises(BroadcastError, match=message) as refused:
        create(runtime, folder, clock(), **options)
    assert "\n" not in str(refused.value)
    assert broadcasts_stored(runtime) == 0


def test_commands_on_an_unknown_or_finished_issue_change_nothing(
    runtime: Runtime, sink: Sink, home: Path, clock: Clock
) -> None:
    """cancel of an unknown id, send of a sent issue, pause of a draft: refused in one line."""
    readers(runtime, 1, clock())
    issue = create(runtime, issue_folder(home), clock())
    with runtime.transaction() as session, pytest.raises(BroadcastError, match="no issue 99"):
        issues.cancel(session, 99)
    with runtime.transaction() as session, pytest.raises(BroadcastError, match="draft: it cannot be paused"):
        issues.pause(session, issue)
    start(runtime, issue, clock())
    runtime.tick(clock)
    runtime.tick(clock)
    with runtime.transaction() as session, pytest.raises(BroadcastError, match="is sent: it cannot be sent"):
        issues.start(session, issue, clock())
    with (
        runtime.transaction() as session,
        pytest.raises(BroadcastError, match="is sent: it cannot be cancel"),
    ):
        issues.cancel(session, issue)
    assert len(sink.received) == 1
