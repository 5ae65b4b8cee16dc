"""SMTP as a relay answers: TLS, AUTH, one connection for many mails, 4xx retried, 5xx suppressed."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailer.db import session_scope
from mailer.errors import PermanentDeliveryError, TransientDeliveryError
from mailer.models import Subscriber
from mailer.runtime import Runtime
from mailer.send import Connection, transport_from_url
from mailer.send.smtp import SMTPConnection, SMTPTransport
from tests.conftest import Sink, SinkHandler
from tests.helpers import at, identity, join, ledger_row, seminar_mails
from tests.services import free_port

MESSAGE = b"From: a@example.jp\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


class Letter(NamedTuple):
    recipient: str
    message: bytes


def send(connection: Connection, sender: str, recipient: str, message: bytes) -> None:
    """One mail through `send_many`: returns once the relay accepted it, else raises its error."""
    for _, error in connection.send_many(sender, [Letter(recipient, message)]):
        if error is not None:
            raise error


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: the stand-in for a relay's real one."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def authenticator(_server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"s3cret")
    return AuthResult(success=ok)


@pytest.fixture
def tls_sink(certificate: tuple[Path, Path]) -> Iterator[tuple[Sink, str]]:
    """A relay that requires STARTTLS and then AUTH, like a submission port."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = SinkHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    try:
        yield Sink(handler, port), str(cert)
    finally:
        controller.stop()


def test_starttls_and_auth_deliver(tls_sink: tuple[Sink, str]) -> None:
    """smtp://user:pass@host:port?starttls=1 upgrades to TLS, logs in, and the relay accepts."""
    sink, cafile = tls_sink
    transport = transport_from_url(
        f"smtp://mailer:s3cret@127.0.0.1:{sink.port}?starttls=1&cafile={cafile}", Path()
    )
    with closing(transport), transport.session() as connection:
        send(connection, "a@example.jp", "b@example.com", MESSAGE)
    assert [r.recipients for r in sink.received] == [["b@example.com"]]


def test_wrong_password_is_a_temporary_failure(tls_sink: tuple[Sink, str]) -> None:
    """A refused login keeps the mail for a retry once the operator fixes the password."""
    sink, cafile = tls_sink
    # Real relays answer 535 and smtplib reports it; aiosmtpd stalls when smtplib falls back to
    # a second mechanism, so a short timeout ends it. Either way: kept for later, nothing sent.
    url = f"smtp://mailer:wrong@127.0.0.1:{sink.port}?starttls=1&cafile={cafile}&timeout=2"
    transport = transport_from_url(url, Path())
    with (
        closing(transport),
        transport.session() as connection,
        pytest.raises(TransientDeliveryError),
    ):
        send(connection, "a@example.jp", "b@example.com", MESSAGE)
    assert sink.received == []


def test_untrusted_certificate_is_refused(tls_sink: tuple[Sink, str]) -> None:
    """Without the CA, the relay's certificate is not trusted and nothing is sent in clear."""
    sink, _ = tls_sink
    transport = transport_from_url(f"smtp://mailer:s3cret@127.0.0.1:{sink.port}?starttls=1", Path())
    with (
        closing(transport),
        transport.session() as connection,
        pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        send(connection, "a@example.jp", "b@example.com", MESSAGE)


def test_smtps_implicit_tls(certificate: tuple[Path, Path]) -> None:
    """smtps:// speaks TLS from the first byte (port 465 style)."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=context)
    controller.start()
    try:
        transport = transport_from_url(f"smtps://127.0.0.1:{port}?cafile={cert}", Path())
        with closing(transport), transport.session() as connection:
            send(connection, "a@example.jp", "b@example.com", MESSAGE)
    finally:
        controller.stop()
    assert len(handler.received) == 1


def test_one_connection_carries_many_mails_and_survives_refusals(sink: Sink) -> None:
    """Ten mails share one session; a 421 and a 550 in between do not break the ones after."""
    sink.handler.rcpt_fault = lambda rcpt: "550 5.1.1 no such user" if rcpt.startswith("gone") else None
    # 451 keeps the session (a 421 would mean the server is closing it: smtplib reconnects then).
    sink.handler.data_fault = lambda rcpts: "451 4.3.0 try later" if rcpts[0].startswith("busy") else None
    transport = SMTPTransport(host="127.0.0.1", port=sink.port)
    outcomes = []
    with closing(transport), transport.session() as connection:
        for rcpt in [
            "r0@example.com",
            "busy@example.com",
            "r1@example.com",
            "gone@example.com",
            "r2@example.com",
        ]:
            try:
                send(connection, "a@example.jp", rcpt, MESSAGE)
                outcomes.append("ok")
            except TransientDeliveryError as exc:
                outcomes.append(f"later {exc.code}")
            except PermanentDeliveryError as exc:
                outcomes.append(f"never {exc.code}")
    assert outcomes == ["ok", "later 451", "ok", "never 550", "ok"]
    assert sink.handler.connections == 1
    assert [r.recipients[0] for r in sink.received] == [
        "r0@example.com",
        "r1@example.com",
        "r2@example.com",
    ]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_batch_reports_each_mail_and_no_refusal_spoils_its_neighbours(pipelining: bool, sink: Sink) -> None:
    """One `send_many` (each mail's content travels with the next envelope when the relay
    pipelines): refusals at RCPT and at the end of DATA, a 421 and a lost connection each hit
    their own mail only."""
    sink.handler.pipelining = pipelining
    sink.handler.rcpt_fault = lambda rcpt: "550 5.1.1 no such user" if rcpt.startswith("gone") else None
    faults = {"busy": "451 4.3.0 try later", "spam": "554 5.7.1 rejected", "closing": "421 4.3.2 bye"}
    sink.handler.data_fault = lambda rcpts: next(
        (reply for prefix, reply in faults.items() if rcpts[0].startswith(prefix)), None
    )
    sink.handler.hang_up = lambda rcpts: rcpts[0].startswith("cut")
    names = ["r0", "busy", "r1", "gone", "r2", "spam", "r3", "closing", "r4", "cut", "r5", "gone2"]
    transport = SMTPTransport(host="127.0.0.1", port=sink.port, timeout=5)
    with closing(transport), transport.session() as connection:
        letters = [Letter(f"{name}@example.com", MESSAGE) for name in names]
        outcomes = [
            (mail.recipient.split("@")[0], error.code if error else "ok")
            for mail, error in connection.send_many("a@example.jp", letters)
        ]
    assert outcomes == [
        ("r0", "ok"),
        ("busy", 451),
        ("r1", "ok"),
        ("gone", 550),
        ("r2", "ok"),
        ("spam", 554),
        ("r3", "ok"),
        ("closing", 421),
        ("r4", "ok"),
        ("cut", None),  # connection lost: no code, kept for a retry
        ("r5", "ok"),
        ("gone2", 550),
    ]
    assert [r.recipients[0] for r in sink.received] == [f"r{n}@example.com" for n in range(6)]
    assert sink.handler.connections == 3  # a new session after the 421 and after the cut


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_relay_that_caps_mails_per_session_costs_a_reconnect_not_a_retry(
    pipelining: bool, sink: Sink
) -> None:
    """A 421 to MAIL ends the session, nothing taken: the mail goes at once on a new session."""
    sink.handler.pipelining = pipelining
    sink.handler.per_session = 3
    transport = SMTPTransport(host="127.0.0.1", port=sink.port, timeout=5)
    letters = [Letter(f"r{n}@example.com", MESSAGE) for n in range(10)]
    with closing(transport), transport.session() as connection:
        errors = [error for _, error in connection.send_many("a@example.jp", letters)]
        send(connection, "a@example.jp", "single@example.com", MESSAGE)  # the 4th of its session
    assert errors == [None] * 10
    assert [r.recipients[0] for r in sink.received] == [f"r{n}@example.com" for n in range(10)] + [
        "single@example.com"
    ]
    assert sink.handler.connections == 4


class Crash(BaseException):
    """The worker process dies: not an error any code path handles."""


def test_a_session_that_dies_at_data_is_closed_without_quit(sink: Sink) -> None:
    """A worker that dies while the next mail's DATA is open closes the session at once: no QUIT,
    which the relay would read as mail content (then waiting its 30 s timeout for a reply)."""
    transport = SMTPTransport(host="127.0.0.1", port=sink.port)
    letters = [Letter(f"r{n}@example.com", MESSAGE) for n in range(3)]

    def die_after_the_first(connection: SMTPConnection) -> None:
        for _, error in connection.send_many("a@example.jp", letters):
            assert error is None
            assert connection.in_data  # the next mail's envelope went with this one: its DATA is open
            raise Crash

    started = time.monotonic()
    with closing(transport), pytest.raises(Crash), transport.session() as connection:
        die_after_the_first(connection)
    assert time.monotonic() - started < 10
    assert connection.client is None
    assert [r.recipients[0] for r in sink.received] == ["r0@example.com"]


def test_reconnects_after_the_server_drops_the_session() -> None:
    """When the relay goes away mid-session the mail is kept for later and the next send reconnects."""
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    transport = SMTPTransport(host="127.0.0.1", port=port, timeout=5)
    with closing(transport), transport.session() as connection:
        send(connection, "a@example.jp", "b@example.com", MESSAGE)
        controller.stop()
        with pytest.raises(TransientDeliveryError):
            send(connection, "a@example.jp", "b@example.com", MESSAGE)
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        send(connection, "a@example.jp", "b@example.com", MESSAGE)
    controller.stop()
    assert len(handler.received) == 2


def test_an_smtputf8_address_to_a_relay_without_smtputf8_fails_for_good_and_alone() -> None:
    """A relay that does not offer SMTPUTF8 cannot take 太郎@: that mail fails once, the next goes."""
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    transport = SMTPTransport(host="127.0.0.1", port=port, timeout=5)
    try:
        with closing(transport), transport.session() as connection:
            with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
                send(connection, "a@example.jp", "太郎@example.com", MESSAGE)
            send(connection, "a@example.jp", "b@example.com", MESSAGE)
    finally:
        controller.stop()
    assert [r.recipients for r in handler.received] == [["b@example.com"]]


@pytest.mark.parametrize("pipelining", [True, False])
def test_the_pool_reuses_a_session_across_tasks_and_replaces_one_the_server_closed(
    pipelining: bool,
) -> None:
    """Sessions outlive a task; a pooled one the relay has closed meanwhile is replaced unseen."""
    handler = SinkHandler()
    handler.pipelining = pipelining
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    transport = SMTPTransport(host="127.0.0.1", port=port, timeout=5)
    try:
        for task in range(3):  # three deliver tasks, one after the other
            with transport.session() as connection:
                send(connection, "a@example.jp", f"t{task}@example.com", MESSAGE)
        assert handler.connections == 1
        controller.stop()  # the relay closes every session (a restart, an idle timeout)
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        with transport.session() as connection:
            send(connection, "a@example.jp", "after@example.com", MESSAGE)
        assert handler.connections == 2
    finally:
        transport.close()
        controller.stop()
    assert [r.recipients[0] for r in handler.received] == [
        "t0@example.com",
        "t1@example.com",
        "t2@example.com",
        "after@example.com",
    ]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_sender_or_recipient_leaves_the_session_clean(
    pipelining: bool,
    sink: Sink,
) -> None:
    """After a 550 at MAIL or RCPT (and RSET) the next mail goes: no "503 sender already specified"."""
    sink.handler.pipelining = pipelining
    sink.handler.rcpt_fault = lambda rcpt: "550 5.1.1 no such user" if rcpt.startswith("gone") else None
    transport = SMTPTransport(host="127.0.0.1", port=sink.port)
    with closing(transport), transport.session() as connection:
        with pytest.raises(PermanentDeliveryError, match=r"5\.1\.1"):
            send(connection, "a@example.jp", "gone@example.com", MESSAGE)
        send(connection, "a@example.jp", "here@example.com", MESSAGE)
        with pytest.raises(PermanentDeliveryError, match=r"^5"):
            send(connection, "bad sender@", "here@example.com", MESSAGE)
        send(connection, "a@example.jp", "again@example.com", MESSAGE)
    assert [r.recipients[0] for r in sink.received] == ["here@example.com", "again@example.com"]
    assert sink.handler.connections == 1


def test_a_line_starting_with_a_dot_arrives_intact(sink: Sink) -> None:
    """Dot-stuffing (RFC 5321 4.5.2): a body line "." or ".x" is not the end of the mail."""
    message = MESSAGE + b".\r\n..two\r\n.end\r\n"
    transport = SMTPTransport(host="127.0.0.1", port=sink.port)
    with closing(transport), transport.session() as connection:
        send(connection, "a@example.jp", "b@example.com", message)
    assert sink.received[0].data.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") == message


def test_a_4xx_waits_in_the_ledger_then_goes(runtime: Runtime, sink: Sink) -> None:
    """A 421 puts the row back to pending with its next attempt later; a later tick delivers it."""
    sid = join(runtime, sink, "retry@example.com", at("2026-12-01 10:00"))
    sink.handler.data_fault = lambda _rcpts: "421 4.7.0 slow down"
    runtime.tick(lambda: at("2026-12-02 09:00"))
    row = ledger_row(runtime, sid, "lesson-1")
    assert (row.state, row.attempts) == ("pending", 1)
    assert "421" in (row.last_error or "")
    assert timedelta(seconds=30) <= row.available_at - at("2026-12-02 09:00") <= timedelta(seconds=90)
    sink.handler.data_fault = lambda _rcpts: None
    runtime.tick(lambda: at("2026-12-02 09:00:20"))
    assert len(seminar_mails(sink, "retry@example.com")) == 1  # welcome only
    runtime.tick(lambda: at("2026-12-02 09:02"))
    assert len(seminar_mails(sink, "retry@example.com")) == 2


def test_a_5xx_fails_the_row_suppresses_the_address_and_is_never_retried(
    runtime: Runtime, sink: Sink
) -> None:
    """550 5.1.1 fails that row only, marks the reader bounced, and nothing is sent to them again."""
    sid = join(runtime, sink, "gone@example.com", at("2026-12-01 10:00"))
    join(runtime, sink, "fine@example.com", at("2026-12-01 10:00"))
    sink.handler.rcpt_fault = lambda rcpt: "550 5.1.1 user unknown" if rcpt == "gone@example.com" else None
    runtime.tick(lambda: at("2026-12-02 09:00"))
    row = ledger_row(runtime, sid, "lesson-1")
    assert (row.state, row.attempts) == ("failed", 1)
    assert "5.1.1" in (row.last_error or "")
    with session_scope(runtime.sessions) as session:
        assert session.get(Subscriber, sid).state == "bounced"  # type: ignore[union-attr]
    sink.handler.rcpt_fault = lambda _rcpt: None
    for day in range(3, 16):
        runtime.tick(partial(identity, at(f"2026-12-{day:02d} 13:00")))
    assert len(sink.to("gone@example.com")) == 2  # the confirmation and the welcome, before it bounced
    assert len(seminar_mails(sink, "fine@example.com")) == 7
