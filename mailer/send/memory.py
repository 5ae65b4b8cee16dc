"""A working transport that keeps each mail in memory, with faults on demand: the fake for tests.

    transport = MemoryTransport()
    transport.faults["gone@example.com"] = Reply(550, "5.1.1 no such user")  # every time
    transport.faults_at[3] = Drop()  # the 4th mail offered (indexes count from 0)
    transport.hook = lambda index, recipient: ...  # before each mail: a fault, None, or it raises

A reply becomes its error through `replies.classify()`, as an SMTP reply does. A 421 or a dropped
connection ends the session: the next mail opens a new one, and `sessions` counts them.
"""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage

from mailer.errors import DeliveryError, TransientDeliveryError
from mailer.send import M
from mailer.send.replies import classify


@dataclass(frozen=True)
class Reply:
    """The server refuses the mail with this reply (4xx for later, 5xx never); 421 ends the session."""

    code: int
    text: str = ""

    def __post_init__(self) -> None:
        if not 400 <= self.code < 600:  # the refusals of RFC 5321
            raise ValueError(f"a refusal is a 4xx or 5xx reply, not {self.code}")


@dataclass(frozen=True)
class Drop:
    """The connection is lost before the server's reply: the mail is not kept, the session ends."""


Fault = Reply | Drop
# Called with each mail's index (from 0, over the transport's life) and recipient before the mail
# is accepted: it may return a fault, run code (start a thread), or raise (a worker dying).
Hook = Callable[[int, str], Fault | None]


@dataclass(frozen=True)
class Accepted:
    """One mail the transport took, and the session (from 1) that carried it."""

    sender: str
    recipient: str
    data: bytes
    session: int

    @property
    def recipients(self) -> list[str]:
        return [self.recipient]  # as the SMTP sink reports an envelope

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


class MemoryConnection:
    """A session that opens on its first mail and again after a fault ended it."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.t = transport
        self.session: int | None = None  # the open session's number

    def send_many(self, sender: str, mails: Iterable[M]) -> Iterator[tuple[M, DeliveryError | None]]:
        for mail in mails:
            if self.session is None:
                self.session = self.t.open_session()
            fault = self.t.fault_for(mail.recipient)
            if fault is None:
                self.t.keep(Accepted(sender, mail.recipient, mail.message, self.session))
                yield mail, None
                continue
            if isinstance(fault, Drop) or fault.code == 421:  # the server is closing the session
                self.session = None
            if isinstance(fault, Drop):
                yield mail, TransientDeliveryError("memory: connection lost")
            else:
                yield mail, classify(fault.code, fault.text)

    def close(self) -> None:
        self.session = None


class MemoryTransport:
    """Keeps what it accepted, in order; thread-safe, as workers send from several threads."""

    def __init__(self, hook: Hook | None = None) -> None:
        self.faults: dict[str, Fault] = {}  # by recipient, each time they are sent to
        self.faults_at: dict[int, Fault] = {}  # by the mail's index
        self.hook = hook
        self.sessions = 0  # sessions opened
        self._accepted: list[Accepted] = []
        self._offered = 0
        self._lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[MemoryConnection]:
        connection = MemoryConnection(self)
        try:
            yield connection
        finally:
            connection.close()

    def offers_smtputf8(self) -> bool:
        return True  # the message is kept as it is, UTF-8 headers and all

    def close(self) -> None:
        """Nothing is kept between sessions; what was accepted stays readable."""

    def open_session(self) -> int:
        with self._lock:
            self.sessions += 1
            return self.sessions

    def fault_for(self, recipient: str) -> Fault | None:
        """What happens to the next mail offered: the hook's fault, else its index's, else its
        recipient's; None to accept it."""
        with self._lock:
            index = self._offered
            self._offered += 1
            hook = self.hook
        hooked = hook(index, recipient) if hook is not None else None  # outside the lock: it may block
        with self._lock:
            chosen = (hooked, self.faults_at.pop(index, None), self.faults.get(recipient))
        return next((fault for fault in chosen if fault is not None), None)

    def keep(self, accepted: Accepted) -> None:
        with self._lock:
            self._accepted.append(accepted)

    @property
    def accepted(self) -> list[Accepted]:
        with self._lock:
            return list(self._accepted)

    @property
    def offered(self) -> int:
        """Mails offered so far, accepted or not."""
        with self._lock:
            return self._offered

    def to(self, address: str) -> list[EmailMessage]:
        """The mails accepted for `address`, parsed as a mail client would."""
        return [a.message for a in self.accepted if a.recipient == address]

    def clear(self) -> None:
        with self._lock:
            self._accepted.clear()
