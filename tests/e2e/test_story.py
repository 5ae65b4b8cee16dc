"""The README's story: subscribe, confirm from the mail, receive the seminar over weeks, leave."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from mailer.db import session_scope
from mailer.models import Delivery, Subscriber
from mailer.runtime import Runtime
from mailer.stats import collect
from tests.conftest import Clock, Sink
from tests.helpers import (
    EXAMPLE_TIMETABLE,
    at,
    confirm_token,
    seminar_mails,
    text_of,
    tick_through,
    timetable,
)

READER = "story.reader@example.com"
LEAVER = "story.leaver@example.com"


def sign_up_and_confirm(runtime: Runtime, live: str, sink: Sink, email: str, name: str) -> None:
    """Through the live server, at the runtime's clock (the test's time, never today's)."""
    response = httpx.post(
        f"{live}/subscribe",
        data={"email": email, "name": name, "timezone": "Asia/Tokyo"},
        timeout=10,
    )
    assert response.status_code == 200
    runtime.tick(runtime.clock)
    [confirmation] = sink.to(email)
    assert "/confirm/" in text_of(confirmation)
    url = f"{live}/confirm/{confirm_token(confirmation)}"
    assert "登録を完了する" in httpx.get(url, timeout=10).text  # a page with the button
    assert "登録が完了しました" in httpx.post(url, timeout=10).text


def unsubscribe_url(message: EmailMessage) -> str:
    return str(re.findall(r"<(http[^>]+)>", str(message["List-Unsubscribe"]))[0])


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_whole_story(
    runtime: Runtime,
    live: str,
    sink: Sink,
    home: Path,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two readers join; one reads the whole seminar at 09:00 Tokyo, the other leaves by one click."""
    caplog.set_level(logging.DEBUG)
    clock.now = at("2026-12-01 10:00")
    sign_up_and_confirm(runtime, live, sink, READER, "山田 花子")
    sign_up_and_confirm(runtime, live, sink, LEAVER, "佐藤 一郎")
    runtime.tick(lambda: at("2026-12-01 10:00"))  # the welcome, right after confirming

    tick_through(runtime, at("2026-12-01 10:30"), at("2026-12-04 13:00"))
    # The leaver presses one-click in lesson-2, as a mail client does (RFC 8058).
    lesson_2 = seminar_mails(sink, LEAVER)[-1]
    clock.now = at("2026-12-04 13:00")
    response = httpx.post(
        unsubscribe_url(lesson_2),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert response.status_code == 200
    tick_through(runtime, at("2026-12-04 13:30"), at("2026-12-20 10:00"), every=timedelta(hours=1) / 2)

    expected = EXAMPLE_TIMETABLE
    assert timetable(sink, READER, home) == expected
    assert timetable(sink, LEAVER, home) == expected[:3]

    # Every seminar mail is lawful and well-formed, as a mail client sees it.
    received = seminar_mails(sink, READER)
    assert len({str(m["Message-ID"]) for m in received}) == 7
    for message in received:
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "<mailto:" in str(message["List-Unsubscribe"])
        assert str(message["List-Id"]).endswith("<web-business.example.jp>")
        assert message["To"].addresses[0].display_name == "山田 花子"
        text = text_of(message)
        html_part = message.get_body(("html",))
        assert html_part is not None
        html = html_part.get_content()
        for required in (
            "WEBビジネス研究室",
            "〒150-0001",
            "support@example.jp",
            "利益の保証",
            unsubscribe_url(message),
        ):
            assert required in text
            assert required in html
        assert "山田 花子さん" in text

    with session_scope(runtime.sessions) as session:
        states = dict(session.execute(select(Subscriber.email, Subscriber.state)).all())
        open_rows = session.scalars(select(Delivery).where(Delivery.state.in_(["pending", "sending"]))).all()
        stats = collect(session, since=at("2026-11-01 00:00"))
    assert states == {READER: "confirmed", LEAVER: "unsubscribed"}
    assert open_rows == []
    assert stats["unsubscribes"] == [
        {"kind": "step", "sequence": "web-business", "step": "lesson-2", "count": 1}
    ]

    # Privacy: no log line of the whole story names an address. `mail.log` is aiosmtpd, the
    # relay the test stands up in place of the provider's; its logs are not ours to write.
    ours = [r for r in caplog.records if r.name != "mail.log"]
    assert any(r.name.startswith("mailer.") for r in ours), "nothing logged: the check would prove nothing"
    assert [r.getMessage() for r in ours if "@example.com" in r.getMessage()] == []


def test_the_mask_filter_catches_what_slips_through() -> None:
    """Should a log line ever carry an address, the last filter masks it before it is written."""
    from mailer.logs import MaskAddresses

    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "send to %s failed", ("taro@example.com",), None
    )
    assert MaskAddresses().filter(record)
    assert record.getMessage() == "send to <address> failed"
