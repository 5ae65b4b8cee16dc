"""Addresses beyond ASCII: a non-ASCII local part by SMTPUTF8, an internationalised domain as ASCII."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import insert, select

from mailer import ledger
from mailer.db import session_scope
from mailer.models import Delivery, Enrolment, Subscriber
from mailer.runtime import Runtime
from mailer.send import transport_from_url
from mailer.web.app import create_app
from tests.conftest import Clock, LogLines, Sink, SinkHandler, make_settings, serve
from tests.helpers import at, subscribe
from tests.services import free_port


@pytest.fixture
def home(home: Path) -> Path:
    """The example site with the per-client sign-up limit lifted: one test client plays a crowd."""
    site = home / "mailer.toml"
    text = site.read_text(encoding="utf-8")
    assert "per_client_per_hour = 20" in text
    site.write_text(text.replace("per_client_per_hour = 20", "per_client_per_hour = 1000"), encoding="utf-8")
    return home


def test_a_non_ascii_local_part_among_30_sign_ups_holds_back_nobody(
    runtime: Runtime, live: str, sink: Sink
) -> None:
    """太郎@example.com signs up amid 30 others: all 31 confirmations go in one pass, within seconds."""
    readers = [f"rush{n}@example.com" for n in range(30)]
    readers.insert(15, "太郎@example.com")
    for address in readers:
        assert httpx.post(f"{live}/subscribe", data={"email": address}, timeout=10).status_code == 200
    started = time.monotonic()
    _, report = runtime.tick(runtime.clock)
    assert time.monotonic() - started < 10
    assert (report.sent, report.retried, report.failed) == (31, 0, 0)
    assert sorted(r.recipients[0] for r in sink.received) == sorted(readers)


def test_a_stored_non_ascii_local_part_goes_by_smtputf8_and_blocks_nobody(
    runtime: Runtime, sink: Sink
) -> None:
    """A row for an SMTPUTF8 address already in the ledger is sent as such, beside everyone else's."""
    now = at("2026-12-01 10:00")
    for n in range(10):
        subscribe(runtime, f"near{n}@example.com", now)
    with session_scope(runtime.sessions) as session:  # as an import or an older version left it
        sid = session.execute(
            insert(Subscriber).returning(Subscriber.id),
            [
                {
                    "email": "太郎@example.com",
                    "email_key": "太郎@example.com",
                    "name": "",
                    "state": "pending",
                    "created_at": now,
                }
            ],
        ).scalar_one()
        eid = session.execute(
            insert(Enrolment).returning(Enrolment.id),
            [
                {
                    "subscriber_id": sid,
                    "sequence_id": "web-business",
                    "state": "pending",
                    "created_at": now,
                    "shift_days": 0,
                    "confirm_nonce": 7,
                }
            ],
        ).scalar_one()
        ledger.add(
            session,
            kind=ledger.Kind.CONFIRM,
            subscriber_id=sid,
            due=now,
            now=now,
            enrolment_id=eid,
            sequence_id="web-business",
        )
    _, report = runtime.tick(lambda: now)
    assert report.sent == 11
    [taro] = [r for r in sink.received if r.recipients == ["太郎@example.com"]]
    as_read = email.message_from_string(taro.data.decode("utf-8"), policy=email.policy.default)
    assert as_read["To"].addresses[0].addr_spec == "太郎@example.com"  # UTF-8 headers (RFC 6532)
    with session_scope(runtime.sessions) as session:
        assert set(session.scalars(select(Delivery.state))) == {"sent"}


def test_an_internationalised_domain_goes_in_its_ascii_form(runtime: Runtime, sink: Sink) -> None:
    """x@例え.jp is stored as typed, and SMTP and the To: header carry x@xn--r8jz45g.jp."""
    subscribe(runtime, "x@例え.jp", at("2026-12-01 10:00"), name="花子")
    runtime.tick(lambda: at("2026-12-01 10:00"))
    [received] = sink.received
    assert received.recipients == ["x@xn--r8jz45g.jp"]
    to_line = next(line for line in received.data.split(b"\r\n") if line.startswith(b"To:"))
    assert b"<x@xn--r8jz45g.jp>" in to_line
    assert received.message["To"].addresses[0].display_name == "花子"
    with session_scope(runtime.sessions) as session:
        assert session.scalars(select(Subscriber.email)).one() == "x@例え.jp"


@pytest.fixture
def plain_relay() -> Iterator[Sink]:
    """A relay that does not offer SMTPUTF8."""
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    try:
        yield Sink(handler, port)
    finally:
        controller.stop()


def test_a_relay_without_smtputf8_has_the_form_refuse_a_non_ascii_local_part(
    home: Path, database_url: str, clock: Clock, plain_relay: Sink
) -> None:
    """Such a sign-up would never be delivered: the form says so at once and stores nothing; an
    ASCII address beside it signs up and gets its confirmation."""
    rt = Runtime(make_settings(home, database_url, plain_relay.url), clock=clock)
    rt.upgrade_db()
    try:
        with serve(create_app(rt), int(rt.settings.base_url.rsplit(":", 1)[1])) as live:
            refused = httpx.post(f"{live}/subscribe", data={"email": "太郎@example.com"}, timeout=10)
            accepted = httpx.post(f"{live}/subscribe", data={"email": "taro@example.com"}, timeout=10)
        assert refused.status_code == 422
        assert "@ の前に日本語などを含むメールアドレスには、現在お届けできません。" in refused.text
        assert accepted.status_code == 200
        with session_scope(rt.sessions) as session:
            assert list(session.scalars(select(Subscriber.email))) == ["taro@example.com"]
        rt.tick(rt.clock)
        assert [r.recipients for r in plain_relay.received] == [["taro@example.com"]]
    finally:
        rt.close()


def test_a_relay_that_cannot_be_asked_counts_as_offering_smtputf8(logged: LogLines) -> None:
    """No relay listening: the sign-up is not refused for it (the mail would fail at once, not
    eight times), and the warning names no address."""
    transport = transport_from_url(f"smtp://127.0.0.1:{free_port()}", Path())
    assert transport.offers_smtputf8() is True
    assert logged.named("smtp.probe_failed") == ["smtp.probe_failed"]
