"""The in-memory transport: it keeps what it accepts and injects each fault SMTP can answer with."""

from __future__ import annotations

import threading
from typing import NamedTuple

import pytest

from mailer.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from mailer.send import Transport
from mailer.send.memory import Drop, Fault, MemoryTransport, Reply
from mailer.send.replies import classify, suppresses

SENDER = "seminar@example.jp"


class Letter(NamedTuple):
    recipient: str
    message: bytes


def letter(name: str) -> Letter:
    return Letter(f"{name}@example.com", f"To: {name}@example.com\r\nSubject: {name}\r\n\r\nhi\r\n".encode())


def send(transport: Transport, *names: str) -> list[tuple[str, DeliveryError | None]]:
    """The names through one session, each with its outcome."""
    with transport.session() as connection:
        outcomes = connection.send_many(SENDER, [letter(name) for name in names])
        return [(mail.recipient.split("@")[0], error) for mail, error in outcomes]


def test_accepted_mail_is_kept_with_its_envelope_and_parsed_message() -> None:
    """Each accepted mail keeps its sender, recipient and bytes, and parses as a mail client would."""
    transport = MemoryTransport()
    assert send(transport, "r0", "r1") == [("r0", None), ("r1", None)]
    first = transport.accepted[0]
    assert (first.sender, first.recipient, first.data) == (SENDER, "r0@example.com", letter("r0").message)
    assert first.recipients == ["r0@example.com"]
    assert str(first.message["Subject"]) == "r0"
    assert [str(m["Subject"]) for m in transport.to("r1@example.com")] == ["r1"]
    assert transport.sessions == 1
    transport.clear()
    assert transport.accepted == []


def test_a_session_opens_on_its_first_mail_only() -> None:
    """A session that carries no mail opens none, as SMTP connects only to send."""
    transport = MemoryTransport()
    with transport.session():
        pass
    assert send(transport) == []
    assert transport.sessions == 0


def test_a_4xx_is_a_transient_error_with_its_code_and_text() -> None:
    """A 4xx reply is a TransientDeliveryError as SMTP reports it; the session and the others go on."""
    transport = MemoryTransport()
    transport.faults["busy@example.com"] = Reply(451, "4.3.0 try later")
    outcomes = send(transport, "r0", "busy", "r1")
    error = outcomes[1][1]
    assert isinstance(error, TransientDeliveryError)
    assert (error.code, str(error)) == (451, "451 4.3.0 try later")
    assert [e for _, e in outcomes if e is not error] == [None, None]
    assert [a.recipient for a in transport.accepted] == ["r0@example.com", "r1@example.com"]
    assert transport.sessions == 1


def test_a_5xx_is_a_permanent_error_classified_as_smtp_does() -> None:
    """A 5xx reply is the PermanentDeliveryError `classify` makes, so suppression reads it the same."""
    transport = MemoryTransport()
    transport.faults["gone@example.com"] = Reply(550, "5.1.1 no such user")
    transport.faults["spam@example.com"] = Reply(554, "5.7.1 rejected")
    outcomes = dict(send(transport, "gone", "spam", "gone"))
    gone, spam = outcomes["gone"], outcomes["spam"]
    assert isinstance(gone, PermanentDeliveryError)
    assert isinstance(spam, PermanentDeliveryError)
    assert (gone.code, str(gone)) == (550, str(classify(550, "5.1.1 no such user")))
    assert (suppresses(gone), suppresses(spam)) == (True, False)
    assert transport.accepted == []
    assert transport.offered == 3  # a recipient's fault answers every time


def test_a_421_ends_the_session_and_the_next_mail_opens_a_new_one() -> None:
    """A 421 fails its mail for later, and the next mail goes on a new session."""
    transport = MemoryTransport()
    transport.faults["closing@example.com"] = Reply(421, "4.3.2 bye")
    outcomes = send(transport, "r0", "closing", "r1")
    error = outcomes[1][1]
    assert isinstance(error, TransientDeliveryError)
    assert error.code == 421
    assert [(a.recipient, a.session) for a in transport.accepted] == [
        ("r0@example.com", 1),
        ("r1@example.com", 2),
    ]
    assert transport.sessions == 2


def test_a_dropped_connection_is_transient_without_a_code_and_ends_the_session() -> None:
    """A lost connection keeps the mail for a retry (no code, not accepted) and the session ends."""
    transport = MemoryTransport()
    transport.faults["cut@example.com"] = Drop()
    outcomes = send(transport, "cut", "r0")
    error = outcomes[0][1]
    assert isinstance(error, TransientDeliveryError)
    assert error.code is None
    assert outcomes[1] == ("r0", None)
    assert [(a.recipient, a.session) for a in transport.accepted] == [("r0@example.com", 2)]
    assert transport.sessions == 2


def test_a_fault_for_the_nth_mail_hits_that_mail_once() -> None:
    """A fault by index answers for that mail only, counted from 0 across sessions."""
    transport = MemoryTransport()
    transport.faults_at[2] = Reply(452, "4.2.2 mailbox full")
    send(transport, "r0", "r1")
    outcomes = send(transport, "r2", "r3", "r2")
    assert [(name, e.code if e else None) for name, e in outcomes] == [
        ("r2", 452),
        ("r3", None),
        ("r2", None),
    ]


def test_the_hook_sees_each_mail_before_it_is_accepted_and_may_answer_for_it() -> None:
    """The hook is called with each mail's index and recipient while it is in flight; its fault wins."""
    transport = MemoryTransport()
    seen: list[tuple[int, str, int]] = []

    def hook(index: int, recipient: str) -> Fault | None:
        seen.append((index, recipient, len(transport.accepted)))
        return Reply(550, "5.1.1 no") if recipient.startswith("r1") else None

    transport.hook = hook
    transport.faults["r0@example.com"] = Reply(451, "4.3.0 later")
    outcomes = send(transport, "r0", "r1", "r2")
    assert [(name, e.code if e else None) for name, e in outcomes] == [("r0", 451), ("r1", 550), ("r2", None)]
    assert seen == [(0, "r0@example.com", 0), (1, "r1@example.com", 0), (2, "r2@example.com", 0)]


class Crash(BaseException):
    """A worker dying."""


def test_a_hook_that_raises_stops_the_send_with_the_mails_before_kept() -> None:
    """A hook raising before the n-th mail is a crash after the mails before it were accepted."""

    def crash(index: int, _recipient: str) -> None:
        if index == 2:
            raise Crash

    transport = MemoryTransport(hook=crash)
    with pytest.raises(Crash):
        send(transport, "r0", "r1", "r2", "r3")
    assert [a.recipient for a in transport.accepted] == ["r0@example.com", "r1@example.com"]
    transport.hook = None
    assert send(transport, "r3") == [("r3", None)]


def test_threads_sending_at_once_lose_nothing_and_share_no_index() -> None:
    """Several threads sending at once: every mail kept once, every index given once."""
    indexes: list[int] = []

    def note(index: int, _recipient: str) -> None:
        indexes.append(index)

    transport = MemoryTransport(hook=note)
    threads = [
        threading.Thread(target=send, args=(transport, *(f"t{t}-{n}" for n in range(50)))) for t in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(indexes) == list(range(400))
    assert len({a.recipient for a in transport.accepted}) == 400
    assert transport.sessions == 8


def test_a_reply_that_is_not_a_refusal_is_a_mistake() -> None:
    """Only 4xx and 5xx replies refuse a mail; anything else is a bug in the test."""
    with pytest.raises(ValueError, match="250"):
        Reply(250)
