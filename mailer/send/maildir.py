"""The embedded default: each message written to a local maildir (`./outbox`), readable at /outbox."""

from __future__ import annotations

import mailbox
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mailer.errors import DeliveryError, TransientDeliveryError
from mailer.send import M


class MaildirConnection:
    def __init__(self, box: mailbox.Maildir) -> None:
        self.box = box

    def send_many(self, sender: str, mails: Iterable[M]) -> Iterator[tuple[M, DeliveryError | None]]:  # noqa: ARG002 (the protocol's)
        for mail in mails:
            # A maildir holds each message with LF line ends, as a local mail client expects.
            try:
                self.box.add(mail.message.replace(b"\r\n", b"\n"))
            except OSError as exc:
                yield mail, TransientDeliveryError(f"maildir: {exc.strerror}")
            else:
                yield mail, None


class MaildirTransport:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def box(self) -> mailbox.Maildir:
        return mailbox.Maildir(self.folder, create=True)

    @contextmanager
    def session(self) -> Iterator[MaildirConnection]:
        yield MaildirConnection(self.box())

    def offers_smtputf8(self) -> bool:
        return True  # the message is kept as it is, UTF-8 headers and all

    def close(self) -> None:
        """Nothing is kept between sessions."""
