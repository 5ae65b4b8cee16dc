"""The fast send path: mail assembled from prebuilt bytes is the mail the email package would build;
failures are written to the ledger; rows are marked sent in small groups right after SMTP."""

from __future__ import annotations

import email
import email.policy
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.db import session_scope
from mailer.mail.compose import MailTemplate, Recipient
from mailer.models import DeliveryAttempt, Enrolment
from mailer.runtime import Runtime
from mailer.send.memory import Hook, MemoryTransport
from mailer.stats import collect
from tests.conftest import Sink, make_settings
from tests.helpers import at, join, ledger, ledger_row
from tests.services import PostgresServer

NOW = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
READERS = [
    Recipient(1, 11, "taro@example.com", "山田 太郎"),
    Recipient(2, 12, "plain@example.com", "Taro Yamada"),
    Recipient(3, 13, "quoted@example.com", 'Yamada, "Taro" <T>'),
    Recipient(4, 14, "long@example.com", "長い名前の読者" * 9),  # several RFC 2047 words
    Recipient(5, 15, "noname@example.com", ""),
    Recipient(6, 16, "html@example.com", "<b>&'\"</b>"),  # escaped in the HTML part
    Recipient(7, 17, "spaced@example.com", "  edge  "),  # not plain: rendered in full
]


def parsed(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def assert_same_mail(fast: bytes, slow: bytes) -> None:
    """Equal as a mail client reads them: every header (the MIME boundary aside) and every part."""
    a, b = parsed(fast), parsed(slow)
    assert a.keys() == b.keys()
    for name in b:
        if name != "Content-Type" or not b.is_multipart():
            assert str(a[name]) == str(b[name]), name
    a_parts, b_parts = list(a.walk()), list(b.walk())
    assert [p.get_content_type() for p in a_parts] == [p.get_content_type() for p in b_parts]
    for x, y in zip(a_parts, b_parts, strict=True):
        if not x.is_multipart():
            assert x.get_content() == y.get_content()
            assert x["Content-Transfer-Encoding"] == y["Content-Transfer-Encoding"]
    lines = fast.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) <= 998 and b"\n" not in line for line in lines)  # CRLF only, short lines
    assert fast.isascii()


def templates(runtime: Runtime) -> Iterator[tuple[MailTemplate, dict[str, object]]]:
    catalog = runtime.catalog()
    for sequence in catalog.sequences.values():
        for step in sequence.steps:
            yield runtime.renderer.step(sequence, step), {}
        yield (
            runtime.renderer.confirm(sequence),
            {"confirm_url": "http://x.test/confirm/abc", "confirm_days": 7},
        )


def test_the_prebuilt_mail_parses_as_the_email_package_builds_it(runtime: Runtime) -> None:
    for template, extra in templates(runtime):
        for reader in READERS:
            assert_same_mail(
                template.render(reader, NOW, **extra), template.message(reader, NOW, **extra).as_bytes()
            )


def test_japanese_subject_and_body_read_back(runtime: Runtime) -> None:
    sequence = runtime.catalog().get("web-business")
    assert sequence is not None
    step = sequence.step("lesson-1")
    assert step is not None
    mail = parsed(runtime.renderer.step(sequence, step).render(READERS[0], NOW))
    assert str(mail["Subject"]) == "【第1回】最初の一歩は「テーマ選び」から"
    assert mail["To"].addresses[0].display_name == "山田 太郎"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "山田 太郎さん、こんにちは。" in text.get_content()
    assert "/unsubscribe/" in text.get_content()
    assert "山田 太郎さん" in html.get_content()


def test_a_text_only_step_and_a_template_that_transforms_the_name(home: Path, runtime: Runtime) -> None:
    """No body.html: a single text/plain part. A filter on the name: rendered per reader, still right."""
    folder = home / "templates" / "mail" / "web-business" / "lesson-2"
    (folder / "body.html").unlink()
    folder = home / "templates" / "mail" / "web-business" / "lesson-3"
    (folder / "body.txt").write_text("{{ name|upper }} / {{ name|length }}\n", encoding="utf-8")
    sequence = runtime.catalog().get("web-business")
    assert sequence is not None
    for step_id in ("lesson-2", "lesson-3"):
        step = sequence.step(step_id)
        assert step is not None
        template = runtime.renderer.step(sequence, step)
        for reader in READERS:
            assert_same_mail(template.render(reader, NOW), template.message(reader, NOW).as_bytes())
    reader = READERS[1]
    step = sequence.step("lesson-3")
    assert step is not None
    body = parsed(runtime.renderer.step(sequence, step).render(reader, NOW)).get_body(("plain",))
    assert body is not None
    assert "TARO YAMADA / 11" in body.get_content()
    assert not parsed(runtime.renderer.step(sequence, sequence.steps[2]).render(reader, NOW)).is_multipart()


def test_each_failed_attempt_is_recorded_for_the_operator(runtime: Runtime, sink: Sink) -> None:
    """A 421 then a 550: the ledger keeps each reply's code and text, and what came of it."""
    sid = join(runtime, sink, "tries@example.com", at("2026-12-01 10:00"))
    sink.handler.data_fault = lambda _rcpts: "421 4.7.0 Slow down please"
    runtime.tick(lambda: at("2026-12-02 09:00"))
    sink.handler.data_fault = lambda _rcpts: None
    sink.handler.rcpt_fault = lambda _rcpt: "550 5.1.1 Mailbox unknown"
    runtime.tick(lambda: at("2026-12-02 10:00"))
    row = ledger_row(runtime, sid, "lesson-1")
    with session_scope(runtime.sessions) as session:
        attempts = session.execute(
            select(DeliveryAttempt.code, DeliveryAttempt.text, DeliveryAttempt.outcome)
            .where(DeliveryAttempt.delivery_id == row.id)
            .order_by(DeliveryAttempt.id)
        ).all()
    assert [(code, outcome) for code, _, outcome in attempts] == [(421, "retry"), (550, "failed")]
    assert "Slow down please" in attempts[0][1]
    assert "5.1.1 Mailbox unknown" in attempts[1][1]
    assert (row.state, row.attempts) == ("failed", 2)
    with session_scope(runtime.sessions) as session:
        shown = collect(session, since=at("2026-12-01 00:00"))["failed_attempts"]
    assert sorted((f["code"], f["outcome"], f["count"]) for f in shown) == [
        (421, "retry", 1),
        (550, "failed", 1),
    ]


class Crash(BaseException):
    """The worker process dies: not an error any code path handles."""


def crash_after(accepted: int) -> Hook:
    """A hook: the worker dies once `accepted` mails have been handed over, the next one in flight."""

    def crash(index: int, _recipient: str) -> None:
        if index == accepted:
            raise Crash

    return crash


def test_a_crash_resends_at_most_the_group_in_flight(home: Path, database_url: str, sink: Sink) -> None:
    """Rows are marked sent every `commit_every` mails: a crash after 25 leaves 5 to send again."""
    runtime = Runtime(make_settings(home, database_url, sink.url))
    runtime.upgrade_db()
    ids = [join(runtime, sink, f"c{n}@example.com", at("2026-12-01 10:00")) for n in range(30)]
    runtime.plan(at("2026-12-02 09:00"))
    transport = MemoryTransport(hook=crash_after(25))
    runtime.transport_override = transport
    # What a real SMTP session does when its worker dies so (mail 26 at DATA: closed, no QUIT) is
    # test_smtp.py's test_a_session_that_dies_at_data_is_closed_without_quit.
    with pytest.raises(Crash):
        runtime.deliverer().run(lambda: at("2026-12-02 09:00"))
    states = [ledger(runtime, i)["lesson-1"] for i in ids]
    assert states.count("sent") == 20  # one group of 20 committed; the group in flight was not
    transport.hook = None
    runtime.tick(lambda: at("2026-12-02 09:06"))  # the lease (5 minutes) lapsed
    received = [a.recipient for a in transport.accepted]
    assert sorted(set(received)) == sorted(f"c{n}@example.com" for n in range(30))
    assert len(received) - 30 == 5  # re-sent: only what SMTP took after the last commit
    assert all(ledger(runtime, i)["lesson-1"] == "sent" for i in ids)
    runtime.close()


def test_a_group_smtp_took_is_recorded_once_the_database_is_back(
    home: Path, postgres: PostgresServer, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """The database goes away after SMTP accepted a group: the worker waits and records it, and
    sends none of it again."""
    runtime = Runtime(make_settings(home, postgres.new_database(), sink.url), sending=True)
    runtime.upgrade_db()
    ids = [join(runtime, sink, f"o{n}@example.com", at("2026-12-01 10:00")) for n in range(30)]
    runtime.plan(at("2026-12-02 09:00"))

    def restart_after_a_second() -> None:
        time.sleep(1.0)
        postgres.start()

    restart = threading.Thread(target=restart_after_a_second)

    def stop_postgres(index: int, _recipient: str) -> None:
        # The 20th mail closes the first group (commit_every = 20): PostgreSQL stops while it is in
        # flight, so SMTP has taken the whole group by the time the group is to be recorded.
        if index == 19:
            postgres.stop()
            restart.start()

    transport = MemoryTransport(hook=stop_postgres)
    runtime.transport_override = transport
    try:
        report = runtime.deliverer().run(lambda: at("2026-12-02 09:00"))
    finally:
        if restart.ident is not None:
            restart.join(30)
    assert restart.ident is not None  # the database did go away
    assert report.sent == 30
    assert "delivery.record_waiting" in caplog.text  # the first group waited for the database
    assert sorted(a.recipient for a in transport.accepted) == sorted(f"o{n}@example.com" for n in range(30))
    assert all(ledger(runtime, i)["lesson-1"] == "sent" for i in ids)
    with session_scope(runtime.sessions) as session:
        cursors = session.scalars(select(Enrolment.next_step_id).where(Enrolment.subscriber_id.in_(ids)))
        assert set(cursors) == {"lesson-2"}
    runtime.close()


def test_an_edited_template_goes_out_as_edited(home: Path, runtime: Runtime) -> None:
    """The renderer keeps each mail's template between batches, and builds it again once a file
    of it changes: a new subject, a body.html added, a layout edited."""
    sequence = runtime.catalog().get("web-business")
    assert sequence is not None
    step = sequence.step("lesson-2")
    assert step is not None
    folder = home / "templates" / "mail" / "web-business" / "lesson-2"
    (folder / "body.html").unlink()
    first = runtime.renderer.step(sequence, step)
    assert runtime.renderer.step(sequence, step) is first  # kept while nothing changed
    assert not parsed(first.render(READERS[0], NOW)).is_multipart()

    def edit(path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        later = path.stat().st_mtime + 5  # past the file system's mtime resolution
        os.utime(path, (later, later))

    edit(folder / "subject.txt", "改訂版の件名\n")
    edit(folder / "body.html", "<p>{{ name }}さん、HTML 版です。</p>\n")
    layout = home / "templates" / "mail" / "_base" / "body.txt"
    edit(layout, layout.read_text(encoding="utf-8") + "\n改訂したフッター\n")
    mail = parsed(runtime.renderer.step(sequence, step).render(READERS[0], NOW))
    assert str(mail["Subject"]) == "改訂版の件名"
    html = mail.get_body(("html",))
    assert html is not None
    assert "HTML 版です。" in html.get_content()
    text = mail.get_body(("plain",))
    assert text is not None
    assert "改訂したフッター" in text.get_content()
