"""The rules of "When a step is due", lived through the scheduler, the ledger and a real SMTP sink."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from mailer import ledger as mailer_ledger
from mailer.db import session_scope
from mailer.deliver.jobs import Report
from mailer.models import Delivery, Enrolment
from mailer.runtime import Runtime
from mailer.send.memory import MemoryTransport
from mailer.subscribers import signup
from mailer.subscribers.tokens import UnsubscribeClaim
from tests.conftest import Sink
from tests.helpers import EXAMPLE_TIMETABLE, arrivals, at, join, ledger, tick_through, timetable

NEW_YORK = ZoneInfo("America/New_York")


def write_seminar(home: Path, body: str, name: str = "web-business") -> None:
    (home / "sequences" / f"{name}.toml").write_text(body, encoding="utf-8")


def test_each_step_arrives_once_at_its_local_hour(runtime: Runtime, sink: Sink, home: Path) -> None:
    """A reader who joins on day 0 gets every step once, on entry date + day, at send_at or `at`."""
    join(runtime, sink, "hanako@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-01 10:00"), at("2026-12-16 10:00"))
    assert timetable(sink, "hanako@example.com", home) == EXAMPLE_TIMETABLE


def test_reader_in_new_york_gets_steps_at_nine_new_york_time(
    runtime: Runtime, sink: Sink, home: Path
) -> None:
    """The subscriber's own time zone decides the local date and hour, not the seminar's."""
    join(
        runtime,
        sink,
        "ny@example.com",
        at("2026-12-01 20:00", NEW_YORK),
        timezone="America/New_York",
    )
    tick_through(runtime, at("2026-12-01 20:00", NEW_YORK), at("2026-12-04 13:00", NEW_YORK))
    got = timetable(sink, "ny@example.com", home, NEW_YORK)
    assert got == [
        ("welcome", "12-01 20:00"),
        ("lesson-1", "12-02 09:00"),
        ("lesson-2", "12-04 12:30"),
    ]


def test_no_flood_after_an_outage(runtime: Runtime, sink: Sink, home: Path) -> None:
    """After ten days without a scheduler only the overdue step goes out; later steps move as much."""
    join(runtime, sink, "taro@example.com", at("2026-12-01 10:00"))
    # Nothing runs from 12-01 until 12-11 10:00: lesson-1 (due 12-02 09:00) is 9 days late.
    tick_through(runtime, at("2026-12-11 10:00"), at("2026-12-14 13:00"))
    got = timetable(sink, "taro@example.com", home)
    assert got == [
        ("welcome", "12-01 10:00"),
        ("lesson-1", "12-11 10:00"),
        ("lesson-2", "12-13 12:30"),
    ]


def test_quiet_hours_hold_a_step_without_moving_the_next(runtime: Runtime, sink: Sink, home: Path) -> None:
    """A step due at 22:00 waits for 08:00; being held is not being late, so the next keeps its day."""
    write_seminar(
        home,
        'title = "T"\ntimezone = "Asia/Tokyo"\nsend_at = "09:00"\n'
        '[[steps]]\nid = "welcome"\nday = 0\n[[steps]]\nid = "lesson-1"\nday = 1\nat = "22:00"\n'
        '[[steps]]\nid = "lesson-2"\nday = 3\n',
    )
    join(runtime, sink, "quiet@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-01 10:00"), at("2026-12-04 10:00"))
    got = timetable(sink, "quiet@example.com", home)
    assert got == [
        ("welcome", "12-01 10:00"),
        ("lesson-1", "12-03 08:00"),
        ("lesson-2", "12-04 09:00"),
    ]


def test_a_late_step_reaching_quiet_hours_waits_for_morning(runtime: Runtime, sink: Sink, home: Path) -> None:
    """Overdue at 23:00 (scheduler down all day), a step waits for 08:00 and the rest move one day."""
    join(runtime, sink, "night@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-02 23:00"), at("2026-12-05 13:00"))
    got = timetable(sink, "night@example.com", home)
    assert got == [
        ("welcome", "12-01 10:00"),
        ("lesson-1", "12-03 08:00"),
        ("lesson-2", "12-05 12:30"),
    ]


def test_confirmation_and_welcome_ignore_quiet_hours(runtime: Runtime, sink: Sink, home: Path) -> None:
    """At 23:30 the confirmation and the day-0 welcome answer the reader's own action at once."""
    join(runtime, sink, "late@example.com", at("2026-12-01 23:30"))
    assert len(sink.to("late@example.com")) == 2
    got = timetable(sink, "late@example.com", home)
    assert got == [("welcome", "12-01 23:30")]


def test_step_added_later_reaches_only_those_not_past_its_place(
    runtime: Runtime, sink: Sink, home: Path
) -> None:
    """A new step between lesson-1 and lesson-2 reaches a reader before lesson-2, not one after it."""
    join(runtime, sink, "early@example.com", at("2026-12-03 10:00"))
    join(runtime, sink, "ahead@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-01 10:00"), at("2026-12-04 13:00"))  # ahead: lesson-2 on 12-04
    text = (home / "sequences" / "web-business.toml").read_text(encoding="utf-8")
    write_seminar(
        home,
        text.replace(
            '[[steps]]\nid = "lesson-2"',
            '[[steps]]\nid = "extra"\nday = 2\n\n[[steps]]\nid = "lesson-2"',
        ),
    )
    extra = home / "templates" / "mail" / "web-business" / "extra"
    extra.mkdir()
    (extra / "subject.txt").write_text("追加の回", encoding="utf-8")
    (extra / "body.txt").write_text("{{ name }}さん、追加の回です。", encoding="utf-8")
    tick_through(runtime, at("2026-12-04 13:30"), at("2026-12-07 10:00"))
    early = [s for s, _ in arrivals(sink, "early@example.com", home)]
    ahead = [s for s, _ in arrivals(sink, "ahead@example.com", home)]
    assert early == ["welcome", "lesson-1", "extra", "lesson-2"]
    assert "extra" not in ahead


def test_removed_step_is_sent_to_no_one_who_has_not_had_it(runtime: Runtime, sink: Sink, home: Path) -> None:
    """Deleting lesson-2 from the file skips it for whoever had not received it yet."""
    join(runtime, sink, "rm@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-01 10:00"), at("2026-12-02 10:00"))
    text = (home / "sequences" / "web-business.toml").read_text(encoding="utf-8")
    write_seminar(home, text.replace('[[steps]]\nid = "lesson-2"\nday = 3\nat = "12:30"\n', ""))
    tick_through(runtime, at("2026-12-02 10:30"), at("2026-12-06 10:00"))
    assert [s for s, _ in arrivals(sink, "rm@example.com", home)] == [
        "welcome",
        "lesson-1",
        "lesson-3",
    ]


def test_changed_day_applies_to_whoever_has_not_had_the_step(
    runtime: Runtime, sink: Sink, home: Path
) -> None:
    """Moving lesson-3 from day 5 to day 4 changes when it reaches a reader still before it."""
    join(runtime, sink, "day@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-01 10:00"), at("2026-12-04 13:00"))
    text = (home / "sequences" / "web-business.toml").read_text(encoding="utf-8")
    write_seminar(home, text.replace('id = "lesson-3"\nday = 5', 'id = "lesson-3"\nday = 4'))
    tick_through(runtime, at("2026-12-04 13:30"), at("2026-12-05 10:00"))
    got = dict(timetable(sink, "day@example.com", home))
    assert got["lesson-3"] == "12-05 09:00"


def leave(runtime: Runtime, subscriber_id: int) -> None:
    with session_scope(runtime.sessions) as session:
        signup.unsubscribe(session, UnsubscribeClaim(subscriber_id, None), at("2026-12-02 09:00"))


def test_unsubscribe_after_the_claim_skips_the_mail(runtime: Runtime, sink: Sink, home: Path) -> None:
    """A reader who leaves while their mail sits claimed in a batch does not get it."""
    a = join(runtime, sink, "a@example.com", at("2026-12-01 10:00"))
    b = join(runtime, sink, "b@example.com", at("2026-12-01 10:00"))
    runtime.plan(at("2026-12-02 09:00"))
    deliverer, catalog, now = runtime.deliverer(), runtime.catalog(), at("2026-12-02 09:00")
    claimed = deliverer.claim(now, "worker")
    with session_scope(runtime.sessions) as session:
        jobs = deliverer.prepare(session, catalog, claimed, "worker", now, Report())
    assert len(jobs) == 2  # both mails rendered and on their way to SMTP
    leave(runtime, b)  # committed after the claim and the rendering, before the group's lock
    with runtime.transport.session() as connection:
        deliverer.send_group(jobs, "worker", now, connection, catalog)
    assert ledger(runtime, a)["lesson-1"] == "sent"
    assert ledger(runtime, b)["lesson-1"] == "skipped"
    assert [s for s, _ in arrivals(sink, "b@example.com", home)] == ["welcome"]


class LeaveInFlight:
    """A transport hook: while `address`'s mail is being handed over, they unsubscribe."""

    def __init__(self, runtime: Runtime, leaver: int, address: str) -> None:
        self.address = address
        self.unsubscribe = threading.Thread(target=leave, args=(runtime, leaver))
        self.waited = False

    def __call__(self, _index: int, recipient: str) -> None:
        if recipient == self.address and self.unsubscribe.ident is None:
            self.unsubscribe.start()
            self.unsubscribe.join(0.5)
            self.waited = self.unsubscribe.is_alive()  # blocked by the group in flight


def test_unsubscribe_during_a_send_waits_for_the_mail_in_flight(runtime: Runtime, home: Path) -> None:
    """An unsubscribe that arrives while the reader's mail is with SMTP commits after that mail is
    recorded as sent; nothing after it goes."""
    transport = MemoryTransport()
    runtime.transport_override = transport
    a = join(runtime, transport, "a@example.com", at("2026-12-01 10:00"))
    leaving = LeaveInFlight(runtime, a, "a@example.com")
    transport.hook = leaving
    runtime.tick(lambda: at("2026-12-02 09:00"))
    leaving.unsubscribe.join(10)
    assert leaving.waited, "the unsubscribe did not wait for the mail in flight"
    assert ledger(runtime, a)["lesson-1"] == "sent"
    transport.hook = None
    tick_through(runtime, at("2026-12-02 09:00"), at("2026-12-16 10:00"))
    # the lesson that was in flight, and nothing after it
    assert [s for s, _ in arrivals(transport, "a@example.com", home)] == ["welcome", "lesson-1"]


def test_lapsed_lease_is_reclaimed_and_sent_once(runtime: Runtime, sink: Sink, home: Path) -> None:
    """Rows claimed by a worker that died are sent by the next one after the lease, exactly once."""
    join(runtime, sink, "lease@example.com", at("2026-12-01 10:00"))
    runtime.plan(at("2026-12-02 09:00"))
    with session_scope(runtime.sessions) as session:  # a worker claims, then dies
        assert mailer_ledger.claim(
            session, now=at("2026-12-02 09:00"), limit=10, worker="dead", lease=timedelta(minutes=5)
        )
    runtime.tick(lambda: at("2026-12-02 09:01"))
    assert [s for s, _ in arrivals(sink, "lease@example.com", home)] == ["welcome"]
    runtime.tick(lambda: at("2026-12-02 09:06"))
    runtime.tick(lambda: at("2026-12-02 09:10"))
    assert [s for s, _ in arrivals(sink, "lease@example.com", home)] == ["welcome", "lesson-1"]


def test_two_schedulers_at_once_send_nothing_twice(runtime: Runtime, sink: Sink) -> None:
    """Two ticks racing over the same due steps deliver each step once per subscriber."""
    for n in range(30):
        join(runtime, sink, f"race{n}@example.com", at("2026-12-01 10:00"))
    sink.clear()
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            runtime.tick(lambda: at("2026-12-02 09:00"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    recipients = sorted(r.recipients[0] for r in sink.received)
    assert recipients == sorted(f"race{n}@example.com" for n in range(30))
    with session_scope(runtime.sessions) as session:
        assert (
            session.scalar(select(func.count()).select_from(Delivery).where(Delivery.step_id == "lesson-1"))
            == 30
        )


def test_resubscribing_resumes_at_the_next_step_not_received(
    runtime: Runtime, sink: Sink, home: Path
) -> None:
    """Leaving after lesson-1 and opting in again a week later continues with lesson-2, not welcome."""
    from tests.helpers import confirm, confirm_token, subscribe, text_of

    sid = join(runtime, sink, "back@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-01 10:00"), at("2026-12-02 10:00"))
    with session_scope(runtime.sessions) as session:
        signup.unsubscribe(session, UnsubscribeClaim(sid, None), at("2026-12-02 11:00"))
    tick_through(runtime, at("2026-12-02 11:00"), at("2026-12-09 10:00"))
    assert [s for s, _ in arrivals(sink, "back@example.com", home)] == ["welcome", "lesson-1"]
    subscribe(runtime, "back@example.com", at("2026-12-09 10:00"))
    runtime.tick(lambda: at("2026-12-09 10:00"))
    confirmation = [m for m in sink.to("back@example.com") if "/confirm/" in text_of(m)][-1]
    confirm(runtime, confirm_token(confirmation), at("2026-12-09 10:05"))
    tick_through(runtime, at("2026-12-09 10:30"), at("2026-12-11 10:00"))
    got = timetable(sink, "back@example.com", home)
    assert got == [
        ("welcome", "12-01 10:00"),
        ("lesson-1", "12-02 09:00"),
        ("lesson-2", "12-09 12:30"),
        ("lesson-3", "12-11 09:00"),
    ]


def test_a_step_skipped_while_away_goes_out_once_after_coming_back(
    runtime: Runtime, sink: Sink, home: Path
) -> None:
    """Lesson-2 was already in the ledger (planned, not sent) when the reader left; back and due
    again, the scheduler revives that row instead of adding a second one."""
    from tests.helpers import confirm, confirm_token, subscribe, text_of

    sid = join(runtime, sink, "away@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-01 10:00"), at("2026-12-02 10:00"))
    assert runtime.plan(at("2026-12-04 12:30")) == 1  # lesson-2 planned, not yet handed to SMTP
    with session_scope(runtime.sessions) as session:
        signup.unsubscribe(session, UnsubscribeClaim(sid, None), at("2026-12-04 12:31"))
    assert ledger(runtime, sid)["lesson-2"] == "skipped"
    subscribe(runtime, "away@example.com", at("2026-12-09 10:00"))
    runtime.tick(lambda: at("2026-12-09 10:00"))
    confirmation = [m for m in sink.to("away@example.com") if "/confirm/" in text_of(m)][-1]
    confirm(runtime, confirm_token(confirmation), at("2026-12-09 10:05"))
    assert runtime.plan(at("2026-12-09 12:30")) == 1
    tick_through(runtime, at("2026-12-09 12:30"), at("2026-12-11 10:00"))
    assert timetable(sink, "away@example.com", home) == [
        ("welcome", "12-01 10:00"),
        ("lesson-1", "12-02 09:00"),
        ("lesson-2", "12-09 12:30"),
        ("lesson-3", "12-11 09:00"),
    ]
    with session_scope(runtime.sessions) as session:
        rows = session.scalars(
            select(Delivery.state).where(Delivery.subscriber_id == sid, Delivery.step_id == "lesson-2")
        ).all()
    assert rows == ["sent"]


def test_finishing_the_seminar_enrols_in_the_magazine(runtime: Runtime, sink: Sink) -> None:
    """After the last step the reader is on the `then` list (the mail magazine)."""
    sid = join(runtime, sink, "done@example.com", at("2026-12-01 10:00"))
    tick_through(runtime, at("2026-12-01 10:00"), at("2026-12-15 10:00"), every=timedelta(hours=1))
    with session_scope(runtime.sessions) as session:
        states = dict(
            session.execute(
                select(Enrolment.sequence_id, Enrolment.state).where(Enrolment.subscriber_id == sid)
            ).all()
        )
    assert states == {"web-business": "active", "magazine": "active"}
